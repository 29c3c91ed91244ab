"""The shared trainer's knobs (:class:`OptimConfig`), torch-free.

The training stages' config dataclasses (``teacher_sft``, ``distill``) extend it, and their
``--help`` is built from those dataclasses before anything heavy is imported: this module must
never import torch. :mod:`lori.training.loop` re-exports it.
"""
from __future__ import annotations

from dataclasses import dataclass

#: runtime.precision of the training stages (lori.model.precision.autocast_context)
PRECISIONS = ("auto", "fp32", "bf16")


def check_runtime(cfg: "OptimConfig") -> None:
    """``precision``, which the stage's CLI cannot type-check: a clear error before anything loads."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be {' | '.join(PRECISIONS)}, got {cfg.precision!r}")


@dataclass
class OptimConfig:
    steps: int = 1000                    # optimizer steps
    batch_size: int = 64                 # examples per step
    lr: float = 1e-3                     # peak learning rate
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 30               # linear warmup, then cosine to 0
    grad_clip: float = 1.0               # max grad norm (0 = off)
    log_every: int = 50
    checkpoint_every: int = 200          # steps between resumable checkpoints in <out>.ckpt/ (0 = off)
    # validation during training (a stage's --val split; lori.training.validation)
    eval_every: int = 0                  # optimizer steps between validation evaluations, and the last step (0 = off)
    val_batch_size: int = 250            # problems per decoding batch (config: evaluate.batch_size)
    val_max_new_tokens: int = 96         # decoding budget per problem (config: evaluate.max_new_tokens)
    # runtime (config section `runtime:`): speed and memory, not the maths
    compile: bool = False                # torch.compile the HF model(s) (in place; GPU: faster steps after a slow first one)
    parallel: str = "ddp"                # ddp (replica per rank) | fsdp (weights/grads/Adam state sharded; >= ~1B params)
    grad_accum: int = 1                  # micro-batches per optimizer step: batch_size stays the step's batch, memory drops
    tensorboard: bool = False            # also write TensorBoard events (lori.training.tensorboard_log; the stage picks the dir)
    precision: str = "auto"              # auto (bf16 autocast on CUDA, float32 on CPU) | fp32 | bf16 (autocast on any device)
    # PEFT LoRA (config section `lora:`): {rank, alpha, dropout, target_modules}; None = full fine-tuning
    lora: dict | None = None

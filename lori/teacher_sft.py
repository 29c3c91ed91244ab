r"""Stage ``teacher_sft``: explicit-CoT supervised fine-tuning of the teacher (= the cot_sft baseline).

Reads ``data/train.jsonl``; writes ``teacher/`` (safetensors + config + tokenizer, HF
layout; ``train_config.json``) and ``teacher_metrics.jsonl``. The model is built from
``--scratch`` (LLaMA architecture, word-level tokenizer from the training data) when
``--name-or-path`` is none, else loaded from a hub name, local dir or ``.gguf`` file.
While training, a resumable checkpoint ``<out>.ckpt/`` is written every
``--checkpoint-every`` steps; a killed run resumes from it (:mod:`lori.training.loop`). With
``--val`` and ``--eval-every N`` the teacher's CoT accuracy on the validation records is logged
every N steps (:mod:`lori.training.validation`). With a ``--lora`` block only PEFT LoRA adapters
train and the saved checkpoint holds the merged weights (:mod:`lori.training.lora`); with
``--tensorboard`` the loss, learning rate, throughput and validation accuracy also go to
``results/<run>/tb/teacher/`` (the ``tb/`` folder beside ``--out``).

Standalone::

    python -m lori.teacher_sft --config config/config.yaml \
        --train results/quickstart/data/train.jsonl --out results/quickstart/teacher \
        --metrics results/quickstart/teacher_metrics.jsonl
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from lori.cli import stage_main, stage_summary
from lori.data.records import DataError, check_training_records, read_records
from lori.training.options import OptimConfig, check_runtime

# torch, transformers and the model/training modules are imported in the functions that use them:
# `--help` (built from TeacherSFTConfig) must not wait for torch

log = logging.getLogger("lori.teacher_sft")


@dataclass
class TeacherSFTConfig(OptimConfig):
    name_or_path: str | None = None      # hub name / local dir / .gguf; None = from scratch
    gguf_file: str | None = None
    tokenizer: str = "word"              # word | pretrained
    prompt: str = "plain"                # plain (question ||) | chat (the tokenizer's chat template)
    scratch: dict = field(default_factory=dict)   # LlamaConfig fields for from-scratch models
    gradient_checkpointing: bool = False  # recompute each layer in backward: less activation memory, ~1/3 more compute
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    steps: int = 1400
    lr: float = 2e-3

    def __post_init__(self):
        check_runtime(self)
        if self.tokenizer == "word" and self.name_or_path:
            raise ValueError("tokenizer 'word' is for from-scratch models; use 'pretrained' with name_or_path")
        if self.tokenizer not in ("word", "pretrained"):
            raise ValueError(f"tokenizer must be word | pretrained, got {self.tokenizer!r}")
        if self.prompt not in ("plain", "chat"):
            raise ValueError(f"prompt must be plain | chat, got {self.prompt!r}")
        if self.prompt == "chat" and not self.name_or_path:
            raise ValueError("prompt 'chat' needs a pretrained model whose tokenizer has a chat template")


def build_teacher(cfg: TeacherSFTConfig, texts: list[str]):
    from lori.model.loading import (
        build_scratch_model,
        build_word_tokenizer,
        ensure_special_tokens,
        load_pretrained,
    )

    if cfg.name_or_path:
        model, tokenizer = load_pretrained(cfg.name_or_path, cfg.gguf_file)
        ensure_special_tokens(tokenizer, model)
    else:
        tokenizer = build_word_tokenizer(texts)
        model = build_scratch_model(cfg.scratch, tokenizer)
    if cfg.prompt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt 'chat': the tokenizer of {cfg.name_or_path} has no chat template; use prompt: plain")
    tokenizer.lori_prompt = cfg.prompt   # saved with the checkpoint; every later stage builds prompts the same way
    return model, tokenizer


def tensorboard_dir(out: str) -> Path:
    """``results/<run>/tb/teacher`` for ``out`` = ``results/<run>/teacher`` (``runtime.tensorboard``)."""
    return Path(out).parent / "tb" / "teacher"


def run(cfg: TeacherSFTConfig, train: str, out: str, metrics: str | None = None, val: str | None = None) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from lori.model.loading import (
        enable_checkpointing,
        num_params,
        save_checkpoint,
        setup_runtime,
    )
    from lori.model.precision import to_device
    from lori.model.sequences import teacher_batch, teacher_sequence
    from lori.training.distributed import cleanup, init_distributed, unsharded
    from lori.training.loop import (
        checkpoint_dir,
        discard_checkpoint,
        fingerprint,
        fit,
        provenance,
        step_flops,
    )
    from lori.training.lora import add_lora, merge_lora
    from lori.training.validation import validation_evaluator

    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    info, device = init_distributed(device)      # torchrun: one process per device, rank 0 writes
    records = read_records(train)
    check_training_records(records, train)
    texts = [f"{r.question} || {r.cot} #### {r.answer}" for r in records]
    model, tokenizer = build_teacher(cfg, texts)
    model.to(device).train()
    if cfg.gradient_checkpointing:   # one forward per step, no KV cache: safe here (not for the latent students)
        enable_checkpointing(model)
    adapters = add_lora(model, cfg.lora)         # LoRA: only the adapters train; merged before saving
    log.info("teacher: %.2fM parameters, vocab %d, %d training problems, device %s",
             num_params(model) / 1e6, len(tokenizer), len(records), device)
    seqs = [teacher_sequence(tokenizer, r) for r in records]
    limit = model.config.max_position_embeddings
    too_long = [r.id for r, s in zip(records, seqs) if len(s.input_ids) > limit]
    if too_long:
        raise DataError(f"{train}: {len(too_long)} sequences exceed max_position_embeddings={limit} (e.g. ids {too_long[:3]})")

    params = num_params(model)

    def loss_step(idx: list[int]):
        batch = {k: to_device(v, device) for k, v in teacher_batch(tokenizer, [seqs[i] for i in idx]).items()}
        flops = step_flops(params, batch["input_ids"].numel())   # training cost, for the report
        return {"loss": model(**batch).loss, "flops": torch.tensor(flops)}   # fit() runs this under bf16 autocast on GPU

    evaluator = validation_evaluator(model, tokenizer, val, cfg, device)   # the teacher answers with its CoT
    ckpt = checkpoint_dir(out)   # resumable: a killed run continues from <out>.ckpt (lori.training.loop)
    rows = fit(model, loss_step, len(seqs), cfg, cfg.seed, metrics, desc="teacher_sft", ckpt=ckpt,
               run_id=fingerprint(asdict(cfg), train, *([val] if val else [])), dist_info=info, evaluator=evaluator,
               tb_dir=tensorboard_dir(out))
    if adapters is not None:
        model = merge_lora(adapters)             # the checkpoint is a plain model: every later stage loads it as is
    model.eval()
    final = unsharded(model, info, lambda: AutoModelForCausalLM.from_config(model.config))   # FSDP: gathered on rank 0
    if info.is_main:
        save_checkpoint(out, final, tokenizer, {"train_config.json": json.dumps(provenance(cfg), indent=2)})
        discard_checkpoint(ckpt)
    cleanup(info)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    cfg, ns = stage_main(TeacherSFTConfig, argv, __doc__,
                         [("--train", "training records jsonl"), ("--out", "checkpoint directory"),
                          ("--metrics", "(optional) metrics jsonl"),
                          ("--val", "(optional) validation records jsonl, evaluated every --eval-every steps")],
                         "teacher_sft")
    rows = run(cfg, ns.train, ns.out, ns.metrics, ns.val)
    stage_summary("teacher_sft", cfg.steps, "steps", f"final loss {rows[-1]['loss']:.4g}" if rows else "")


if __name__ == "__main__":
    main()

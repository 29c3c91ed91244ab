"""PEFT LoRA adapters for the training stages (config section ``lora:``; off by default).

:func:`add_lora` injects low-rank adapters into a Hugging Face model **in place** (the same model
object, its targeted ``Linear`` layers wrapped by PEFT) and freezes every other weight of that
model, so :func:`lori.training.loop.fit`, which trains whatever ``requires_grad``, trains only the
adapters — plus anything outside the HF model, e.g. a latent student's projection, which stays
fully trained. :func:`merge_lora` folds the adapters back into the weights (PEFT's
``merge_and_unload``) before a stage saves, so every checkpoint is a plain merged model that
``evaluate``, ``lori thoughts`` and the later stages load unchanged.

The resumable training checkpoint (``<out>.ckpt``) holds the unmerged model with its adapters, so a
killed LoRA run resumes exactly.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("lori.training.lora")

#: the keys of a ``lora`` block (config section ``lora:`` minus its on/off switches)
LORA_KEYS = ("rank", "alpha", "dropout", "target_modules")


def add_lora(model: torch.nn.Module, spec: dict | None):
    """Wrap ``model``'s target modules with LoRA adapters in place; return the PEFT model to merge
    with later, or None when ``spec`` is empty (full fine-tuning)."""
    if not spec:
        return None
    unknown = set(spec) - set(LORA_KEYS)
    if unknown:
        raise ValueError(f"lora: unknown key(s) {sorted(unknown)} (known: {', '.join(LORA_KEYS)})")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("lora needs PEFT: pip install -e '.[lora]'") from None
    config = LoraConfig(r=int(spec.get("rank", 16)), lora_alpha=float(spec.get("alpha", 32)),
                        lora_dropout=float(spec.get("dropout", 0.05)),
                        target_modules=spec.get("target_modules", "all-linear"), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)   # modifies `model` in place (peft_model.base_model.model is model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d alpha=%g dropout=%g on %s: %d of %d model parameters trainable (%.2f%%)", config.r,
             config.lora_alpha, config.lora_dropout, config.target_modules, trainable, total, 100 * trainable / total)
    return peft_model


def merge_lora(peft_model) -> torch.nn.Module:
    """Fold the adapters into the base weights and remove them, in place; returns the plain HF model."""
    return peft_model.merge_and_unload()

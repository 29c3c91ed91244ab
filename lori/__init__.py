"""lori: LoRi — low-rank distillation for implicit reasoning (a reproducible pipeline)."""
from lori.hub import apply_offline_default

__version__ = "0.1.0"

# before any module of the package can import transformers, datasets or huggingface_hub
# (they read HF_HUB_OFFLINE at import): nothing is downloaded unless the user allows it
apply_offline_default()

# the public Python API, imported on first use: `import lori` stays light (no torch), and
# `from lori import load_student` loads lori.analysis.student then (PEP 562)
_LAZY = {"load_student": "lori.analysis.student"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lori' has no attribute {name!r}")

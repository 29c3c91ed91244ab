"""lori: LoRi — low-rank distillation for implicit reasoning (a reproducible pipeline)."""
from lori.hub import apply_offline_default

__version__ = "0.1.0"

# before any module of the package can import transformers, datasets or huggingface_hub
# (they read HF_HUB_OFFLINE at import): nothing is downloaded unless the user allows it
apply_offline_default()

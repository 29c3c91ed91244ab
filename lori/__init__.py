"""lori: LoRi — low-rank distillation for implicit reasoning (a reproducible pipeline)."""
__version__ = "0.1.0"

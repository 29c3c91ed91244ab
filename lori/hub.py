"""Hugging Face hub policy shared by model and dataset loading: offline unless allowed.

Nothing is downloaded unless the user allows it: ``HF_HUB_OFFLINE`` is set by default
(``LORI_ALLOW_DOWNLOAD=1`` lifts it). It must be set before ``huggingface_hub``,
``transformers`` or ``datasets`` is imported, since they read it at import time, so the
package's ``__init__`` calls :func:`apply_offline_default` before any of its modules loads.
"""
from __future__ import annotations

import os


def apply_offline_default() -> None:
    """Set ``HF_HUB_OFFLINE=1`` unless the user allowed downloads or chose otherwise."""
    if os.environ.get("LORI_ALLOW_DOWNLOAD") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def downloads_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("0", "false", "no", "")


def offline_hint(name: str, what: str) -> str:
    """The advice appended to every 'not available locally' error."""
    why = "downloads are off" if not downloads_allowed() else "it could not be fetched from the hub"
    return (f"{what} '{name}' is not available locally and {why}. Give a local path instead, or "
            f"pre-fetch it (`huggingface-cli download {name}{' --repo-type dataset' if what == 'dataset' else ''}`) "
            f"and set LORI_ALLOW_DOWNLOAD=1.")

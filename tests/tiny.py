"""The tests' tiny from-scratch model (a ~40K-parameter LLaMA), CPU runtime flags, a tiny
byte-level BPE tokenizer (:func:`byte_bpe`), and the tiny teacher run that ``tests/conftest.py``
builds once per session (:func:`train_tiny_teacher`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TINY = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 128, "tie_word_embeddings": True})
RUNTIME = ["--threads", "1", "--device", "cpu"]

TRAIN_PROBLEMS, TEST_PROBLEMS, TEACHER_STEPS = 48, 12, 3


@dataclass(frozen=True)
class TinyTeacher:
    """The paths of a tiny teacher run; the session's copy is shared, so treat it as read-only."""
    root: Path
    train: Path        # TRAIN_PROBLEMS generated problems (quickstart kind)
    test: Path         # TEST_PROBLEMS more, none of whose questions is in train
    teacher: Path      # checkpoint after TEACHER_STEPS SFT steps, batch 8
    metrics: Path      # its metrics jsonl, one row per step


def train_tiny_teacher(root: Path) -> TinyTeacher:
    """Generate the data and train the teacher under ``root``, through the stage CLIs (~2 s)."""
    from lori import prepare_data, teacher_sft   # here: conftest imports this module, torch only when needed

    t = TinyTeacher(root, root / "data" / "train.jsonl", root / "data" / "test.jsonl", root / "teacher",
                    root / "teacher_metrics.jsonl")
    prepare_data.main(["--split", "train", "--kind", "quickstart", "--n", str(TRAIN_PROBLEMS), "--out", str(t.train)])
    prepare_data.main(["--split", "test", "--kind", "quickstart", "--n", str(TEST_PROBLEMS), "--out", str(t.test),
                       "--exclude", str(t.train)])
    teacher_sft.main(["--train", str(t.train), "--out", str(t.teacher), "--metrics", str(t.metrics), "--scratch", TINY,
                      "--steps", str(TEACHER_STEPS), "--batch-size", "8", "--log-every", "1", *RUNTIME])
    return t


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (to notice a test writing into a shared fixture)."""
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def byte_bpe(texts: list[str], eos: str, bos: str | None):
    """A small byte-level BPE tokenizer (GPT-2 / Qwen / LLaMA-3 style) without <bot>/<eot>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [eos] + ([bos] if bos and bos != eos else [])
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, **({"bos_token": bos} if bos else {}))

"""Token sequences and padded batches for every method (see :mod:`lori.data.records` for layouts).

Teacher sequences are right-padded (teacher forcing); student prompts are left-padded so
that every row appends its latent thoughts at the same column, with position ids
``cumsum(mask) - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lori.data.records import ANSWER_SEP, BOT, EOT, Record, cot_text, prompt_text
from lori.model.precision import to_device

IGNORE = -100


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """:func:`encode` of each text, in one tokenizer call: a fast tokenizer encodes the batch in
    Rust, where a call per text costs ~40 us of Python each (most of building a training batch)."""
    if not texts:
        return []
    return [list(ids) if text else [] for text, ids in
            zip(texts, tokenizer(list(texts), add_special_tokens=False)["input_ids"])]


def bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def prompt_mode(tokenizer) -> str:
    """``plain`` or ``chat``; set by teacher_sft and stored with every checkpoint (lori.model.loading)."""
    return getattr(tokenizer, "lori_prompt", "plain")


def prompt_ids(tokenizer, question: str) -> list[int]:
    """What every model is given before its CoT / thoughts: the one place prompts are built.

    ``plain``: ``[bos] question ||``; ``chat``: the tokenizer's chat template with the question
    as the user turn and the assistant turn opened (e.g. SmolLM2's ChatML).
    """
    return prompts_ids(tokenizer, [question])[0]


def prompts_ids(tokenizer, questions: list[str]) -> list[list[int]]:
    """:func:`prompt_ids` of each question, encoded in one call (:func:`encode_many`)."""
    if prompt_mode(tokenizer) == "chat":
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions]
        return encode_many(tokenizer, texts)
    return [bos(tokenizer) + ids for ids in encode_many(tokenizer, [prompt_text(q) for q in questions])]


@dataclass
class TeacherSequence:
    input_ids: list[int]
    prompt_len: int          # tokens before the CoT (bos + question + ||)
    cot_len: int             # CoT tokens: positions [prompt_len, prompt_len + cot_len)
    anchor: int              # position predicting the first answer token (last token of ####)


def teacher_sequence(tokenizer, record: Record, steps: list[str] | None = None) -> TeacherSequence:
    """``[bos] question || steps #### answer <eos>`` with its CoT span and anchor."""
    prompt = prompt_ids(tokenizer, record.question)
    cot = encode(tokenizer, cot_text(record.steps if steps is None else steps))
    sep = encode(tokenizer, f" {ANSWER_SEP}")
    answer = encode(tokenizer, f" {record.answer}") + [tokenizer.eos_token_id]
    ids = prompt + cot + sep + answer
    return TeacherSequence(ids, len(prompt), len(cot), len(prompt) + len(cot) + len(sep) - 1)


def pad_right(seqs: list[list[int]], pad_id: int):
    """Right-pad to a tensor [B, T] and its attention mask (built as lists, one tensor each:
    a tensor per row costs more than the padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids.view(len(seqs), width), mask.view(len(seqs), width)


def pad_left(seqs: list[list[int]], pad_id: int):
    """Left-pad to a tensor [B, T] and its attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids.view(len(seqs), width), mask.view(len(seqs), width)


def teacher_batch(tokenizer, seqs: list[TeacherSequence]) -> dict[str, torch.Tensor]:
    """Right-padded teacher batch; labels cover CoT + answer + eos (not the question)."""
    ids, mask = pad_right([s.input_ids for s in seqs], tokenizer.pad_token_id)
    labels = ids.clone()
    labels[mask == 0] = IGNORE
    for i, s in enumerate(seqs):
        labels[i, : s.prompt_len] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class StudentBatch:
    """``[bos] question || [<bot> K thoughts <eot>] #### answer <eos>``, split in two blocks.

    prompt block (left-padded) ends with ``<bot>`` when ``latent_steps > 0``; the suffix block
    (right-padded) starts with ``<eot>`` then ``####`` then the answer. ``answer_start`` is the
    suffix column of the first answer token (same for every row), so the anchor is
    ``answer_start - 1``.
    """
    prompt_ids: torch.Tensor     # [B, P]
    prompt_mask: torch.Tensor    # [B, P]
    suffix_ids: torch.Tensor     # [B, S]
    suffix_mask: torch.Tensor    # [B, S]
    answer_start: int
    index: torch.Tensor          # [B] dataset row of each example

    def to(self, device) -> "StudentBatch":
        return StudentBatch(to_device(self.prompt_ids, device), to_device(self.prompt_mask, device),
                            to_device(self.suffix_ids, device), to_device(self.suffix_mask, device),
                            self.answer_start, self.index)


def student_prompt(tokenizer, question: str, latent_steps: int) -> list[int]:
    return student_prompts(tokenizer, [question], latent_steps)[0]


def student_prompts(tokenizer, questions: list[str], latent_steps: int) -> list[list[int]]:
    """:func:`student_prompt` of each question, encoded in one call."""
    bot = [tokenizer.convert_tokens_to_ids(BOT)] if latent_steps > 0 else []
    return [ids + bot for ids in prompts_ids(tokenizer, questions)]


def student_suffix_head(tokenizer, latent_steps: int) -> list[int]:
    """Forced tokens after the thoughts: ``<eot> ####`` (just ``####`` without thoughts)."""
    head = [tokenizer.convert_tokens_to_ids(EOT)] if latent_steps > 0 else []
    return head + encode(tokenizer, f" {ANSWER_SEP}")


def student_batch(tokenizer, records: list[Record], latent_steps: int, index: list[int] | None = None) -> StudentBatch:
    prompt_ids, prompt_mask = pad_left(student_prompts(tokenizer, [r.question for r in records], latent_steps),
                                       tokenizer.pad_token_id)
    head = student_suffix_head(tokenizer, latent_steps)
    suffixes = [head + ids + [tokenizer.eos_token_id]
                for ids in encode_many(tokenizer, [f" {r.answer}" for r in records])]
    suffix_ids, suffix_mask = pad_right(suffixes, tokenizer.pad_token_id)
    idx = torch.tensor(index if index is not None else list(range(len(records))), dtype=torch.long)
    return StudentBatch(prompt_ids, prompt_mask, suffix_ids, suffix_mask, len(head), idx)


def step_ids(tokenizer, steps: list[str]) -> list[list[int]]:
    """Each CoT step's tokens, as it appears in :func:`teacher_sequence` (`` step`` with its space),
    so a curriculum can drop whole steps (Coconut)."""
    return encode_many(tokenizer, [f" {s}" for s in steps])


def equals_token(tokens: list[str]) -> int | None:
    """Offset of a step's last token holding ``=`` (in ``<<2-10=3>>`` the one whose next token is
    the result), or None when the step has none. ``tokens``: the step's tokens as strings."""
    return max((k for k, t in enumerate(tokens) if "=" in t), default=None)


def drop_cot_tokens(seq: TeacherSequence, n: int) -> TeacherSequence:
    """The sequence with its first ``n`` CoT tokens removed (iCoT-SI); ``n`` is capped at the CoT length."""
    n = max(0, min(n, seq.cot_len))
    ids = seq.input_ids[: seq.prompt_len] + seq.input_ids[seq.prompt_len + n :]
    return TeacherSequence(ids, seq.prompt_len, seq.cot_len - n, seq.anchor - n)

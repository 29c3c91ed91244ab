"""Batches are built from one tokenizer call per batch (lori.model.sequences.encode_many) and
padded in one tensor each: the same ids and masks as encoding and padding row by row."""
from __future__ import annotations

import pytest
import torch

from lori.data.records import BOT, EOT, Record, prompt_text
from lori.model.loading import build_word_tokenizer
from lori.model.sequences import (
    bos,
    encode,
    encode_many,
    pad_left,
    pad_right,
    prompt_ids,
    prompts_ids,
    step_ids,
    student_batch,
)
from tests.tiny import byte_bpe

RECORDS = [Record(f"r{i}", q, steps, a) for i, (q, steps, a) in enumerate([
    ("Tom has 3 pens . how many now ?", ["<<3+1=4>>"], "4"),
    ("a shop sells 12 cakes and 7 pies . total ?", ["<<12+7=19>>", "<<19*2=38>>"], "38"),
    ("x", [], "0"),
    ("Sam reads 120 pages in 4 days . per day ?", ["<<120/4=30>>"], "30"),
])]


def _texts() -> list[str]:
    return [f"{r.question} || {r.cot} #### {r.answer}" for r in RECORDS]


@pytest.fixture(params=["word", "byte_bpe", "chat"])
def tokenizer(request):
    if request.param == "byte_bpe":
        tok = byte_bpe(_texts() * 4, "</s>", "<s>")
        tok.pad_token = tok.eos_token
        tok.add_special_tokens({"additional_special_tokens": [BOT, EOT]})
        return tok
    tok = build_word_tokenizer(_texts() + ["user : assistant :"])
    if request.param == "chat":
        tok.chat_template = ("{% for m in messages %}user : {{ m['content'] }}{% endfor %}"
                             "{% if add_generation_prompt %} assistant :{% endif %}")
        tok.lori_prompt = "chat"
    return tok


def _reference_student_batch(tok, records, latent_steps):
    """The batch built row by row: a tokenizer call per text, a tensor write per row."""
    bot = [tok.convert_tokens_to_ids(BOT)] if latent_steps else []
    head = ([tok.convert_tokens_to_ids(EOT)] if latent_steps else []) + encode(tok, " ####")
    if getattr(tok, "lori_prompt", "plain") == "chat":
        prompts = [encode(tok, tok.apply_chat_template([{"role": "user", "content": r.question}], tokenize=False,
                                                       add_generation_prompt=True)) + bot for r in records]
    else:
        prompts = [bos(tok) + encode(tok, prompt_text(r.question)) + bot for r in records]
    suffixes = [head + encode(tok, f" {r.answer}") + [tok.eos_token_id] for r in records]
    P, S = max(map(len, prompts)), max(map(len, suffixes))
    p_ids, p_mask = torch.full((len(records), P), tok.pad_token_id), torch.zeros(len(records), P, dtype=torch.long)
    s_ids, s_mask = torch.full((len(records), S), tok.pad_token_id), torch.zeros(len(records), S, dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, suffixes)):
        p_ids[i, P - len(p):], p_mask[i, P - len(p):] = torch.tensor(p), 1
        s_ids[i, : len(s)], s_mask[i, : len(s)] = torch.tensor(s), 1
    return p_ids, p_mask, s_ids, s_mask, len(head)


@pytest.mark.parametrize("latent_steps", [0, 4])
def test_student_batch_equals_row_by_row_encoding(tokenizer, latent_steps):
    batch = student_batch(tokenizer, RECORDS, latent_steps, [5, 6, 7, 8])
    ref = _reference_student_batch(tokenizer, RECORDS, latent_steps)
    for got, want in zip((batch.prompt_ids, batch.prompt_mask, batch.suffix_ids, batch.suffix_mask), ref[:4]):
        assert got.dtype == torch.long and torch.equal(got, want)
    assert batch.answer_start == ref[4] and batch.index.tolist() == [5, 6, 7, 8]


def test_encode_many_is_encode_per_text(tokenizer):
    texts = [" 38", "", prompt_text(RECORDS[1].question), " <<12+7=19>>", "", " ####"]
    assert encode_many(tokenizer, texts) == [encode(tokenizer, t) for t in texts]
    assert encode_many(tokenizer, []) == []
    questions = [r.question for r in RECORDS]
    assert prompts_ids(tokenizer, questions) == [prompt_ids(tokenizer, q) for q in questions]
    assert step_ids(tokenizer, RECORDS[1].steps) == [encode(tokenizer, f" {s}") for s in RECORDS[1].steps]
    assert step_ids(tokenizer, []) == []


def test_padding_left_and_right():
    seqs = [[5, 6, 7], [], [9]]
    ids, mask = pad_left(seqs, 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 0], [0, 0, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]
    ids, mask = pad_right(seqs, 1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 1], [9, 1, 1]] and mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = pad_left([[], []], 0)            # nothing to pad: an empty block, not an error
    assert ids.shape == mask.shape == (2, 0) and ids.dtype == torch.long

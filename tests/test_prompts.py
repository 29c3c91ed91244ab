"""Prompts are built in one place (lori.model.sequences.prompt_ids), plain or with a chat template,
and the choice travels with every checkpoint."""
from __future__ import annotations

import pytest

from lori.config import ConfigError, parse_stage_args
from lori.data.records import Record, prompt_text
from lori.model.latent import LatentStudent
from lori.model.loading import build_scratch_model, build_word_tokenizer, load_checkpoint, save_checkpoint
from lori.model.sequences import bos, encode, prompt_ids, student_batch, teacher_sequence
from lori.teacher_sft import TeacherSFTConfig

TEMPLATE = ("{% for m in messages %}user : {{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %} assistant :{% endif %}")
SCRATCH = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
           "intermediate_size": 32, "max_position_embeddings": 64}
RECORD = Record("r0", "Tom has 3 pens . how many now ?", ["<<3+1=4>>"], "4")


@pytest.fixture()
def chat_tokenizer():
    tok = build_word_tokenizer([f"user : {RECORD.question} assistant : || {RECORD.cot} #### {RECORD.answer}"])
    tok.chat_template = TEMPLATE
    tok.lori_prompt = "chat"
    return tok


def test_plain_prompt_is_question_and_separator():
    tok = build_word_tokenizer([f"{RECORD.question} || {RECORD.cot} #### {RECORD.answer}"])
    assert prompt_ids(tok, RECORD.question) == bos(tok) + encode(tok, prompt_text(RECORD.question))


def test_chat_prompt_uses_the_template_and_every_stage_agrees(chat_tokenizer):
    ids = prompt_ids(chat_tokenizer, RECORD.question)
    assert chat_tokenizer.decode(ids) == f"user : {RECORD.question} assistant :"
    assert chat_tokenizer.unk_token_id not in ids
    seq = teacher_sequence(chat_tokenizer, RECORD)
    assert seq.input_ids[: seq.prompt_len] == ids                      # teacher reads CoT after the template
    batch = student_batch(chat_tokenizer, [RECORD], latent_steps=2)
    assert batch.prompt_ids[0, -len(ids) - 1 : -1].tolist() == ids     # student: template, then <bot>


def test_prompt_mode_travels_with_the_checkpoint(chat_tokenizer, tmp_path):
    model = build_scratch_model(SCRATCH, chat_tokenizer)
    save_checkpoint(tmp_path / "ckpt", model, chat_tokenizer)
    _, tok = load_checkpoint(tmp_path / "ckpt")
    assert tok.lori_prompt == "chat" and tok.chat_template == TEMPLATE
    student = LatentStudent(model, 2, tok.convert_tokens_to_ids("<bot>"), tok.convert_tokens_to_ids("<eot>"))
    out = student.generate(student_batch(tok, [RECORD], 2), max_new_tokens=3, tokenizer=tok)
    assert len(out) == 1 and 1 <= out[0].tokens <= 3
    plain = build_word_tokenizer(["a || b #### 1"])
    save_checkpoint(tmp_path / "plain", build_scratch_model(SCRATCH, plain), plain)
    assert load_checkpoint(tmp_path / "plain")[1].lori_prompt == "plain"


def test_chat_prompt_needs_a_pretrained_model():
    with pytest.raises(ConfigError, match="chat"):
        parse_stage_args(TeacherSFTConfig, ["--train", "x", "--out", "y", "--prompt", "chat"], "", [("--train", ""), ("--out", "")])
    with pytest.raises(ConfigError, match="plain | chat"):
        parse_stage_args(TeacherSFTConfig, ["--train", "x", "--out", "y", "--prompt", "html"], "", [("--train", ""), ("--out", "")])

"""Tests for lori.data.records: the GSM8K-Aug line parser and the JSON-lines record store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lori.data.records import (DataError, Record, cot_text, iter_batches, parse_aug_line, prompt_text, read_records,
                       split_steps, write_records)
from lori.data.sources import load_dataset

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
AUG = DATASETS / "gsm8k_aug"

REAL_LINE = ("John cuts his grass to 2 inches.  It grows .5 inches per month.  When it gets to 4 inches he cuts "
             "it back down to 2 inches.  It cost $100 to get his grass cut.  How much does he pay per year?"
             "||<<4-2=2>> <<2/.5=4>> <<12/4=3>> <<100*3=300>> #### 300\n")


# ---------------------------------------------------------------- parse_aug_line
def test_parse_real_format_line():
    q, steps, a = parse_aug_line(REAL_LINE)
    assert q.startswith("John cuts his grass to 2 inches.")
    assert q.endswith("How much does he pay per year?")
    assert steps == ["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"]
    assert a == "300"


def test_parse_multi_operand_step_and_spacing():
    q, steps, a = parse_aug_line("How many?  ||<<16-3-4=9>> <<9*2=18>>   ####  18  ")
    assert q == "How many?"
    assert steps == ["<<16-3-4=9>>", "<<9*2=18>>"]
    assert a == "18"


def test_parse_empty_cot_gives_no_steps():
    assert parse_aug_line("q|| #### 5") == ("q", [], "5")
    assert parse_aug_line("q||#### 5") == ("q", [], "5")


def test_parse_answer_taken_after_last_separator():
    # rsplit: a '####' inside the CoT does not end it early
    q, steps, a = parse_aug_line("q||<<1+1=2>> #### 2 #### 7")
    assert a == "7"
    assert steps == ["<<1+1=2>>"]


def test_parse_keeps_only_equations_of_mixed_text():
    _, steps, _ = parse_aug_line("q||so <<2+3=5>> then <<5*2=10>> done #### 10")
    assert steps == ["<<2+3=5>>", "<<5*2=10>>"]


def test_split_steps_non_equation_cot_is_one_step():
    assert split_steps("  She has 3 + 4 = 7 apples.  ") == ["She has 3 + 4 = 7 apples."]
    assert split_steps("   ") == []


@pytest.mark.parametrize("line, fragment", [
    ("no separator here #### 5", "missing '||'"),
    ("question||<<1+1=2>> 2", "missing '####'"),
    ("question||<<1+1=2>> ####   ", "empty answer"),
    ("   ||<<1+1=2>> #### 2", "empty question"),
])
def test_parse_errors_name_location(line, fragment):
    with pytest.raises(DataError) as e:
        parse_aug_line(line, "train.txt:12")
    msg = str(e.value)
    assert msg.startswith("train.txt:12: ")
    assert fragment in msg


def test_gsm8k_aug_file_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("a||<<1+1=2>> #### 2\n\nb||<<2+2=4>> 4\n")
    with pytest.raises(DataError) as e:
        load_dataset("gsm8k_aug", str(p))
    assert f"{p}:3:" in str(e.value)
    assert "'####'" in str(e.value)


def test_gsm8k_aug_file_ids_source_and_blank_lines(tmp_path):
    p = tmp_path / "mini.txt"
    p.write_text("a||<<1+1=2>> #### 2\n\nb|| #### 4\n")
    recs = load_dataset("gsm8k_aug", str(p), split="x")
    assert [r.question for r in recs] == ["a", "b"] and len({r.id for r in recs}) == 2   # blank line skipped
    assert all(r.id.startswith("x-") for r in recs) and {r.source for r in recs} == {"gsm8k_aug"}
    assert recs[0].steps == ["<<1+1=2>>"] and recs[1].steps == [] and recs[1].answer == "4"


# ---------------------------------------------------------------- records jsonl
def _line(**kw):
    obj = {"id": "1", "question": "q", "steps": ["<<1+1=2>>"], "answer": "2"}
    obj.update(kw)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


def test_write_read_round_trip(tmp_path):
    recs = [Record("a", "What is 2+2?", ["<<2+2=4>>"], "4", "quickstart", {"rationale": "teacher"}),
            Record("b", "Ünïcode q", [], "-3.5", ""),
            Record("c", "q", ["step one", "<<1*3=3>>"], "3")]
    p = tmp_path / "sub" / "r.jsonl"
    assert write_records(p, recs) == 3
    back = read_records(p)
    assert back == recs
    assert back[0].cot == "<<2+2=4>>"
    assert "Ünïcode" in p.read_text(encoding="utf-8")   # ensure_ascii=False
    assert not [x for x in p.parent.iterdir() if x.name != "r.jsonl"]   # no temp leftovers


def test_write_empty_then_read(tmp_path):
    p = tmp_path / "e.jsonl"
    assert write_records(p, []) == 0
    assert p.read_text() == ""
    assert read_records(p) == []


def test_read_records_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        read_records(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("bad, fragment", [
    ("{not json", "not valid JSON"),
    (_line(answer=...), "missing field(s) answer"),
    (_line(question=..., steps=...), "missing field(s) question, steps"),
    (_line(id="0"), "duplicate id '0'"),
    (_line(steps="<<1+1=2>>"), "'steps' must be a list"),
])
def test_read_records_errors_name_file_and_line(tmp_path, bad, fragment):
    p = tmp_path / "r.jsonl"
    p.write_text(_line(id="0") + "\n\n" + bad + "\n")
    with pytest.raises(DataError) as e:
        read_records(p)
    assert str(e.value).startswith(f"{p}:3: ")
    assert fragment in str(e.value)


@pytest.mark.parametrize("bad", ["5", "null"])
def test_read_records_non_object_line(tmp_path, bad):
    p = tmp_path / "r.jsonl"
    p.write_text(_line() + "\n" + bad + "\n")
    with pytest.raises(DataError, match=f"{p}:2"):
        read_records(p)


def test_sequence_helpers():
    assert prompt_text("What?") == "What? ||"
    assert cot_text([]) == ""
    assert cot_text(["<<1+1=2>>", "<<2*2=4>>"]) == " <<1+1=2>> <<2*2=4>>"
    assert list(iter_batches(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


# ---------------------------------------------------------------- real GSM8K-Aug files
@pytest.mark.parametrize("name, count, first_answer", [
    ("valid.txt", 500, "300"),
    ("test.txt", 1319, "18"),
    ("train_gsm8k_eqonly_derived.txt", 6973, "4"),
])
def test_read_real_gsm8k_aug(name, count, first_answer):
    path = AUG / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    recs = load_dataset("gsm8k_aug", str(path), split="t")
    assert len(recs) == count
    assert recs[0].answer == first_answer
    assert len({r.id for r in recs}) == count
    assert all(r.question and r.answer for r in recs)
    with_steps = [r for r in recs if r.steps]
    assert len(with_steps) > 0.95 * count
    assert all(s.startswith("<<") and s.endswith(">>") for r in with_steps for s in r.steps)

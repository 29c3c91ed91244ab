"""lori.data.sources: every real file in ../shared/datasets (counts from its README), malformed
records, hub names offline, and the multiplication generator. Nothing downloads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lori import prepare_data
from lori.data.answers import is_correct
from lori.data.records import DataError, read_records
from lori.data.sources import (digits_value, generate_mult, is_local, load_dataset, mult_line, mult_pairs, number_text,
                           parse_hub_spec, svamp_equation)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# (kind, file, records per the README)
REAL_FILES = [
    ("gsm8k", "gsm8k/train.jsonl", 7473),
    ("gsm8k", "gsm8k/test.jsonl", 1319),
    ("gsm8k_aug", "gsm8k_aug/valid.txt", 500),
    ("gsm8k_aug", "gsm8k_aug/test.txt", 1319),
    ("gsm8k_aug", "gsm8k_aug/train_no_aug.txt", 6973),
    ("gsm8k_aug", "gsm8k_aug/train_gsm8k_eqonly_derived.txt", 6973),
    ("gsm_hard", "gsm_hard/test.jsonl", 1319),
    ("svamp", "svamp/SVAMP.json", 1000),
    ("mult", "mult_4x4/valid.txt", 1000),
    ("mult", "mult_4x4/test_bigbench_icot_kd.txt", 1000),
    ("mult", "mult_4x4/test_bigbench.txt", 1000),
    ("mult", "mult_5x5/valid.txt", 1000),
    ("mult", "mult_5x5/test_bigbench_icot_kd.txt", 1000),
    ("mult", "mult_5x5/test_bigbench.txt", 1000),
]


def real(rel: str) -> Path:
    path = DATASETS / rel
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def loaded() -> dict:
    """Every real file, parsed once (a few seconds for ~13 MB)."""
    return {rel: load_dataset(kind, str(DATASETS / rel), "t") for kind, rel, _ in REAL_FILES
            if (DATASETS / rel).exists()}


# ---------------------------------------------------------------- every real file
@pytest.mark.parametrize("kind, rel, count", REAL_FILES, ids=[r for _, r, _ in REAL_FILES])
def test_real_file_counts_and_fields(loaded, kind, rel, count):
    real(rel)
    records = loaded[rel]
    assert len(records) == count
    assert len({r.id for r in records}) == count
    assert all(r.id.startswith("t-") and r.question and r.answer and r.source == kind for r in records)
    assert all("," not in r.answer for r in records)      # thousands separators normalised away


def test_real_gsm8k_equals_gsm8k_aug_test(loaded):
    """The README's rule: GSM8K's <<..>> annotations are GSM8K-Aug's equation-only CoT (1319/1319)."""
    real("gsm8k/test.jsonl"), real("gsm8k_aug/test.txt")
    gsm, aug = loaded["gsm8k/test.jsonl"], loaded["gsm8k_aug/test.txt"]
    assert [(r.question, r.steps, r.answer) for r in gsm] == [(r.question, r.steps, r.answer) for r in aug]
    assert gsm[0].answer == "18" and gsm[0].steps == ["<<16-3-4=9>>", "<<9*2=18>>"]
    assert sum(not r.steps for r in aug) == 18                  # README: 18 empty CoTs in test.txt
    assert all(r.answer.lstrip("-").isdigit() for r in gsm)    # README: all integers after removing commas


def test_real_gsm8k_aug_train_and_ids(loaded):
    real("gsm8k_aug/train_gsm8k_eqonly_derived.txt")
    derived, no_aug = loaded["gsm8k_aug/train_gsm8k_eqonly_derived.txt"], loaded["gsm8k_aug/train_no_aug.txt"]
    assert sum(not r.steps for r in derived) == 89              # README: 89 empty CoTs
    assert [r.question for r in derived] == [r.question for r in no_aug]   # same problems, same order
    assert no_aug[0].steps and not no_aug[0].steps[0].startswith("<<")     # natural-language CoT: one step
    assert derived[0].id == "t-0" and derived[-1].id == "t-6972"           # 0-based line index
    assert derived[0].answer == "4"


def test_real_gsm_hard(loaded):
    real("gsm_hard/test.jsonl")
    records = loaded["gsm_hard/test.jsonl"]
    assert records[0].answer == "3431580" if records[0].question.startswith("A robe") else True
    floats = [r for r in records if not r.answer.lstrip("-").isdigit()]
    assert len(floats) == 303                                   # README: 303 non-integer targets
    assert sum(r.answer.startswith("-") for r in records) == 146
    assert all(not r.steps for r in records)
    assert all(is_correct(f"#### {r.answer}", r.answer) for r in records)


def test_real_svamp(loaded):
    real("svamp/SVAMP.json")
    records = loaded["svamp/SVAMP.json"]
    first = records[0]
    assert first.id == "t-chal-1"                               # the source id is kept
    assert first.question == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
                              "How much do you have to pay to buy each pack?")
    assert first.answer == "51" and first.steps == ["<<76-25=51>>"]
    assert all(r.answer.lstrip("-").isdigit() for r in records)  # README: all integral


def test_real_mult(loaded):
    real("mult_4x4/valid.txt")
    r = loaded["mult_4x4/valid.txt"][0]
    assert r.question == "5 6 3 2 * 7 4 3 4"
    assert r.answer == "5 5 6 0 8 2 0 1"
    assert r.steps[0] == "5 5 5 6 1" and r.steps[1] == "+ 0 0 6 4 9 0 ( 5 5 1 1 1 1 )" and len(r.steps) == 4
    line = (DATASETS / "mult_4x4/valid.txt").read_text().splitlines()[0]
    assert f"{r.question}||{r.cot} #### {r.answer}" == line   # steps restore the CoT exactly
    assert is_correct(f"{r.cot} #### {r.answer}", r.answer)


@pytest.mark.parametrize("rel", [rel for kind, rel, _ in REAL_FILES if kind == "mult"])
def test_mult_formatter_reproduces_published_lines(rel):
    """mult_line(a, b) is byte-identical to every published line, so generated data matches."""
    lines = real(rel).read_text().splitlines()
    digits = 4 if "4x4" in rel else 5
    for line in lines:
        a, b = line.split("||")[0].split(" * ")
        assert mult_line(digits_value(a), digits_value(b), digits) == line


def test_first_n_and_prepare_data_stage(tmp_path):
    path = real("svamp/SVAMP.json")
    out = tmp_path / "svamp.jsonl"
    prepare_data.main(["--split", "svamp", "--kind", "svamp", "--path", str(path), "--n", "5", "--out", str(out)])
    records = read_records(out)
    assert [r.id for r in records] == [f"svamp-chal-{i}" for i in range(1, 6)]


# ---------------------------------------------------------------- malformed records name file and line
@pytest.mark.parametrize("kind, name, text, line, fragment", [
    ("gsm8k", "g.jsonl", '{"question": "q", "answer": "<<1+1=2>> #### 2"}\n{"question": "q"}\n', 2,
     "missing field(s) answer"),
    ("gsm8k", "g.jsonl", '{"question": "q", "answer": "<<1+1=2>> #### 2"}\n\n{"question": "q", "answer": "2"}\n', 3,
     "no '####'"),
    ("gsm8k", "g.jsonl", '{"question": "q", "answer": "#### 2"}\n{broken\n', 2, "not valid JSON"),
    ("gsm8k", "g.jsonl", '{"question": "q", "answer": "#### two"}\n', 1, "not a number"),
    ("gsm8k_aug", "a.txt", "q||<<1+1=2>> #### 2\nq2||<<1+1=2>> 2\n", 2, "missing '####'"),
    ("gsm_hard", "h.jsonl", '{"input": "q", "target": 1.5}\n["not", "an", "object"]\n', 2, "expected a JSON object"),
    ("gsm_hard", "h.jsonl", '{"input": "q", "target": null}\n', 1, "missing field(s) target"),
    ("svamp", "s.json", '[\n  {"ID": "a", "Body": "b", "Question": "q", "Answer": 1.0},\n'
                        '  {"ID": "b", "Body": "b",\n   "Answer": 2.0}\n]\n', 3, "missing field(s) Question"),
    ("svamp", "s.json", '[\n  {"ID": "a", "Body": "b", "Question": "q", "Answer": 1.0},\n  {"ID": "a", "Body": "b", '
                        '"Question": "q", "Answer": 1.0}\n]\n', 3, "duplicate id 'a'"),
    ("svamp", "s.json", '[\n  {"ID": "a", "Body": "b", "Question": "q", "Answer": 1.0},\n  {oops}\n]\n', 3,
     "not valid JSON"),
    ("mult", "m.txt", "2 1 * 3 1||2 1 0 + 0 2 1 0 #### 6 5 1 0\n2 1 * 3 1||x #### 6 5 1 1\n", 2, "not the product"),
    ("mult", "m.txt", "2 x * 3 1||x #### 6 5 1 0\n", 1, "space-separated digits"),
])
def test_malformed_record_names_file_and_line(tmp_path, kind, name, text, line, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as e:
        load_dataset(kind, str(path))
    assert str(e.value).startswith(f"{path}:{line}"), str(e.value)
    assert fragment in str(e.value)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_dataset("gsm8k", str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown data file type"):
        load_dataset("gsm8k", str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="unknown dataset kind"):
        load_dataset("gsm9k", str(tmp_path / "x.csv"))


def test_parquet_and_jsonl_rows_with_hub_fields(tmp_path):
    """Dict-shaped sources with the hub's fields (zen-E/GSM8k-Aug: question / cot / answer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "q1", "cot": "<<2*3=6>> <<6+1=7>>", "answer": "7"},
            {"question": "q2", "cot": "", "answer": "1,000"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "aug.parquet")
    (tmp_path / "aug.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("aug.parquet", "aug.jsonl"):
        records = load_dataset("gsm8k_aug", str(tmp_path / name), "train")
        assert [(r.id, r.steps, r.answer) for r in records] == [
            ("train-0", ["<<2*3=6>>", "<<6+1=7>>"], "7"), ("train-1", [], "1000")]
    bad = [{"question": "q1", "answer": "7"}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 0: missing field\(s\) cot"):
        load_dataset("gsm8k_aug", str(tmp_path / "bad.parquet"))


# ---------------------------------------------------------------- hub names, offline
def test_hub_spec_and_local_detection():
    assert parse_hub_spec("openai/gsm8k:main@test", "train") == ("openai/gsm8k", "main", "test")
    assert parse_hub_spec("zen-E/GSM8k-Aug", "train") == ("zen-E/GSM8k-Aug", None, "train")
    assert not is_local("zen-E/GSM8k-Aug@train")
    assert is_local("../shared/datasets/gsm8k/test.jsonl") and is_local("data/x.parquet")


def test_hub_name_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError) as e:
        load_dataset("gsm8k", "openai/gsm8k:main@test", "gsm8k", cache_dir=str(tmp_path / "cache"))
    msg = str(e.value)
    assert "dataset 'openai/gsm8k' is not available locally" in msg and "local path" in msg
    assert "LORI_ALLOW_DOWNLOAD=1" in msg


# ---------------------------------------------------------------- answers and equations
@pytest.mark.parametrize("value, text", [(51.0, "51"), (3431580.0, "3431580"), (-0.5, "-0.5"), ("1,000", "1000"),
                                         (" 18 ", "18"), (7, "7"), (1 / 3, "0.3333333333333333")])
def test_number_text(value, text):
    assert number_text(value, "w") == text


@pytest.mark.parametrize("equation, expr", [("( 76.0 - 25.0 )", "76-25"), ("( ( 3.0 + 4.0 ) * 2.0 )", "(3+4)*2"),
                                            ("( 3.0 + 4.0 ) * ( 2.0 - 1.0 )", "(3+4)*(2-1)"), ("( 2.5 * 4.0 )", "2.5*4")])
def test_svamp_equation(equation, expr):
    assert svamp_equation(equation) == expr


# ---------------------------------------------------------------- multiplication generator
def test_mult_line_small_example():
    # 12 * 13 = 156: partials 36 (width 3) and 120 (width 4), no running sum after the last one
    assert mult_line(12, 13, 2) == "2 1 * 3 1||6 3 0 + 0 2 1 0 #### 6 5 1 0"


def test_generate_mult_is_correct_distinct_and_excludes_pairs(tmp_path):
    excluded = tmp_path / "valid.txt"
    excluded.write_text("".join(mult_line(a, b, 2) + "\n" for a, b in [(12, 13), (99, 98), (50, 51)]))
    records = generate_mult(300, seed=3, exclude=excluded)
    pairs = [(digits_value(r.question.split(" * ")[0]), digits_value(r.question.split(" * ")[1])) for r in records]
    assert len(records) == 300 and len(set(pairs)) == 300
    assert not {p for a, b in pairs for p in ((a, b), (b, a))} & {(12, 13), (99, 98), (50, 51)}
    for r, (a, b) in zip(records, pairs):
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert digits_value(r.answer) == a * b and len(r.answer.split()) == 4
        assert mult_line(a, b, 2) == f"{r.question}||{r.cot} #### {r.answer}"
    assert [r.id for r in records[:2]] == ["train-0", "train-1"] and records[0].source == "mult_synth"
    assert generate_mult(300, seed=3, exclude=excluded) == records           # deterministic
    assert generate_mult(300, seed=4, exclude=excluded) != records


def test_generate_mult_against_real_sets():
    folder = real("mult_4x4")
    pairs, digits = mult_pairs(sorted(folder.glob("*.txt")))
    assert digits == 4 and len(pairs) == 2 * 3000
    records = generate_mult(2000, seed=0, exclude=folder)
    assert all(len(r.question.split(" * ")[0].split()) == 4 for r in records)
    got = {(digits_value(a), digits_value(b)) for a, b in (r.question.split(" * ") for r in records)}
    assert not got & pairs


def test_generate_mult_needs_consistent_widths(tmp_path):
    (tmp_path / "a.txt").write_text(mult_line(12, 13, 2) + "\n")
    (tmp_path / "b.txt").write_text(mult_line(123, 456, 3) + "\n")
    with pytest.raises(DataError, match="mix operand widths"):
        generate_mult(5, 0, tmp_path)
    with pytest.raises(ValueError, match="cannot draw"):
        generate_mult(10_000, 0, tmp_path / "a.txt")

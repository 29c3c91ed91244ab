"""Linear probes of each CoT step's result (lori/analysis/step_probe.py, `lori probe`)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lori.analysis.step_probe import linear_probe, probe_sets, step_places, step_result


def test_step_places_and_results():
    assert step_places(["<<", "2", "-", "1", "0", "=", "3", ">>"]) == {"eq": 5, "result": 6, "last": 7}
    assert step_places(["<<", "1", "2", "=", "1", "2", ">>"]) == {"eq": 3, "result": 4, "last": 6}
    assert step_places(["then", "stop"]) is None
    assert step_result("<<2-10=3>>") == "3" and step_result("<<a=b=12>>") == "12" and step_result("no") is None


def test_linear_probe_reads_a_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    labels = [str(v) for v in rng.integers(0, 7, 700)]
    code = np.eye(7)[[int(v) for v in labels]] @ rng.standard_normal((7, 12))
    accuracy, majority = linear_probe(code + 0.05 * rng.standard_normal((700, 12)), labels)
    assert accuracy > 0.97 and majority < 0.3
    accuracy, majority = linear_probe(rng.standard_normal((700, 12)), labels)
    assert accuracy < majority + 0.12                       # nothing to read: about the floor
    with pytest.raises(ValueError, match="too few"):
        linear_probe(np.zeros((1, 3)), ["1"])


def test_probe_sets_take_each_place_of_each_step_and_skip_misaligned_examples():
    tokens = [[["<<", "4", "=", "1", ">>"], ["<<", "1", "=", "2", ">>"]],   # example 0: two steps, 10 tokens
              [["<<", "9", "=", "3", ">>"]],                                # example 1: 5 tokens, but stored as 6
              [["<<", "5", "=", "0", ">>"]]]
    texts = [["<<4=1>>", "<<1=2>>"], ["<<9=3>>"], ["<<5=0>>"]]
    offsets = np.array([0, 10, 16, 21])
    states = np.arange(21, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)   # state t = [t, t]
    sets = probe_sets(states, offsets, tokens, texts)
    assert sets[(1, "eq")].features[:, 0].tolist() == [2.0, 18.0]          # example 1 skipped
    assert sets[(1, "result")].labels == ["1", "0"]
    assert sets[(2, "last")].features[:, 0].tolist() == [9.0] and sets[(2, "eq")].labels == ["2"]


def test_lori_probe_finds_a_result_written_at_the_equals_token(tiny_teacher, tmp_path, capsys):
    """A run whose core holds a one-hot code of each step's result at the '=' token and noise
    elsewhere: `lori probe` reads it there (~100%) and not at the step's last token (~floor)."""
    import zarr

    from lori import probe
    from lori.data.records import read_records
    from lori.model.sequences import step_ids
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    (run / "teacher_cot").mkdir(parents=True)
    shutil.copytree(tiny_teacher.teacher, run / "teacher")
    tok = AutoTokenizer.from_pretrained(str(run / "teacher"))
    rng = np.random.default_rng(0)
    records, cores, offsets = [], [], [0]
    for i in range(400):
        a, b = int(rng.integers(0, 9)), int(rng.integers(0, 9))
        steps = [f"<<{a}+{b}={(a + b) % 10}>>", f"<<{(a + b) % 10}*2={(a + b) * 2 % 10}>>"]
        records.append({"id": f"train-{i}", "question": "q", "steps": steps, "answer": steps[-1][-3]})
        for s in step_ids(tok, steps):
            toks = tok.convert_ids_to_tokens(s)
            block = rng.standard_normal((len(s), 2, 5)).astype(np.float32)
            eq = max(k for k, t in enumerate(toks) if "=" in t)
            value = int("".join(toks[eq + 1:-1]))
            block[eq] = 0
            block[eq].reshape(-1)[value] = 3.0
            cores.append(block)
        offsets.append(offsets[-1] + sum(len(s) for s in step_ids(tok, steps)))
    (run / "teacher_cot" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len(read_records(run / "teacher_cot" / "train.jsonl")) == 400
    group = zarr.open_group(str(run / "targets" / "train.zarr"), mode="w")
    group["core"] = np.concatenate(cores)
    group["offsets"] = np.asarray(offsets, np.int64)
    group["example_id"] = np.array([r["id"] for r in records], dtype=str)
    rows = {(r["step"], r["place"]): r for r in probe.probe_run(run)}
    for step in (1, 2):
        assert rows[(step, "eq")]["accuracy"] > 0.97
        assert rows[(step, "last")]["accuracy"] < rows[(step, "last")]["majority"] + 0.15
    probe.main(["--run", str(run)])
    assert "probe %" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        probe.main(["--run", str(run), "--store", "hidden"])     # no dump in this run: a clear error
    assert "no such store" in capsys.readouterr().err

"""Using a trained model: ``lori.load_student(path).answer(questions)`` and ``lori answer`` give, for
every method's checkpoint (the teacher included), exactly the predictions ``lori evaluate`` writes."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from lori import distill, evaluate
from lori.__main__ import main as lori_main
from lori.answer import main
from lori.data.records import read_records
from lori.distill import DistillConfig

MAX_NEW = 10            # the decoding budget of every evaluation here (the teacher stops mid-CoT: fine)
# 3-step students of each kind of checkpoint: K thoughts fed back through the projection (lori with
# alpha = gamma = 0: no targets needed; codi), the raw hidden state (coconut, sim_cot), learned fillers
# (pause), none (no_cot, icot_si)
STUDENTS = {
    "no_cot": {},
    "lori": {"latent_steps": 2, "alpha": 0.0, "gamma": 0.0},
    "codi": {"latent_steps": 2},
    "coconut": {"steps_per_stage": 1, "max_stage": 1, "thoughts_per_step": 2},
    "sim_cot": {"steps_per_stage": 1, "max_stage": 1, "thoughts_per_step": 2},
    "pause": {"latent_steps": 2},
    "icot_si": {"steps_per_stage": 1, "remove_all_beyond": 2},
}
K = {"cot_sft": 0, "no_cot": 0, "lori": 2, "codi": 2, "coconut": 2, "sim_cot": 2, "pause": 2, "icot_si": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_teacher):
    """Each student trained 3 steps from the tiny teacher, and every model's evaluation rows on the test split."""
    root = tmp_path_factory.mktemp("answer")
    paths = {"cot_sft": tiny_teacher.teacher}
    for method, knobs in STUDENTS.items():
        cfg = DistillConfig(method=method, steps=3, batch_size=4, checkpoint_every=0, threads=1, device="cpu", **knobs)
        distill.run(cfg, str(tiny_teacher.teacher), str(tiny_teacher.train), str(root / method))
        paths[method] = root / method
    rows = {}
    for method, path in paths.items():
        out = root / "eval" / method / "test.jsonl"
        evaluate.run(evaluate.EvaluateConfig(method=method, max_new_tokens=MAX_NEW, thought_shuffle=False, threads=1,
                                             device="cpu"), str(path), str(tiny_teacher.test), str(out))
        rows[method] = [json.loads(line) for line in out.read_text().splitlines()]
    return {"paths": paths, "rows": rows, "records": read_records(tiny_teacher.test), "root": root}


def cli(capsys, *argv) -> str:
    main([*map(str, argv)])
    return capsys.readouterr().out


@pytest.mark.parametrize("method", list(K))
def test_load_student_answers_exactly_as_evaluate(run, method):
    from lori import load_student

    student = load_student(run["paths"][method], device="cpu")
    assert student.method == method and student.latent_steps == K[method]
    rows, records = run["rows"][method], run["records"]
    answers = student.answer([r.question for r in records], max_new_tokens=MAX_NEW)
    assert [a.text for a in answers] == [row["prediction"] for row in rows]
    assert [a.number for a in answers] == [row["parsed"] for row in rows]
    assert [a.tokens for a in answers] == [row["generated_tokens"] for row in rows]
    assert {a.latent_steps for a in answers} == {K[method]}
    assert all(a.gold is None and a.correct is None and a.thoughts is None for a in answers)
    # records are scored as evaluate scores them
    scored = student.answer(records, max_new_tokens=MAX_NEW)
    assert [(a.id, a.gold, a.correct) for a in scored] == [(row["id"], row["gold"], row["correct"]) for row in rows]


def test_cli_prints_the_answers_and_json(run, capsys):
    path, rows, records = run["paths"]["lori"], run["rows"]["lori"], run["records"]
    out = cli(capsys, "--model", path, "--max-new-tokens", MAX_NEW, "--threads", 1, records[0].question, records[1].question)
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2
    for block, record, row in zip(blocks, records, rows):
        assert block.splitlines()[0] == record.question and repr(row["prediction"].strip()) in block
        assert f"answer: {row['parsed'] or '(no number)'}" in block
    out = cli(capsys, "--model", path, "--max-new-tokens", MAX_NEW, "--json", records[0].question)
    (obj,) = [json.loads(line) for line in out.splitlines()]
    assert obj["text"] == rows[0]["prediction"] and obj["number"] == rows[0]["parsed"] and obj["latent_steps"] == 2
    # through the `lori` dispatcher too
    lori_main(["answer", "--model", str(path), "--max-new-tokens", str(MAX_NEW), records[0].question])
    assert repr(rows[0]["prediction"].strip()) in capsys.readouterr().out


def test_cli_reads_jsonl_txt_and_stdin(run, tiny_teacher, tmp_path, capsys, monkeypatch):
    path, rows, records = run["paths"]["cot_sft"], run["rows"]["cot_sft"], run["records"]
    base = ["--model", path, "--max-new-tokens", MAX_NEW, "--json"]
    # a records jsonl: ids kept, answers scored as evaluate scores them
    got = [json.loads(line) for line in cli(capsys, *base, "--file", tiny_teacher.test).splitlines()]
    assert [(g["id"], g["text"], g["correct"]) for g in got] == [(r["id"], r["prediction"], r["correct"]) for r in rows]
    # one question per line (blank lines skipped), and stdin
    txt = tmp_path / "questions.txt"
    txt.write_text(f"{records[0].question}\n\n{records[1].question}\n")
    got = [json.loads(line) for line in cli(capsys, *base, "--file", txt).splitlines()]
    assert [g["text"] for g in got] == [r["prediction"] for r in rows[:2]] and got[0]["gold"] is None
    monkeypatch.setattr(sys, "stdin", io.StringIO(records[2].question + "\n"))
    got = [json.loads(line) for line in cli(capsys, *base, "-").splitlines()]
    assert [g["text"] for g in got] == [rows[2]["prediction"]]


@pytest.mark.parametrize("method", ["lori", "coconut", "pause"])
def test_thoughts_gives_k_readings_per_question(run, capsys, method):
    path, records = run["paths"][method], run["records"]
    out = cli(capsys, "--model", path, "--max-new-tokens", MAX_NEW, "--thoughts", "--top-k", 3, "--json",
              records[0].question, records[1].question)
    for obj in map(json.loads, out.splitlines()):
        assert [t["step"] for t in obj["thoughts"]] == [1, 2]
        assert all(len(t["lens"]) == 3 and len(t["embedding"]) == 3 for t in obj["thoughts"])
    if method != "lori":
        return
    text = cli(capsys, "--model", path, "--max-new-tokens", MAX_NEW, "--thoughts", records[0].question)
    assert "logit lens" in text and len([l for l in text.splitlines() if l.strip()[:2] in ("1 ", "2 ")]) == 2


def test_a_folder_that_is_not_a_checkpoint_is_one_error_line(run, tmp_path, capsys):
    for model in (tmp_path, tmp_path / "missing", run["root"] / "eval"):
        with pytest.raises(SystemExit) as e:
            main(["--model", str(model), "how many ?"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {model}:"), err
    with pytest.raises(SystemExit) as e:            # no question at all
        main(["--model", str(run["paths"]["lori"])])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: no questions")


def test_import_lori_stays_light_and_load_student_is_lazy():
    code = ("import sys, lori; assert 'torch' not in sys.modules and 'lori.analysis.student' not in sys.modules; "
            "print(hasattr(lori, 'no_such_name'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-2000:]
    import lori
    from lori.analysis.student import load_student

    assert lori.load_student is load_student

"""lori.harness: a lori teacher and a latent student run as lm-evaluation-harness model "lori" on a
local GSM8K-style task (a task YAML + the records jsonl; offline), answering exactly as `evaluate` does."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval", reason="pip install -e '.[harness]'")

from lori import harness  # noqa: E402
from lori.data.records import read_records  # noqa: E402
from lori.model.answer import answer_rows  # noqa: E402

LIMIT = 4


def task_yaml(folder, data) -> None:
    """A GSM8K-style generate_until task over a lori records jsonl (the question is the prompt)."""
    (folder / "lori_tiny.yaml").write_text(f"""\
task: lori_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 12
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_harness_answers_as_evaluate_does(which, tiny_teacher, synthetic_run, tmp_path):
    model_dir = tiny_teacher.teacher if which == "teacher" else synthetic_run / "students" / "lori"
    data = tiny_teacher.test if which == "teacher" else synthetic_run / "data" / "test.jsonl"
    task_yaml(tmp_path, data)
    results = harness.evaluate(str(model_dir), ["lori_tiny"], include_path=str(tmp_path), limit=LIMIT)
    metrics = results["results"]["lori_tiny"]
    assert 0.0 <= metrics["exact_match,strict-match"] <= 1.0
    samples = results["samples"]["lori_tiny"]
    assert len(samples) == LIMIT
    # the harness's replies are the evaluate stage's predictions for the same questions
    model, tokenizer = harness.load_model(model_dir)
    records = read_records(data)[:LIMIT]
    rows = answer_rows(model.eval(), tokenizer, records, 16, 12, "cpu")
    by_question = {r.question: harness.cut(row["prediction"], ["\n\n"]) for r, row in zip(records, rows)}
    assert [row["cot_steps"] for row in rows] == [len(r.steps) for r in records]
    for s in samples:
        assert s["resps"][0][0] == by_question[s["doc"]["question"]], s["doc"]["id"]


def test_loglikelihood_is_refused_with_a_reason(synthetic_run):
    lm = harness.LoriLM(str(synthetic_run / "students" / "lori"))
    with pytest.raises(NotImplementedError, match="loglikelihood requests .* are not supported"):
        lm.loglikelihood([])
    assert harness.cut("#### 4\n\nQuestion: next", ["\n\n"]) == "#### 4"


def test_cli_writes_the_results(synthetic_run, tmp_path, capsys):
    task_yaml(tmp_path, synthetic_run / "data" / "test.jsonl")
    out = tmp_path / "harness.json"
    harness.main(["--model", str(synthetic_run / "students" / "lori"), "--tasks", "lori_tiny", "--include-path",
                  str(tmp_path), "--limit", "2", "--out", str(out)])
    assert "lori_tiny" in capsys.readouterr().out
    assert "exact_match,strict-match" in json.loads(out.read_text())["results"]["lori_tiny"]


def test_the_question_is_cut_out_of_the_harness_gsm8k_prompt():
    """The harness's own gsm8k prompt (few-shot examples, then ``Question: ...\nAnswer:``) gives its last
    question; a bare-question context passes through unchanged."""
    from lori.harness import question_of

    fewshot = ("Question: Tom has 2 pens . he buys 3 more . how many now ?\nAnswer: 2+3=5 #### 5\n\n"
               "Question: Ann has 7 eggs . she loses 2 . how many now ?\nAnswer:")
    assert question_of(fewshot) == "Ann has 7 eggs . she loses 2 . how many now ?"
    assert question_of("Question: Sam has 4 cards .\nAnswer:") == "Sam has 4 cards ."
    assert question_of("  Sam has 4 cards . how many now ?  ") == "Sam has 4 cards . how many now ?"

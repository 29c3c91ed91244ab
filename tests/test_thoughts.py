"""`lori thoughts`: each latent thought read by the logit lens and by nearest embeddings, after the teacher's whole CoT."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from lori.__main__ import main as lori_main
from lori.data.records import read_records
from lori.model.latent import LatentStudent
from lori.model.sequences import student_prompt
from lori.analysis.logit_lens import decode_thoughts, logit_lens, trace_run
from lori.thoughts import main


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_run):
    torch.set_num_threads(1)
    copy = tmp_path_factory.mktemp("thoughts") / synthetic_run.name
    shutil.copytree(synthetic_run, copy)              # test_trace_falls_back_to_gold_steps moves a file
    return copy


@pytest.fixture(scope="module")
def student(run):
    s, tok = LatentStudent.load(run / "students" / "lori")
    return s.eval(), tok


def test_last_layer_lens_is_the_models_own_prediction(student):
    s, tok = student
    question = "Tom has 3 pens . how many now ?"
    ids = torch.tensor([student_prompt(tok, question, s.latent_steps)])
    n = s.model.config.num_hidden_layers
    with torch.no_grad():
        _, _, _, logits, states = s._think(ids, torch.ones_like(ids), [n])
        lens = logit_lens(s.model, states[0, -1, 0], after_norm=True)
    torch.testing.assert_close(lens, logits[0])             # the last thought's real next-token logits
    thoughts = decode_thoughts(s, tok, question, top_k=3)
    assert [t.step for t in thoughts] == [1, 2]
    best = tok.decode([int(logits[0].argmax())])
    assert thoughts[-1].lens[0][0] == best
    probs = [p for _, p in thoughts[0].lens]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1


def test_nearest_embedding_finds_the_fed_token(student):
    s, tok = student
    emb = s.model.get_input_embeddings().weight
    target = tok.convert_tokens_to_ids("▁pens") if "▁pens" in tok.get_vocab() else 7
    # make the projection emit exactly that embedding row: cosine 1 with it
    orig = s.projection.forward
    s.projection.forward = lambda h: emb[target].expand(*h.shape[:-1], -1)
    try:
        thoughts = decode_thoughts(s, tok, "Tom has 3 pens . how many now ?", top_k=2)
    finally:
        s.projection.forward = orig
    assert all(t.embedding[0] == (tok.decode([target]), pytest.approx(1.0, abs=1e-4)) for t in thoughts)


def test_all_layers_and_norm(student):
    s, tok = student
    thoughts = decode_thoughts(s, tok, "Ann has 5 pens . how many now ?", top_k=2, all_layers=True)
    n = s.model.config.num_hidden_layers
    assert set(thoughts[0].layers) == set(range(n + 1)) and thoughts[0].layers[n] == thoughts[0].lens
    h = torch.randn(s.model.config.hidden_size)
    # below the last layer the lens applies the final norm first
    expect = s.model.get_output_embeddings()(s.model.model.norm(h))
    torch.testing.assert_close(logit_lens(s.model, h, after_norm=False), expect)


def test_cli_prints_the_teacher_cot_once_then_the_thoughts(run, capsys):
    rec = read_records(run / "data" / "test.jsonl")[1]
    lori_main(["thoughts", "--run", str(run), "--method", "lori", "--example", rec.id, "--top-k", "3"])
    out = capsys.readouterr().out
    assert out.startswith(f"example {rec.id}: {rec.question}")
    cot_line = f"teacher CoT ({run / 'eval' / 'cot_sft' / 'test.jsonl'}): {rec.cot} #### {rec.answer}"
    assert cot_line in out
    # the CoT whole and once, then the thoughts: no step printed beside a thought (the method pairs none)
    for step in rec.steps:
        assert out.count(step) == 1 and out.index(step) < out.index("latent thoughts")
    rows = [l for l in out.splitlines() if l.split("|")[0].strip() in ("1", "2")]
    assert len(rows) == 2 and all(len(r.split("|")) == 3 for r in rows)        # thought, lens, embeddings
    assert rows[0].split("|")[1].count(":") == 3                       # top-3 lens tokens with probabilities
    assert "teacher step" not in out
    main(["--run", run.name, "--results", str(run.parent), "--example", rec.id, "--json", "--layers"])
    obj = json.loads(capsys.readouterr().out)
    assert obj["example_id"] == rec.id and len(obj["thoughts"]) == 2 and len(obj["thoughts"][0]["layers"]) == 3
    assert obj["gold"] == rec.answer and obj["gold_steps"] == rec.steps


def test_errors_are_one_line(run, capsys):
    for args, fragment in [(["--example", "nope"], "no example with id 'nope'"),
                           (["--example", "test-0", "--method", "no_cot"], "no latent thoughts"),
                           (["--example", "test-0", "--method", "codi"], "this run has: lori, no_cot")]:
        with pytest.raises(SystemExit) as e:
            main(["--run", str(run), *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err, err


def test_trace_falls_back_to_gold_steps(run):
    rec = read_records(run / "data" / "longer.jsonl")[0]
    moved = run / "eval" / "cot_sft" / "longer.jsonl"
    t = trace_run(run, "lori", rec.id, bench="longer")
    assert t.teacher_cot.startswith(rec.cot) and "eval/cot_sft/longer.jsonl" in t.teacher_source
    moved.rename(moved.with_suffix(".bak"))
    try:
        t = trace_run(run, "lori", rec.id)
    finally:
        moved.with_suffix(".bak").rename(moved)
    assert t.teacher_cot == " ".join(rec.steps) and "gold steps" in t.teacher_source

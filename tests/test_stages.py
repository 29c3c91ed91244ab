"""Every stage end to end on a tiny model, through its ``main([...])`` CLI, checking the artifact contracts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from lori import dump_hidden, distill, evaluate, factorize, prepare_data, report, targets, teacher_cot
from lori.data.records import read_records
from lori.artifacts.factors import load_factors
from lori.model.latent import LatentStudent
from tests.tiny import RUNTIME



@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_teacher):
    """Runs the stages after the shared tiny teacher in order once; tests inspect the artifacts."""
    d = tmp_path_factory.mktemp("run")
    p = {"train": str(tiny_teacher.train), "test": str(tiny_teacher.test), "teacher": str(tiny_teacher.teacher),
         "tmetrics": str(tiny_teacher.metrics)}
    p |= {k: str(d / v) for k, v in {
        "cot": "teacher_cot/train.jsonl", "cot_summary": "teacher_cot/summary.json", "hidden": "hidden/calib.zarr",
        "factors": "lowrank/factors.zarr", "targets": "targets/train.zarr", "lori": "students/lori",
        "lori_metrics": "students/lori_metrics.jsonl", "no_cot": "students/no_cot",
        "no_cot_metrics": "students/no_cot_metrics.jsonl",
        "eval_lori": "eval/lori/test.jsonl", "eval_cot": "eval/cot_sft/test.jsonl", "report": "report"}.items()}
    teacher_cot.main(["--teacher", p["teacher"], "--train", p["train"], "--out", p["cot"], "--summary", p["cot_summary"],
                      "--max-new-tokens", "8", *RUNTIME])
    dump_hidden.main(["--teacher", p["teacher"], "--records", p["cot"], "--out", p["hidden"], "--calibration-size", "20",
                      "--batch-size", "7", *RUNTIME])
    factorize.main(["--hidden", p["hidden"], "--out", p["factors"], "--rank-layer", "2", "--rank-hidden", "4",
                    "--chunk-tokens", "50", "--center"])
    targets.main(["--teacher", p["teacher"], "--records", p["cot"], "--factors", p["factors"], "--out", p["targets"],
                  "--batch-size", "16", *RUNTIME])
    distill.main(["--method", "lori", "--teacher", p["teacher"], "--records", p["cot"], "--targets", p["targets"],
                  "--factors", p["factors"], "--out", p["lori"], "--metrics", p["lori_metrics"], "--steps", "2",
                  "--batch-size", "4", "--latent-steps", "3", "--log-every", "1", *RUNTIME])
    distill.main(["--method", "no_cot", "--teacher", p["teacher"], "--records", p["cot"], "--out", p["no_cot"],
                  "--metrics", p["no_cot_metrics"], "--steps", "2", "--batch-size", "4", "--log-every", "1", *RUNTIME])
    evaluate.main(["--method", "lori", "--model", p["lori"], "--data", p["test"], "--out", p["eval_lori"],
                   "--max-new-tokens", "6", *RUNTIME])
    evaluate.main(["--method", "cot_sft", "--model", p["teacher"], "--data", p["test"], "--out", p["eval_cot"],
                   "--max-new-tokens", "10", *RUNTIME])
    report.main(["--evals", ",".join(str(Path(e).with_suffix(".json")) for e in (p["eval_lori"], p["eval_cot"])),
                 "--factors", p["factors"], "--metrics", ",".join([p["tmetrics"], p["lori_metrics"]]),
                 "--extra", p["cot_summary"], "--out", p["report"]])
    return p


def test_teacher_checkpoint_is_safetensors(pipeline):
    files = {f.name for f in Path(pipeline["teacher"]).iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    rows = [json.loads(l) for l in Path(pipeline["tmetrics"]).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_teacher_cot_keeps_every_example_with_dataset_fallback(pipeline):
    summary = json.loads(Path(pipeline["cot_summary"]).read_text())
    assert summary["problems"] == 48 and summary["written"] == 48
    recs = read_records(pipeline["cot"])
    assert {r.meta["rationale"] for r in recs} <= {"teacher", "dataset"}


def test_hidden_store_contract(pipeline):
    g = zarr.open_group(pipeline["hidden"], mode="r")
    states, offsets, anchors = g["states"], g["offsets"][...], g["anchors"]
    assert states.dtype == np.float16 and states.ndim == 3 and states.shape[1:] == (2, 32)  # layers 1..2, hidden 32
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == states.shape[0] and len(offsets) == 21
    assert np.all(np.diff(offsets) >= 0)
    assert anchors.shape == (20, 1, 2, 32) and anchors.dtype == np.float16
    assert g["example_id"].shape == (20,)
    assert g.attrs["layers"] == [1, 2] and g.attrs["anchor_positions"] == ["answer_start"]
    for name, dims in [("states", ["token", "layer", "hidden"]), ("offsets", ["example_plus_one"]),
                       ("anchors", ["example", "anchor", "layer", "hidden"]), ("example_id", ["example"])]:
        assert g[name].attrs["_ARRAY_DIMENSIONS"] == dims
    for key in ("stage", "model", "config_hash", "lori_version"):
        assert key in g.attrs


def test_factors_contract_and_orthonormality(pipeline):
    g = zarr.open_group(pipeline["factors"], mode="r")
    U_l, U_d = g["U_layer"][...], g["U_hidden"][...]
    assert U_l.shape == (2, 2) and U_d.shape == (32, 4)
    np.testing.assert_allclose(U_l.T @ U_l, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(U_d.T @ U_d, np.eye(4), atol=1e-10)
    for name in ("spectrum_layer", "spectrum_hidden"):
        s = g[name][...]
        assert np.all(np.diff(s) <= 1e-9) and s.min() >= 0
    assert g.attrs["rank_layer"] == 2 and g.attrs["rank_hidden"] == 4 and g.attrs["centered"] is True
    assert g.attrs["tokens"] == zarr.open_group(pipeline["hidden"], mode="r")["states"].shape[0]
    assert 0 < g.attrs["energy_joint"] <= 1


def test_targets_core_equals_projection_of_dumped_states(pipeline):
    """The targets stage reruns the teacher; its cores must match projecting the dump (fp16 tolerance)."""
    factors, _ = load_factors(pipeline["factors"])
    h = zarr.open_group(pipeline["hidden"], mode="r")
    t = zarr.open_group(pipeline["targets"], mode="r")
    n = int(h["offsets"][-1])
    np.testing.assert_array_equal(t["offsets"][:21], h["offsets"][...])
    expected = factors.project(torch.from_numpy(h["states"][...].astype(np.float32))).numpy()
    got = t["core"][:n]
    assert got.dtype == np.float32 and got.shape == (n, 2, 4)
    np.testing.assert_allclose(got, expected, atol=2e-2 * np.abs(expected).max())
    assert t["anchors_core"].shape == (48, 1, 2, 4) and t["anchors"].shape == (48, 1, 2, 32)


def test_student_checkpoint_roundtrip(pipeline):
    student, tokenizer = LatentStudent.load(pipeline["lori"])
    assert student.latent_steps == 3 and student.projection is not None
    no_cot, _ = LatentStudent.load(pipeline["no_cot"])
    assert no_cot.latent_steps == 0 and no_cot.projection is None
    rows = [json.loads(l) for l in Path(pipeline["lori_metrics"]).read_text().splitlines()]
    assert {"loss", "task", "reason", "reason_mean", "reason_cov", "anchor"} <= set(rows[-1])
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_evaluation_outputs(pipeline):
    rows = [json.loads(l) for l in Path(pipeline["eval_lori"]).read_text().splitlines()]
    assert len(rows) == 12
    assert {"id", "prediction", "parsed", "gold", "correct", "generated_tokens", "latent_steps", "latency_s"} <= set(rows[0])
    summary = json.loads(Path(pipeline["eval_lori"]).with_suffix(".json").read_text())
    assert summary["n"] == 12 and summary["correct"] == sum(r["correct"] for r in rows)
    assert summary["latent_steps"] == 3
    assert 0 <= summary["ci_low"] <= summary["accuracy"] <= summary["ci_high"] <= 1
    assert all(1 <= r["generated_tokens"] <= 6 for r in rows)
    # each row carries its reference CoT's step count (the report's accuracy by reasoning steps)
    assert [r["cot_steps"] for r in rows] == [len(rec.steps) for rec in read_records(pipeline["test"])]
    # the thought-shuffle test ran beside it, with consistent counts
    shuffle = summary["thought_shuffle"]
    assert shuffle["correct"] == sum(r["correct_shuffled"] for r in rows)
    assert shuffle["drop"] == pytest.approx(summary["accuracy"] - shuffle["correct"] / 12)


def test_own_thoughts_given_back_reproduce_generation(pipeline):
    """Feeding a student its own thoughts changes nothing; another problem's thoughts change the states."""
    from lori.model.sequences import student_batch

    student, tokenizer = LatentStudent.load(pipeline["lori"])
    records = read_records(pipeline["test"])[:4]
    batch = student_batch(tokenizer, records, student.latent_steps)
    own = student.thought_inputs(batch)
    assert own.shape == (4, 3, 32)
    with torch.no_grad():
        logits = student._think(batch.prompt_ids, batch.prompt_mask, None)[3]
        same = student._think(batch.prompt_ids, batch.prompt_mask, None, own)[3]
        swapped = student._think(batch.prompt_ids, batch.prompt_mask, None, own[[1, 2, 3, 0]])[3]
    torch.testing.assert_close(same, logits)
    assert not torch.allclose(swapped, logits)
    assert [g.text for g in student.generate(batch, 6, tokenizer)] == \
           [g.text for g in student.generate(batch, 6, tokenizer, thought_inputs=own)]


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 10, 257):
        perm = evaluate.derangement(n, seed=n)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert evaluate.derangement(50, 1) == evaluate.derangement(50, 1) != evaluate.derangement(50, 2)
    with pytest.raises(ValueError):
        evaluate.derangement(1, 0)


def test_compute_matched_student_gets_the_reference_compute(pipeline, tmp_path):
    """no_cot matched to lori by FLOPs trains ref_steps * flops(lori step) / flops(no_cot step) steps."""
    from lori.sweep import cost_per_step

    out, metrics = tmp_path / "matched", tmp_path / "matched_metrics.jsonl"
    distill.main(["--method", "no_cot", "--teacher", pipeline["teacher"], "--records", pipeline["cot"], "--out", str(out),
                  "--metrics", str(metrics), "--batch-size", "4", "--log-every", "1",
                  "--match-ref", pipeline["lori_metrics"], "--match-base", pipeline["no_cot_metrics"], *RUNTIME])
    _, lori_flops = cost_per_step(pipeline["lori_metrics"], "flops")
    _, base_flops = cost_per_step(pipeline["no_cot_metrics"], "flops")
    assert lori_flops > base_flops          # K=3 thoughts and a projection: more compute per step
    expected = round(2 * lori_flops / base_flops)
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert rows[-1]["step"] == expected
    match = json.loads((out / "train_config.json").read_text())["compute_match"]
    assert match["steps"] == expected and match["by"] == "flops" and match["ref_steps"] == 2


def test_report_files(pipeline):
    out = Path(pipeline["report"])
    for name in ("report.md", "report.html", "spectrum.png", "accuracy_vs_tokens.png", "training.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "| test | lori |" in md and "| test | cot_sft |" in md and "Low-rank structure" in md
    assert "| test | lori | 1 |" in md


def test_distill_refuses_targets_from_other_factors(pipeline, tmp_path):
    other = tmp_path / "factors.zarr"
    factorize.main(["--hidden", pipeline["hidden"], "--out", str(other), "--rank-layer", "1", "--rank-hidden", "4"])
    with pytest.raises(Exception, match="config hash"):
        distill.run(distill.DistillConfig(method="lori", steps=1, batch_size=2, latent_steps=2, threads=1, device="cpu"),
                    pipeline["teacher"], pipeline["cot"], str(tmp_path / "s"), pipeline["targets"], str(other))
    assert not (tmp_path / "s").exists()


def test_bad_data_line_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("q1||<<1+1=2>> #### 2\nno separator here\n")
    with pytest.raises(SystemExit) as exc:
        from lori.cli import _excepthook
        try:
            prepare_data.main(["--split", "train", "--kind", "gsm8k_aug", "--path", str(bad), "--out", str(tmp_path / "o.jsonl")])
        except Exception as e:  # what the CLI's excepthook does at top level
            _excepthook(type(e), e, e.__traceback__)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "||" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_training_metrics_carry_flops(pipeline):
    """Teacher and students log 6 x params x positions per step; the report's cost columns use them."""
    from lori.model.loading import load_checkpoint, num_params

    model, _ = load_checkpoint(pipeline["teacher"])
    for key in ("tmetrics", "lori_metrics", "no_cot_metrics"):
        rows = [json.loads(l) for l in Path(pipeline[key]).read_text().splitlines()]
        for r in rows:
            positions = r["flops"] / (6 * num_params(model))
            assert positions >= 4 * 5, (key, r)       # >= batch x a short sequence (students add a projection)
    md = (Path(pipeline["report"]) / "report.md").read_text()
    cot_row = next(l for l in md.splitlines() if l.startswith("| test | cot_sft | 1 |"))
    assert cot_row.split("|")[-2].strip() != "—"      # the teacher's training PFLOPs

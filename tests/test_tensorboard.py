"""runtime.tensorboard: the shared loop's rows as TensorBoard scalars, read back from the event file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("tensorboard", reason="pip install -e '.[tensorboard]'")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from lori import distill, teacher_sft  # noqa: E402
from lori.training.loop import OptimConfig, fit  # noqa: E402
from tests.tiny import RUNTIME, TINY  # noqa: E402


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def loss_step(idx):
        mse = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        return {"loss": mse, "mse": mse.detach(), "flops": torch.tensor(1000.0)}

    return model, loss_step


def test_every_logged_term_lr_throughput_and_validation_reach_the_event_file(tmp_path):
    model, loss_step = problem()
    cfg = OptimConfig(steps=6, batch_size=8, warmup_steps=2, log_every=2, eval_every=3, tensorboard=True,
                      checkpoint_every=0)
    rows = fit(model, loss_step, 32, cfg, seed=0, evaluator=lambda: {"val_accuracy": 0.25, "val_n": 4},
               tb_dir=tmp_path / "tb" / "lori")
    got = scalars(tmp_path / "tb" / "lori")
    logged = [r["step"] for r in rows]                     # 2, 3 (validation), 4, 6
    for tag in ("train/loss", "train/mse", "train/flops", "train/lr", "throughput/sec_per_step",
                "throughput/examples_per_s", "throughput/flops_per_s"):
        assert [s for s, _ in got[tag]] == logged, tag
    assert [v for _, v in got["train/loss"]] == pytest.approx([r["loss"] for r in rows])
    assert [v for _, v in got["train/lr"]] == pytest.approx([r["lr"] for r in rows])
    assert got["throughput/examples_per_s"][0][1] == pytest.approx(8 / rows[0]["sec_per_step"], rel=1e-5)
    assert got["val/accuracy"] == [(3, 0.25), (6, 0.25)]
    assert [s for s, _ in got["val/flops_total"]] == [3, 6] and got["val/flops_total"][1][1] == 6000.0


def test_off_by_default_and_a_fresh_run_replaces_old_events(tmp_path):
    model, loss_step = problem()
    fit(model, loss_step, 32, OptimConfig(steps=2, batch_size=8, log_every=1, checkpoint_every=0), seed=0,
        tb_dir=tmp_path / "off")
    assert not (tmp_path / "off").exists()
    cfg = OptimConfig(steps=2, batch_size=8, log_every=1, checkpoint_every=0, tensorboard=True)
    for _ in range(2):
        fit(model, loss_step, 32, cfg, seed=0, tb_dir=tmp_path / "on")
    assert len(list((tmp_path / "on").glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in scalars(tmp_path / "on")["train/loss"]] == [1, 2]


def test_stages_write_under_results_run_tb(tiny_teacher, tmp_path):
    assert teacher_sft.tensorboard_dir("results/q/teacher") == Path("results/q/tb/teacher")
    assert distill.tensorboard_dir("results/q/students/lori-seed1") == Path("results/q/tb/lori-seed1")
    teacher_sft.main(["--train", str(tiny_teacher.train), "--out", str(tmp_path / "teacher"), "--scratch", TINY,
                      "--steps", "2", "--batch-size", "4", "--log-every", "1", "--tensorboard", *RUNTIME])
    assert [s for s, _ in scalars(tmp_path / "tb" / "teacher")["train/loss"]] == [1, 2]

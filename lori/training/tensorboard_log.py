"""TensorBoard event files for the shared training loop (``runtime.tensorboard: true``).

:class:`BoardWriter` turns each metrics row :func:`lori.training.loop.fit` logs into scalars of
one run directory (``results/<run>/tb/<teacher | student>/``): every loss term and the other
logged terms under ``train/``, the learning rate, throughput (``throughput/examples_per_s``,
``throughput/flops_per_s``, ``throughput/sec_per_step``) and the validation rows' keys under
``val/`` (``val/accuracy``, ``val/n``, and the cumulative ``val/train_s`` and ``val/flops_total`` at
the same step). ``tensorboard --logdir results/<run>/tb`` shows every model of a run side by
side. Needs the ``tensorboard`` package (``pip install -e ".[tensorboard]"``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

THROUGHPUT = ("sec_per_step",)
VALIDATION = ("val_accuracy", "val_n", "train_s", "flops_total")


class BoardWriter:
    """Scalars of one training run. A fresh run (``start == 0``) clears the directory first; a
    resumed one drops the events at and after ``start`` (written by the killed run after its last
    checkpoint) so the curves show each step once."""

    def __init__(self, log_dir: str | Path, start: int, batch_size: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("runtime.tensorboard needs the tensorboard package: "
                              "pip install -e '.[tensorboard]'") from None
        log_dir = Path(log_dir)
        if start == 0:
            shutil.rmtree(log_dir, ignore_errors=True)
        self.writer = SummaryWriter(str(log_dir), purge_step=start if start > 0 else None)
        self.batch_size = batch_size

    def row(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)):
                continue
            if key == "lr":
                tag = "train/lr"
            elif key in THROUGHPUT:
                tag = f"throughput/{key}"
            elif key in VALIDATION:
                tag = f"val/{key.removeprefix('val_')}"
            else:
                tag = f"train/{key}"
            self.writer.add_scalar(tag, value, step)
        sec = row.get("sec_per_step")
        if sec:
            self.writer.add_scalar("throughput/examples_per_s", self.batch_size / sec, step)
            if "flops" in row:
                self.writer.add_scalar("throughput/flops_per_s", row["flops"] / sec, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

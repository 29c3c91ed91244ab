"""Shared plumbing of the benchmark scripts: CLI, device, artifact checks, timing sync."""
from __future__ import annotations

import argparse
import contextlib
import platform
from pathlib import Path

import torch

from lori.model import chain
from lori.model.loading import resolve_device


def run_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options every benchmark over a finished run shares."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="results/quickstart", help="a finished pipeline run")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return ap


def setup(args: argparse.Namespace, required: list[str]) -> tuple[torch.device, Path]:
    """Threads, device, and a clear exit if the run lacks an artifact the benchmark needs."""
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    for rel in required:
        if not (run / rel).exists():
            raise SystemExit(f"error: {run / rel} is missing; run the pipeline first (snakemake --cores 2)")
    return resolve_device(args.device), run


def device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {threads} threads"


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def unfused():
    """The latent chain through the model's own decoder layers (the fused step of
    :mod:`lori.model.fused_step` switched off): the baseline of the fused step."""
    fusable = chain.fusable
    chain.fusable = lambda *args, **kwargs: False
    try:
        yield
    finally:
        chain.fusable = fusable

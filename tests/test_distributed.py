"""Data parallelism: the training stages under ``torchrun`` with 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lori import prepare_data
from lori.training.distributed import DistInfo, rank_slice
from tests.tiny import TINY



def test_rank_slices_cover_the_batch_once():
    idx = list(range(10))
    parts = [rank_slice(idx, DistInfo(r, 3)) for r in range(3)]
    assert sum(parts, []) == idx and [len(p) for p in parts] == [3, 3, 4]
    assert rank_slice(idx, DistInfo()) == idx


def _average_on_rank(rank: int, world: int, rdzv: str, x, y, out):
    import torch.distributed as dist

    from lori.training.distributed import average_gradients

    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    part = rank_slice(list(range(len(x))), DistInfo(rank, world))
    # a mean over this rank's half: averaging the halves' gradients is the global mean's gradient
    loss = ((layer(x[part]) - y[part]) ** 2).sum(1).mean()
    loss.backward()
    average_gradients(list(layer.parameters()), DistInfo(rank, world))
    if rank == 0:
        torch.save({"w": layer.weight.grad.clone(), "b": layer.bias.grad.clone()}, out)
    dist.destroy_process_group()


def test_gradient_average_equals_the_global_batch_gradient(tmp_path):
    import torch.multiprocessing as mp

    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), torch.randn(8, 2)
    mp.spawn(_average_on_rank, args=(2, str(tmp_path / "rdzv"), x, y, str(tmp_path / "g.pt")), nprocs=2, join=True)
    got = torch.load(tmp_path / "g.pt", weights_only=True)
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    ((layer(x) - y) ** 2).sum(1).mean().backward()
    torch.testing.assert_close(got["w"], layer.weight.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got["b"], layer.bias.grad, rtol=1e-6, atol=1e-7)


def _teacher_sft(tmp: Path, out: str, nproc: int) -> Path:
    args = ["-m", "lori.teacher_sft", "--train", str(tmp / "train.jsonl"), "--out", str(tmp / out), "--scratch", TINY,
            "--steps", "3", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "0", "--log-every", "1",
            "--metrics", str(tmp / f"{out}.jsonl"), "--device", "cpu", "--threads", "1"]
    if nproc > 1:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        if torchrun is None:
            pytest.skip("torchrun not found next to the interpreter")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "--module", *args[1:]]
    else:
        cmd = [sys.executable, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / out


def test_two_process_teacher_sft_matches_one_process(tmp_path):
    prepare_data.main(["--split", "train", "--kind", "quickstart", "--n", "64", "--out", str(tmp_path / "train.jsonl")])
    single = load_file(str(_teacher_sft(tmp_path, "single", 1) / "model.safetensors"))
    ddp_dir = _teacher_sft(tmp_path, "ddp", 2)
    ddp = load_file(str(ddp_dir / "model.safetensors"))
    assert not list(tmp_path.glob(".ddp.tmp-*")), "rank 1 must not write outputs"
    rows = [json.loads(l) for l in (tmp_path / "ddp.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # each rank's loss is a token-mean over its half of the global batch, so the averaged gradient
    # equals the one-process gradient only up to the halves' token counts; Adam moves a weight by
    # at most ~lr per step whatever the gradient's size, so 3 steps at lr 1e-3 bound the gap by 6e-3
    for name, w in single.items():
        assert torch.allclose(ddp[name], w, atol=6e-3, rtol=0), name
    assert any(not torch.equal(ddp[n], single[n]) for n in single)   # it really ran in 2 processes


# ---------------------------------------------------------------- FSDP (parallel: fsdp), 2 CPU processes
def _launch(module: str, args: list[str], nproc: int) -> None:
    if nproc > 1:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        if torchrun is None:
            pytest.skip("torchrun not found next to the interpreter")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "--module", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fsdp")
    prepare_data.main(["--split", "train", "--kind", "quickstart", "--n", "64", "--out", str(d / "train.jsonl")])
    _teacher_sft(d, "single", 1)
    return d


def _assert_adam_close(single: dict, sharded: dict) -> None:
    # as for DDP above: the ranks' token-mean losses differ from the global one only in weighting,
    # and Adam moves a weight by at most ~lr per step (3 steps at lr 1e-3)
    assert single.keys() == sharded.keys()
    for name, w in single.items():
        assert torch.allclose(sharded[name], w, atol=6e-3, rtol=0), name
    assert any(not torch.equal(sharded[n], single[n]) for n in single)


def test_fsdp_teacher_sft_matches_one_process_and_saves_hf_layout(trained):
    from lori.model.loading import load_checkpoint

    args = ["--train", str(trained / "train.jsonl"), "--scratch", TINY, "--steps", "3", "--batch-size", "8",
            "--lr", "1e-3", "--warmup-steps", "0", "--device", "cpu", "--threads", "1", "--parallel", "fsdp"]
    _launch("lori.teacher_sft", [*args, "--out", str(trained / "fsdp")], 2)
    single = load_file(str(trained / "single" / "model.safetensors"))
    _assert_adam_close(single, load_file(str(trained / "fsdp" / "model.safetensors")))
    config = json.loads((trained / "fsdp" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]          # the plain class, not FSDP's subclass
    model, _ = load_checkpoint(trained / "fsdp")
    assert not any(".ckpt" in p.name for p in trained.iterdir())    # no resumable checkpoints under FSDP


def test_fsdp_latent_student_matches_one_process(trained):
    # a latent student (K=2 thoughts on the KV cache) with the task loss only: no targets needed
    args = ["--method", "lori", "--alpha", "0", "--gamma", "0", "--latent-steps", "2", "--teacher",
            str(trained / "single"), "--records", str(trained / "train.jsonl"), "--steps", "3", "--batch-size", "8",
            "--lr", "1e-3", "--warmup-steps", "0", "--device", "cpu", "--threads", "1"]
    _launch("lori.distill", [*args, "--out", str(trained / "s1")], 1)
    _launch("lori.distill", [*args, "--out", str(trained / "sf"), "--parallel", "fsdp"], 2)
    for name in ("model.safetensors", "projection.safetensors"):
        _assert_adam_close(load_file(str(trained / "s1" / name)), load_file(str(trained / "sf" / name)))

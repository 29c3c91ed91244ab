"""Runtime knobs of the training stages: compile, gradient checkpointing, parallel; config -> stage -> model."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lori import prepare_data, teacher_sft
from lori.config import load_schema, parse_stage_args, validate_config
from lori.data.records import BOT, EOT, read_records
from lori.distill import DistillConfig
from lori.model.latent import LatentStudent
from lori.model.loading import build_scratch_model, build_word_tokenizer, enable_checkpointing
from lori.model.sequences import student_batch
from lori.teacher_sft import TeacherSFTConfig
from lori.training.loop import OptimConfig, hf_models, prepare_module
from lori.training.distributed import DistInfo
from tests.runs import MICRO, ROOT, snakemake
from tests.tiny import RUNTIME, TINY

DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    prepare_data.main(["--split", "train", "--kind", "quickstart", "--n", "32", "--out", str(d / "train.jsonl")])
    records = read_records(d / "train.jsonl")
    tokenizer = build_word_tokenizer([f"{r.question} || {r.cot} #### {r.answer}" for r in records])
    return d, records, tokenizer


def tiny_student(tokenizer, latent_steps: int = 3) -> LatentStudent:
    torch.manual_seed(0)
    model = build_scratch_model(json.loads(TINY), tokenizer)
    return LatentStudent(model, latent_steps, tokenizer.convert_tokens_to_ids(BOT), tokenizer.convert_tokens_to_ids(EOT))


# ---------------------------------------------------------------- config -> stage
def test_runtime_section_reaches_the_training_configs(tmp_path):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["runtime"] = {"compile": True, "gradient_checkpointing": True, "parallel": "fsdp"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg, _ = parse_stage_args(TeacherSFTConfig, ["--config", str(path)], "t", [], "teacher_sft")
    assert (cfg.compile, cfg.gradient_checkpointing, cfg.parallel) == (True, True, "fsdp")
    dcfg, _ = parse_stage_args(DistillConfig, ["--config", str(path)], "t", [], "distill")
    assert (dcfg.compile, dcfg.parallel) == (True, "fsdp")
    assert not hasattr(dcfg, "gradient_checkpointing")      # students: see test_hf_checkpointing_drops_the_kv_cache


def test_runtime_defaults_match_the_dataclasses():
    props = load_schema()["properties"]["runtime"]["properties"]
    defaults = validate_config(yaml.safe_load(DEFAULT_CONFIG.read_text()))["runtime"]
    assert defaults == {k: v["default"] for k, v in props.items()}
    for key, spec in props.items():
        assert getattr(TeacherSFTConfig(), key) == spec["default"], key
    assert (OptimConfig().compile, OptimConfig().parallel) == (False, "ddp")


def test_workflow_passes_only_knobs_set_away_from_defaults(tmp_path):
    cfg = yaml.safe_load(MICRO.read_text())
    res = snakemake(tmp_path, "-n", "-p", configfile=MICRO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--compile" not in res.stdout and "--parallel" not in res.stdout     # defaults keep old outputs cached
    assert "--precision" not in res.stdout
    cfg["runtime"] = {"compile": True, "gradient_checkpointing": True, "parallel": "fsdp", "precision": "bf16"}
    path = tmp_path / "rt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n", "-p", configfile=path)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    teacher = next(l for l in lines if "lori.teacher_sft" in l)
    distill = [l for l in lines if "lori.distill" in l]
    assert "--compile true" in teacher and "--gradient-checkpointing true" in teacher and "--parallel fsdp" in teacher
    assert "--precision bf16" in teacher
    assert distill and all("--compile true" in l and "--parallel fsdp" in l and "--precision bf16" in l for l in distill)
    assert not any("--gradient-checkpointing" in l for l in distill)


# ---------------------------------------------------------------- the knobs on the model
def test_compile_targets_the_hf_model_in_place(data):
    _, _, tokenizer = data
    student = tiny_student(tokenizer)
    assert hf_models(student) == [student.model]
    assert hf_models(student.model) == [student.model]
    prepare_module(student, OptimConfig(compile=True), DistInfo())
    assert student.model._compiled_call_impl is not None          # compiled lazily at the first call
    assert student._compiled_call_impl is None                    # the Python latent loop itself stays eager
    with pytest.raises(ValueError, match="parallel must be ddp | fsdp"):
        prepare_module(student, OptimConfig(parallel="zero3"), DistInfo())


def test_hf_checkpointing_drops_the_kv_cache_of_the_latent_chain(data):
    """Why distill has no gradient_checkpointing: HF's checkpointed layers run without the cache
    in training mode, so the thoughts (and the answer) no longer see the question."""
    _, records, tokenizer = data
    student = tiny_student(tokenizer).train()
    batch = student_batch(tokenizer, records[:4], student.latent_steps)
    plain = student(batch).task_loss
    enable_checkpointing(student.model)
    try:
        checkpointed = student(batch).task_loss
    except RuntimeError as e:       # transformers 5.2x: the attention mask still covers the dropped cache
        assert "shape" in str(e)
        return
    assert not torch.allclose(plain, checkpointed, rtol=1e-4), "HF now keeps the cache under checkpointing: revisit"


def _teacher(d, name: str, *flags: str) -> dict[str, torch.Tensor]:
    teacher_sft.main(["--train", str(d / "train.jsonl"), "--out", str(d / name), "--scratch", TINY, "--steps", "2",
                      "--batch-size", "8", "--warmup-steps", "0", "--checkpoint-every", "0", *flags, *RUNTIME])
    return load_file(str(d / name / "model.safetensors"))


def test_teacher_sft_with_gradient_checkpointing_equals_without(data):
    d, _, _ = data
    plain = _teacher(d, "plain")
    ckpt = _teacher(d, "gc", "--gradient-checkpointing", "true")
    assert plain.keys() == ckpt.keys()
    for name in plain:      # the recompute repeats the same fp32 ops on CPU
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.filterwarnings("ignore:CUDA is not available")       # the CUDA autocast object is only inspected
def test_precision_picks_the_autocast():
    from lori.model.precision import autocast_context, autocast_dtype
    from lori.training.options import PRECISIONS

    assert load_schema()["properties"]["runtime"]["properties"]["precision"]["enum"] == list(PRECISIONS)
    for device, precision, want in (("cpu", "auto", None), ("cpu", "fp32", None), ("cpu", "bf16", torch.bfloat16)):
        with autocast_context(device, precision):
            got = autocast_dtype("cpu")
        assert got == want, (device, precision)
    on_gpu = autocast_context("cuda", "auto")             # not entered: no GPU needed to check the choice
    assert isinstance(on_gpu, torch.autocast) and on_gpu.device == "cuda" and on_gpu.fast_dtype == torch.bfloat16
    assert not isinstance(autocast_context("cuda", "fp32"), torch.autocast)
    with pytest.raises(ValueError, match="auto | fp32 | bf16"):
        autocast_context("cpu", "fp16")
    with pytest.raises(ValueError, match="precision must be auto | fp32 | bf16"):
        TeacherSFTConfig(precision="half")


def test_teacher_sft_in_bf16_on_cpu(data):
    """``precision: bf16`` trains under bf16 autocast on a CPU too: the same steps, other rounding."""
    d, _, _ = data
    plain = _teacher(d, "fp32")
    bf16 = _teacher(d, "bf16", "--precision", "bf16")
    assert json.loads((d / "bf16" / "train_config.json").read_text())["precision"] == "bf16"
    assert any(not torch.equal(bf16[name], plain[name]) for name in plain)      # autocast did run
    for name in plain:      # two small steps: bf16 rounding of the updates only
        torch.testing.assert_close(bf16[name], plain[name], rtol=0, atol=2e-2, msg=name)


@pytest.mark.slow   # inductor compiles the tiny model for ~1-2 minutes on 2 CPU cores
def test_compiled_teacher_sft_matches_eager(data):
    d, _, _ = data
    plain = _teacher(d, "plain2")
    compiled = _teacher(d, "compiled", "--compile", "true")
    for name in plain:
        torch.testing.assert_close(compiled[name], plain[name], rtol=0, atol=1e-4, msg=name)

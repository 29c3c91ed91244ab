"""The bad-input corpus: every malformed file, config or artifact gives a one-line ``error:``
naming the file or key, a non-zero exit, and leaves an existing output untouched.

Each case runs a stage's ``main([...])`` in-process with the CLI's excepthook behaviour (what
``python -m lori.<stage>`` does at top level; a subprocess per case would cost ~5 s of imports).
The static bad files live in ``tests/bad_inputs/``; damaged artifacts (Zarr stores, checkpoints)
are made from good ones by the ``make`` functions below.
"""
from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr

from lori import distill, dump_hidden, evaluate, factorize, prepare_data, targets, teacher_sft
from lori.cli import _excepthook
from tests.runs import snakemake
from tests.tiny import TINY, RUNTIME

HERE = Path(__file__).parent / "bad_inputs"


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_teacher) -> dict[str, str]:
    """Valid artifacts of a tiny run, each bad case damages a copy of one of them."""
    d = tmp_path_factory.mktemp("good")
    p = {"train": str(tiny_teacher.train), "teacher": str(tiny_teacher.teacher)}
    p |= {k: str(d / v) for k, v in {"hidden": "calib.zarr", "factors": "factors.zarr", "targets": "targets.zarr"}.items()}
    dump_hidden.main(["--teacher", p["teacher"], "--records", p["train"], "--out", p["hidden"],
                      "--calibration-size", "6", *RUNTIME])
    factorize.main(["--hidden", p["hidden"], "--out", p["factors"], "--rank-layer", "2", "--rank-hidden", "4"])
    targets.main(["--teacher", p["teacher"], "--records", p["train"], "--factors", p["factors"], "--out",
                  p["targets"], *RUNTIME])
    return p


# ---------------------------------------------------------------- damage helpers
def copy(src: str, tmp: Path, name: str | None = None) -> Path:
    dst = tmp / (name or Path(src).name)
    (shutil.copytree if Path(src).is_dir() else shutil.copy)(src, dst)
    return dst


def rewrite_array(store: Path, name: str, data: np.ndarray, dims: list[str]) -> None:
    from lori.artifacts.store import zarr_put

    g = zarr.open_group(str(store), mode="a")
    attrs = dict(g[name].attrs)
    del g[name]
    zarr_put(g, name, data, dims, **{k: v for k, v in attrs.items() if k != "_ARRAY_DIMENSIONS"})


def set_attr(store: Path, **attrs) -> None:
    zarr.open_group(str(store), mode="a").attrs.update(attrs)


def truncate_chunks(store: Path, name: str) -> None:
    """A half-written array: every chunk file cut in half."""
    chunks = [f for f in (store / name).rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert chunks
    for f in chunks:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def damaged(key: str, fn: Callable[[Path], None]) -> Callable[[dict, Path], Path]:
    """A copy of the good artifact ``key``, damaged by ``fn``."""
    def make(good: dict, tmp: Path) -> Path:
        store = copy(good[key], tmp)
        fn(store)
        return store
    return make


def wide_factors(good: dict, tmp: Path) -> Path:
    """Factors whose hidden size (48) is not the teacher's (32): from another model."""
    store = copy(good["factors"], tmp)
    g = zarr.open_group(str(store), mode="r")
    u_h, mean = g["U_hidden"][...], g["mean"][...]
    rewrite_array(store, "U_hidden", np.vstack([u_h, np.zeros((16, u_h.shape[1]))]), ["hidden", "rank_hidden"])
    rewrite_array(store, "mean", np.hstack([mean, np.zeros((mean.shape[0], 16))]), ["layer", "hidden"])
    return store


def foreign_projection(good: dict, tmp: Path) -> Path:
    """A student dir whose projection was trained for hidden size 48 (another architecture)."""
    from safetensors.torch import save_file

    from lori.model.latent import Projection

    ckpt = copy(good["teacher"], tmp, "student")
    (ckpt / "latent.json").write_text(json.dumps({"latent_steps": 2}))
    save_file({k: v.contiguous() for k, v in Projection(48).state_dict().items()}, str(ckpt / "projection.safetensors"))
    return ckpt


def delete(name: str) -> Callable[[Path], None]:
    return lambda store: shutil.rmtree(store / name) if (store / name).is_dir() else (store / name).unlink()


# ---------------------------------------------------------------- the corpus
@dataclass
class Case:
    id: str
    stage: object                         # the stage module whose main() runs
    argv: str                             # {train} {teacher} {hidden} {factors} {targets} {bad} {out} {tmp}
    expect: tuple[str, ...]               # substrings of the error text ({bad} etc. substituted)
    make: Callable[[dict, Path], Path] | None = None   # builds {bad}; else tests/bad_inputs/<id>.*

    @property
    def out_is_dir(self) -> bool:   # checkpoints and Zarr stores are directories
        return self.stage not in (prepare_data, evaluate)


TRAIN_SFT = "--train {bad} --out {out} --scratch '%s' --steps 1 --batch-size 2 --threads 1 --device cpu" % TINY
PREP_AUG = "--split train --kind gsm8k_aug --path {bad} --out {out}"
FACTORIZE = "--hidden {bad} --out {out} --rank-layer 2 --rank-hidden 4"
TARGETS = "--teacher {teacher} --records {train} --factors {bad} --out {out} --threads 1 --device cpu"
DISTILL = ("--method lori --teacher {teacher} --records {train} --factors {factors} --targets {bad} --out {out} "
           "--steps 1 --batch-size 2 --latent-steps 2 --threads 1 --device cpu")

CASES = [
    # malformed text / jsonl data
    Case("txt_no_separator", prepare_data, PREP_AUG, ("{bad}:2", "'||'")),
    Case("txt_no_answer_marker", prepare_data, PREP_AUG, ("{bad}:2", "'####'")),
    Case("txt_empty_answer", prepare_data, PREP_AUG, ("{bad}:2", "empty answer")),
    Case("txt_empty_question", prepare_data, PREP_AUG, ("{bad}:2", "empty question")),
    Case("txt_not_utf8", prepare_data, PREP_AUG, ("{bad}:2", "not UTF-8", "0xe9")),
    Case("txt_unclosed_equation", prepare_data, PREP_AUG, ("{bad}:2", "'<<' at column 64", "never closed")),
    Case("txt_empty", prepare_data, PREP_AUG, ("{bad}", "no problems")),
    Case("jsonl_records_empty", prepare_data, "--split train --kind records --path {bad} --out {out}",
         ("{bad}", "no problems")),
    Case("jsonl_not_utf8", teacher_sft, TRAIN_SFT, ("{bad}:2", "not UTF-8")),
    Case("jsonl_malformed", teacher_sft, TRAIN_SFT, ("{bad}:2", "not valid JSON")),
    Case("jsonl_not_object", teacher_sft, TRAIN_SFT, ("{bad}:2", "JSON object")),
    Case("jsonl_missing_answer", teacher_sft, TRAIN_SFT, ("{bad}:2", "missing field(s) answer")),
    Case("jsonl_steps_not_list", teacher_sft, TRAIN_SFT, ("{bad}:1", "'steps'")),
    Case("jsonl_duplicate_ids", teacher_sft, TRAIN_SFT, ("{bad}:2", "duplicate id 'a'")),
    Case("jsonl_non_numeric_answer", teacher_sft, TRAIN_SFT, ("{bad}", "non-numeric 'answer'", "three")),
    Case("jsonl_empty_cot", teacher_sft, TRAIN_SFT, ("{bad}", "empty chain of thought", "'a'")),
    Case("jsonl_empty", teacher_sft, TRAIN_SFT, ("{bad}", "no records")),
    Case("train_file_missing", teacher_sft, TRAIN_SFT.replace("{bad}", "{tmp}/nope.jsonl"), ("{tmp}/nope.jsonl",)),
    # configs and flags
    Case("config_wrong_type", teacher_sft, "--config {bad} --train {train} --out {out}", ("{bad}", "teacher_sft.steps")),
    Case("config_unknown_key", factorize, "--config {bad} --hidden {hidden} --out {out}", ("{bad}", "rnak_layer")),
    Case("config_not_yaml", factorize, "--config {bad} --hidden {hidden} --out {out}", ("{bad}", "not valid YAML")),
    Case("config_not_mapping", factorize, "--config {bad} --hidden {hidden} --out {out}", ("{bad}", "mapping")),
    Case("config_negative_rank", factorize, "--config {bad} --hidden {hidden} --out {out}", ("{bad}", "factorize.rank_layer")),
    Case("config_file_missing", factorize, "--config {tmp}/none.yaml --hidden {hidden} --out {out}", ("{tmp}/none.yaml", "not found")),
    Case("flag_wrong_type", teacher_sft, "--train {train} --out {out} --steps many", ("--steps", "'many'")),
    Case("flag_unknown", factorize, "--hidden {hidden} --out {out} --rnak-layer 2", ("--rnak-layer",)),
    Case("flag_negative_rank", factorize, "--hidden {hidden} --out {out} --rank-layer -1", ("rank_layer must be >= 1",)),
    Case("rank_above_dimension", factorize, "--hidden {hidden} --out {out} --rank-layer 2 --rank-hidden 40",
         ("rank (2, 40)", "hidden=32")),
    Case("unknown_method", distill, DISTILL.replace("lori", "lorri", 1).replace("{bad}", "{targets}"), ("lorri",)),
    # hidden-state stores (factorize input)
    Case("hidden_missing", factorize, FACTORIZE.replace("{bad}", "{tmp}/gone.zarr"), ("{tmp}/gone.zarr", "missing")),
    Case("hidden_no_states", factorize, FACTORIZE, ("{bad}", "'states'"), damaged("hidden", delete("states"))),
    Case("hidden_half_written_chunks", factorize, FACTORIZE, ("{bad}", "'states'", "unreadable"),
         damaged("hidden", lambda s: truncate_chunks(s, "states"))),
    Case("hidden_corrupt_metadata", factorize, FACTORIZE, ("{bad}", "not a readable Zarr group"),
         damaged("hidden", lambda s: (s / "zarr.json").write_text("{not json"))),
    Case("hidden_wrong_dtype", factorize, FACTORIZE, ("{bad}", "'states'", "int32"),
         damaged("hidden", lambda s: rewrite_array(s, "states", zarr.open_group(str(s))["states"][...].astype(np.int32),
                                             ["token", "layer", "hidden"]))),
    Case("hidden_offsets_mismatch", factorize, FACTORIZE, ("{bad}", "'offsets'"),
         damaged("hidden", lambda s: rewrite_array(s, "offsets", zarr.open_group(str(s))["offsets"][...] + 1, ["example_plus_one"]))),
    # factors stores (targets input)
    Case("factors_missing_array", targets, TARGETS, ("{bad}", "'U_hidden'"), damaged("factors", delete("U_hidden"))),
    Case("factors_shape_mismatch", targets, TARGETS, ("{bad}", "inconsistent shapes"),
         damaged("factors", lambda s: rewrite_array(s, "U_hidden", np.eye(8, 4), ["hidden", "rank_hidden"]))),
    Case("factors_other_model", targets, TARGETS, ("{bad}", "hidden size 48", "{teacher}", "hidden size 32"), wide_factors),
    Case("factors_other_layers", targets, TARGETS, ("{bad}", "[1, 5]", "{teacher}", "2 layers"),
         damaged("factors", lambda s: set_attr(s, layers=[1, 5]))),
    # targets stores (distill input)
    Case("targets_other_factors", distill, DISTILL, ("{bad}", "{factors}", "config hash"),
         damaged("targets", lambda s: set_attr(s, factors_config_hash="0123456789abcdef"))),
    Case("targets_other_layers", distill, DISTILL, ("{bad}", "{factors}", "layers [0, 1]"),
         damaged("targets", lambda s: set_attr(s, layers=[0, 1]))),
    Case("targets_wrong_dtype", distill, DISTILL, ("{bad}", "'core'", "float"),
         damaged("targets", lambda s: rewrite_array(s, "core", np.zeros(zarr.open_group(str(s))["core"].shape, "int64"),
                                                        ["token", "rank_layer", "rank_hidden"]))),
    Case("targets_wrong_shape", distill, DISTILL, ("{bad}", "'core'", "{factors}"),
         damaged("targets", lambda s: rewrite_array(s, "core", zarr.open_group(str(s))["core"][:, :1],
                                                        ["token", "rank_layer", "rank_hidden"]))),
    Case("targets_half_written", distill, DISTILL, ("{bad}", "'core'"), damaged("targets", lambda s: truncate_chunks(s, "core"))),
    # checkpoints and models
    Case("teacher_not_a_checkpoint", dump_hidden, "--teacher {bad} --records {train} --out {out} --threads 1 --device cpu",
         ("{bad}", "config.json"), damaged("teacher", delete("config.json"))),
    Case("teacher_corrupt_config", dump_hidden, "--teacher {bad} --records {train} --out {out} --threads 1 --device cpu",
         ("{bad}", "unreadable checkpoint"), damaged("teacher", lambda c: (c / "config.json").write_text("{oops"))),
    Case("teacher_truncated_weights", dump_hidden, "--teacher {bad} --records {train} --out {out} --threads 1 --device cpu",
         ("{bad}", "unreadable checkpoint"), damaged("teacher", lambda c: (c / "model.safetensors").write_bytes(
             (c / "model.safetensors").read_bytes()[:1000]))),
    Case("student_not_a_student", evaluate, "--method lori --model {teacher} --data {train} --out {out} --threads 1 --device cpu",
         ("{teacher}", "latent.json")),
    Case("student_projection_other_architecture", evaluate,
         "--method lori --model {bad} --data {train} --out {out} --threads 1 --device cpu",
         ("{bad}", "projection.safetensors"), foreign_projection),
    Case("model_unknown_offline", teacher_sft,
         "--train {train} --out {out} --name-or-path lori-test/no-such-model --tokenizer pretrained --steps 1",
         ("lori-test/no-such-model", "local path")),
]


def run_cli(stage, argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` as ``python -m`` would end: exit code and stderr."""
    try:
        stage.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - what the CLI's excepthook sees at top level
        try:
            _excepthook(type(e), e, e.__traceback__)
            code = 1                                     # not a user error: a traceback was printed
        except SystemExit as exit_:
            code = exit_.code
    return code, capsys.readouterr().err


def test_corpus_is_large_and_files_are_used():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    files = {f.stem for f in HERE.iterdir() if f.suffix in (".txt", ".jsonl", ".yaml")}
    assert files <= {c.id for c in CASES}, files - {c.id for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error_and_keeps_outputs(case: Case, good, tmp_path, capsys):
    files = list(HERE.glob(f"{case.id}.*"))
    bad = case.make(good, tmp_path) if case.make else (files[0] if files else tmp_path / "unused")
    out = tmp_path / ("out.d" if case.out_is_dir else "out.jsonl")
    if case.out_is_dir:   # an existing output that a failed rerun must leave as it was
        out.mkdir()
        (out / "sentinel").write_text("keep me\n")
    else:
        out.write_text("keep me\n")
    subs = {**good, "bad": str(bad), "out": str(out), "tmp": str(tmp_path)}

    def fill(text: str) -> str:   # not str.format: argv holds JSON braces
        for key, value in subs.items():
            text = text.replace("{%s}" % key, value)
        return text

    argv = [fill(a) for a in shlex.split(case.argv)]
    capsys.readouterr()
    code, err = run_cli(case.stage, argv, capsys)

    assert code not in (0, None), f"exit code {code}\n{err}"
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert lines, err
    message = err[err.index(lines[0]):]
    for text in map(fill, case.expect):
        assert text in message, f"{text!r} not in {message!r}"
    kept = out / "sentinel" if case.out_is_dir else out
    assert kept.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temp litter


def test_bad_configfile_stops_snakemake_with_one_error_line(tmp_path):
    """``snakemake --configfile BAD``: the schema's findings under one ``error:`` line naming the
    file, exit 2, no Snakemake traceback, nothing written in the working directory."""
    bad = HERE / "config_negative_rank.yaml"
    workdir = tmp_path / "work"
    workdir.mkdir()
    res = snakemake(workdir, "-n", configfile=bad)
    err = res.stdout + res.stderr
    assert res.returncode == 2, err
    assert [l for l in err.splitlines() if "error" in l.lower()] == [f"error: {bad}: 1 config error(s):"], err
    assert "factorize.rank_layer" in err
    assert "Traceback" not in err and 'File "' not in err, err
    assert list(workdir.iterdir()) == []

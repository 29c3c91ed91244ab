r"""Stage ``factorize``: mode-Gram factorization of the dumped teacher trajectories.

Reads ``hidden/<split>.zarr`` (``states [token, layer, hidden]``, ``offsets``; :mod:`lori.artifacts.hidden`)
in streamed passes (:mod:`lori.lowrank.passes`: moments, Grams, optional HOOI refinement, per-example
diagnostics; memory O(L^2 + d^2 + one chunk), whatever the number of tokens) and writes
``lowrank/factors.zarr`` (:mod:`lori.artifacts.factors`, docs/artifacts.md):

- ``U_layer [layer, r_layer]``, ``U_hidden [hidden, r_hidden]`` — orthonormal columns
- ``spectrum_layer [layer]``, ``spectrum_hidden [hidden]`` — mode-Gram eigenvalues, descending
- ``mean [layer, hidden]`` (zeros when not centred), ``scale [layer]`` (ones without scaling)
- per example of the dump: ``effective_rank``, ``cot_length``, ``energy_captured`` (fraction of
  the example's energy kept by the global factors), ``example_id``
- attrs: ranks, energy threshold, energy captured per mode (top-r share of the mode spectrum)
  and jointly (by the factors, measured), centred flag, layer scaling, method, relative
  reconstruction error per HOOI iteration, tokens and examples seen, layers, config hash.

Ranks: explicit ``--rank-layer/--rank-hidden`` win; otherwise the smallest rank reaching
``--energy`` per mode (``--energy`` given alone makes both ranks adaptive).

Standalone::

    python -m lori.factorize --hidden results/quickstart/hidden/calib.zarr \
        --out results/quickstart/lowrank/factors.zarr --rank-layer 2 --rank-hidden 16 --center

Sharded (what the Snakemake scatter/gather rules run when ``--shards N`` > 1): for each pass
``STEP`` of the plan (``moments``, ``grams``, ``hooi1``.., ``diagnostics``), every shard, then
one gather, which writes the next state (the factors store after the last pass); the ``.npz``
files between them are :mod:`lori.artifacts.factor_state`::

    python -m lori.factorize partial --hidden H.zarr --step STEP --shard I [--state PREV.npz] --out PART_I.npz --shards N ...
    python -m lori.factorize gather --hidden H.zarr --step STEP --parts PART_0.npz,... [--state PREV.npz] --out NEXT.npz --shards N ...
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from lori.artifacts.factor_state import load_partial, load_state, save_partial, save_state
from lori.artifacts.factors import write_factors
from lori.artifacts.hidden import HiddenStore, open_hidden
from lori.artifacts.store import ArtifactError, open_store
from lori.cli import stage_main, stage_summary
from lori.config import ConfigError, config_hash
from lori.lowrank.maths import energy_curve
from lori.lowrank.passes import FactorState, finish, merge_all, partial, plan, shard_ranges

log = logging.getLogger("lori.factorize")


@dataclass
class FactorizeConfig:
    rank_layer: int | None = 2           # r_L; None = from energy
    rank_hidden: int | None = 16         # r_d; None = from energy
    energy: float | None = None          # energy fraction per mode for adaptive ranks, in (0, 1]
    center: bool = True                  # subtract the per-(layer, hidden) mean
    layer_scaling: Literal["none", "layer_rms"] = "layer_rms"
    chunk_tokens: int = 8192             # tokens per streamed read (memory bound, with the L^2 + d^2 Grams)
    method: Literal["hosvd", "hooi"] = "hosvd"   # hosvd: mode-Gram eigenvectors; hooi: + alternating refinement
    hooi_iters: int = 4                  # HOOI passes (method=hooi), each updating one mode: hidden, layer, ...
    shards: int = 1                      # token ranges whose partial sums are gathered (parallel jobs in Snakemake)

    def __post_init__(self):
        problems = []
        for name in ("rank_layer", "rank_hidden"):
            v = getattr(self, name)
            if v is not None and v < 1:
                problems.append(f"{name} must be >= 1, got {v}")
            if v is None and self.energy is None:
                problems.append(f"{name} is unset: give it or --energy")
        if self.energy is not None and not 0 < self.energy <= 1:
            problems.append(f"energy must be in (0, 1], got {self.energy}")
        if self.layer_scaling not in ("none", "layer_rms"):
            problems.append(f"layer_scaling must be none | layer_rms, got {self.layer_scaling!r}")
        if self.method not in ("hosvd", "hooi"):
            problems.append(f"method must be hosvd | hooi, got {self.method!r}")
        for name in ("chunk_tokens", "hooi_iters", "shards"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def passes(self) -> list[str]:
        """The streamed passes this config runs (:func:`lori.lowrank.passes.plan`)."""
        return plan(self.method, self.hooi_iters, self.center, self.layer_scaling)


def finish_pass(cfg: FactorizeConfig, step: str, state: FactorState, parts: list) -> FactorState:
    """The state after pass ``step``, from its shards' accumulators in shard order."""
    return finish(step, state, merge_all(parts), center=cfg.center, layer_scaling=cfg.layer_scaling,
                  rank_layer=cfg.rank_layer, rank_hidden=cfg.rank_hidden, energy=cfg.energy)


# ---------------------------------------------------------------- one process
def run(cfg: FactorizeConfig, hidden_path: str, out: str) -> FactorState:
    """Every pass over every shard in this process, then the factors store."""
    store = open_hidden(hidden_path)
    shards = shard_ranges(store.offsets, cfg.shards)
    state = FactorState()
    for step in cfg.passes:
        parts = [partial(step, state, store.states, store.offsets, s, cfg.chunk_tokens, hidden_path) for s in shards]
        state = finish_pass(cfg, step, state, parts)
    save_factors(out, cfg, state, store)
    return state


# ---------------------------------------------------------------- sharded: one pass of one shard, or a gather
def _previous_state(cfg: FactorizeConfig, step: str, state_path: str | None) -> tuple[FactorState, str | None]:
    steps = cfg.passes
    if step not in steps:
        raise ConfigError(f"factorize: pass {step!r} is not in this config's plan {steps}")
    before = steps[: steps.index(step)]
    if not before:
        if state_path:
            raise ConfigError(f"factorize: pass {step!r} is the first; it takes no --state")
        return FactorState(), None
    if not state_path:
        raise ConfigError(f"factorize: pass {step!r} needs --state (the gather output of pass {before[-1]!r})")
    state, meta = load_state(state_path)
    if state.steps != before:
        raise ArtifactError(f"{state_path}: state after passes {state.steps}, but pass {step!r} needs {before}")
    return state, meta["fingerprint"]


def run_partial(cfg: FactorizeConfig, hidden_path: str, step: str, shard_index: int, state_path: str | None,
                out: str) -> None:
    """One shard of one pass -> a small ``.npz`` of partial sums."""
    state, state_id = _previous_state(cfg, step, state_path)
    if not 0 <= shard_index < cfg.shards:
        raise ConfigError(f"factorize: --shard {shard_index} out of range 0..{cfg.shards - 1} (--shards {cfg.shards})")
    store = open_hidden(hidden_path)
    shard = shard_ranges(store.offsets, cfg.shards)[shard_index]
    acc = partial(step, state, store.states, store.offsets, shard, cfg.chunk_tokens, hidden_path)
    save_partial(out, acc, {"step": step, "shard": shard_index, "num_shards": cfg.shards,
                            "config_hash": config_hash(asdict(cfg)), "state": state_id,
                            "tokens": list(shard.tokens), "examples": list(shard.examples)})


def run_gather(cfg: FactorizeConfig, hidden_path: str, step: str, part_paths: Sequence[str], state_path: str | None,
               out: str) -> FactorState:
    """Sum the shards' partials of one pass; write the next state, or the factors store after the last pass."""
    state, state_id = _previous_state(cfg, step, state_path)
    parts = [load_partial(p) for p in part_paths]
    want = config_hash(asdict(cfg))
    for path, (_, meta) in zip(part_paths, parts):
        if meta["step"] != step or meta["num_shards"] != cfg.shards or meta["config_hash"] != want:
            raise ArtifactError(f"{path}: partial of pass {meta['step']!r}, {meta['num_shards']} shards, config "
                                f"{meta['config_hash']}; expected pass {step!r}, {cfg.shards} shards, config {want}")
        if meta["state"] != state_id:
            raise ArtifactError(f"{path}: computed from state {meta['state']}, not {state_id} ({state_path}): stale")
    got = sorted(meta["shard"] for _, meta in parts)
    if got != list(range(cfg.shards)):
        missing = sorted(set(range(cfg.shards)) - set(got))
        raise ArtifactError(f"factorize gather {step!r}: need shards 0..{cfg.shards - 1} once each, got {got} "
                            f"(missing {missing})")
    ordered = [acc for acc, _ in sorted(parts, key=lambda p: p[1]["shard"])]
    state = finish_pass(cfg, step, state, ordered)
    if step == cfg.passes[-1]:
        save_factors(out, cfg, state, open_hidden(hidden_path))
    else:
        save_state(out, state, {"step": step, "config_hash": want})
    return state


# ---------------------------------------------------------------- the factors store
def save_factors(out: str, cfg: FactorizeConfig, state: FactorState, hidden: HiddenStore) -> None:
    """The factors store of the final state (:func:`lori.artifacts.factors.write_factors`)."""
    r_l, r_d = state.U_layer.shape[1], state.U_hidden.shape[1]
    energy_layer = float(energy_curve(state.spectrum_layer)[r_l - 1])
    energy_hidden = float(energy_curve(state.spectrum_hidden)[r_d - 1])
    diag = state.diagnostics
    arrays = {"U_layer": state.U_layer, "U_hidden": state.U_hidden, "spectrum_layer": state.spectrum_layer,
              "spectrum_hidden": state.spectrum_hidden, "mean": state.mean, "scale": state.scale,
              "effective_rank": diag.effective_rank, "cot_length": diag.cot_length,
              "energy_captured": diag.energy_captured}
    ids = hidden.example_ids()
    if ids is not None:
        arrays["example_id"] = ids
    write_factors(out, arrays, {
        "config_hash": config_hash(asdict(cfg)), "rank_layer": r_l, "rank_hidden": r_d,
        "energy_threshold": cfg.energy, "energy_layer": energy_layer, "energy_hidden": energy_hidden,
        "energy_joint": state.energy_joint, "centered": cfg.center, "layer_scaling": cfg.layer_scaling,
        "method": cfg.method, "reconstruction_errors": state.errors, "reconstruction_error": state.errors[-1],
        "shards": cfg.shards, "tokens": state.tokens, "examples": len(diag),
        "layers": hidden.attrs.get("layers"), "model": hidden.attrs.get("model"),
        "hidden_store": str(hidden.path), "hidden_config_hash": hidden.attrs.get("config_hash"),
    })
    log.info("ranks (layer %d, hidden %d) capture %.1f%% / %.1f%% per mode, %.1f%% jointly (relative error %.4g), "
             "from %d tokens of %d examples; median effective rank %.2f -> %s",
             r_l, r_d, 100 * energy_layer, 100 * energy_hidden, 100 * state.energy_joint, state.errors[-1],
             state.tokens, len(diag), float(np.median(diag.effective_rank)) if len(diag) else 0.0, out)


# ---------------------------------------------------------------- CLI
PATHS = {
    "run": [("--hidden", "hidden-state Zarr store (dump_hidden)"), ("--out", "output factors Zarr store")],
    "partial": [("--hidden", "hidden-state Zarr store (dump_hidden)"), ("--step", "pass of the plan"),
                ("--shard", "shard index, 0..shards-1"), ("--state", "(optional) gather output of the previous pass"),
                ("--out", "output partial .npz")],
    "gather": [("--hidden", "hidden-state Zarr store (dump_hidden)"), ("--step", "pass of the plan"),
               ("--parts", "the pass's partial .npz files, comma-separated"),
               ("--state", "(optional) gather output of the previous pass"),
               ("--out", "next state .npz, or the factors Zarr store after the last pass")],
}


def adaptive_ranks(cfg: FactorizeConfig, ns) -> FactorizeConfig:
    """``--energy`` on the command line makes every rank not also given there adaptive."""
    if getattr(ns, "energy", None) is None:
        return cfg
    unset = {n: None for n in ("rank_layer", "rank_hidden") if not hasattr(ns, n)}
    return dataclasses.replace(cfg, **unset) if unset else cfg


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("partial", "gather") else "run"
    cfg, ns = stage_main(FactorizeConfig, argv, __doc__, PATHS[command], "factorize")
    cfg = adaptive_ranks(cfg, ns)
    if command == "run":
        run(cfg, ns.hidden, ns.out)
    elif command == "partial":
        if not ns.shard.isdigit():
            raise ConfigError(f"factorize partial: --shard must be an integer, got {ns.shard!r}")
        run_partial(cfg, ns.hidden, ns.step, int(ns.shard), ns.state, ns.out)
    else:
        run_gather(cfg, ns.hidden, ns.step, [p for p in ns.parts.split(",") if p], ns.state, ns.out)
    if Path(ns.out).is_dir():      # the factors store (run, or the last gather): say what it captured
        attrs = open_store(ns.out).attrs
        stage_summary("factorize", attrs.get("tokens"), "tokens",
                      f"ranks {attrs.get('rank_layer')}x{attrs.get('rank_hidden')} keep "
                      f"{100 * attrs.get('energy_joint', float('nan')):.1f}% of the energy")
    else:
        stage_summary(f"factorize {command} {ns.step}")


if __name__ == "__main__":
    main()

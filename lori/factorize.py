"""Stage ``factorize``: mode-Gram factorization of the dumped teacher trajectories.

Reads ``hidden/<split>.zarr`` (``states [token, layer, hidden]``) in chunks of
``--chunk-tokens`` — two streamed passes (moments, then Grams) plus one to measure the joint
energy captured, memory O(L^2 + d^2 + one chunk) — and writes ``lowrank/factors.zarr``:

- ``U_layer [layer, r_layer]``, ``U_hidden [hidden, r_hidden]`` — orthonormal columns
- ``spectrum_layer [layer]``, ``spectrum_hidden [hidden]`` — mode-Gram eigenvalues, descending
- ``mean [layer, hidden]`` (zeros when not centred), ``scale [layer]`` (ones without scaling)
- attrs: ranks, energy threshold, energy captured per mode and jointly, centred flag,
  tokens seen, layers, config hash.

Ranks: explicit ``--rank-layer/--rank-hidden`` win; otherwise the smallest rank reaching
``--energy`` per mode.

Standalone::

    python -m lori.factorize --hidden results/quickstart/hidden/calib.zarr \
        --out results/quickstart/lowrank/factors.zarr --rank-layer 2 --rank-hidden 16 --center
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

import lori
from lori.config import config_hash
from lori.io import ArtifactError, atomic_path, open_store, read_array, zarr_put
from lori.lowrank import Factors, GramAccumulator, MomentAccumulator, choose_rank, eig_desc, energy_curve

log = logging.getLogger("lori.factorize")


@dataclass
class FactorizeConfig:
    rank_layer: int | None = 2           # r_L; None = from energy
    rank_hidden: int | None = 16         # r_d; None = from energy
    energy: float | None = None          # energy fraction per mode for adaptive ranks, in (0, 1]
    center: bool = True                  # subtract the per-(layer, hidden) mean
    layer_scaling: Literal["none", "layer_rms"] = "layer_rms"
    chunk_tokens: int = 8192             # tokens per streamed chunk

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
        if self.chunk_tokens < 1:
            problems.append(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if problems:
            raise ValueError("; ".join(problems))


def iter_chunks(states, chunk_tokens: int, path: str = "") -> Iterator[np.ndarray]:
    n = states.shape[0]
    for lo in range(0, n, chunk_tokens):
        try:
            yield np.asarray(states[lo : lo + chunk_tokens])
        except Exception as e:
            raise ArtifactError(f"{path}: array 'states' unreadable at tokens {lo}..{lo + chunk_tokens} "
                                f"({type(e).__name__}: {e})") from None


def factorize_states(states, cfg: FactorizeConfig, path: str = "") -> dict:
    """All factorization results for a ``[token, layer, hidden]`` array-like (streamed)."""
    if len(states.shape) != 3:
        raise ArtifactError(f"{path}: 'states' must be [token, layer, hidden], got shape {states.shape}")
    _, n_layers, hidden = states.shape
    moments = MomentAccumulator()
    for chunk in tqdm(iter_chunks(states, cfg.chunk_tokens, path), desc="moments", mininterval=5, disable=None):
        moments.update(chunk)
    mean, scale = moments.transform(cfg.center, cfg.layer_scaling)
    grams = GramAccumulator.empty(n_layers, hidden)
    for chunk in tqdm(iter_chunks(states, cfg.chunk_tokens, path), desc="grams", mininterval=5, disable=None):
        grams.update(chunk, mean, scale)
    spec_l, vec_l = eig_desc(grams.gram_layer)
    spec_d, vec_d = eig_desc(grams.gram_hidden)
    r_l = cfg.rank_layer or choose_rank(spec_l, cfg.energy)
    r_d = cfg.rank_hidden or choose_rank(spec_d, cfg.energy)
    if r_l > n_layers or r_d > hidden:
        raise ValueError(f"rank ({r_l}, {r_d}) exceeds the dimensions (layer={n_layers}, hidden={hidden})")
    factors = Factors(torch.from_numpy(vec_l[:, :r_l]), torch.from_numpy(vec_d[:, :r_d]),
                      torch.from_numpy(mean), torch.from_numpy(scale))
    captured = 0.0
    for chunk in iter_chunks(states, cfg.chunk_tokens, path):
        captured += float(factors.project(torch.from_numpy(chunk.astype(np.float64))).pow(2).sum())
    return {
        "U_layer": vec_l[:, :r_l], "U_hidden": vec_d[:, :r_d], "spectrum_layer": spec_l, "spectrum_hidden": spec_d,
        "mean": mean, "scale": scale, "rank_layer": r_l, "rank_hidden": r_d, "tokens": moments.count,
        "energy_layer": float(energy_curve(spec_l)[r_l - 1]), "energy_hidden": float(energy_curve(spec_d)[r_d - 1]),
        "energy_joint": captured / grams.total_energy if grams.total_energy > 0 else 1.0,
    }


def run(cfg: FactorizeConfig, hidden_path: str, out: str) -> dict:
    import zarr

    group = open_store(hidden_path, ["states", "offsets"], kind="hidden")
    res = factorize_states(group["states"], cfg, hidden_path)
    src = dict(group.attrs)
    with atomic_path(out) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        zarr_put(g, "U_layer", res["U_layer"], ["layer", "rank_layer"])
        zarr_put(g, "U_hidden", res["U_hidden"], ["hidden", "rank_hidden"])
        zarr_put(g, "spectrum_layer", res["spectrum_layer"], ["layer"])
        zarr_put(g, "spectrum_hidden", res["spectrum_hidden"], ["hidden"])
        zarr_put(g, "mean", res["mean"], ["layer", "hidden"])
        zarr_put(g, "scale", res["scale"], ["layer"])
        g.attrs.update({
            "stage": "factorize", "lori_version": lori.__version__, "config_hash": config_hash(asdict(cfg)),
            "rank_layer": res["rank_layer"], "rank_hidden": res["rank_hidden"], "energy_threshold": cfg.energy,
            "energy_layer": res["energy_layer"], "energy_hidden": res["energy_hidden"],
            "energy_joint": res["energy_joint"], "centered": cfg.center, "layer_scaling": cfg.layer_scaling,
            "tokens": res["tokens"], "layers": src.get("layers"), "model": src.get("model"),
            "hidden_store": str(hidden_path), "hidden_config_hash": src.get("config_hash"),
        })
    log.info("ranks (layer %d, hidden %d) capture %.1f%% / %.1f%% per mode, %.1f%% jointly, from %d tokens",
             res["rank_layer"], res["rank_hidden"], 100 * res["energy_layer"], 100 * res["energy_hidden"],
             100 * res["energy_joint"], res["tokens"])
    return res


def load_factors(path: str) -> tuple[Factors, dict]:
    """Read a factors store (as written by :func:`run`) into :class:`Factors` and its attrs."""
    group = open_store(path, ["U_layer", "U_hidden", "mean", "scale"], kind="factors")
    attrs = dict(group.attrs)
    arrays = [torch.from_numpy(read_array(group, n, path).astype(np.float32)) for n in ("U_layer", "U_hidden", "mean", "scale")]
    factors = Factors(*arrays, layers=list(attrs.get("layers") or []))
    if factors.U_layer.shape[0] != factors.mean.shape[0] or factors.U_hidden.shape[0] != factors.mean.shape[1]:
        raise ArtifactError(f"{path}: inconsistent shapes U_layer {tuple(factors.U_layer.shape)}, "
                            f"U_hidden {tuple(factors.U_hidden.shape)}, mean {tuple(factors.mean.shape)}")
    return factors, attrs


def main(argv: Sequence[str] | None = None) -> None:
    from lori.cli import stage_main

    cfg, ns = stage_main(FactorizeConfig, argv, __doc__,
                         [("--hidden", "hidden-state Zarr store (dump_hidden)"), ("--out", "output factors Zarr store")],
                         lambda config, ns: config["factorize"])
    run(cfg, ns.hidden, ns.out)


if __name__ == "__main__":
    main()

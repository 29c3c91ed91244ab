"""The factors store ``lowrank/factors.zarr``: mode factors, spectra and per-example diagnostics.

Written by ``factorize`` (:func:`write_factors`), read by ``targets`` and ``distill``
(:func:`load_factors`, :func:`check_factors_fit`), the report and ``lori inspect``.
This module is the store's single contract; docs/artifacts.md describes the same layout:

- ``U_layer [layer, rank_layer]``, ``U_hidden [hidden, rank_hidden]``: orthonormal columns
- ``spectrum_layer [layer]``, ``spectrum_hidden [hidden]``: mode-Gram eigenvalues, descending
- ``mean [layer, hidden]`` (zeros when not centred), ``scale [layer]`` (ones without scaling)
- per example of the dump (:data:`DIAGNOSTICS`): ``effective_rank``, ``cot_length``,
  ``energy_captured``, and ``example_id`` when the dump has ids
- group attrs :data:`ATTRS`, in that order.

Reading the arrays needs numpy only (:func:`read_factors`); :func:`load_factors` builds the
torch :class:`~lori.lowrank.maths.Factors` and imports torch when called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

import lori
from lori.artifacts.store import ArraySpec, ArtifactError, atomic_path, finish_store, open_store, read_array, zarr_put
from lori.lowrank.maths import Factors

STAGE = "factorize"
SQUARED = "squared activation, after centring and per-layer scaling"
FACTOR_ARRAYS: dict[str, ArraySpec] = {
    "U_layer": ArraySpec(("layer", "rank_layer"), "float64", "orthonormal layer-mode factor", "1"),
    "U_hidden": ArraySpec(("hidden", "rank_hidden"), "float64", "orthonormal hidden-mode factor", "1"),
    "spectrum_layer": ArraySpec(("layer",), "float64", "layer-mode Gram eigenvalues, descending", SQUARED),
    "spectrum_hidden": ArraySpec(("hidden",), "float64", "hidden-mode Gram eigenvalues, descending", SQUARED),
    "mean": ArraySpec(("layer", "hidden"), "float64", "centring mean subtracted before projecting (zeros if not "
                      "centred)", "model activation (residual stream)"),
    "scale": ArraySpec(("layer",), "float64", "per-layer scale divided by before projecting (ones without "
                       "scaling)", "model activation (residual stream)"),
}
DIAGNOSTICS: dict[str, ArraySpec] = {
    "effective_rank": ArraySpec(("example",), "float64", "exp(entropy) of the normalised singular values of the "
                                "example's tokens x (layer*hidden) matrix", "1"),
    "cot_length": ArraySpec(("example",), "int64", "CoT tokens of the example", "token"),
    "energy_captured": ArraySpec(("example",), "float64", "fraction of the example's (normalised) energy kept by "
                                 "U_layer x U_hidden", "1"),
    "example_id": ArraySpec(("example",), "string", "record id (only when the hidden store has ids)"),
}
COORDS = ("layer",)
ARRAYS: dict[str, ArraySpec] = {
    **FACTOR_ARRAYS, **DIAGNOSTICS,
    "layer": ArraySpec(("layer",), "int64", "model hidden-state index of each factorized layer (0 = embeddings)"),
}
REQUIRED = tuple(FACTOR_ARRAYS)                  # a complete store (diagnostics and coordinates aside)
PROJECTION = ("U_layer", "U_hidden", "mean", "scale")   # what projecting into the core needs
# group attrs in stored order; write_factors sets the first two, the stage gives the rest
ATTRS = ("stage", "lori_version", "config_hash", "rank_layer", "rank_hidden", "energy_threshold", "energy_layer",
         "energy_hidden", "energy_joint", "centered", "layer_scaling", "method", "reconstruction_errors",
         "reconstruction_error", "shards", "tokens", "examples", "layers", "model", "hidden_store",
         "hidden_config_hash")


def write_factors(out: str | Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write a factors store atomically.

    ``arrays``: every array of :data:`ARRAYS` (``example_id`` optional); ``attrs``: every attr
    of :data:`ATTRS` but ``stage`` and ``lori_version``. A missing or unknown name is a bug in
    the caller (ValueError), not a user error.
    """
    import zarr

    want_arrays, want_attrs = set(ARRAYS) - {"example_id", *COORDS}, set(ATTRS[2:])
    if not want_arrays <= set(arrays) <= set(ARRAYS) or set(attrs) != want_attrs:
        raise ValueError(f"write_factors: arrays {sorted(arrays)} / attrs {sorted(attrs)} do not match the contract "
                         f"(arrays {sorted(ARRAYS)}, attrs {sorted(want_attrs)})")
    with atomic_path(out) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        for name, spec in ARRAYS.items():
            if name not in arrays:
                continue
            data = np.asarray(arrays[name]).astype(object if spec.dtype == "string" else spec.dtype, copy=False)
            zarr_put(g, name, data, spec.dims)
        g.attrs.update({"stage": STAGE, "lori_version": lori.__version__, **{k: attrs[k] for k in ATTRS[2:]}})
        layers = list(attrs["layers"] or [])
        finish_store(g, ARRAYS, {"layer": np.asarray(layers, dtype=np.int64)}
                     if len(layers) == np.shape(arrays["U_layer"])[0] else {})


def read_factors(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The projection arrays (:data:`PROJECTION`, as stored) and attrs of a factors store, checked."""
    group = open_store(path, PROJECTION, kind="factors")
    arrays = {name: read_array(group, name, path) for name in PROJECTION}
    u_l, u_h, mean, scale = (arrays[n] for n in PROJECTION)
    if mean.ndim != 2 or u_l.ndim != 2 or u_h.ndim != 2 or scale.ndim != 1 or any(
            a.dtype.kind != "f" for a in arrays.values()):
        raise ArtifactError(f"{path}: arrays {', '.join(PROJECTION)} must be float "
                            f"{', '.join(str(list(FACTOR_ARRAYS[n].dims)) for n in PROJECTION)}, got shapes "
                            f"{', '.join(str(a.shape) for a in arrays.values())}")
    if u_l.shape[0] != mean.shape[0] or u_h.shape[0] != mean.shape[1] or scale.shape[0] != mean.shape[0]:
        raise ArtifactError(f"{path}: inconsistent shapes U_layer {tuple(u_l.shape)}, "
                            f"U_hidden {tuple(u_h.shape)}, mean {tuple(mean.shape)}, scale {tuple(scale.shape)}")
    return arrays, dict(group.attrs)


def load_factors(path: str | Path) -> tuple[Factors, dict]:
    """A factors store as :class:`Factors` (float32 torch tensors, the layers they cover) and its attrs."""
    import torch

    arrays, attrs = read_factors(path)
    tensors = [torch.from_numpy(arrays[n].astype(np.float32)) for n in PROJECTION]
    return Factors(*tensors, layers=list(attrs.get("layers") or [])), attrs


def check_factors_fit(factors: Factors, factors_path: str | Path, model_config, model_path: str | Path) -> None:
    """Refuse factors of another architecture: their hidden size and layers must exist in the model."""
    hidden, n_layers = model_config.hidden_size, model_config.num_hidden_layers
    if factors.mean.shape[1] != hidden:
        raise ArtifactError(f"{factors_path}: factors of hidden size {factors.mean.shape[1]}, but {model_path} "
                            f"has hidden size {hidden} (factors from another model?)")
    if not factors.layers or max(factors.layers) > n_layers or len(factors.layers) != factors.mean.shape[0]:
        raise ArtifactError(f"{factors_path}: factor layers {factors.layers} (for {factors.mean.shape[0]} layers) "
                            f"do not fit {model_path} ({n_layers} layers; hidden_states indices 0..{n_layers})")

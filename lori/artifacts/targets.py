"""The targets store ``targets/<split>.zarr``: core trajectories and anchors of every training example.

Written by ``targets`` (:func:`create`), read by ``distill`` (:func:`read_targets`,
:func:`check_targets_match_factors`) and ``lori inspect``. This module is the store's single
contract; docs/artifacts.md describes the same layout:

- ``core`` float32 ``[token, rank_layer, rank_hidden]``: the teacher's CoT trajectories projected
  into the core by the factors, examples concatenated
- ``offsets`` int64 ``[example_plus_one]``: example i owns ``core[offsets[i]:offsets[i+1]]``
- ``anchors_core`` float32 ``[example, anchor, rank_layer, rank_hidden]``: the anchors in the core
- ``anchors`` float16 ``[example, anchor, layer, hidden]``: the anchors in full space (for
  full-space anchor losses)
- ``example_id`` string ``[example]``
- group attrs :data:`ATTRS`.

The ragged index, the full-space anchors and the index attrs are those of the hidden store
(:mod:`lori.artifacts.hidden`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lori.artifacts import hidden
from lori.artifacts.store import (
    ArraySpec,
    ArtifactError,
    atomic_path,
    check_disk_space,
    finish_store,
    open_store,
    read_array,
    zarr_create,
)
from lori.lowrank.maths import Factors

STAGE = "targets"
CORE = "activation after the factors' centring and per-layer scaling, in the factor basis"
ARRAYS: dict[str, ArraySpec] = {
    "core": ArraySpec(("token", "rank_layer", "rank_hidden"), "float32",
                      "core trajectory Z = H x2 U_layer^T x3 U_hidden^T of every CoT token (see offsets)", CORE),
    "offsets": hidden.ARRAYS["offsets"]._replace(description="ragged index: example i owns core rows "
                                                             "offsets[i]..offsets[i+1]"),
    "anchors_core": ArraySpec(("example", "anchor", "rank_layer", "rank_hidden"), "float32",
                              "anchor states projected into the core", CORE),
    "anchors": hidden.ARRAYS["anchors"],
    "example_id": hidden.ARRAYS["example_id"],
    "layer": hidden.ARRAYS["layer"],      # coordinates, as in the hidden store
    "anchor": hidden.ARRAYS["anchor"],
}
COORDS = hidden.COORDS
REQUIRED = tuple(n for n in ARRAYS if n not in COORDS)
# provenance given by the stage (the factors and their config hash: distill refuses targets of
# other factors), then the index attrs of every trajectory store
PROVENANCE_ATTRS = ("stage", "config_hash", "model", "factors", "factors_config_hash", "rank_layer", "rank_hidden",
                    "split")
ATTRS = PROVENANCE_ATTRS + hidden.INDEX_ATTRS
TOO_BIG_HINT = "train on fewer examples or factorize fewer layers"


# ---------------------------------------------------------------- writing
class TargetsWriter:
    """Fills a new targets store batch by batch (examples in order)."""

    def __init__(self, group, offsets: np.ndarray, n_layers: int, hidden_size: int, ranks: tuple[int, int]):
        tokens, examples = int(offsets[-1]), len(offsets) - 1
        rl, rd = ranks
        self.offsets = offsets
        self.anchors = hidden.create_anchors(group, examples, n_layers, hidden_size)
        # chunked like the hidden store's states (by the full-space size), so both stream alike
        self.core = zarr_create(group, "core", (tokens, rl, rd), ARRAYS["core"].dtype, ARRAYS["core"].dims,
                                chunks=(hidden.token_chunk(tokens, n_layers, hidden_size), rl, rd))
        self.anchors_core = zarr_create(group, "anchors_core", (examples, 1, rl, rd), ARRAYS["anchors_core"].dtype,
                                        ARRAYS["anchors_core"].dims, positions=hidden.ANCHOR_POSITIONS)

    def write(self, first: int, core: np.ndarray, anchors_core: np.ndarray, anchors: np.ndarray) -> None:
        """Examples ``first, first+1, ...``: their core trajectories ``[tokens, r_L, r_d]``
        (concatenated in example order), anchors in the core ``[examples, 1, r_L, r_d]`` and in
        full space ``[examples, 1, L, d]``."""
        last = first + len(anchors)
        lo, hi = int(self.offsets[first]), int(self.offsets[last])
        if len(core) != hi - lo:
            raise ValueError(f"examples {first}..{last} own {hi - lo} tokens, got a core for {len(core)}")
        self.core[lo:hi] = np.asarray(core, dtype=np.float32)
        self.anchors_core[first:last] = np.asarray(anchors_core, dtype=np.float32)
        self.anchors[first:last] = np.asarray(anchors).astype(np.float16)


@contextlib.contextmanager
def create(out: str | Path, offsets: np.ndarray, example_ids: Sequence[str], layers: list[int], hidden_size: int,
           ranks: tuple[int, int], attrs: dict) -> Iterator[TargetsWriter]:
    """Write a targets store atomically: check the disk, create the layout, yield a writer.

    ``attrs`` are the stage's provenance (:data:`PROVENANCE_ATTRS`); the index attrs are added
    here. The store appears under ``out`` only when the block ends without error.
    """
    n_layers = len(layers)
    needed = int(offsets[-1]) * ranks[0] * ranks[1] * 4 + len(example_ids) * n_layers * hidden_size * 2
    check_disk_space(out, needed, TOO_BIG_HINT)
    with atomic_path(out) as tmp:
        group = hidden.create_index(tmp, attrs, offsets, example_ids, layers)
        yield TargetsWriter(group, offsets, n_layers, hidden_size, ranks)
        finish_store(group, ARRAYS, hidden.coordinates(layers))


# ---------------------------------------------------------------- reading
@dataclass
class Targets:
    """A whole targets store in memory, checked (see :func:`read_targets`)."""
    core: np.ndarray             # float [token, r_L, r_d]
    offsets: np.ndarray          # int [example + 1], indexes core
    anchors_core: np.ndarray     # [example, anchor, r_L, r_d], as stored
    anchors: np.ndarray          # [example, anchor, L, d], as stored (float16)
    example_ids: list[str]
    attrs: dict


def read_targets(path: str | Path, record_ids: Sequence[str]) -> Targets:
    """Read a targets store made for the records ``record_ids`` (in that order), checking that
    ``core`` is a float ``[token, r_L, r_d]`` array that ``offsets`` indexes per example and
    that the anchors hold one row per example."""
    group = open_store(path, REQUIRED, kind="targets")
    ids = [str(i) for i in read_array(group, "example_id", path)]
    if ids != list(record_ids):
        raise ArtifactError(f"{path}: example ids do not match the training records "
                            f"({len(ids)} vs {len(record_ids)} examples); rerun the targets stage")
    core, offsets = read_array(group, "core", path), read_array(group, "offsets", path)
    if core.dtype.kind != "f" or core.ndim != 3:
        raise ArtifactError(f"{path}: array 'core' must be float [token, rank_layer, rank_hidden], "
                            f"got {core.dtype} {core.shape}")
    if offsets.ndim != 1 or len(offsets) != len(ids) + 1 or offsets[0] != 0 or offsets[-1] != len(core) \
            or np.any(np.diff(offsets) < 0):
        raise ArtifactError(f"{path}: array 'offsets' does not index the {len(core)} tokens of 'core' "
                            f"for {len(ids)} examples; rerun the targets stage")
    anchors = {name: read_array(group, name, path) for name in ("anchors_core", "anchors")}
    for name, a in anchors.items():
        if a.dtype.kind != "f" or a.ndim != 4 or len(a) != len(ids) or a.shape[1] < 1:
            raise ArtifactError(f"{path}: array '{name}' must be float [{', '.join(ARRAYS[name].dims)}] with one "
                                f"row per example ({len(ids)}), got {a.dtype} {a.shape}; rerun the targets stage")
    return Targets(core, offsets, anchors["anchors_core"], anchors["anchors"], ids, dict(group.attrs))


def check_targets_match_factors(targets: Targets, targets_path: str | Path, factors: Factors, factors_attrs: dict,
                                factors_path: str | Path) -> None:
    """Refuse targets made from other factors than ``factors`` (config hash, ranks, layers, sizes)."""
    if targets.attrs.get("factors_config_hash") != factors_attrs.get("config_hash"):
        raise ArtifactError(f"{targets_path} was made from factors with config hash "
                            f"{targets.attrs.get('factors_config_hash')}, but {factors_path} has "
                            f"{factors_attrs.get('config_hash')}; rerun the targets stage")
    ranks, core_ranks = tuple(int(r) for r in factors.ranks), tuple(targets.core.shape[1:])
    if core_ranks != ranks:
        raise ArtifactError(f"{targets_path}: array 'core' has ranks {core_ranks}, but {factors_path} "
                            f"has ranks {ranks}; rerun the targets stage")
    if list(targets.attrs.get("layers") or []) != factors.layers:
        raise ArtifactError(f"{targets_path} holds layers {targets.attrs.get('layers')}, but {factors_path} "
                            f"factorizes layers {factors.layers}; rerun the targets stage")
    full = (len(factors.layers), int(factors.mean.shape[1]))
    for name, want in (("anchors_core", ranks), ("anchors", full)):
        got = tuple(getattr(targets, name).shape[2:])
        if got != want:
            raise ArtifactError(f"{targets_path}: array '{name}' holds [{', '.join(ARRAYS[name].dims[2:])}] = {got}, "
                                f"but {factors_path} gives {want}; rerun the targets stage")

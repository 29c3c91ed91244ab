"""The hidden store ``hidden/<split>.zarr``: teacher hidden states over the CoT tokens.

Written by ``dump_hidden`` (one process, every torchrun rank, or shard stores that
:func:`concatenate` gathers), read by ``factorize`` (:func:`open_hidden`) and ``lori inspect``.
This module is the store's single contract; docs/artifacts.md describes the same layout:

- ``states``  float16 ``[token, layer, hidden]``: CoT-token states, examples concatenated
- ``offsets`` int64 ``[example_plus_one]``: example i owns ``states[offsets[i]:offsets[i+1]]``
- ``anchors`` float16 ``[example, anchor, layer, hidden]``: states at :data:`ANCHOR_POSITIONS`
- ``example_id`` string ``[example]``: joins back to the records (the ``example`` coordinate)
- coordinates ``layer`` (model layer indices) and ``anchor`` (position names); every array has
  ``description`` and ``units`` attrs and the metadata is consolidated (``xarray.open_zarr``)
- group attrs :data:`ATTRS`; a shard store of a sharded dump adds :data:`SHARD_ATTRS`.

The ragged index (``offsets``, ``example_id``), the full-space ``anchors`` and the index attrs
are shared with the targets store (:mod:`lori.artifacts.targets`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

import lori
from lori.artifacts.store import (
    ArraySpec,
    ArtifactError,
    atomic_path,
    check_disk_space,
    finish_store,
    index_summary,
    open_store,
    read_array,
    zarr_create,
    zarr_put,
)

STAGE = "dump_hidden"
ACTIVATION = "model activation (residual stream), unnormalised"
ARRAYS: dict[str, ArraySpec] = {
    "states": ArraySpec(("token", "layer", "hidden"), "float16",
                        "teacher hidden states at every CoT token, examples concatenated (see offsets)", ACTIVATION),
    "offsets": ArraySpec(("example_plus_one",), "int64",
                         "ragged index: example i owns token rows offsets[i]..offsets[i+1]", "token"),
    "anchors": ArraySpec(("example", "anchor", "layer", "hidden"), "float16",
                         "teacher hidden states at the anchor positions", ACTIVATION),
    "example_id": ArraySpec(("example",), "string", "record id: joins back to data/<split>.jsonl"),
    # coordinates (xarray): written last by lori.artifacts.store.finish_store
    "layer": ArraySpec(("layer",), "int64", "model hidden-state index of each kept layer (0 = embeddings)"),
    "anchor": ArraySpec(("anchor",), "string", "anchor position name"),
}
COORDS = ("layer", "anchor")             # not required: stores written before lori 0.1 coordinates lack them
REQUIRED = tuple(n for n in ARRAYS if n not in COORDS)   # a complete dump holds them all
READ = ("states", "offsets")             # what factorize needs (a synthetic store may hold only these)
ANCHOR_POSITIONS = ["answer_start"]      # the anchor axis: the position that predicts the first answer token
# provenance given by the stage, then the index attrs every trajectory store gets (INDEX_ATTRS)
PROVENANCE_ATTRS = ("stage", "model", "config_hash", "split", "records")
INDEX_ATTRS = ("layers", "anchor_positions", "lori_version", "examples", "tokens")
ATTRS = PROVENANCE_ATTRS + INDEX_ATTRS
SHARD_ATTRS = ("shard", "num_shards", "example_range", "inputs")   # on shard stores only
TOO_BIG_HINT = "dump fewer examples (dump_hidden.calibration_size) or layers"


# ---------------------------------------------------------------- writing
def token_chunk(tokens: int, n_layers: int, hidden: int) -> int:
    """Tokens per stored chunk of a trajectory array (~16 MiB of float32 per chunk)."""
    return max(1, min(tokens or 1, (16 << 20) // (n_layers * hidden * 4)))


def create_states(group, tokens: int, n_layers: int, hidden: int):
    """The empty ``states`` array, chunked along tokens."""
    spec = ARRAYS["states"]
    return zarr_create(group, "states", (tokens, n_layers, hidden), spec.dtype, spec.dims,
                       chunks=(token_chunk(tokens, n_layers, hidden), n_layers, hidden))


def create_anchors(group, examples: int, n_layers: int, hidden: int):
    """The empty ``anchors`` array (one anchor position, :data:`ANCHOR_POSITIONS`)."""
    spec = ARRAYS["anchors"]
    return zarr_create(group, "anchors", (examples, 1, n_layers, hidden), spec.dtype, spec.dims,
                       chunks=(max(1, min(examples, 256)), 1, n_layers, hidden), positions=ANCHOR_POSITIONS)


def create_index(tmp: Path, attrs: dict, offsets: np.ndarray, example_ids: Sequence[str], layers: list[int]):
    """A new trajectory-store group at ``tmp`` with its attrs, ``offsets`` and ``example_id``."""
    import zarr

    group = zarr.open_group(str(tmp), mode="w")
    group.attrs.update({**attrs, "layers": layers, "anchor_positions": ANCHOR_POSITIONS,
                        "lori_version": lori.__version__, "examples": len(example_ids), "tokens": int(offsets[-1])})
    zarr_put(group, "offsets", np.asarray(offsets, dtype=np.int64), ARRAYS["offsets"].dims)
    zarr_put(group, "example_id", np.array(list(example_ids), dtype=str), ARRAYS["example_id"].dims)
    return group


class HiddenWriter:
    """Fills a new hidden store batch by batch (examples in order)."""

    def __init__(self, group, offsets: np.ndarray, n_layers: int, hidden: int):
        self.offsets = offsets
        self.states = create_states(group, int(offsets[-1]), n_layers, hidden)
        self.anchors = create_anchors(group, len(offsets) - 1, n_layers, hidden)

    def write(self, first: int, states: np.ndarray, anchors: np.ndarray) -> None:
        """Examples ``first, first+1, ...``: their states ``[tokens, L, d]`` (concatenated in
        example order) and anchors ``[examples, 1, L, d]``, stored as float16."""
        last = first + len(anchors)
        lo, hi = int(self.offsets[first]), int(self.offsets[last])
        if len(states) != hi - lo:
            raise ValueError(f"examples {first}..{last} own {hi - lo} tokens, got states for {len(states)}")
        self.states[lo:hi] = np.asarray(states).astype(np.float16)
        self.anchors[first:last] = np.asarray(anchors).astype(np.float16)


@contextlib.contextmanager
def create(out: str | Path, offsets: np.ndarray, example_ids: Sequence[str], layers: list[int], hidden: int,
           attrs: dict) -> Iterator[HiddenWriter]:
    """Write a hidden store atomically: check the disk, create the layout, yield a writer.

    ``attrs`` are the stage's provenance (:data:`PROVENANCE_ATTRS`, plus shard or rank attrs);
    the index attrs are added here. The store appears under ``out`` only when the block ends
    without error.
    """
    n_layers = len(layers)
    check_disk_space(out, (int(offsets[-1]) + len(example_ids)) * n_layers * hidden * 2, TOO_BIG_HINT)
    with atomic_path(out) as tmp:
        group = create_index(tmp, attrs, offsets, example_ids, layers)
        yield HiddenWriter(group, offsets, n_layers, hidden)
        finish_store(group, ARRAYS, coordinates(layers))


def coordinates(layers: list[int]) -> dict[str, np.ndarray]:
    """The coordinate arrays of a trajectory store: its layers' model indices and the anchor names."""
    return {"layer": np.asarray(layers, dtype=np.int64), "anchor": np.array(ANCHOR_POSITIONS, dtype=str)}


# ---------------------------------------------------------------- shard stores
def read_shard_attrs(path: str | Path) -> dict:
    """The attrs of a complete shard store of a sharded dump (refuses a whole dump)."""
    attrs = dict(open_store(path, REQUIRED, kind="dump_hidden shard").attrs)
    if "shard" not in attrs:
        raise ArtifactError(f"{path}: not a dump_hidden shard store (no 'shard' attribute)")
    return attrs


def concatenate(part_paths: Sequence[str | Path], out: str | Path, attrs: dict, example_ids: Sequence[str]) -> dict:
    """Concatenate hidden stores (in order) into one store of the contract layout, streamed.

    The parts must hold ``example_ids`` in order with the same layers; the result has the
    layout, chunking and attrs (``attrs`` + the index attrs) of a one-process dump of them,
    so bitwise the same store. Returns its :func:`~lori.artifacts.store.index_summary`.
    """
    parts = [open_store(p, REQUIRED, kind="hidden") for p in part_paths]
    ids = [str(i) for g, p in zip(parts, part_paths) for i in read_array(g, "example_id", p)]
    if ids != list(example_ids):
        raise ArtifactError(f"{out}: the parts hold {len(ids)} examples that are not the {len(example_ids)} "
                            f"calibration records in order (stale or mismatched parts: {', '.join(map(str, part_paths))})")
    layers = [list(g.attrs.get("layers") or []) for g in parts]
    shapes = {tuple(g["states"].shape[1:]) for g in parts}
    if len(shapes) != 1 or any(l != layers[0] for l in layers) or len(layers[0]) != next(iter(shapes))[0]:
        raise ArtifactError(f"{out}: parts of different layers / hidden sizes ({sorted(shapes)}, layers {layers})")
    (_, hidden), = shapes
    part_offsets = [read_array(g, "offsets", p) for g, p in zip(parts, part_paths)]
    starts = np.cumsum([0] + [int(o[-1]) for o in part_offsets])
    offsets = np.concatenate([[0]] + [o[1:] + s for o, s in zip(part_offsets, starts)]).astype(np.int64)
    with create(out, offsets, ids, layers[0], hidden, attrs) as writer:
        ex = 0
        for g, p, start in zip(parts, part_paths, starts):
            _copy_rows(g["anchors"], writer.anchors, ex, p, "anchors")
            _copy_rows(g["states"], writer.states, int(start), p, "states")
            ex += g["anchors"].shape[0]
    return index_summary(offsets)


def _copy_rows(src, dst, start: int, path, name: str) -> None:
    """``dst[start:start+len(src)] = src``, one stored chunk of ``dst`` at a time (bounded memory)."""
    step = dst.chunks[0]
    for a in range(0, src.shape[0], step):
        b = min(src.shape[0], a + step)
        try:
            block = np.asarray(src[a:b])
        except Exception as e:  # zarr raises several types for a damaged chunk
            raise ArtifactError(f"{path}: array '{name}' unreadable at rows {a}..{b} ({type(e).__name__}: {e})") from None
        dst[start + a : start + b] = block


# ---------------------------------------------------------------- reading
@dataclass
class HiddenStore:
    """An opened, checked hidden store; ``states`` stays on disk (read it in chunks)."""
    path: str
    group: Any
    states: Any                  # the zarr array [token, layer, hidden]
    offsets: np.ndarray          # int64 [example + 1]
    attrs: dict

    def example_ids(self) -> np.ndarray | None:
        """``example_id`` as strings, or None when the store has none (a synthetic store)."""
        return read_array(self.group, "example_id", self.path).astype(object) if "example_id" in self.group else None


def open_hidden(path: str | Path) -> HiddenStore:
    """Open a hidden store, checking ``states`` (float, 3-D) and that ``offsets`` indexes it."""
    path = str(path)
    group = open_store(path, READ, kind="hidden")
    states = group["states"]
    if len(states.shape) != 3:
        raise ArtifactError(f"{path}: array 'states' must be [token, layer, hidden], got shape {states.shape}")
    if np.dtype(states.dtype).kind != "f":   # integer/bool states are a wrong or foreign array, not hidden states
        raise ArtifactError(f"{path}: array 'states' must hold floats, got dtype {states.dtype}")
    offsets = read_array(group, "offsets", path)
    if (offsets.ndim != 1 or len(offsets) < 1 or offsets.dtype.kind not in "iu" or offsets[0] != 0
            or np.any(np.diff(offsets) < 0) or offsets[-1] != states.shape[0]):
        raise ArtifactError(f"{path}: array 'offsets' must be non-decreasing integers from 0 to the "
                            f"{states.shape[0]} tokens of 'states' (got {len(offsets)} values, "
                            f"last {offsets[-1] if len(offsets) else None})")
    return HiddenStore(path, group, states, offsets.astype(np.int64), dict(group.attrs))

"""The factorize shard files ``lowrank/shards/<step>.part<i>.npz`` and ``<step>.state.npz``.

A sharded factorize (:mod:`lori.lowrank.passes`) hands its work between Snakemake jobs
through small ``.npz`` files: a *partial* (one shard's accumulator of one pass) and a
*state* (what the passes so far established, :class:`~lori.lowrank.passes.FactorState`).
Each file holds the dataclass's fields as arrays (nested dataclasses prefixed ``name.``;
no pickles) and a JSON ``__meta__``:

- partial: ``kind: partial``, ``step``, ``shard``, ``num_shards``, ``config_hash``, ``state``
  (fingerprint of the state it was computed from: stale partials are refused), ``tokens``,
  ``examples``
- state: ``step``, ``config_hash``, ``kind: state``, ``fingerprint`` (content hash)

Files are written atomically; reads raise :class:`ArtifactError` naming the file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lori.artifacts.store import ArtifactError, atomic_path
from lori.lowrank.maths import ExampleDiagnostics, GramAccumulator, MomentAccumulator, ProjectedGramAccumulator
from lori.lowrank.passes import Accumulator, FactorState

NESTED = {"diagnostics": ExampleDiagnostics}     # dataclass-valued fields of FactorState
ACCUMULATORS = {"moments": MomentAccumulator, "grams": GramAccumulator, "hooi": ProjectedGramAccumulator,
                "diagnostics": ExampleDiagnostics}
LIST_FIELDS = ("steps", "errors")                # stored as arrays, read back as lists


def fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """Content hash of a state, recorded by the partials computed from it (stale ones are refused)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()[:16]


def pack(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Dataclass -> flat dict of arrays (None fields left out; nested dataclasses prefixed)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(pack(v, f"{prefix}{f.name}."))
        elif v is not None:
            out[prefix + f.name] = np.asarray(v)
    return out


def unpack(cls: type, arrays: dict[str, np.ndarray], prefix: str = "") -> Any:
    """Flat dict of arrays -> dataclass ``cls`` (the inverse of :func:`pack`)."""
    values = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if any(k.startswith(key + ".") for k in arrays):
            values[f.name] = unpack(NESTED[f.name], arrays, key + ".")
        elif key in arrays:
            a = arrays[key]
            values[f.name] = a.item() if a.ndim == 0 else (a.tolist() if f.name in LIST_FIELDS else a)
    return cls(**values)


def save_npz(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Arrays + a JSON ``meta`` in one ``.npz``, written atomically (no pickles)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)


def load_npz(path: str | Path, what: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of a ``.npz`` written by :func:`save_npz`."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: factorize {what} file is missing (run the step that writes it first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable factorize {what} file ({type(e).__name__}: {e})") from None
    return arrays, meta


def save_partial(path: str | Path, acc: Accumulator, meta: dict) -> None:
    """One shard's accumulator of one pass; ``meta`` as listed in the module docstring, less ``kind``."""
    save_npz(path, pack(acc), {"kind": "partial", **meta})


def load_partial(path: str | Path) -> tuple[Accumulator, dict]:
    arrays, meta = load_npz(path, "partial")
    step = meta.get("step", "")
    cls = ACCUMULATORS.get("hooi" if step.startswith("hooi") else step)
    if meta.get("kind") != "partial" or cls is None:
        raise ArtifactError(f"{path}: not a factorize partial file (kind {meta.get('kind')!r}, step {step!r})")
    return unpack(cls, arrays), meta


def save_state(path: str | Path, state: FactorState, meta: dict) -> None:
    """The state after a gathered pass, with its fingerprint."""
    arrays = pack(state)
    save_npz(path, arrays, {**meta, "kind": "state", "fingerprint": fingerprint(arrays)})


def load_state(path: str | Path) -> tuple[FactorState, dict]:
    arrays, meta = load_npz(path, "state")
    if meta.get("kind") != "state":
        raise ArtifactError(f"{path}: not a factorize state file (kind {meta.get('kind')!r})")
    return unpack(FactorState, arrays), meta

"""Atomic outputs and self-describing Zarr stores: what every artifact contract builds on.

Every stage writes to a temporary sibling (``.<name>.tmp-<pid>``) and renames it into
place only when complete, so a killed stage never leaves a half-written artifact under
the real name and an existing output survives a failed rerun.

In a Zarr store every array carries its dimension names (``_ARRAY_DIMENSIONS``, xarray
style, and zarr 3 ``dimension_names``) and the group its provenance (creating stage,
config hash, package version). :func:`finish_store` makes a complete store read well with
``xarray.open_zarr``: coordinate arrays (``layer``: model layer indices), ``example_id`` as the
coordinate of the ``example`` dim, ``description``/``units`` attrs, and consolidated metadata. Each store's own layout is one module of this package
(:mod:`lori.artifacts.hidden`, :mod:`~lori.artifacts.factors`, :mod:`~lori.artifacts.targets`),
described for users in docs/artifacts.md.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path
import warnings
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from lori.errors import ArtifactError  # noqa: F401  (re-exported: the stores' error)

log = logging.getLogger("lori.artifacts")


class ArraySpec(NamedTuple):
    """One array of a store's contract: its dimension names and dtype (``string`` for text), and
    the ``description`` and ``units`` attrs it is stored with (:func:`finish_store`)."""
    dims: tuple[str, ...]
    dtype: str
    description: str = ""
    units: str = ""


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    Works for files and directories (Zarr stores, checkpoints). On error the temporary
    is removed and any existing ``path`` is left untouched; a full disk (ENOSPC) becomes an
    :class:`ArtifactError` naming ``path`` (one ``error:`` line from a stage, exit 2).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            if path.is_dir():
                _remove(path)
            os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno == errno.ENOSPC:   # the disk filled up during the write (after any free-space check)
            raise ArtifactError(f"{path}: no space left on device while writing it (nothing was kept); free "
                                f"space on {path.parent} and rerun") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing (run the stage that writes it first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def check_disk_space(out: str | Path, needed: int, hint: str) -> None:
    """Say how much a store will take before writing it, and stop early if it cannot fit
    (``hint`` says how to make it smaller)."""
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    log.info("%s will take about %s (%s free)", out, size_text(needed), size_text(free))
    if needed > 0.95 * free:
        raise ArtifactError(f"{out}: needs about {size_text(needed)} but only {size_text(free)} is free "
                            f"on {parent}; {hint}")


def size_text(n: float) -> str:
    """Bytes in the unit that shows them with three significant digits: ``20.4 MiB``, ``1.25 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------- zarr
def zarr_create(group, name: str, shape: Sequence[int], dtype, dims: Sequence[str],
                chunks: Sequence[int] | None = None, compress: bool = False, **attrs):
    """Create an array with ``_ARRAY_DIMENSIONS``; uncompressed by default (hidden states
    barely compress and zstd costs ~4x write speed)."""
    assert len(dims) == len(shape), f"{name}: {len(dims)} dims for shape {tuple(shape)}"
    kwargs = {} if compress else {"compressors": None}
    arr = group.create_array(name, shape=tuple(int(s) for s in shape), dtype=dtype, dimension_names=list(dims),
                             chunks=tuple(chunks) if chunks else "auto", fill_value=0, **kwargs)
    arr.attrs.update({"_ARRAY_DIMENSIONS": list(dims), **attrs})
    return arr


def zarr_put(group, name: str, data: np.ndarray, dims: Sequence[str], **attrs):
    """Create and fill an array in one call."""
    data = np.asarray(data)
    if data.dtype.kind in "UO":
        # variable-length UTF-8: the string type with a Zarr v3 spec
        arr = group.create_array(name, shape=data.shape, dtype=str, fill_value="", compressors=None,
                                 dimension_names=list(dims))
        arr.attrs.update({"_ARRAY_DIMENSIONS": list(dims), **attrs})
        if data.size:
            arr[...] = data.astype(object)
        return arr
    chunks = None
    if data.ndim and data.shape[0] > 0:
        # chunk the leading (token/example) axis so readers can stream it
        per_row = max(1, int(np.prod(data.shape[1:])) * data.dtype.itemsize)
        rows = max(1, min(data.shape[0], (16 << 20) // per_row))
        chunks = (rows, *data.shape[1:])
    arr = zarr_create(group, name, data.shape, data.dtype, dims, chunks=chunks, **attrs)
    if data.size:
        arr[...] = data
    return arr


def finish_store(group, arrays: Mapping[str, ArraySpec], coords: Mapping[str, Any] | None = None) -> None:
    """Make a complete store self-describing for xarray; call it last, when every array is written.

    Writes the coordinate arrays ``coords`` (name -> values; their specs are in ``arrays``), sets
    each array's ``description`` and ``units`` attrs from its spec, names ``example_id`` as the
    coordinate (CF ``coordinates`` attr) of every array along ``example``, and consolidates the
    metadata into the root ``zarr.json`` so ``xarray.open_zarr`` opens it without a warning."""
    import zarr

    for name, values in (coords or {}).items():
        zarr_put(group, name, np.asarray(values), arrays[name].dims)
    with_ids = "example_id" in group
    for name, spec in arrays.items():
        if name not in group:
            continue
        attrs = {key: value for key, value in (("description", spec.description), ("units", spec.units)) if value}
        if with_ids and "example" in spec.dims and name != "example_id":
            attrs["coordinates"] = "example_id"
        group[name].attrs.update(attrs)
    with warnings.catch_warnings():
        # zarr 3 notes that consolidation is not (yet) in the v3 spec; zarr and xarray both read it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(group.store, path=group.path)


def open_store(path: str | Path, required: Sequence[str] = (), kind: str = "artifact"):
    """Open a Zarr group read-only, checking it exists and holds ``required`` arrays.

    The arrays' own metadata is read, not the consolidated copy: the checks are about what is on disk."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: {kind} store is missing (run the stage that writes it first)")
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception as e:  # zarr raises several types for corrupt metadata
        raise ArtifactError(f"{path}: not a readable Zarr group ({type(e).__name__}: {e})") from None
    for name in required:
        try:
            arr = group[name]
            arr.shape  # noqa: B018 - touches the metadata
        except Exception:
            raise ArtifactError(f"{path}: {kind} store has no readable array '{name}'") from None
    return group


def read_array(group, name: str, path: str | Path = "") -> np.ndarray:
    """Read a whole array; a corrupt chunk gives an error naming the array."""
    try:
        return np.asarray(group[name][...])
    except Exception as e:
        raise ArtifactError(f"{path}: array '{name}' is unreadable or corrupt ({type(e).__name__}: {e})") from None


def index_summary(offsets: np.ndarray) -> dict:
    """Examples, tokens and mean tokens per example of a ragged store indexed by ``offsets``."""
    examples, tokens = len(offsets) - 1, int(offsets[-1])
    return {"examples": examples, "tokens": tokens, "mean_cot_tokens": tokens / examples if examples else 0.0}


def group_attrs(group) -> dict:
    return dict(group.attrs)

"""Low-rank maths of teacher trajectories (no I/O): mode Grams, factors, ranks, projection.

A trajectory chunk is ``H [tokens, L, d]``. After an optional per-(layer, hidden) mean and
per-layer scale, ``X = (H - mean) / scale[:, None]``, the mode Grams are

    G_L = sum_t X_t X_t^T            [L, L]   (layer mode)
    G_d = sum_{t,l} x_{t,l} x_{t,l}^T [d, d]   (hidden mode)

accumulated in float64 chunk by chunk (memory O(L^2 + d^2), independent of tokens), and the
factors are their top eigenvectors (HOSVD). The core of a trajectory is
``Z = X x_2 U_L^T x_3 U_d^T  [tokens, r_L, r_d]``.

HOOI refines the HOSVD factors one mode at a time: the hidden factor becomes the top
eigenvectors of ``sum_t X_t^T U_L U_L^T X_t`` (the hidden-mode Gram after projecting the layer
mode), then the layer factor those of ``sum_t X_t U_d U_d^T X_t^T``, and so on. Each update
maximises the captured energy ``sum_t ||U_L^T X_t U_d||^2`` over one factor with the other
fixed, so the reconstruction error never increases.

Every accumulator has ``update`` (one chunk) and ``merge`` (another shard's partial sums), so
shards of a dump reduce to exactly the same sums as one pass over it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: the factorize stage itself needs only numpy
    import torch


def select_layers(spec: str | list[int], num_hidden_layers: int) -> list[int]:
    """Indices into ``hidden_states`` (0 = embeddings, 1..N = block outputs).

    ``all`` = 1..N; ``every_k:<k>`` = k, 2k, ... and always N; a list is taken as is.
    """
    if isinstance(spec, list):
        bad = [i for i in spec if not 0 <= i <= num_hidden_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range 0..{num_hidden_layers}")
        return sorted(spec)
    if spec == "all":
        return list(range(1, num_hidden_layers + 1))
    if spec.startswith("every_k:"):
        k = int(spec.split(":", 1)[1])
        if k < 1:
            raise ValueError(f"layer spec {spec!r}: k must be >= 1")
        return sorted(set(range(k, num_hidden_layers + 1, k)) | {num_hidden_layers})
    raise ValueError(f"unknown layer spec {spec!r} (all | every_k:<k> | list of indices)")


@dataclass
class MomentAccumulator:
    """Pass 1: token count, per-(layer, hidden) sums and per-layer sums of squares."""
    count: int = 0
    sums: np.ndarray | None = None      # [L, d] float64
    sumsq: np.ndarray | None = None     # [L, d] float64

    def update(self, chunk: np.ndarray) -> None:
        x = np.asarray(chunk, dtype=np.float64)                                 # [T, L, d]
        if self.sums is None:
            self.sums = np.zeros(x.shape[1:])
            self.sumsq = np.zeros(x.shape[1:])
        self.count += x.shape[0]
        self.sums += x.sum(0)
        self.sumsq += np.einsum("tld,tld->ld", x, x)

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        if other.sums is None:
            return self
        if self.sums is None:
            return other
        return MomentAccumulator(self.count + other.count, self.sums + other.sums, self.sumsq + other.sumsq)

    def transform(self, center: bool, layer_scaling: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean [L, d], scale [L])`` so that ``X = (H - mean) / scale``."""
        if self.count == 0:
            raise ValueError("no tokens to factorize (empty dump)")
        mean = self.sums / self.count if center else np.zeros_like(self.sums)
        if layer_scaling == "none":
            scale = np.ones(self.sums.shape[0])
        elif layer_scaling == "layer_rms":
            # RMS of the (centred) values per layer; guards dead layers against division by 0
            second = self.sumsq / self.count - (mean**2 if center else 0.0)
            scale = np.sqrt(np.maximum(second.mean(1), 1e-12))
        else:
            raise ValueError(f"unknown layer_scaling {layer_scaling!r} (none | layer_rms)")
        return mean, scale


def normalize(chunk: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(H - mean) / scale`` as a new float64 array ``[T, L, d]`` (exact sums need float64)."""
    x = np.array(chunk, dtype=np.float64)                                       # a copy: modified in place
    if mean.any():
        x -= mean
    if np.any(scale != 1):
        x /= scale[:, None]
    return x


@dataclass
class GramAccumulator:
    """Pass 2: the two mode Grams of the transformed data, in float64."""
    gram_layer: np.ndarray
    gram_hidden: np.ndarray
    count: int = 0
    total_energy: float = 0.0

    @classmethod
    def empty(cls, layers: int, hidden: int) -> "GramAccumulator":
        return cls(np.zeros((layers, layers)), np.zeros((hidden, hidden)))

    def update(self, chunk: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
        x = normalize(chunk, mean, scale)                                       # [T, L, d]
        flat = x.reshape(-1, x.shape[-1])                                       # [T*L, d]
        # `a.T @ a` on one buffer runs as a BLAS rank-k update (syrk): half the flops of a gemm
        self.gram_hidden += flat.T @ flat
        # per-token L x L products summed: twice as fast as a transposed [L, T*d] copy for L << d
        self.gram_layer += (x @ x.transpose(0, 2, 1)).sum(0)
        self.count += x.shape[0]
        self.total_energy += float(np.vdot(flat, flat))

    def merge(self, other: "GramAccumulator") -> "GramAccumulator":
        return GramAccumulator(self.gram_layer + other.gram_layer, self.gram_hidden + other.gram_hidden,
                               self.count + other.count, self.total_energy + other.total_energy)


@dataclass
class ProjectedGramAccumulator:
    """A HOOI pass: one mode's Gram after projecting the other mode on its factor.

    ``mode="hidden"``: ``sum_t X_t^T U_L U_L^T X_t  [d, d]``; ``mode="layer"``:
    ``sum_t X_t U_d U_d^T X_t^T  [L, L]``. ``trace(U^T gram U)`` is the energy captured by
    the pair (U, other), its top-r eigenvalue sum that of the updated pair.
    """
    mode: str
    gram: np.ndarray
    count: int = 0

    @classmethod
    def empty(cls, mode: str, layers: int, hidden: int) -> "ProjectedGramAccumulator":
        if mode not in ("layer", "hidden"):
            raise ValueError(f"unknown mode {mode!r} (layer | hidden)")
        n = hidden if mode == "hidden" else layers
        return cls(mode, np.zeros((n, n)))

    def update(self, chunk: np.ndarray, mean: np.ndarray, scale: np.ndarray, other: np.ndarray) -> None:
        x = normalize(chunk, mean, scale)                                       # [T, L, d]
        if self.mode == "hidden":
            flat = np.matmul(other.T, x).reshape(-1, x.shape[-1])               # [T*r_L, d]
            self.gram += flat.T @ flat
        else:
            y = (x.reshape(-1, x.shape[-1]) @ other).reshape(*x.shape[:2], -1)  # [T, L, r_d]
            self.gram += (y @ y.transpose(0, 2, 1)).sum(0)
        self.count += x.shape[0]

    def merge(self, other: "ProjectedGramAccumulator") -> "ProjectedGramAccumulator":
        if other.mode != self.mode:
            raise ValueError(f"cannot merge {self.mode}-mode and {other.mode}-mode partial Grams")
        return ProjectedGramAccumulator(self.mode, self.gram + other.gram, self.count + other.count)


def effective_ranks(grams: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Effective ranks (Roy & Vetterli 2007) from trajectory Grams ``[B, n, n]``, zero-padded
    beyond each trajectory's length ``lengths[b]``.

    ``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s`` of the trajectory's
    ``[n_b, L*d]`` unfolding (square roots of its Gram's eigenvalues): 1 for a rank-one
    trajectory, n_b when its singular values are equal, 0 for an empty or all-zero one.
    """
    if grams.shape[-1] == 0:
        return np.zeros(len(grams))
    lam = np.linalg.eigvalsh(grams)                                             # [B, n], batched LAPACK
    # rounding leaves eigenvalues of ~n*eps*max where the true ones are 0 (padding included):
    # drop them, or an exact rank-one trajectory would come out as 1.0000001
    keep = lam > (lengths * 1e-14 * np.maximum(lam.max(axis=1), 0.0))[:, None]
    s = np.sqrt(np.where(keep, lam, 0.0))
    total = s.sum(axis=1)
    p = s / np.where(total > 0, total, 1.0)[:, None]
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return np.where(total > 0, np.exp(entropy), 0.0)


def effective_rank(x: np.ndarray) -> float:
    """Effective rank of one trajectory ``[n, ...]`` unfolded to ``[n, rest]`` (see :func:`effective_ranks`)."""
    if len(x) == 0:
        return 0.0
    m = x.reshape(len(x), -1)
    return float(effective_ranks((m @ m.T)[None], np.array([len(x)]))[0])


@dataclass
class ExampleDiagnostics:
    """Per-example diagnostics of a contiguous range of examples ``first, first+1, ...``.

    For each example's normalised trajectory ``X_i [n_i, L, d]``: its effective rank, its CoT
    length ``n_i``, its energy ``||X_i||^2`` and the energy of its core under the global
    factors ``||X_i x_2 U_L^T x_3 U_d^T||^2``. Merging concatenates adjacent ranges.
    """
    first: int = 0
    effective_rank: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cot_length: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    energy_total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energy_core: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.cot_length)

    @classmethod
    def of_examples(cls, first: int, examples, mean: np.ndarray, scale: np.ndarray, U_layer: np.ndarray,
                    U_hidden: np.ndarray, batch_bytes: int = 32 << 20) -> "ExampleDiagnostics":
        """Diagnostics of ``examples`` (an iterable of ``H_i [n_i, L, d]``), the first being ``first``.

        Examples go through in zero-padded batches of about ``batch_bytes`` (float64): per-example
        numpy calls on ~30-token trajectories would cost more in overhead than in maths.
        """
        out, batch, longest = cls(first), [], 0
        for h in examples:
            batch.append(h)
            longest = max(longest, len(h))
            if len(batch) * longest * 8 * int(np.prod(h.shape[1:])) >= batch_bytes:
                out = out.merge(cls._of_batch(out.first + len(out), batch, mean, scale, U_layer, U_hidden))
                batch, longest = [], 0
        return out.merge(cls._of_batch(out.first + len(out), batch, mean, scale, U_layer, U_hidden)) if batch else out

    @classmethod
    def _of_batch(cls, first: int, batch: list[np.ndarray], mean, scale, U_layer, U_hidden) -> "ExampleDiagnostics":
        lengths = np.array([len(h) for h in batch], dtype=np.int64)
        n, (L, d) = int(lengths.max()), batch[0].shape[1:]
        if n == 0:  # only examples without CoT tokens
            return cls(first, np.zeros(len(batch)), lengths, np.zeros(len(batch)), np.zeros(len(batch)))
        x = np.zeros((len(batch), n, L, d))                                     # [B, n, L, d]
        for b, h in enumerate(batch):
            x[b, : len(h)] = h
        x = normalize(x, mean, scale)
        x[np.arange(n)[None, :] >= lengths[:, None]] = 0.0                      # padding stays out of every sum
        m = x.reshape(len(batch), n, L * d)
        grams = m @ m.transpose(0, 2, 1)                                        # [B, n, n]
        y = (x.reshape(-1, d) @ U_hidden).reshape(len(batch), n, L, -1)         # [B, n, L, r_d]
        core = np.tensordot(y, U_layer, axes=([2], [0]))                        # [B, n, r_d, r_L]
        return cls(first, effective_ranks(grams, lengths), lengths, np.einsum("bii->b", grams),
                   np.einsum("btsr,btsr->b", core, core))

    def merge(self, other: "ExampleDiagnostics") -> "ExampleDiagnostics":
        if other.first != self.first + len(self):
            raise ValueError(f"diagnostics of examples {self.first}..{self.first + len(self)} and "
                             f"{other.first}.. are not adjacent")
        return ExampleDiagnostics(self.first, *(np.concatenate([getattr(self, k), getattr(other, k)])
                                                for k in ("effective_rank", "cot_length", "energy_total", "energy_core")))

    @property
    def energy_captured(self) -> np.ndarray:
        """Fraction of each example's energy its core keeps (NaN for an example with none)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.energy_total > 0, self.energy_core / self.energy_total, np.nan)


def eig_desc(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix.

    Signs are fixed (largest-magnitude entry of each vector positive) so factors are
    reproducible across runs and shards.
    """
    vals, vecs = np.linalg.eigh((gram + gram.T) / 2)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    idx = np.abs(vecs).argmax(0)
    vecs = vecs * np.sign(vecs[idx, np.arange(vecs.shape[1])])
    return vals, vecs


def energy_curve(spectrum: np.ndarray) -> np.ndarray:
    """Cumulative energy fraction captured by ranks 1..n."""
    total = spectrum.sum()
    return np.cumsum(spectrum) / total if total > 0 else np.ones_like(spectrum)


def choose_rank(spectrum: np.ndarray, energy: float) -> int:
    """Smallest rank whose cumulative energy reaches ``energy``."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    curve = energy_curve(spectrum)
    return int(min(len(curve), np.searchsorted(curve, energy - 1e-12) + 1))


def relative_error(captured: float, total: float) -> float:
    """Relative reconstruction error ``||X - X_hat|| / ||X||`` of an orthogonal projection that
    keeps energy ``captured`` of ``total`` (tensorly's convention: a norm, not its square)."""
    return float(np.sqrt(max(total - captured, 0.0) / total)) if total > 0 else 0.0


@dataclass
class Factors:
    """Everything needed to project a trajectory into the core."""
    U_layer: torch.Tensor      # [L, r_L]
    U_hidden: torch.Tensor     # [d, r_d]
    mean: torch.Tensor         # [L, d]
    scale: torch.Tensor        # [L]
    layers: list[int] = field(default_factory=list)

    def to(self, device, dtype=None) -> "Factors":
        import torch

        dtype = dtype or torch.float32
        return Factors(*(t.to(device=device, dtype=dtype) for t in (self.U_layer, self.U_hidden, self.mean, self.scale)),
                       self.layers)

    @property
    def ranks(self) -> tuple[int, int]:
        return self.U_layer.shape[1], self.U_hidden.shape[1]

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """``(h - mean) / scale`` for states ``[..., L, d]``."""
        return (h - self.mean) / self.scale[:, None]

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Core of states ``[..., L, d]`` -> ``[..., r_L, r_d]``."""
        import torch

        return torch.einsum("...ld,lr,ds->...rs", self.normalize(h), self.U_layer, self.U_hidden)

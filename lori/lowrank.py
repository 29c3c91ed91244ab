"""Low-rank maths of teacher trajectories (no I/O): mode Grams, factors, ranks, projection.

A trajectory chunk is ``H [tokens, L, d]``. After an optional per-(layer, hidden) mean and
per-layer scale, ``X = (H - mean) / scale[:, None]``, the mode Grams are

    G_L = sum_t X_t X_t^T            [L, L]   (layer mode)
    G_d = sum_{t,l} x_{t,l} x_{t,l}^T [d, d]   (hidden mode)

accumulated in float64 chunk by chunk (memory O(L^2 + d^2), independent of tokens), and the
factors are their top eigenvectors (HOSVD). The core of a trajectory is
``Z = X x_2 U_L^T x_3 U_d^T  [tokens, r_L, r_d]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
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
        x = (np.asarray(chunk, dtype=np.float64) - mean) / scale[:, None]       # [T, L, d]
        self.gram_layer += np.einsum("tld,tmd->lm", x, x)
        flat = x.reshape(-1, x.shape[-1])                                       # [T*L, d]
        self.gram_hidden += flat.T @ flat
        self.count += x.shape[0]
        self.total_energy += float(np.einsum("tld,tld->", x, x))

    def merge(self, other: "GramAccumulator") -> "GramAccumulator":
        return GramAccumulator(self.gram_layer + other.gram_layer, self.gram_hidden + other.gram_hidden,
                               self.count + other.count, self.total_energy + other.total_energy)


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


@dataclass
class Factors:
    """Everything needed to project a trajectory into the core."""
    U_layer: torch.Tensor      # [L, r_L]
    U_hidden: torch.Tensor     # [d, r_d]
    mean: torch.Tensor         # [L, d]
    scale: torch.Tensor        # [L]
    layers: list[int] = field(default_factory=list)

    def to(self, device, dtype=torch.float32) -> "Factors":
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
        return torch.einsum("...ld,lr,ds->...rs", self.normalize(h), self.U_layer, self.U_hidden)

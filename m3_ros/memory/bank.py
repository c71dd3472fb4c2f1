"""Principal scene components (PSC): Algorithm 1 similarity reduction, batch and streaming.

Algorithm 1 as in the method note and the reference code: L2-normalise the rows; walk them in
order; row i is kept iff none of its neighbours (rows with cosine >= theta, itself included)
is already *taken*; keeping it marks all its neighbours taken. Only a kept row marks rows
taken: a row dropped because a neighbour was taken marks nothing. Two consequences, both
tested: kept rows are pairwise below theta, and a dropped row is either within theta of a
kept row or within theta of a row that is (the reference code's look-ahead also drops rows
whose *neighbour* is covered, so "a kept row within theta" alone does not hold for it).

Streaming form (`MemoryBank.add`): each call runs Algorithm 1 over the incoming rows with the
bank's rows walked first as already kept, so a new row can only be kept if no bank row has
cosine >= theta with it. The look-ahead therefore spans the bank and the current call's rows
(one keyframe), never rows of earlier calls that were dropped. Fed all rows in one call, the
streaming bank equals `similarity_reduction` exactly.

Cap policy: once the bank holds `max_rows` rows, new rows are not added (nothing is replaced
or merged, so existing principal queries keep pointing at the same rows); such a row is
represented by its nearest bank row, which `add` returns as its assignment.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Cosines are compared with this slack so that theta = 1.0 merges exact duplicates even when
# a normalised row's self-similarity rounds to 0.99999994.
COS_EPS = 1e-6


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows of x [n, d] scaled to unit length (zero rows stay zero)."""
    return F.normalize(x.float(), dim=-1, eps=1e-12)


def _walk(xn: torch.Tensor, taken: np.ndarray, theta: float, chunk_size: int) -> list[int]:
    """Algorithm 1's walk over the unit rows xn [n, d], with `taken` [n] pre-marked.

    Returns the kept indices in order; `taken` is updated in place.
    """
    n = xn.shape[0]
    kept: list[int] = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        if taken[start:stop].all():
            continue
        nb = (xn[start:stop] @ xn.T >= theta - COS_EPS).numpy()  # [c, n] neighbour masks
        for j in range(stop - start):
            if taken[start + j]:
                continue
            idx = np.flatnonzero(nb[j])
            if not taken[idx].any():
                kept.append(start + j)
                taken[idx] = True
    return kept


def similarity_reduction(features: torch.Tensor, theta: float, chunk_size: int = 1024) -> torch.Tensor:
    """Batch Algorithm 1: indices [t] (ascending) of the rows of features [n, d] that form the PSC.

    All-zero rows carry no feature and are never kept.
    """
    if not 0.0 < theta <= 1.0:
        raise ValueError(f"theta must be in (0, 1], got {theta}")
    if features.ndim != 2:
        raise ValueError(f"features must be [n, d], got shape {tuple(features.shape)}")
    xn = _normalise(features)
    taken = (features.abs().sum(-1) == 0).numpy().copy()
    return torch.tensor(_walk(xn, taken, theta, chunk_size), dtype=torch.long)


class MemoryBank:
    """One foundation model's PSC, grown one keyframe at a time (streaming Algorithm 1).

    rows: [t, d] raw (un-normalised) kept features, in the model's own space.
    """

    def __init__(self, dim: int, theta: float, max_rows: int, chunk_size: int = 1024) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not 0.0 < theta <= 1.0:
            raise ValueError(f"theta must be in (0, 1], got {theta}")
        if max_rows <= 0:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        self.dim = dim
        self.theta = float(theta)
        self.max_rows = int(max_rows)
        self.chunk_size = chunk_size
        self.rows = torch.zeros(0, dim)  # [t, d]
        self._unit = torch.zeros(0, dim)  # [t, d] cached normalised rows
        self.version = 0  # bumped whenever rows change (caches keyed on it)
        self.seen = 0  # rows offered so far

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def unit_rows(self) -> torch.Tensor:
        """[t, d] L2-normalised rows."""
        return self._unit

    @property
    def full(self) -> bool:
        return len(self) >= self.max_rows

    def set_rows(self, rows: torch.Tensor) -> None:
        """Replace the rows wholesale (checkpoint load)."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"bank rows must be [t, {self.dim}], got {tuple(rows.shape)}")
        self.rows = rows.float().contiguous()
        self._unit = _normalise(self.rows)
        self.version += 1

    @torch.no_grad()
    def add(self, features: torch.Tensor) -> torch.Tensor:
        """Offer rows features [n, d]; returns the bank row [n] that stands for each (-1 for zero rows).

        Kept rows map to themselves; dropped and over-cap rows map to their nearest bank row.
        """
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [n, {self.dim}], got {tuple(features.shape)}")
        features = features.float()
        n = features.shape[0]
        self.seen += n
        zero = (features.abs().sum(-1) == 0).numpy()
        xn = _normalise(features)
        t0 = len(self)
        # Bank rows are walked first and are kept: they mark their new-row neighbours taken.
        taken = zero.copy()
        if t0 > 0 and n > 0:
            for start in range(0, n, self.chunk_size):
                sim = xn[start:start + self.chunk_size] @ self._unit.T  # [c, t]
                taken[start:start + self.chunk_size] |= (sim.max(-1).values >= self.theta - COS_EPS).numpy()
        kept = _walk(xn, taken, self.theta, self.chunk_size) if n > 0 else []
        room = self.max_rows - t0
        kept = kept[:max(room, 0)]
        if kept:
            idx = torch.tensor(kept, dtype=torch.long)
            self.rows = torch.cat([self.rows, features[idx]], 0)
            self._unit = torch.cat([self._unit, xn[idx]], 0)
            self.version += 1
        return self.assign(features, _unit=xn, _zero=zero)

    @torch.no_grad()
    def assign(self, features: torch.Tensor, _unit: torch.Tensor | None = None,
               _zero: np.ndarray | None = None) -> torch.Tensor:
        """Nearest bank row (cosine) [n] for features [n, d]; -1 for zero rows or an empty bank."""
        n = features.shape[0]
        out = torch.full((n,), -1, dtype=torch.long)
        if len(self) == 0 or n == 0:
            return out
        xn = _normalise(features) if _unit is None else _unit
        for start in range(0, n, self.chunk_size):
            out[start:start + self.chunk_size] = (xn[start:start + self.chunk_size] @ self._unit.T).argmax(-1)
        zero = (features.abs().sum(-1) == 0) if _zero is None else torch.from_numpy(_zero)
        out[zero] = -1
        return out

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
streaming bank equals `similarity_reduction` exactly (of the centred rows, when centring).

Centring (a deviation from the reference code, ``centre=True``): every cosine the bank takes
(admission, assignment, and the attention keys ``unit_rows``) is taken after subtracting the
running mean of all non-zero features offered so far. DINOv2 tokens share a large common
component (mean pairwise cosine ~0.7 on the sim walk, the mean is ~0.8 of a token's norm), so
raw cosines bunch near 1 and theta = 0.75 keeps 5-16 rows per walk; centred, the same theta keeps
~200. The stored rows (the values attention mixes) stay raw, in the model's own space, so
decoded features still compare with the model's own embeddings.

Bound and merge policy: the bank never holds more than ``max_rows`` rows. When admitting rows
would exceed it, the most similar pair of rows (by key cosine, new rows included) is merged
into one, repeatedly, until the bank fits: the merged row is the count-weighted mean of the two
raw rows (``counts`` = how many offered features each row stands for). New places are never
refused; the cost is resolution where the bank is densest. Principal queries need no surgery:
attention finds rows by similarity, not by index, and the merged row lies between the two.
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


def _nearest_other(keys: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For unit keys [t, d]: each row's most similar other row [t] and that cosine [t]."""
    t = keys.shape[0]
    best = torch.empty(t)
    arg = torch.empty(t, dtype=torch.long)
    for s in range(0, t, chunk_size):
        sim = keys[s:s + chunk_size] @ keys.T  # [c, t]
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -float("inf")
        best[s:s + chunk_size], arg[s:s + chunk_size] = sim.max(-1)
    return arg, best


class MemoryBank:
    """One foundation model's PSC, grown one keyframe at a time (streaming Algorithm 1), bounded.

    rows: [t, d] raw (un-normalised) features, in the model's own space (merged rows: count-weighted
    means of raw features). unit_rows: [t, d] the attention keys (rows minus ``centre`` when
    centring, L2-normalised). counts: [t] offered features each row stands for.
    """

    def __init__(self, dim: int, theta: float, max_rows: int, chunk_size: int = 1024,
                 centre: bool = False) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not 0.0 < theta <= 1.0:
            raise ValueError(f"theta must be in (0, 1], got {theta}")
        if max_rows <= 1:
            raise ValueError(f"max_rows must be at least 2 (merging needs a pair), got {max_rows}")
        self.dim = dim
        self.theta = float(theta)
        self.max_rows = int(max_rows)
        self.chunk_size = chunk_size
        self.centring = bool(centre)
        self.rows = torch.zeros(0, dim)  # [t, d]
        self.counts = torch.zeros(0)  # [t]
        self._unit = torch.zeros(0, dim)  # [t, d] cached keys
        self._sum = torch.zeros(dim, dtype=torch.float64)  # running sum of the non-zero features offered
        self._n = 0  # non-zero features offered
        self.version = 0  # bumped whenever rows or keys change (caches keyed on it)
        self.seen = 0  # rows offered so far (zero rows included)
        self.merges = 0  # pairs merged to keep within max_rows

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def unit_rows(self) -> torch.Tensor:
        """[t, d] attention keys: L2-normalised rows (centred first when centring)."""
        return self._unit

    @property
    def centre(self) -> torch.Tensor:
        """[d] the mean subtracted before every cosine (zeros when not centring or nothing seen)."""
        if not self.centring or self._n == 0:
            return torch.zeros(self.dim)
        return (self._sum / self._n).float()

    @property
    def full(self) -> bool:
        return len(self) >= self.max_rows

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Unit keys [n, d] of raw features x [n, d] (all-zero rows stay zero)."""
        zero = x.abs().sum(-1) == 0
        k = _normalise(x - self.centre) if self.centring else _normalise(x)
        k[zero] = 0.0
        return k

    def set_rows(self, rows: torch.Tensor, counts: torch.Tensor | None = None,
                 centre_sum: torch.Tensor | None = None, centre_n: int = 0) -> None:
        """Replace the rows (and the centring statistics) wholesale (checkpoint load)."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"bank rows must be [t, {self.dim}], got {tuple(rows.shape)}")
        if rows.shape[0] > self.max_rows:
            raise ValueError(f"{rows.shape[0]} bank rows exceed max_rows={self.max_rows}")
        if counts is not None and tuple(counts.shape) != (rows.shape[0],):
            raise ValueError(f"counts must be [{rows.shape[0]}], got {tuple(counts.shape)}")
        if centre_sum is not None:
            if tuple(centre_sum.shape) != (self.dim,):
                raise ValueError(f"centre_sum must be [{self.dim}], got {tuple(centre_sum.shape)}")
            self._sum, self._n = centre_sum.double().clone(), int(centre_n)
        self.rows = rows.float().contiguous()
        self.counts = counts.float().clone() if counts is not None else torch.ones(rows.shape[0])
        self._unit = self._keys(self.rows)
        self.version += 1

    @torch.no_grad()
    def add(self, features: torch.Tensor) -> torch.Tensor:
        """Offer rows features [n, d]; returns the bank row [n] that stands for each (-1 for zero rows).

        Kept rows map to themselves (or to the row they were merged into); dropped rows map to their
        nearest bank row.
        """
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [n, {self.dim}], got {tuple(features.shape)}")
        features = features.float()
        n = features.shape[0]
        self.seen += n
        zero = (features.abs().sum(-1) == 0).numpy()
        if self.centring and (~zero).any():
            self._sum += features[torch.from_numpy(~zero)].double().sum(0)
            self._n += int((~zero).sum())
            if len(self):
                self._unit = self._keys(self.rows)  # the centre moved: so did every key
                self.version += 1
        xn = self._keys(features)
        t0 = len(self)
        # Bank rows are walked first and are kept: they mark their new-row neighbours taken.
        taken = zero.copy()
        if t0 > 0 and n > 0:
            for start in range(0, n, self.chunk_size):
                sim = xn[start:start + self.chunk_size] @ self._unit.T  # [c, t]
                taken[start:start + self.chunk_size] |= (sim.max(-1).values >= self.theta - COS_EPS).numpy()
        kept = _walk(xn, taken, self.theta, self.chunk_size) if n > 0 else []
        if kept:
            idx = torch.tensor(kept, dtype=torch.long)
            self.rows = torch.cat([self.rows, features[idx]], 0)
            self._unit = torch.cat([self._unit, xn[idx]], 0)
            self.counts = torch.cat([self.counts, torch.zeros(len(kept))])
            self.version += 1
            if len(self) > self.max_rows:
                self._merge_down(self.max_rows)
        out = self.assign(features, _unit=xn, _zero=zero)
        if len(self):
            self.counts = self.counts + torch.bincount(out[out >= 0], minlength=len(self)).float()
        return out

    @torch.no_grad()
    def _merge_down(self, target: int) -> None:
        """Merge the most similar pairs (count-weighted mean of raw rows) until len(self) <= target.

        Each round finds every row's nearest other row once and merges disjoint pairs in order of
        similarity, as many as are still needed; rounds repeat while more are needed.
        """
        while len(self) > target:
            need = len(self) - target
            arg, best = _nearest_other(self._unit, self.chunk_size)
            order = torch.argsort(best, descending=True).tolist()
            used = np.zeros(len(self), dtype=bool)
            pairs = []
            for i in order:
                j = int(arg[i])
                if used[i] or used[j]:
                    continue
                used[i] = used[j] = True
                pairs.append((i, j))
                if len(pairs) == need:
                    break
            a = torch.tensor([p[0] for p in pairs])
            b = torch.tensor([p[1] for p in pairs])
            # A new row (count 0) merged into an old one must still move it a little: weight >= 1.
            ca, cb = self.counts[a].clamp_min(1.0), self.counts[b].clamp_min(1.0)
            rows = self.rows.clone()
            rows[a] = (ca[:, None] * rows[a] + cb[:, None] * rows[b]) / (ca + cb)[:, None]
            counts = self.counts.clone()
            counts[a] = self.counts[a] + self.counts[b]
            keep = torch.ones(len(self), dtype=torch.bool)
            keep[b] = False
            self.rows, self.counts = rows[keep].contiguous(), counts[keep]
            self._unit = self._keys(self.rows)
            self.merges += len(pairs)
            self.version += 1

    @torch.no_grad()
    def assign(self, features: torch.Tensor, _unit: torch.Tensor | None = None,
               _zero: np.ndarray | None = None) -> torch.Tensor:
        """Nearest bank row (key cosine) [n] for features [n, d]; -1 for zero rows or an empty bank."""
        n = features.shape[0]
        out = torch.full((n,), -1, dtype=torch.long)
        if len(self) == 0 or n == 0:
            return out
        xn = self._keys(features) if _unit is None else _unit
        for start in range(0, n, self.chunk_size):
            out[start:start + self.chunk_size] = (xn[start:start + self.chunk_size] @ self._unit.T).argmax(-1)
        zero = (features.abs().sum(-1) == 0) if _zero is None else torch.from_numpy(_zero)
        out[zero] = -1
        return out

"""W_m (the projection from principal queries into a model's feature space) and seeded queries."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.memory.bank import MemoryBank


def initial_wm(bank: MemoryBank, channels: int, dim: int, learnable: bool, init: str,
               generator: torch.Generator) -> torch.Tensor:
    """W_m [l, d]: the reference code's fixed N(0, 1), or (learnable, init "pca") the bank's top-l
    principal key directions.

    Row space = the bank's principal directions, so a query can point at any of the first rows
    (a random l-dim subspace of d keeps only ~sqrt(l/d) of each row's cosine).
    """
    W = torch.randn(channels, dim, generator=generator)  # the reference code's fixed N(0, 1)
    if learnable and init == "pca" and len(bank) > 0:
        _, _, Vh = torch.linalg.svd(bank.unit_rows, full_matrices=False)
        r = min(channels, Vh.shape[0])
        W[:r] = Vh[:r] * np.sqrt(dim)
    return W


@torch.no_grad()
def queries_for_rows(W: torch.Tensor, bank: MemoryBank, idx: torch.Tensor) -> torch.Tensor:
    """Least-squares principal queries [M, l] whose q·W_m points at bank rows idx [M] (-1 -> 0)."""
    W = W.detach()
    q = torch.zeros(idx.shape[0], W.shape[0])
    ok = idx >= 0
    if ok.any():
        q[ok] = bank.unit_rows[idx[ok]] @ torch.linalg.pinv(W)  # [M, l]
        q[ok] = F.normalize(q[ok], dim=-1)
    return q

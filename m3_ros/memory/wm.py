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


@torch.no_grad()
def span_coverage(W: torch.Tensor, unit_rows: torch.Tensor) -> torch.Tensor:
    """[t] length of each unit bank row [t, d] projected onto W's [l, d] row space (1 = representable).

    A query reaches a row only through q·W_m, i.e. inside that row space: a row mostly outside it
    cannot be singled out by the attention, and its Gaussians decode to the rows that are inside.
    """
    Qb, _ = torch.linalg.qr(W.detach().T)  # [d, l] orthonormal basis of the row space
    return (unit_rows @ Qb).norm(dim=1)


@torch.no_grad()
def refit_wm(W: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
    """W_m [l, d] whose row space holds the bank's top principal directions (all of them when the
    bank has at most l rows); the remaining rows keep W's own directions outside that span."""
    W = W.detach()
    l, d = W.shape
    _, _, Vh = torch.linalg.svd(bank.unit_rows, full_matrices=False)
    r = min(l, Vh.shape[0])
    rest = W[r:] - (W[r:] @ Vh[:r].T) @ Vh[:r]  # the old directions, less the new principal ones
    new = torch.cat([Vh[:r] * np.sqrt(d), rest], 0)
    return new


@torch.no_grad()
def carry_queries(queries: torch.Tensor, W_old: torch.Tensor, W_new: torch.Tensor) -> torch.Tensor:
    """Queries [N, l] for W_new whose q·W_new is the least-squares fit of q·W_old: each Gaussian
    keeps pointing where it pointed (as far as the new row space holds that direction)."""
    return (queries @ W_old.detach()) @ torch.linalg.pinv(W_new.detach())

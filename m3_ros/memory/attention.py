"""Gaussian memory attention: softmax(cos(Q·W_m, PSC) / tau) · PSC (relevance maps: relevance.py).

Cosine similarity and tau = 0.05 follow the reference code. W_m maps queries into the model's
feature space (not onto bank rows), so a query stays meaningful when the bank grows.
"""
from __future__ import annotations

import torch


def _scaled_queries(queries: torch.Tensor, W_m: torch.Tensor, tau: float) -> torch.Tensor:
    """q / (‖q·W_m‖ · tau) [M, l], so that logits = scaled · (W_m·PSĈᵀ)."""
    n2 = ((queries @ (W_m @ W_m.T)) * queries).sum(-1)  # [M] ‖q·W_m‖²
    return queries / (n2.clamp_min(0.0).sqrt().clamp_min(1e-6) * tau).unsqueeze(-1)


def attention_logits(queries: torch.Tensor, W_m: torch.Tensor, bank_unit: torch.Tensor, tau: float) -> torch.Tensor:
    """cos(Q·W_m, PSC)/tau for queries [M, l], W_m [l, d], unit bank rows [t, d] -> [M, t].

    Computed as (q / ‖q·W_m‖) · (W_m·PSĈᵀ): l-dim products instead of d-dim ones, and the
    scaling touches [M, l], not [M, t].
    """
    return _scaled_queries(queries, W_m, tau) @ (W_m @ bank_unit.T)


def memory_attention(queries: torch.Tensor, W_m: torch.Tensor, bank_rows: torch.Tensor,
                     bank_unit: torch.Tensor, tau: float, topk: int = 0) -> torch.Tensor:
    """Decoded features [M, d] for queries [M, l] (differentiable; for a few thousand points).

    bank_rows [t, d] raw PSC, bank_unit [t, d] the same rows L2-normalised. topk > 0 keeps only
    each query's top-k logits in the softmax (sparse attention for training: tau = 0.05 puts
    almost all the weight there); 0 = the full softmax. The top-k rows are picked without
    autograd and their logits recomputed from [M, k, l] gathers, so the backward pass never
    touches an [M, t] tensor.
    """
    A = W_m @ bank_unit.T  # [l, t]
    qs = _scaled_queries(queries, W_m, tau)  # [M, l]
    if 0 < topk < A.shape[-1]:
        with torch.no_grad():
            idx = torch.topk(qs @ A, topk, dim=-1).indices  # [M, k]
        logits = torch.einsum("ml,mkl->mk", qs, A.T[idx])  # [M, k]
        return torch.einsum("mk,mkd->md", torch.softmax(logits, dim=-1), bank_rows[idx])
    return torch.softmax(qs @ A, dim=-1) @ bank_rows


@torch.no_grad()
def candidate_rows(queries: torch.Tensor, W_m: torch.Tensor, bank_unit: torch.Tensor, tau: float,
                   per_query: int = 8, max_rows: int = 512, sample: int = 256,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Bank rows [c] worth attending for queries [M, l]: the per_query best rows of a random
    subsample of `sample` queries, at most max_rows of them (most-voted first).

    Training then attends over these c rows instead of all t, so its cost stops growing with the
    bank; queries whose best rows were missed are pulled towards the nearest candidate instead.
    """
    t = bank_unit.shape[0]
    if t <= max_rows:
        return torch.arange(t)
    pick = torch.randperm(queries.shape[0], generator=generator)[:sample]
    logits = attention_logits(queries[pick], W_m, bank_unit, tau)  # [sample, t]
    idx = torch.topk(logits, min(per_query, t), dim=-1).indices
    votes = torch.bincount(idx.reshape(-1), minlength=t)
    rows = torch.nonzero(votes).squeeze(-1)
    if rows.numel() > max_rows:
        rows = rows[torch.topk(votes[rows], max_rows).indices]
    return torch.sort(rows).values


@torch.no_grad()
def decode_chunked(queries: torch.Tensor, W_m: torch.Tensor, bank_rows: torch.Tensor, bank_unit: torch.Tensor,
                   tau: float, budget_bytes: int = 256 << 20) -> torch.Tensor:
    """Full decoding [M, d] of queries [M, l], in chunks so the [chunk, t] weights fit the budget."""
    M, t, d = queries.shape[0], bank_rows.shape[0], bank_rows.shape[1]
    if t == 0:
        return torch.zeros(M, d)
    chunk = max(1, budget_bytes // (4 * (t + d)))
    out = torch.empty(M, d)
    for s in range(0, M, chunk):
        out[s:s + chunk] = memory_attention(queries[s:s + chunk], W_m, bank_rows, bank_unit, tau)
    return out

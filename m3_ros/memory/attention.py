"""Gaussian memory attention: softmax(cos(Q·W_m, PSC) / tau) · PSC, and relevance without decoding.

Cosine similarity and tau = 0.05 follow the reference code. W_m maps queries into the model's
feature space (not onto bank rows), so a query stays meaningful when the bank grows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


@dataclass
class RelevanceIndex:
    """Per (bank, W_m, text) precomputation for relevance maps that never decode d-dim features."""

    A: torch.Tensor  # [l, t] W_m · PSĈᵀ
    M: torch.Tensor  # [l, l] W_m · W_mᵀ, for ‖q·W_m‖
    s: torch.Tensor  # [t] PSC · t̂, the bank scored against the text once
    rows: torch.Tensor  # [t, d] raw PSC (only candidate Gram blocks are formed from it)
    tau: float

    @classmethod
    @torch.no_grad()
    def build(cls, W_m: torch.Tensor, bank_rows: torch.Tensor, bank_unit: torch.Tensor, text_emb: torch.Tensor,
              tau: float) -> "RelevanceIndex":
        if text_emb.ndim != 1 or text_emb.shape[0] != bank_rows.shape[1]:
            raise ValueError(f"text_emb must be [{bank_rows.shape[1]}], got {tuple(text_emb.shape)}")
        t_hat = F.normalize(text_emb.float(), dim=0)
        return cls(A=(W_m @ bank_unit.T).contiguous(), M=W_m @ W_m.T, s=bank_rows @ t_hat, rows=bank_rows, tau=tau)

    def scaled(self, queries: torch.Tensor) -> torch.Tensor:
        """q / (‖q·W_m‖ · tau) [B, l], so logits = scaled(q) @ A."""
        n2 = ((queries @ self.M) * queries).sum(-1).clamp_min(1e-12)
        return queries / (n2.sqrt() * self.tau).unsqueeze(-1)

    @torch.no_grad()
    def candidates(self, queries: torch.Tensor, per_query: int = 8, max_rows: int = 512) -> torch.Tensor:
        """Rows [c] among the per_query highest-weight rows of queries [B, l] (e.g. a pixel subsample).

        At most max_rows are kept, those picked by the most queries, so the per-pixel work of
        `relevance` stays bounded however large the bank is.
        """
        t = self.A.shape[1]
        k = min(per_query, t)
        idx = torch.topk(self.scaled(queries) @ self.A, k, dim=-1).indices  # [B, k]
        votes = torch.bincount(idx.reshape(-1), minlength=t)  # [t]
        rows = torch.nonzero(votes).squeeze(-1)
        if rows.numel() > max_rows:
            rows = rows[torch.topk(votes[rows], max_rows).indices]
        return torch.sort(rows).values

    @torch.no_grad()
    def relevance(self, queries: torch.Tensor, candidates: torch.Tensor | None = None, topk: int = 16,
                  chunk: int = 4096) -> torch.Tensor:
        """cos(decoded feature, text) [B] for queries [B, l], without forming [B, d].

        The softmax runs over `candidates` (all rows if None; a truncation otherwise). The numerator
        w·s is exact over those rows; the norm ‖R̂‖² = wᵀGw uses the top-k weights renormalised
        (tau = 0.05 makes w peaky, so k = 16 is close; see the truncation test).
        """
        A, s = (self.A, self.s) if candidates is None else (self.A[:, candidates], self.s[candidates])
        rows = self.rows if candidates is None else self.rows[candidates]
        c = A.shape[1]
        k = min(topk, c)
        G = rows @ rows.T if c <= 4096 else None  # [c, c] Gram of the candidate rows
        out = torch.empty(queries.shape[0])
        for b in range(0, queries.shape[0], chunk):
            logits = self.scaled(queries[b:b + chunk]) @ A  # [B, c]
            w = torch.softmax(logits, dim=-1)
            num = w @ s  # [B]
            wk, ik = torch.topk(w, k, dim=-1)  # [B, k]
            wk = wk / wk.sum(-1, keepdim=True)
            if G is not None:
                Gk = G[ik.unsqueeze(-1), ik.unsqueeze(-2)]  # [B, k, k]
                n2 = torch.einsum("bi,bij,bj->b", wk, Gk, wk)
            else:
                n2 = (torch.einsum("bk,bkd->bd", wk, rows[ik]) ** 2).sum(-1)
            out[b:b + chunk] = (num / n2.clamp_min(1e-12).sqrt()).clamp(-1.0, 1.0)
        return out

    @torch.no_grad()
    def relevance_image(self, queries: torch.Tensor, stride: int = 4, per_query: int = 8, max_rows: int = 64,
                        tile: int = 32) -> torch.Tensor:
        """cos(decoded feature, text) [H, W] for a rendered query image [H, W, l], tile by tile.

        Each tile x tile block gets its own candidate rows: the per_query best rows of its
        stride-subsampled pixels, at most max_rows (most-voted first). A block of a real view
        sees few objects, so a few dozen rows cover it, and with so few rows the softmax and
        the norm ‖R̂‖² = wᵀGw are exact over them (no top-k truncation): per pixel only
        c logits, c weights and one [c] x [c, c] product. The only approximation is the
        candidate truncation. All tiles run as one batch (candidate lists padded, masked).
        """
        H, W, l = queries.shape
        t = self.A.shape[1]
        ty, tx = -(-H // tile), -(-W // tile)
        q = F.pad(queries, (0, 0, 0, tx * tile - W, 0, ty * tile - H))  # [ty*tile, tx*tile, l]
        q = q.reshape(ty, tile, tx, tile, l).permute(0, 2, 1, 3, 4).reshape(ty * tx, tile * tile, l)  # [T, P, l]
        T = q.shape[0]
        # Candidates: votes of each tile's subsampled pixels (ranking needs no query scaling).
        sub = q.reshape(T, tile, tile, l)[:, ::stride, ::stride].reshape(T, -1, l)  # [T, S, l]
        live = sub.abs().sum(-1) > 0  # [T, S] padding and empty pixels do not vote
        k = min(per_query, t)
        top = torch.topk(sub.reshape(-1, l) @ self.A, k, dim=-1).indices.reshape(T, -1, k)  # [T, S, k]
        keys = (torch.arange(T).view(T, 1, 1) * t + top)[live]  # [V, k]
        votes = torch.bincount(keys.reshape(-1), minlength=T * t).view(T, t).float()  # [T, t]
        c = max(1, min(max_rows, int((votes > 0).sum(-1).max())))
        v, cand = torch.topk(votes, c, dim=-1)  # [T, c] most-voted rows per tile
        valid = v > 0  # [T, c]
        A = self.A.T[cand].transpose(1, 2)  # [T, l, c]
        rows = self.rows[cand]  # [T, c, d]
        G = torch.bmm(rows, rows.transpose(1, 2))  # [T, c, c]
        logits = torch.bmm(self.scaled(q.reshape(-1, l)).view(T, -1, l), A)  # [T, P, c]
        logits.masked_fill_(~valid.unsqueeze(1), float("-inf"))
        w = torch.softmax(logits, dim=-1)  # [T, P, c]
        num = torch.bmm(w, self.s[cand].unsqueeze(-1)).squeeze(-1)  # [T, P] w·(PSC·t̂)
        n2 = (torch.bmm(w, G) * w).sum(-1)  # [T, P] wᵀGw
        rel = (num / n2.clamp_min(1e-12).sqrt()).clamp(-1.0, 1.0)
        rel = rel.view(ty, tx, tile, tile).permute(0, 2, 1, 3).reshape(ty * tile, tx * tile)
        return rel[:H, :W].contiguous()

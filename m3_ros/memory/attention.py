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


TILE_ROWS = 1024
"""Banks over this many rows bound logits per pixel block first (level 1 of relevance_image)."""
SPECTRAL_RANK = 32
"""‖F‖² comes from the bank's top principal directions (level 2 of relevance_image). Only speed
depends on it: at 32, 0.1 % of pixels of a dev view (table seed 0, 170 DINOv2-S rows) needed level 3."""


@dataclass
class RelevanceIndex:
    """Per (bank, W_m, text) precomputation for relevance maps that never decode d-dim features.

    Logits in an orthonormal basis of W_m's row space: with W_m·W_mᵀ = V·Λ·Vᵀ, a query q maps to
    y = q·V·Λ^½ / ‖q·W_m‖ (‖y‖ ≤ 1) and its logits are y·B / tau with B = Λ^-½·Vᵀ·A (A = W_m·PSĈᵀ), whose
    columns have ‖b_j‖ ≤ 1. That makes a bound on every logit of a group of pixels cheap: the
    group's centre c and radius ρ give y·b_j ≤ c·b_j + ρ·‖b_j‖ (see relevance_image).
    """

    s: torch.Tensor  # [t] PSC · t̂, the bank scored against the text once
    rows: torch.Tensor  # [t, d] raw PSC (only candidate Gram blocks are formed from it)
    tau: float
    basis: torch.Tensor  # [l, l] V·Λ^½: ‖q·basis‖ = ‖q·W_m‖
    B: torch.Tensor  # [l, t] Λ^-½·Vᵀ·A
    b_norm: torch.Tensor  # [t] ‖b_j‖
    r_max: float  # max_j ‖PSC_j‖
    P: torch.Tensor  # [t, k] PSC·V_k, V_k the top k right singular vectors of PSC: ‖w·PSC·V_k‖ ≤ ‖w·PSC‖
    tail: float  # σ²_{k+1} of PSC (0 when k covers its rank): ‖w·PSC‖² ≤ ‖w·P‖² + tail·‖w‖²

    @classmethod
    @torch.no_grad()
    def build(cls, W_m: torch.Tensor, bank_rows: torch.Tensor, bank_unit: torch.Tensor, text_emb: torch.Tensor,
              tau: float) -> "RelevanceIndex":
        if text_emb.ndim != 1 or text_emb.shape[0] != bank_rows.shape[1]:
            raise ValueError(f"text_emb must be [{bank_rows.shape[1]}], got {tuple(text_emb.shape)}")
        t_hat = F.normalize(text_emb.float(), dim=0)
        A = (W_m @ bank_unit.T).contiguous()
        M = W_m @ W_m.T
        lam, V = torch.linalg.eigh(M.double())  # M = W_m·W_mᵀ
        # directions W_m does not span carry no logit (Vᵀ·A is 0 there), so dropping them is exact
        inv = torch.where(lam > lam.max().clamp_min(1e-30) * 1e-10, lam.clamp_min(1e-30).rsqrt(), 0.0)
        B = ((inv[:, None] * V.T) @ A.double()).float().contiguous()
        return cls(s=bank_rows @ t_hat, rows=bank_rows, tau=tau,
                   basis=(V * lam.clamp_min(0.0).sqrt()).float(), B=B, b_norm=B.norm(dim=0),
                   r_max=float(bank_rows.norm(dim=1).max()) if len(bank_rows) else 0.0,
                   **_spectral(bank_rows, SPECTRAL_RANK))

    def unit(self, queries: torch.Tensor) -> torch.Tensor:
        """y [B, l] of queries [B, l]: logits = y @ B / tau, ‖y‖ ≤ 1 (the 1e-6 floor of _scaled_queries)."""
        z = queries @ self.basis
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    @torch.no_grad()
    def relevance_image(self, queries: torch.Tensor, mask: torch.Tensor | None = None, max_err: float = 0.05,
                        tile: int = 8, tile_rows: int = TILE_ROWS, stats: dict | None = None) -> torch.Tensor:
        """cos(decoded feature, text) [H, W] for a rendered query image [H, W, l], each pixel within
        max_err of full decoding (0 where mask [H, W] is False).

        Each pixel leaves at the first level whose error bound is at most max_err:
        1. (banks over tile_rows only) tile x tile blocks: the block's centre and radius bound
           every row's logit for all its pixels, so a few candidate rows and a bound on the mass
           left out come per block, not per pixel (_tile_relevance).
        2. the pixel's own logits over the whole bank: exact weights and numerator w·(PSC·t̂);
           ‖F‖ from the bank's SPECTRAL_RANK principal directions, the rest bounded by the next
           singular value (_pixel_relevance).
        3. full decoding.
        On a trained memory's view level 2 holds almost every pixel; diffuse attention
        (an untrained W_m over thousands of similar rows) fails level 1 and costs what level 2 costs. stats, if given, receives the pixel count of each level.
        """
        H, W, l = queries.shape
        valid = torch.ones(H, W, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        out = torch.zeros(H * W)
        st = {"level1": 0, "level2": 0, "level3": 0}
        todo = torch.nonzero(valid.reshape(-1)).squeeze(-1)
        if self.B.shape[1] and todo.numel():
            y = self.unit(queries.reshape(-1, l).float())  # [H*W, l]
            if self.B.shape[1] > tile_rows:
                r1, ok1 = self._tile_relevance(y.view(H, W, l), valid, max_err, tile)
                out = torch.where(ok1, r1, out)
                todo = torch.nonzero(valid.reshape(-1) & ~ok1).squeeze(-1)
                st["level1"] = int(ok1.sum())
            r2, ok2 = self._pixel_relevance(y[todo], max_err)
            out[todo] = r2
            st["level2"] = int(ok2.sum())
            left = todo[~ok2]
            if left.numel():
                st["level3"] = int(left.numel())
                out[left] = self._exact_relevance(y[left])
        if stats is not None:
            stats.update(st)
        return out.view(H, W)

    def _tile_relevance(self, y: torch.Tensor, valid: torch.Tensor, max_err: float, tile: int, max_rows: int = 64
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Level 1 of relevance_image for y [H, W, l]: (relevance [H*W], bound <= max_err [H*W]).

        Over a block with centre c and radius ρ, y·b_j ≤ c·b_j + ρ‖b_j‖, so the candidates are the
        rows with the highest bounds, the softmax and ‖F_C‖² = wᵀGw are exact over them, and the
        mass m left out is at most Σ_{j∉C} exp(ub_j) / Z_C; |cos(F) - cos(F_C)| ≤ 2m(1 + max‖PSC‖/‖F_C‖).
        """
        H, W, l = y.shape
        t, tau = self.B.shape[1], self.tau
        ty, tx = -(-H // tile), -(-W // tile)
        pad = (0, 0, 0, tx * tile - W, 0, ty * tile - H)
        yt = F.pad(y, pad).reshape(ty, tile, tx, tile, l).permute(0, 2, 1, 3, 4).reshape(ty * tx, tile * tile, l)
        vt = F.pad(valid, pad[2:]).reshape(ty, tile, tx, tile).permute(0, 2, 1, 3).reshape(ty * tx, tile * tile)
        live = torch.nonzero(vt.any(-1)).squeeze(-1)  # blocks with a pixel to answer
        yt, vt = yt[live], vt[live]  # [T, P, l], [T, P]
        centre = (yt * vt.unsqueeze(-1)).sum(1) / vt.sum(-1, keepdim=True).clamp_min(1)  # [T, l]
        rho = ((yt - centre[:, None]).norm(dim=-1) * vt).amax(-1)  # [T]
        lam = centre @ self.B / tau  # [T, t]
        spread = rho[:, None] * self.b_norm[None] / tau
        ub = lam + spread
        cand = torch.topk(ub, min(max_rows, t), dim=-1).indices  # [T, c] by descending bound
        rel_t = torch.zeros(vt.shape)
        bound_t = torch.full(vt.shape, float("inf"))
        # blocks whose bounds need fewer rows run in smaller batches (peaked attention: 4-16 rows)
        need = _rows_needed(ub, lam - spread, cand, max_err / 16)  # [T]
        for size in sorted(set(need.tolist())):
            sel = torch.nonzero(need == size).squeeze(-1)
            cs = cand[sel, :size]  # [S, size]
            lo = torch.logsumexp(ub[sel].scatter(1, cs, float("-inf")), dim=-1)  # [S] log Σ_{j∉C} exp(ub)
            logits = torch.bmm(yt[sel], self.B.T[cs].transpose(1, 2)) / tau  # [S, P, size]
            w = torch.softmax(logits, dim=-1)
            rows = self.rows[cs]  # [S, size, d]
            num = torch.bmm(w, self.s[cs].unsqueeze(-1)).squeeze(-1)  # [S, P]
            fn = (torch.bmm(w, torch.bmm(rows, rows.transpose(1, 2))) * w).sum(-1).clamp_min(0.0).sqrt()
            m = torch.sigmoid(lo[:, None] - torch.logsumexp(logits, dim=-1))  # [S, P] bound on the mass left out
            rel_t[sel] = (num / fn.clamp_min(1e-12)).clamp(-1.0, 1.0)
            bound_t[sel] = 2.0 * m * (1.0 + self.r_max / fn.clamp_min(1e-12))
        def image(x: torch.Tensor, fill) -> torch.Tensor:  # [T, P] blocks back to [H*W]
            full = torch.full((ty * tx, tile * tile), fill, dtype=x.dtype)
            full[live] = x
            return full.view(ty, tx, tile, tile).permute(0, 2, 1, 3).reshape(ty * tile, tx * tile)[:H, :W].reshape(-1)
        return image(rel_t, 0.0), image((bound_t <= max_err) & vt, False)

    def _pixel_relevance(self, y: torch.Tensor, max_err: float, chunk: int = 4096
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Level 2 of relevance_image for y [P, l]: (relevance [P], bound <= max_err [P]).

        Exact weights w and numerator n = w·(PSC·t̂); ‖F‖² = ‖w·PSC‖² lies in [h, h + tail·‖w‖²]
        with h = ‖w·P‖² (the bank's top principal directions), so |n/‖F‖ - n/√h| ≤ |n|(1/√h - 1/√(h + tail·‖w‖²)).
        """
        rel, ok = torch.empty(y.shape[0]), torch.empty(y.shape[0], dtype=torch.bool)
        for b in range(0, y.shape[0], chunk):
            w = torch.softmax(y[b:b + chunk] @ self.B / self.tau, dim=-1)  # [p, t]
            num = w @ self.s
            h = ((w @ self.P) ** 2).sum(-1).clamp_min(1e-24)
            hi = h + self.tail * (w * w).sum(-1)
            rel[b:b + chunk] = (num / h.sqrt()).clamp(-1.0, 1.0)
            ok[b:b + chunk] = num.abs() * (h.rsqrt() - hi.rsqrt()) <= max_err
        return rel, ok

    def _exact_relevance(self, y: torch.Tensor, budget_bytes: int = 64 << 20) -> torch.Tensor:
        """Level 3 of relevance_image: cos(fully decoded feature, text) [P] for y [P, l]."""
        t, d = self.rows.shape
        chunk = max(1, budget_bytes // (4 * (t + d)))
        out = torch.empty(y.shape[0])
        for b in range(0, y.shape[0], chunk):
            w = torch.softmax(y[b:b + chunk] @ self.B / self.tau, dim=-1)
            out[b:b + chunk] = ((w @ self.s) / (w @ self.rows).norm(dim=-1).clamp_min(1e-12)).clamp(-1.0, 1.0)
        return out


def _rows_needed(ub: torch.Tensor, lb: torch.Tensor, cand: torch.Tensor, target: float) -> torch.Tensor:
    """Per tile [T], the fewest leading candidates (4, 8, 16, ... up to c) whose bounds leave out at
    most `target` of the softmax mass: Σ_{j∉C} exp(ub_j) ≤ target · Σ_{j∈C} exp(lb_j).

    ub, lb [T, t] bounds on every row's logit over the tile; cand [T, c] rows by descending ub.
    """
    c = cand.shape[1]
    ub_c, lb_c = ub.gather(1, cand), lb.gather(1, cand)
    rest = torch.logsumexp(ub.scatter(1, cand, float("-inf")), dim=-1, keepdim=True)  # [T, 1]
    tail = torch.logcumsumexp(ub_c.flip(1), dim=1).flip(1)  # [T, c] log Σ_{i>=k} exp(ub)
    tail = torch.logaddexp(torch.cat([tail[:, 1:], torch.full_like(rest, float("-inf"))], 1), rest)  # rows after k
    head = torch.logcumsumexp(lb_c, dim=1)  # [T, c] log Σ_{i<=k} exp(lb)
    good = tail - head <= float(torch.log(torch.tensor(target)))  # [T, c] taking k+1 rows is enough
    sizes = [s for s in (4, 8, 16, 32, 64, 128, 256, 512) if s < c] + [c]
    need = torch.full((cand.shape[0],), c, dtype=torch.long)
    for s in reversed(sizes):
        need = torch.where(good[:, s - 1], torch.tensor(s), need)
    return need


def _spectral(rows: torch.Tensor, k: int) -> dict:
    """{"P": rows·V_k [t, k], "tail": σ²_{k+1}} from the eigendecomposition of rowsᵀ·rows [d, d]."""
    t, d = rows.shape
    if t == 0:
        return {"P": torch.zeros(0, 0), "tail": 0.0}
    lam, V = torch.linalg.eigh((rows.T @ rows).double())  # ascending
    lam, V = lam.flip(0).clamp_min(0.0), V.flip(1)
    k = min(k, d, t)
    tail = float(lam[k]) if k < min(d, t) else 0.0
    return {"P": (rows.double() @ V[:, :k]).float().contiguous(), "tail": tail * (1 + 1e-4) + 1e-6 * float(lam[0])}

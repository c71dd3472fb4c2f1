"""Relevance maps without decoding: cos(decoded feature, text) per pixel, each within a bound of full decoding.

A pixel's decoded feature is F = w·PSC with w = softmax(y·B / tau) (RelevanceIndex); its relevance
n / ‖f‖ with n = e·(PSC·t̂) and f = e·PSC does not change when the weights e are scaled, so every level
works with unnormalised weights and bounds n and ‖f‖ (M3_METHOD.md, "relevance without decoding").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from m3_ros.memory import _relevance_cpu

TILE_ROWS = 1024
"""Banks over this many rows bound logits per pixel block first (level 1 of relevance_image)."""
TILE_PROBE = 8
"""Level 1 runs on every TILE_PROBE-th block first and on the rest only if one of those answered a pixel
(diffuse attention: none does, and the probe costs an eighth of the level)."""
SPECTRAL_RANK = 96
"""‖f‖ comes from the bank's top principal directions (level 2). Only speed depends on it: on
bench_memory's 5000-row synthetic bank (60 clusters) 32 left 3 % of pixels to full decoding, 64 none."""
FIRST_RANK = 16
"""Level 2 tries this many principal directions first; the pixels whose bound is too loose take all of them
(the second pass adds only the directions the first did not take). Where the time goes (bench_query's
5000-row banks, 160x120, 1 thread, this project's Xeon, 2026-12-06): untrained, 7457 border pixels' first
pass 20.6 ms and the 442 that take the second 4.4 ms; fitted, 8000 pixels 22 ms and 1663 pixels 13.9 ms.
The synthetic banks' spectra are flat (σ²_17 / σ²_1 = 0.67 and 0.58), so 16 directions hold ~70 % of
‖f‖ where a pixel needs the second pass. Their attention is diffuse (99.9 % of a border pixel's weight
on a median 2263 rows; logits within 14 of the maximum: 4468 rows), so no row pruning certifies less work;
over a third of them have no other border pixel within 0.02 in query space, so sharing stops there. Tried
and not kept: Jensen's bound ‖f_⊥‖² <= Σ w_j ‖r_j‖² beside σ²_{k+1}·‖w‖² (second passes 442 -> 442 and
1663 -> 1332) and the text's residual direction as a lower bound on ‖f_⊥‖ (-> 1316); a pre-test that skips
level 1's top-k on blocks it cannot answer (3.1 -> 3.6 ms: the logsumexp cost more than the top-k)."""
SHARE_ROWS = 512
"""Banks over this many rows share a pixel's weights with the pixels near it in query space (level 2s)."""
SHARE_RADIUS = 0.02
"""Query-space radius within which a pixel takes a leader's weights with a certified bound (level 2s)."""
SHARE_TILE = 16
"""Pixel block in which leaders are picked (level 2s)."""
SHARE_ROUNDS = 8
"""Leaders picked per block (level 2s): each takes the free pixels within SHARE_RADIUS of it."""


@dataclass
class RelevanceIndex:
    """Per (bank, W_m, text) precomputation for relevance maps that never decode d-dim features.

    Logits in an orthonormal basis of W_m's row space: with W_m·W_mᵀ = V·Λ·Vᵀ, a query q maps to
    y = q·V·Λ^½ / ‖q·W_m‖ (‖y‖ ≤ 1) and its logits are y·B / tau with B = Λ^-½·Vᵀ·A (A = W_m·PSĈᵀ), whose
    columns have ‖b_j‖ ≤ 1. A pixel y + δ then sees every row's weight change by at most a factor
    exp(‖δ‖·‖b_j‖/tau), which bounds both the tile level and the shared level.
    """

    s: torch.Tensor  # [t] PSC · t̂, the bank scored against the text once
    rows: torch.Tensor  # [t, d] raw PSC (only candidate Gram blocks are formed from it)
    tau: float
    basis: torch.Tensor  # [l, l] V·Λ^½: ‖q·basis‖ = ‖q·W_m‖
    B: torch.Tensor  # [l, t] Λ^-½·Vᵀ·A
    b_norm: torch.Tensor  # [t] ‖b_j‖
    r_norm: torch.Tensor  # [t] ‖PSC_j‖
    P: torch.Tensor  # [t, K] PSC·V_K, V_K the top K right singular vectors of PSC: ‖e·PSC·V_k‖ ≤ ‖e·PSC‖
    sigma2: torch.Tensor  # [K + 1] σ²_1..σ²_{K+1} of PSC (0 past its rank): ‖e·PSC‖² ≤ ‖e·P_k‖² + σ²_{k+1}·‖e‖²
    compiled: bool = True
    """Weights' moments from the compiled kernel (_relevance_cpu) when it loads; False: the PyTorch twin."""

    @classmethod
    @torch.no_grad()
    def build(cls, W_m: torch.Tensor, bank_rows: torch.Tensor, bank_unit: torch.Tensor, text_emb: torch.Tensor,
              tau: float) -> "RelevanceIndex":
        if text_emb.ndim != 1 or text_emb.shape[0] != bank_rows.shape[1]:
            raise ValueError(f"text_emb must be [{bank_rows.shape[1]}], got {tuple(text_emb.shape)}")
        t_hat = F.normalize(text_emb.float(), dim=0)
        A = (W_m @ bank_unit.T).contiguous()
        lam, V = torch.linalg.eigh((W_m @ W_m.T).double())  # W_m·W_mᵀ
        # directions W_m does not span carry no logit (Vᵀ·A is 0 there), so dropping them is exact
        inv = torch.where(lam > lam.max().clamp_min(1e-30) * 1e-10, lam.clamp_min(1e-30).rsqrt(), 0.0)
        B = ((inv[:, None] * V.T) @ A.double()).float().contiguous()
        return cls(s=bank_rows @ t_hat, rows=bank_rows, tau=tau, basis=(V * lam.clamp_min(0.0).sqrt()).float(),
                   B=B, b_norm=B.norm(dim=0), r_norm=bank_rows.norm(dim=1), **_spectral(bank_rows, SPECTRAL_RANK))

    @property
    def r_max(self) -> float:
        return float(self.r_norm.max()) if self.r_norm.numel() else 0.0

    def unit(self, queries: torch.Tensor) -> torch.Tensor:
        """y [B, l] of queries [B, l]: logits = y @ B / tau, ‖y‖ ≤ 1 (the 1e-6 floor of _scaled_queries)."""
        z = queries @ self.basis
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    @torch.no_grad()
    def relevance_image(self, queries: torch.Tensor, mask: torch.Tensor | None = None, max_err: float = 0.05,
                        tile: int = 8, tile_rows: int = TILE_ROWS, share_rows: int = SHARE_ROWS,
                        stats: dict | None = None) -> torch.Tensor:
        """cos(decoded feature, text) [H, W] for a rendered query image [H, W, l], each pixel within
        max_err of full decoding (0 where mask [H, W] is False).

        Each pixel leaves at the first level whose error bound is at most max_err:
        1. (banks over tile_rows) tile x tile blocks: the block's centre and radius bound every
           row's logit for all its pixels, so a few candidate rows and a bound on the mass left out
           come per block, not per pixel (_tile_relevance). Peaked attention ends here.
        2s. (banks over share_rows) leaders, a few pixels per block, get exact weights over the whole
           bank; the pixels within SHARE_RADIUS of a leader in query space take its n and ‖f‖, widened
           by what the distance can change (_shared_relevance). Smooth image regions end here.
        2. the pixel's own weights over the whole bank: exact n; ‖f‖ from FIRST_RANK, then
           SPECTRAL_RANK principal directions, the rest bounded by the next singular value (_pixel_relevance).
        3. full decoding.
        stats, if given, receives the pixel count of each level (leaders count at level 2).
        """
        H, W, l = queries.shape
        valid = torch.ones(H, W, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        out = torch.zeros(H * W)
        st = {"level1": 0, "shared": 0, "level2": 0, "level3": 0}
        todo = valid.reshape(-1).clone()
        t = self.B.shape[1]
        if t and todo.any():
            y = self.unit(queries.reshape(-1, l).float())  # [H*W, l]
            if t > tile_rows:
                r1, ok1 = self._tile_relevance(y.view(H, W, l), valid, max_err, tile)
                out = torch.where(ok1, r1, out)
                todo &= ~ok1
                st["level1"] = int(ok1.sum())
            if t > share_rows and todo.any():
                r2, ok2, leaders = self._shared_relevance(y.view(H, W, l), todo.view(H, W), max_err)
                out = torch.where(ok2, r2, out)
                todo &= ~ok2
                st["shared"], st["level2"] = int(ok2.sum()) - leaders, leaders
            idx = torch.nonzero(todo).squeeze(-1)
            r, ok = self._pixel_relevance(y[idx], max_err)
            out[idx] = r
            st["level2"] += int(ok.sum())
            left = idx[~ok]
            if left.numel():
                st["level3"] = int(left.numel())
                out[left] = self._exact_relevance(y[left])
        if stats is not None:
            stats.update(st)
        return out.view(H, W)

    def _tile_relevance(self, y: torch.Tensor, valid: torch.Tensor, max_err: float, tile: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Level 1 of relevance_image for y [H, W, l]: (relevance [H*W], bound <= max_err [H*W]).

        Runs on every TILE_PROBE-th block with a pixel to answer first, and on the others only if
        one of those answered a pixel (_tile_blocks). This only decides speed: a pixel level 1 does
        not answer goes on to the next level.
        """
        H, W, l = y.shape
        yt, vt = _blocks(y, tile), _blocks(valid, tile, False)  # [T, P, l], [T, P]
        live = torch.nonzero(vt.any(-1)).squeeze(-1)  # blocks with a pixel to answer
        probe = torch.zeros(live.shape, dtype=torch.bool)
        probe[::TILE_PROBE] = True
        rel = torch.zeros(vt.shape)
        ok = torch.zeros(vt.shape, dtype=torch.bool)
        for part in (live[probe], live[~probe]):
            if part.numel():
                rel[part], ok[part] = self._tile_blocks(yt[part], vt[part], max_err)
            if not ok.any():
                break
        return _unblocks(rel, H, W), _unblocks(ok, H, W)

    def _tile_blocks(self, yt: torch.Tensor, vt: torch.Tensor, max_err: float, max_rows: int = 64
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """_tile_relevance on blocks yt [T, P, l] with pixels vt [T, P]: (relevance [T, P], bound <= max_err [T, P]).

        Over a block with centre c and radius ρ, y·b_j ≤ c·b_j + ρ‖b_j‖, so the candidates are the
        rows with the highest bounds, the softmax and ‖F_C‖² = wᵀGw are exact over them, and the
        mass m left out is at most Σ_{j∉C} exp(ub_j) / Z_C; |cos(F) - cos(F_C)| ≤ 2m(1 + max‖PSC‖/‖F_C‖).
        """
        t, tau = self.B.shape[1], self.tau
        centre = (yt * vt.unsqueeze(-1)).sum(1) / vt.sum(-1, keepdim=True).clamp_min(1)  # [T, l]
        rho = ((yt - centre[:, None]).norm(dim=-1) * vt).amax(-1)  # [T]
        lam = centre @ self.B / tau  # [T, t]
        spread = rho[:, None] * self.b_norm[None] / tau
        ub = lam + spread
        cand = torch.topk(ub, min(max_rows, t), dim=-1).indices  # [T, c] by descending bound
        rest = torch.logsumexp(ub.scatter(1, cand, float("-inf")), dim=-1)  # [T] log Σ_{j∉C} exp(ub)
        # the computed m is at least sigmoid(rest - log Σ_{j∈C} exp(ub)): blocks that fail for sure stop here
        hopeful = torch.nonzero(2.0 * torch.sigmoid(rest - torch.logsumexp(ub.gather(1, cand), dim=-1))
                                <= max_err).squeeze(-1)
        rel_t = torch.zeros(vt.shape)
        bound_t = torch.full(vt.shape, float("inf"))
        # blocks whose bounds need fewer rows run in smaller batches (peaked attention: 4-16 rows)
        need = _rows_needed(ub[hopeful], lam[hopeful] - spread[hopeful], cand[hopeful], rest[hopeful],
                            max_err / 16)
        for size in sorted(set(need.tolist())):
            sel = hopeful[need == size]
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
        return rel_t, (bound_t <= max_err) & vt

    def _shared_relevance(self, y: torch.Tensor, free: torch.Tensor, max_err: float
                          ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Level 2s of relevance_image for y [H, W, l] over free [H, W] pixels: (relevance [H*W],
        bound <= max_err [H*W], count of leaders among them).

        In each SHARE_TILE block, SHARE_ROUNDS times, the free pixel whose neighbours differ least
        leads and the free pixels within ρ = SHARE_RADIUS of it join (_share_leaders). A member at
        y_ℓ + δ, ‖δ‖ ≤ ρ, weighs row j by e_j·exp(δ·b_j/tau), which differs from e_j by at most
        e_j·(exp(‖δ‖‖b_j‖/tau) - 1) ≤ e_j·(‖δ‖/ρ)·g_j with g_j = exp(ρ‖b_j‖/tau) - 1 (convexity). So its
        n and ‖f‖ are the leader's within (‖δ‖/ρ)·Σ e_j g_j |s_j| and (‖δ‖/ρ)·Σ e_j g_j ‖PSC_j‖.
        Leaders bound ‖f‖ as _pixel_relevance does, FIRST_RANK directions first; only a leader with a
        member still too loose takes the rest (on bench_query's 5000-row bank: 297 of 640 leaders,
        leaders' moments 8.1 -> 6.0 ms a map).
        """
        H, W, l = y.shape
        rho = SHARE_RADIUS
        lead, dist = self._share_leaders(y, free)
        members = torch.nonzero(lead >= 0).squeeze(-1)
        leaders, at = torch.unique(lead[members], return_inverse=True)
        g = torch.expm1(rho * self.b_norm / self.tau)
        frac = dist[members] / rho
        L = leaders.numel()
        n, r_sum, e_n, e_f, h, w2 = torch.zeros(6, L)
        lo, hi = torch.zeros(L), torch.full((L,), float("inf"))
        redo = torch.arange(L)
        ranks = self._ranks()
        est, err = torch.zeros(members.numel()), torch.full((members.numel(),), float("inf"))
        for i, k in enumerate(ranks):  # as _pixel_relevance: a leader takes every direction only if needed
            if not redo.numel():
                break
            new = self.P[:, ranks[i - 1] if i else 0:k]
            yl = y.reshape(-1, l)[leaders[redo]]
            if i == 0:
                cols = torch.cat([self.s[:, None], self.r_norm[:, None], (g * self.s.abs())[:, None],
                                  (g * self.r_norm)[:, None], new], 1)
                m, w2[redo] = self._moments(yl, cols)
                n[redo], r_sum[redo], e_n[redo], e_f[redo], m = m[:, 0], m[:, 1], m[:, 2], m[:, 3], m[:, 4:]
            else:
                m, _ = self._moments(yl, new)
            h[redo] += (m * m).sum(-1)
            lo[redo], hi[redo] = self._norm_interval(n[redo], r_sum[redo], h[redo], k, w2[redo])
            est, err = _bounded(n[at], lo[at], hi[at], frac * e_n[at], frac * e_f[at])
            loose = torch.zeros(L, dtype=torch.bool)
            loose[at[err > max_err]] = True  # a leader with a member its bound does not hold
            redo = redo[loose[redo]]
        rel, ok = torch.zeros(H * W), torch.zeros(H * W, dtype=torch.bool)
        rel[members], ok[members] = est, err <= max_err
        return rel, ok, int(ok[leaders].sum())

    def _share_leaders(self, y: torch.Tensor, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lead [H*W], the pixel each free pixel takes its weights from or -1; dist [H*W], its distance to
        it) for y [H, W, l] and free [H, W]: in each SHARE_TILE block, SHARE_ROUNDS times, the free pixel
        whose 4 neighbours differ least leads (leaders sit inside regions) and the free pixels within
        SHARE_RADIUS of it join. The compiled kernel where it loads, else this PyTorch twin."""
        H, W, l = y.shape
        rho = SHARE_RADIUS
        step = torch.zeros(H, W)  # how much a pixel differs from its 4 neighbours
        dx, dy = (y[:, 1:] - y[:, :-1]).norm(dim=-1), (y[1:] - y[:-1]).norm(dim=-1)
        step[:, 1:] += dx
        step[:, :-1] += dx
        step[1:] += dy
        step[:-1] += dy
        got = _relevance_cpu.leaders(y, free, step, SHARE_TILE, SHARE_ROUNDS, rho) if self.compiled else None
        if got is not None:
            return got
        pix = _blocks(torch.arange(H * W).view(H, W), SHARE_TILE, -1)  # [T, P]
        ft = _blocks(free, SHARE_TILE, False)
        yt = y.reshape(-1, l)[pix.clamp_min(0)]  # [T, P, l]
        st = torch.where(ft, step.reshape(-1)[pix.clamp_min(0)], float("inf"))
        lead_t = torch.full(pix.shape, -1)  # [T, P] in blocks until the end: dense updates, no index lists
        dist_t = torch.zeros(pix.shape)
        rows = torch.arange(pix.shape[0])
        for _ in range(SHARE_ROUNDS):
            j = torch.where(ft, st, float("inf")).argmin(-1)  # [T]
            has = ft[rows, j]
            # [T, P]; exact differences (the matmul form loses digits at distances near rho)
            d = torch.cdist(yt, yt[rows, j][:, None], compute_mode="donot_use_mm_for_euclid_dist")[..., 0]
            join = ft & has[:, None] & (d <= rho)
            lead_t = torch.where(join, pix[rows, j][:, None], lead_t)
            dist_t = torch.where(join, d, dist_t)
            ft &= ~join
        lead = torch.full((H * W,), -1)
        dist = torch.zeros(H * W)
        inside = pix >= 0
        lead[pix[inside]], dist[pix[inside]] = lead_t[inside], dist_t[inside]
        return lead, dist

    def _pixel_relevance(self, y: torch.Tensor, max_err: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Level 2 of relevance_image for y [P, l]: (relevance [P], bound <= max_err [P]).

        Exact weights e and numerator n = e·(PSC·t̂); ‖f‖² = ‖e·PSC‖² lies in [h, h + σ²_{k+1}·‖e‖²]
        with h = ‖e·P_k‖² (the bank's top principal directions), and in [n², (e·‖PSC_j‖)²]. FIRST_RANK
        directions first, all SPECTRAL_RANK where that bound is looser than max_err (the second pass
        adds only the other directions to h: the weights are the same, recomputed).
        """
        P = y.shape[0]
        rel, err = torch.zeros(P), torch.full((P,), float("inf"))
        n, r_sum, h, w2 = torch.zeros(4, P)
        redo = torch.arange(P)
        ranks = self._ranks()
        for i, k in enumerate(ranks):
            if not redo.numel():
                break
            new = self.P[:, ranks[i - 1] if i else 0:k]
            if i == 0:
                m, w2[redo] = self._moments(y[redo], torch.cat([self.s[:, None], self.r_norm[:, None], new], 1))
                n[redo], r_sum[redo], m = m[:, 0], m[:, 1], m[:, 2:]
            else:
                m, _ = self._moments(y[redo], new)
            h[redo] += (m * m).sum(-1)
            lo, hi = self._norm_interval(n[redo], r_sum[redo], h[redo], k, w2[redo])
            rel[redo], err[redo] = _bounded(n[redo], lo, hi)
            redo = redo[err[redo] > max_err]
        return rel, err <= max_err

    def _moments(self, y: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w @ cols [P, c], ‖w‖² [P]) for y [P, l] and per-row columns [t, c], with w = softmax(y·B/tau)
        each pixel's attention weights.

        The compiled kernel where it loads (self.compiled), else the PyTorch twin below. The kernel skips
        the pass for each pixel's largest logit where it can: |y·b_j/tau| ≤ max‖b_j‖/tau (‖y‖ ≤ 1), so
        unshifted weights and their squares' sum stay finite in float32 when 2·max‖b_j‖/(tau ln 2) + log2 t
        is well under 127 (tau = 0.05: at most 58 + log2 t). Both paths then divide by Σ_j e_j.
        """
        t = self.B.shape[1]
        B2 = self.B / (self.tau * math.log(2.0))  # exp2 costs a third of exp on CPU
        cols1 = torch.cat([cols, torch.ones(t, 1)], 1)  # e @ 1 = Σ_j e_j
        got = None
        if self.compiled:
            shift = 2.0 * float(self.b_norm.max()) / (self.tau * math.log(2.0)) + math.log2(max(t, 1)) > 100.0
            got = _relevance_cpu.moments(y, B2.T.contiguous(), cols1, shift)
        if got is None:
            chunk = max(16, (1 << 21) // (4 * t))  # [chunk, t] stays in cache
            out, w2 = torch.empty(y.shape[0], cols1.shape[1]), torch.empty(y.shape[0])
            for b in range(0, y.shape[0], chunk):
                e = y[b:b + chunk] @ B2
                e -= e.amax(-1, keepdim=True)
                e.exp2_()
                torch.mm(e, cols1, out=out[b:b + chunk])
                w2[b:b + chunk] = torch.linalg.vector_norm(e, dim=-1) ** 2
        else:
            out, w2 = got
        z = out[:, -1:]
        return out[:, :-1] / z, w2 / (z[:, 0] * z[:, 0])

    def _ranks(self) -> list[int]:
        """Principal directions level 2 takes in steps: FIRST_RANK, then all (FIRST_RANK alone saves little
        below twice as many). A third step at 3·FIRST_RANK measured no faster on bench_memory's 5000-row banks
        and let more pixels through with wider intervals (max |err| 0.028 -> 0.040)."""
        K = self.P.shape[1]
        return [FIRST_RANK, K] if K > 2 * FIRST_RANK else [K]

    def _norm_interval(self, n: torch.Tensor, r_sum: torch.Tensor, h: torch.Tensor, k: int, w2: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) [P] around ‖f‖ = ‖e·PSC‖ from n = e·(PSC·t̂) [P], r_sum = e·‖PSC_j‖ [P], h = ‖e·P_k‖² [P]
        and w2 = ‖e‖² [P]: ‖f‖ ≥ ‖e·P_k‖, ≥ |n| (t̂ is a unit vector), ≤ r_sum (triangle inequality)."""
        lo = torch.maximum(h.sqrt(), n.abs())
        hi = torch.minimum((h + self.sigma2[k] * w2).sqrt(), r_sum)
        return lo, hi

    def _exact_relevance(self, y: torch.Tensor, budget_bytes: int = 64 << 20) -> torch.Tensor:
        """Level 3 of relevance_image: cos(fully decoded feature, text) [P] for y [P, l]."""
        t, d = self.rows.shape
        chunk = max(1, budget_bytes // (4 * (t + d)))
        out = torch.empty(y.shape[0])
        for b in range(0, y.shape[0], chunk):
            w = torch.softmax(y[b:b + chunk] @ self.B / self.tau, dim=-1)
            out[b:b + chunk] = ((w @ self.s) / (w @ self.rows).norm(dim=-1).clamp_min(1e-12)).clamp(-1.0, 1.0)
        return out


def _bounded(n: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, en: torch.Tensor | float = 0.0,
             ef: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(midpoint, half-width) [P] of the range of n'/f' over n' in n ± en, f' in [lo - ef, hi + ef].

    n'/f' is monotone in each of them, so the range's ends are among the four corners.
    """
    lo, hi = (lo - ef).clamp_min(1e-12), hi + ef
    corners = torch.stack([(n - en) / lo, (n - en) / hi, (n + en) / lo, (n + en) / hi]).clamp(-1.0, 1.0)
    a, b = corners.amin(0), corners.amax(0)
    return (a + b) / 2, (b - a) / 2


def _n_blocks(H: int, W: int, tile: int) -> int:
    return -(-H // tile) * -(-W // tile)


def _blocks(x: torch.Tensor, tile: int, fill: float | bool | int = 0.0) -> torch.Tensor:
    """x [H, W, ...] -> [ty*tx, tile*tile, ...] in tile x tile blocks (raster order), padded with fill."""
    H, W = x.shape[:2]
    ty, tx = -(-H // tile), -(-W // tile)
    full = torch.full((ty * tile, tx * tile, *x.shape[2:]), fill, dtype=x.dtype)
    full[:H, :W] = x
    return full.view(ty, tile, tx, tile, *x.shape[2:]).transpose(1, 2).reshape(ty * tx, tile * tile, *x.shape[2:])


def _unblocks(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Inverse of _blocks: [ty*tx, tile*tile] -> [H*W]."""
    tile = math.isqrt(x.shape[1])
    ty, tx = -(-H // tile), -(-W // tile)
    return x.view(ty, tx, tile, tile).transpose(1, 2).reshape(ty * tile, tx * tile)[:H, :W].reshape(-1)


def _rows_needed(ub: torch.Tensor, lb: torch.Tensor, cand: torch.Tensor, rest: torch.Tensor, target: float
                 ) -> torch.Tensor:
    """Per tile [T], the fewest leading candidates (4, 8, 16, ... up to c) whose bounds leave out at
    most `target` of the softmax mass: Σ_{j∉C} exp(ub_j) ≤ target · Σ_{j∈C} exp(lb_j).

    ub, lb [T, t] bounds on every row's logit over the tile; cand [T, c] rows by descending ub;
    rest [T] log Σ_{j∉cand} exp(ub_j).
    """
    c = cand.shape[1]
    ub_c, lb_c = ub.gather(1, cand), lb.gather(1, cand)
    rest = rest[:, None]
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
    """{"P": rows·V_K [t, K], "sigma2": σ²_1..σ²_{K+1} [K + 1]} from the eigendecomposition of rowsᵀ·rows [d, d],
    K = min(k, d, t); the σ² are raised a little so float32 products of P stay below them."""
    t, d = rows.shape
    if t == 0:
        return {"P": torch.zeros(0, 0), "sigma2": torch.zeros(1)}
    lam, V = torch.linalg.eigh((rows.T @ rows).double())  # ascending
    lam, V = lam.flip(0).clamp_min(0.0), V.flip(1)
    k = min(k, d, t)
    sigma2 = torch.cat([lam[:k + 1], lam.new_zeros(max(0, k + 1 - len(lam)))])
    if k == min(d, t):
        sigma2[k] = 0.0  # P spans every row
    return {"P": (rows.double() @ V[:, :k]).float().contiguous(),
            "sigma2": (sigma2 * (1 + 1e-4) + 1e-6 * float(lam[0])).float()}

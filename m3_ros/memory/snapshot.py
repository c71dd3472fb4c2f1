"""Queries without waiting for training: read-only memory snapshots and the per-Gaussian attention cache.

Reader/writer scheme: ``M3Memory`` mutates under its lock (add_keyframe, train_step, reset, load)
and, at the end of each mutation, publishes a ``MemorySnapshot``: detached copies of the Gaussian
parameters and W_m, plus references to the bank rows (the bank never edits its tensors in place, it
replaces them). Queries render and score a snapshot with no lock held, so a query never waits for a
train step; it sees the memory as of the last finished step.

``AttentionCache`` keeps, per model, each Gaussian's attention weights (its top rows, all rows for
banks up to ``top_rows``) and the norm of its decoded feature. Relevance of Gaussian i to a text is
``R̂_i·t̂ / ‖R̂_i‖ = (w_i·(PSC·t̂)) / ‖R̂_i‖`` (M3_METHOD.md, "relevance without decoding"): the bank is
scored against the text once (t values) and each Gaussian mixes k of them, instead of decoding
N x d features per query.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros import geometry
from m3_ros.memory.attention import attention_logits, decode_chunked
from m3_ros.memory.labelvotes import support
from m3_ros.memory.rasterize import rasterize
from m3_ros.memory.relevance import RelevanceIndex
from m3_ros.memory.sh import camera_centre, sh_to_rgb


@dataclass(frozen=True)
class BankView:
    """A bank's rows at one moment (the tensors are replaced, never edited, when the bank grows)."""

    rows: torch.Tensor  # [t, d] raw PSC
    unit_rows: torch.Tensor  # [t, d] L2-normalised rows
    version: int

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    def __len__(self) -> int:
        return int(self.rows.shape[0])


@dataclass(frozen=True)
class _Attn:
    """One consistent state of the cache (swapped whole, so readers never see half a refresh)."""

    idx: torch.Tensor  # [N, k] bank rows with the highest weights (all rows when t <= top_rows)
    w: torch.Tensor  # [N, k] their softmax weights (over all t rows, not renormalised)
    inv_norm: torch.Tensor  # [N] 1 / ‖R̂_i‖ of the full decoding
    queries: torch.Tensor  # [N, l] the queries these were computed from
    W: torch.Tensor  # [l, d] W_m of the last full refresh (drift reference)
    bank_version: int
    synced: int  # the snapshot version this state was last brought up to (-1: none)


class AttentionCache:
    """Per-Gaussian attention of one model's principal queries, refreshed where they moved.

    A row is recomputed when its query moved by more than ``q_tol`` (relative); everything is
    recomputed when the bank changed, the Gaussian count changed (densify / prune) or W_m moved
    by more than ``w_tol`` (relative Frobenius norm) since the last full refresh. The tolerances
    bound the staleness error (test_snapshot.py checks cached against fresh decoding after train
    steps, and bench_query.py reports it).
    """

    def __init__(self, top_rows: int = 64, q_tol: float = 1e-3, w_tol: float = 2e-3,
                 budget_bytes: int = 256 << 20) -> None:
        self.top_rows = top_rows
        self.q_tol = q_tol
        self.w_tol = w_tol
        self.budget_bytes = budget_bytes
        self._state: _Attn | None = None
        self._lock = threading.Lock()
        self.full_refreshes = 0
        self.rows_refreshed = 0

    @torch.no_grad()
    def _compute(self, queries: torch.Tensor, W: torch.Tensor, bank: BankView, tau: float):
        """(idx [M, k], w [M, k], inv_norm [M]) for queries [M, l], chunked under the byte budget."""
        M, t, d = queries.shape[0], len(bank), bank.dim
        k = min(self.top_rows, t)
        idx = torch.empty(M, k, dtype=torch.long)
        w = torch.empty(M, k)
        inv = torch.empty(M)
        chunk = max(1, self.budget_bytes // (4 * (t + d)))
        for s in range(0, M, chunk):
            wf = torch.softmax(attention_logits(queries[s:s + chunk], W, bank.unit_rows, tau), dim=-1)  # [c, t]
            inv[s:s + chunk] = 1.0 / (wf @ bank.rows).norm(dim=-1).clamp_min(1e-12)
            if k == t:
                w[s:s + chunk], idx[s:s + chunk] = wf, torch.arange(t).expand(wf.shape[0], t)
            else:
                w[s:s + chunk], idx[s:s + chunk] = torch.topk(wf, k, dim=-1)
        return idx, w, inv

    @torch.no_grad()
    def get(self, queries: torch.Tensor, W: torch.Tensor, bank: BankView, tau: float, version: int = -1) -> _Attn:
        """The cache brought up to queries [N, l], W [l, d], bank (within the tolerances).

        ``version`` names the snapshot these come from: a state already brought up to it is
        returned without comparing the queries again (-1 = always compare).
        """
        st = self._state
        if st is not None and version >= 0 and st.synced == version:
            return st
        queries, W = queries.detach(), W.detach()
        with self._lock:
            st = self._state
            full = (st is None or st.bank_version != bank.version or st.queries.shape != queries.shape
                    or float((W - st.W).norm()) > self.w_tol * float(st.W.norm()))
            if full:
                idx, w, inv = self._compute(queries, W, bank, tau)
                st = _Attn(idx, w, inv, queries.clone(), W.clone(), bank.version, version)
                self.full_refreshes += 1
            else:
                moved = (queries - st.queries).norm(dim=1) > self.q_tol * st.queries.norm(dim=1).clamp_min(1e-6)
                rows = torch.nonzero(moved).flatten()
                if len(rows):
                    idx, w, inv = self._compute(queries[rows], W, bank, tau)
                    q_new, i_new, w_new, n_new = st.queries.clone(), st.idx.clone(), st.w.clone(), st.inv_norm.clone()
                    q_new[rows], i_new[rows], w_new[rows], n_new[rows] = queries[rows], idx, w, inv
                    st = _Attn(i_new, w_new, n_new, q_new, st.W, st.bank_version, version)
                    self.rows_refreshed += len(rows)
                else:
                    st = dataclasses.replace(st, synced=version)
            self._state = st
            return st

    def relevance(self, state: _Attn, bank: BankView, text_emb: torch.Tensor,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """cos(decoded feature, text) [N] from a cache state: (w·(PSC·t̂)) / ‖R̂‖; for texts [k, d], [N, k];
        only the Gaussians ``rows`` [M] (indices) when given.

        Exact when the bank has at most top_rows rows; otherwise the numerator misses the
        weight outside each Gaussian's top rows (tau = 0.05 makes it small).
        """
        t_hat = F.normalize(text_emb.float(), dim=-1)
        s = bank.rows @ (t_hat.T if t_hat.ndim == 2 else t_hat)  # [t] or [t, k]: the bank scored once
        w, idx, inv = (state.w, state.idx, state.inv_norm) if rows is None else (
            state.w[rows], state.idx[rows], state.inv_norm[rows])
        if w.shape[1] == len(bank):  # every row kept, in bank order
            num = w @ s
        elif s.ndim == 1:
            num = (w * s[idx]).sum(-1)
        else:
            num = torch.einsum("nr,nrk->nk", w, s[idx])
        inv = inv if num.ndim == 1 else inv[:, None]
        return (num * inv).clamp(-1.0, 1.0)


@dataclass
class MemorySnapshot:
    """What a query needs of an M3Memory at one moment; read-only, safe to use from any thread."""

    cfg: object  # MemoryConfig
    version: int
    iteration: int
    means: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4]
    scales: torch.Tensor  # [N, 3] activated
    opacities: torch.Tensor  # [N] activated
    colors: torch.Tensor  # colour parameters (see gaussians.py)
    queries: dict[str, torch.Tensor]  # model -> [N, l]
    W: dict[str, torch.Tensor]  # model -> [l, d]
    banks: dict[str, BankView]
    keyframes: list
    caches: dict[str, AttentionCache]
    label_votes: torch.Tensor | None = None  # [N, 2] labelvotes.py (None: a memory without votes)
    label_contradictions: torch.Tensor | None = None  # [N] labelvotes.RUN_KEY (None: none counted)
    _index_base: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_gaussians(self) -> int:
        return int(self.means.shape[0])

    # ---- rendering -------------------------------------------------------------------------
    @torch.no_grad()
    def render_raw(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                   with_queries: bool = True, models: list[str] | None = None) -> dict:
        """Rendered "rgb" [H, W, 3], "alpha" [H, W], "depth_raw" [H, W] (expected depth) and
        "queries" {model: [H, W, l]} from camera T_world_cam [4, 4], K [3, 3]."""
        models = list(self.cfg.models) if models is None else models
        H, W = int(height), int(width)
        def nothing() -> dict:
            return {"rgb": np.zeros((H, W, 3), np.float32), "alpha": np.zeros((H, W), np.float32),
                    "depth_raw": np.zeros((H, W), np.float32),
                    "queries": {m: torch.zeros(H, W, self.cfg.models[m].channels) for m in models} if with_queries else {}}
        if self.n_gaussians == 0:
            return nothing()
        viewmat = torch.tensor(geometry.invert(np.asarray(T_world_cam, dtype=np.float64)), dtype=torch.float32)
        Kt = torch.tensor(K, dtype=torch.float32)
        # Only Gaussians that can touch the view are rasterized (conservative: the same image). A
        # verification window sees a few hundred of 50k, and projecting all of them was most of its cost.
        vis = self._visible(viewmat, Kt, W, H)
        if vis is not None and len(vis) == 0:
            return nothing()
        sel = (lambda x: x) if vis is None else (lambda x: x[vis])
        means = sel(self.means)
        chans = [sh_to_rgb(sel(self.colors), means, camera_centre(viewmat), self.cfg.sh_degree)]
        if with_queries:
            chans += [sel(self.queries[m]) for m in models]
        img, alpha, _ = rasterize(means, sel(self.quats), sel(self.scales), sel(self.opacities), torch.cat(chans, -1),
                                  viewmat[None], Kt[None], W, H,
                                  near_plane=self.cfg.near_plane, far_plane=self.cfg.far_plane,
                                  render_mode="RGB+ED", backend=self.cfg.backend)
        img, alpha = img[0], alpha[0, ..., 0]
        out = {"rgb": img[..., :3].clamp(0, 1).numpy(), "alpha": alpha.numpy(), "depth_raw": img[..., -1].numpy()}
        if with_queries:
            qs, c = {}, 3
            for m in models:
                l = self.cfg.models[m].channels
                qs[m] = img[..., c:c + l]
                c += l
            out["queries"] = qs
        return out

    def _visible(self, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int) -> torch.Tensor | None:
        """training.frustum_index (the same conservative test) with the per-Gaussian radius computed once
        per snapshot: indices [M] of the Gaussians that can touch the view, None when all can."""
        with self._lock:
            if "radius" not in self._index_base:
                self._index_base["radius"] = 3.0 * self.scales.max(-1).values
            r3 = self._index_base["radius"]
        cfg = self.cfg
        pc = torch.addmm(viewmat[:3, 3], self.means, viewmat[:3, :3].T)  # [N, 3] camera frame
        z = pc[:, 2]
        zc = z.clamp_min(cfg.near_plane)
        u = pc[:, 0].div(zc).mul_(K[0, 0]).add_(K[0, 2])
        v = pc[:, 1].div(zc).mul_(K[1, 1]).add_(K[1, 2])
        r = r3.div(zc).mul_(torch.maximum(K[0, 0], K[1, 1])).add_(2.0)
        ok = (z > cfg.near_plane) & (z < cfg.far_plane)
        ok &= (u + r >= -0.5) & (u - r <= width - 0.5) & (v + r >= -0.5) & (v - r <= height - 0.5)
        idx = torch.nonzero(ok).flatten()
        return None if len(idx) == self.n_gaussians else idx

    def render(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> dict:
        """"rgb" [H, W, 3] 0..1, "depth" [H, W] (0 where alpha < 0.5), "alpha" [H, W], "queries" {model: [H, W, l]}."""
        out = self.render_raw(T_world_cam, K, width, height)
        depth = np.where(out["alpha"] >= 0.5, out.pop("depth_raw"), 0.0).astype(np.float32)
        return {"rgb": out["rgb"], "depth": depth, "alpha": out["alpha"], "queries": out["queries"]}

    # ---- queries ---------------------------------------------------------------------------
    def check_model(self, model: str) -> None:
        if model not in self.cfg.models:
            raise ValueError(f"unknown model {model!r}; configured: {sorted(self.cfg.models)}")
        if model not in self.banks or len(self.banks[model]) == 0 or model not in self.W:
            raise ValueError(f"model {model!r} has no memory yet (no keyframe carried its features)")

    def index(self, model: str, text_emb: torch.Tensor) -> RelevanceIndex:
        """The relevance index for one text: A and M once per snapshot, the bank scored per text."""
        bank = self.banks[model]
        if text_emb.ndim != 1 or text_emb.shape[0] != bank.dim:
            raise ValueError(f"text_emb must be [{bank.dim}] for model {model!r}, got {tuple(text_emb.shape)}")
        with self._lock:
            base = self._index_base.get(model)
            if base is None:
                base = RelevanceIndex.build(self.W[model], bank.rows, bank.unit_rows, torch.zeros(bank.dim),
                                            self.cfg.tau)
                self._index_base[model] = base
        return dataclasses.replace(base, s=bank.rows @ F.normalize(text_emb.float(), dim=0))

    @torch.no_grad()
    def relevance(self, model: str, text_emb: torch.Tensor, T_world_cam: np.ndarray, K: np.ndarray,
                  width: int, height: int) -> dict:
        """"relevance" [H, W] cos(decoded feature, text) without decoding (0 where alpha < 0.01), "depth",
        "alpha", and "query_norm" [H, W] ‖Q‖ of the rendered query."""
        self.check_model(model)
        idx = self.index(model, text_emb)
        out = self.render_raw(T_world_cam, K, width, height, models=[model])
        alpha = out["alpha"]
        cfg = self.cfg
        rel = idx.relevance_image(out["queries"][model], torch.from_numpy(alpha >= 0.01), cfg.relevance_max_err,
                                  cfg.relevance_tile)
        depth = np.where(alpha >= 0.5, out["depth_raw"], 0.0).astype(np.float32)
        return {"relevance": rel.numpy(), "depth": depth, "alpha": alpha,
                "query_norm": out["queries"][model].norm(dim=-1).numpy()}

    def means_tree(self, min_opacity: float):
        """cKDTree over the means of Gaussians with opacity >= min_opacity, and their indices (built once)."""
        from scipy.spatial import cKDTree
        key = ("tree", float(min_opacity))
        with self._lock:
            if key not in self._index_base:
                keep = torch.nonzero(self.opacities >= min_opacity).flatten().numpy()
                self._index_base[key] = (cKDTree(self.means.numpy()[keep].astype(np.float64)), keep)
            return self._index_base[key]

    @torch.no_grad()
    def decode(self, model: str, queries: torch.Tensor) -> torch.Tensor:
        """Full decoding of queries [M, l] -> features [M, d], chunked under cfg.decode_budget_bytes."""
        self.check_model(model)
        l = self.cfg.models[model].channels
        if queries.ndim != 2 or queries.shape[1] != l:
            raise ValueError(f"queries must be [M, {l}] for model {model!r}, got {tuple(queries.shape)}")
        b = self.banks[model]
        if queries.shape[0] == 1 and not bool(queries.any()):
            # grounding asks for the zero query's decoding (its baseline) two or three times per query
            with self._lock:
                key = ("zero", model)
                if key not in self._index_base:
                    self._index_base[key] = decode_chunked(queries.float(), self.W[model], b.rows, b.unit_rows,
                                                           self.cfg.tau, self.cfg.decode_budget_bytes)
                return self._index_base[key].clone()
        return decode_chunked(queries.float(), self.W[model], b.rows, b.unit_rows, self.cfg.tau,
                              self.cfg.decode_budget_bytes)

    def attention(self, model: str) -> _Attn:
        """The per-Gaussian attention cache brought up to this snapshot."""
        self.check_model(model)
        return self.caches[model].get(self.queries[model], self.W[model], self.banks[model], self.cfg.tau,
                                      self.version)

    @torch.no_grad()
    def label_support(self, max_contradictions: int = 0, prior: float = 1.0) -> torch.Tensor:
        """[N] each Gaussian's share of keyframes that saw it inside a detector region (0.5 unvoted);
        0 where max_contradictions > 0 keyframes in a row contradicted its label (labelvotes.support)."""
        if self.label_votes is None:
            return torch.full((self.n_gaussians,), 0.5)
        return support(self.label_votes, self.label_contradictions, max_contradictions, prior)

    def label_contradicted(self) -> torch.Tensor:
        """[N] bool: the newest keyframes that gave evidence on the Gaussian's label contradicted it (at
        least one since the last that confirmed it; labelvotes.RUN_KEY). False where none were counted."""
        if self.label_contradictions is None:
            return torch.zeros(self.n_gaussians, dtype=torch.bool)
        return self.label_contradictions >= 1

    def query_norms(self, model: str) -> torch.Tensor:
        """[N] length of each Gaussian's principal query (seeded ones are unit length)."""
        self.check_model(model)
        with self._lock:
            key = ("norms", model)
            if key not in self._index_base:
                self._index_base[key] = self.queries[model].norm(dim=1)
            return self._index_base[key]

    def gaussian_relevance(self, model: str, text_emb: torch.Tensor, rows: torch.Tensor | None = None
                           ) -> torch.Tensor:
        """[N] cosine between each Gaussian's decoded query and the text [d] (from the attention cache);
        [N, k] for texts [k, d]; only the Gaussians ``rows`` [M] (indices) when given."""
        self.check_model(model)
        bank = self.banks[model]
        if text_emb.ndim not in (1, 2) or text_emb.shape[-1] != bank.dim:
            raise ValueError(f"text_emb must be [{bank.dim}] or [k, {bank.dim}] for model {model!r}, "
                             f"got {tuple(text_emb.shape)}")
        return self.caches[model].relevance(self.attention(model), bank, text_emb, rows)

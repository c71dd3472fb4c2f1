"""M3Memory: the orchestrator the nodes, CLI and benchmarks drive (keyframes -> Gaussians + banks -> training -> queries).

Where things live:
    config.py     ModelSlot, MemoryConfig
    views.py      keyframe checks, compact storage, train-scale views (compact.py: indexed label maps)
    bank.py       the PSC banks (streaming Algorithm 1, centring, bounded by merging)
    wm.py         W_m initialisation and seeded principal queries
    seeding.py    new Gaussians where a keyframe sees unexplained geometry
    scenechange.py what a new keyframe changes in the Gaussians already held, from:
      freespace.py   free-space evidence: Gaussians a keyframe's rays pass through fade and go (moved objects)
      labelchange.py label-change evidence: what the detector calls a place now (moved objects lower than free space sees)
      labelvotes.py  label support: how often keyframes saw each Gaussian inside a detector region
    training.py   the keyframe a step draws and the losses on its render
    snapshot.py   read-only snapshots: rendering and every query
    checkpoint.py files on disk (``state_dict`` / ``from_state`` here are its only contact)
This module owns the mutable state and its lock, and sequences the pieces.

Thread safety: one re-entrant lock guards every mutation (add_keyframe, train_step, train,
load, reset) and the direct queries (render, relevance, gaussian_relevance, decode, stats, save).
Each mutation ends by publishing a read-only ``MemorySnapshot`` (snapshot.py); ``snapshot()``
hands it out without taking the lock, so queries run on it while a train step is in progress.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from m3_ros.memory import ops, scenechange
from m3_ros.memory.bank import MemoryBank
from m3_ros.memory.config import MemoryConfig, ModelSlot  # noqa: F401  (re-exported: the public names)
from m3_ros.memory.gaussians import empty_params, query_key
from m3_ros.memory.labelvotes import RUN_KEY, VOTES_KEY
from m3_ros.memory.optim import catch_up_rows, selective_adam_step
from m3_ros.memory.rasterize import rasterize
from m3_ros.memory.seeding import (BIRTH_KEY, EXPOSURE_KEY, NO_BIRTH, detected_mask, inherit_queries, least_useful,
                                  pixel_features, seed_geometry, seed_points, small_regions, spared_seeds)
from m3_ros.memory.sh import camera_centre, sh_to_rgb
from m3_ros.memory.snapshot import AttentionCache, BankView, MemorySnapshot
from m3_ros.memory.strategy import DensifyStrategy
from m3_ros.memory.training import frustum_index, sample_view, view_losses
from m3_ros.memory.views import TrainView, check_keyframe, compact_keyframe, prepare_view
from m3_ros.memory.wm import carry_queries, initial_wm, queries_for_rows, refit_wm, span_coverage
from m3_ros.types import Keyframe

log = logging.getLogger(__name__)

_TrainView = TrainView  # the former private name


class M3Memory:
    """Spatial multimodal memory: Gaussians with principal queries + one PSC bank and W_m per model."""

    def __init__(self, cfg: MemoryConfig) -> None:
        self.cfg = cfg
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()  # one writer at a time (saves share temp directory names)
        self.reset()

    # ---- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (Gaussians, banks, W_m, keyframes, optimiser state)."""
        with self._lock:
            cfg = self.cfg
            self._gen = torch.Generator().manual_seed(cfg.seed)
            self._rng = random.Random(cfg.seed)
            self.params = empty_params({m: s.channels for m, s in cfg.models.items()}, cfg.sh_degree)
            self.params[VOTES_KEY] = nn.Parameter(torch.zeros(0, 2), requires_grad=False)
            self.params[RUN_KEY] = nn.Parameter(torch.zeros(0), requires_grad=False)
            self.params[BIRTH_KEY] = nn.Parameter(torch.zeros(0), requires_grad=False)
            self.params[EXPOSURE_KEY] = nn.Parameter(torch.zeros(0), requires_grad=False)
            self.banks: dict[str, MemoryBank] = {}
            self.W: dict[str, nn.Parameter] = {}
            self._wm_version = 0
            self._views: list[TrainView] = []
            self.cleared = 0  # Gaussians removed by free-space evidence (stats)
            self.stale_dropped = 0  # keyframes that left the training window as stale (stats)
            self.stale_masked = 0  # kept keyframes whose changed pixels were masked instead (stats)
            self._cam_centres: list[np.ndarray] = []
            self.extent = 1.0
            self.iteration = 0
            self.last_loss = float("nan")
            self.train_time_s = 0.0
            self._build_optimizers()
            self.strategy = DensifyStrategy(cfg.densify, cfg.max_gaussians)
            self._strategy_state = self.strategy.initial_state()
            self._caches = {m: AttentionCache(cfg.cache_top_rows, cfg.cache_q_tol, cfg.cache_w_tol,
                                              cfg.decode_budget_bytes) for m in cfg.models}
            self._version = getattr(self, "_version", 0) + 1
            self._snapshot: MemorySnapshot | None = None
            self._stats = self._counts()

    def _build_optimizers(self) -> None:
        cfg = self.cfg
        lrs = {"means": cfg.lr_means * self.extent, "log_scales": cfg.lr_scales, "quats": cfg.lr_quats,
               "opacity_logits": cfg.lr_opacity, "colors": cfg.lr_colors}
        lrs.update({query_key(m): cfg.lr_queries for m in cfg.models})
        lrs[VOTES_KEY] = lrs[RUN_KEY] = lrs[BIRTH_KEY] = lrs[EXPOSURE_KEY] = 0.0  # counts and ages, not trained
        self.optimizer = ops.make_optimizer(self.params, lrs)
        ws = [p for p in self.W.values() if p.requires_grad]
        self.wm_optimizer = torch.optim.Adam(ws, lr=cfg.lr_wm) if ws else None

    @property
    def n_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def means(self) -> torch.Tensor:
        """[N, 3] world positions."""
        return self.params["means"].detach()

    @property
    def opacities(self) -> torch.Tensor:
        """[N] activated opacities."""
        return torch.sigmoid(self.params["opacity_logits"].detach())

    @property
    def scales(self) -> torch.Tensor:
        """[N, 3] activated scales (m)."""
        return self.params["log_scales"].detach().exp()

    @property
    def keyframes(self) -> list[Keyframe]:
        return [v.kf for v in self._views]

    def stats(self) -> dict:
        """Counters for status reports, as of the end of the last mutation (published with the query
        snapshot), read without the lock: a status tick waiting for ingestion (seconds on a loaded
        machine) held a node's executor thread, and with a few queued behind it queries and pose intake
        stopped (test_autosave_load). Read live without the lock they could disagree (a status showed
        the first keyframe's Gaussians with 0 keyframes)."""
        return self._stats

    def _counts(self) -> dict:
        """The counters of ``stats`` (call holding the lock)."""
        return {"keyframes": len(self._views), "gaussians": self.n_gaussians,
                "bank_rows": {m: len(b) for m, b in self.banks.items()}, "iteration": self.iteration,
                "last_loss": self.last_loss, "train_time_s": self.train_time_s,
                "cleared": self.cleared, "stale_dropped": self.stale_dropped,
                "stale_masked": self.stale_masked}

    # ---- W_m -------------------------------------------------------------------------------
    def _init_wm(self, model: str, dim: int) -> None:
        s = self.cfg.models[model]
        W = initial_wm(self.banks[model], s.channels, dim, self.cfg.learnable_wm, self.cfg.wm_init, self._gen)
        self.W[model] = nn.Parameter(W, requires_grad=self.cfg.learnable_wm)
        self._wm_version += 1
        self._build_wm_optimizer()

    def _build_wm_optimizer(self) -> None:
        ws = [p for p in self.W.values() if p.requires_grad]
        self.wm_optimizer = torch.optim.Adam(ws, lr=self.cfg.lr_wm) if ws else None

    @torch.no_grad()
    def _maybe_refit_wm(self, model: str) -> bool:
        """Refit W_m to the grown bank's principal directions when that covers its rows better
        (see MemoryConfig.wm_refit_gain); the queries are carried over, their Adam moments reset."""
        cfg = self.cfg
        if cfg.wm_refit_gain <= 0 or not cfg.learnable_wm or cfg.wm_init != "pca":
            return False
        bank, W_old = self.banks[model], self.W[model].detach()
        W_new = refit_wm(W_old, bank)
        gain = float(span_coverage(W_new, bank.unit_rows).mean() - span_coverage(W_old, bank.unit_rows).mean())
        if gain <= cfg.wm_refit_gain:
            return False
        key = query_key(model)
        q = carry_queries(self.params[key].detach(), W_old, W_new)
        ops.replace_values(self.params, self.optimizer, key, q)
        self.W[model] = nn.Parameter(W_new, requires_grad=cfg.learnable_wm)
        self._wm_version += 1
        self._build_wm_optimizer()
        return True

    def _queries_for_rows(self, model: str, idx: torch.Tensor) -> torch.Tensor:
        """Least-squares principal queries [M, l] whose q·W_m points at bank rows idx [M] (-1 -> 0)."""
        return queries_for_rows(self.W[model], self.banks[model], idx)

    # ---- keyframes ---------------------------------------------------------------------------
    def add_keyframe(self, kf: Keyframe) -> None:
        """Grow the banks with kf's features, seed Gaussians where kf sees unexplained geometry, keep kf for training."""
        check_keyframe(kf)
        with self._lock:
            cfg = self.cfg
            self._catch_up_all()  # eviction, free space and seeding read every Gaussian
            feats = {m: fm for m, fm in kf.features.items() if m in cfg.models}
            for m, fm in feats.items():
                rows = fm.features.reshape(-1, fm.dim).float()
                if m not in self.banks:
                    self.banks[m] = MemoryBank(fm.dim, cfg.models[m].theta, cfg.models[m].max_rows,
                                               centre=cfg.models[m].centred)
                elif self.banks[m].dim != fm.dim:
                    raise ValueError(f"keyframe {kf.index}: model {m!r} features have d={fm.dim}, bank has {self.banks[m].dim}")
                self.banks[m].add(rows)
                if m not in self.W and len(self.banks[m]) > 0:
                    self._init_wm(m, fm.dim)
                elif m in self.W:
                    self._maybe_refit_wm(m)
            self._cam_centres.append(np.asarray(kf.T_world_cam)[:3, 3].copy())
            scenechange.clear_free_space(self, kf)  # before seeding: where something left is unexplained now
            self._seed(kf, feats)
            scenechange.vote_labels(self, kf, feats)
            self._update_extent()
            self._views.append(prepare_view(compact_keyframe(kf, cfg), cfg))
            if len(self._views) > cfg.window:
                # Evict a random keyframe among the older ones: the window keeps spanning history.
                old = len(self._views) - cfg.recent
                self._views.pop(self._rng.randrange(max(old, 1)))
            self._publish()

    def _update_extent(self) -> None:
        c = np.stack(self._cam_centres)
        pts = self.means.numpy()
        spread = float(np.linalg.norm(c - c.mean(0), axis=1).max()) if len(c) > 1 else 0.0
        if len(pts):
            spread = max(spread, float(np.percentile(np.linalg.norm(pts - pts.mean(0), axis=1), 90)))
        new = max(1.1 * spread, 0.5)
        if abs(new - self.extent) > 1e-6:
            self.extent = new
            for g in self.optimizer.param_groups:
                if g["name"] == "means":
                    g["lr"] = self.cfg.lr_means * self.extent

    def _prepare_view(self, kf: Keyframe) -> TrainView:
        return prepare_view(kf, self.cfg)

    @torch.no_grad()
    def _seed(self, kf: Keyframe, feats: dict) -> None:
        cfg = self.cfg
        render = partial(self._render_raw, with_queries=False) if self.n_gaussians > 0 else None  # (T, K, W, H)
        # Room for a whole keyframe's worth, at most the global limit: new places are not refused.
        objects = detected_mask(kf)  # [H, W] inside any detector region, None without instances
        small = small_regions(kf, cfg.object_max_extent)  # [H, W] inside object-sized ones
        pts, pix = seed_points(kf, cfg, cfg.max_gaussians, render, self._gen, self.means.numpy(), objects, small)
        if len(pts) == 0:
            return
        over = self.n_gaussians + len(pts) - cfg.max_gaussians
        taken = len(self._cam_centres)  # keyframes taken, this one included: its object seeds' birth
        if over > 0:  # object seeds go last (spared_seeds: all of them by default, else only young ones)
            spared = spared_seeds(self.params[BIRTH_KEY].detach(), self.params[EXPOSURE_KEY].detach(), taken, cfg)
            self._remove(least_useful(self.opacities, over, spared))
        new = seed_geometry(kf, pts, pix, self.means.numpy(), cfg)
        tree = cKDTree(self.means.numpy()) if self.n_gaussians > 0 and cfg.inherit_radius > 0 else None
        for m, slot in cfg.models.items():
            q = torch.zeros(len(pts), slot.channels)
            if m in feats and m in self.W:
                q = self._queries_for_rows(m, self.banks[m].assign(pixel_features(kf, feats[m], pix, cfg, m)))
            # geometry the memory already knows keeps what it decoded before. A region model that
            # ran on this keyframe says "no object here" outside its regions: only pixels inside a
            # detected region (a cell across its silhouette, a coarse grid cell) inherit there.
            # Inheriting everywhere chained an object's query across the floor, keyframe by
            # keyframe (room dev seed 1: floor 2.3 m from the soccer ball attending to its row).
            allowed = None
            if m in feats and slot.regions:
                allowed = np.zeros(len(pts), dtype=bool) if objects is None else objects[pix[:, 0], pix[:, 1]]
            inherit_queries(q, pts, tree, self.params[query_key(m)].detach(), cfg.inherit_radius, allowed)
            new[query_key(m)] = q
        new[VOTES_KEY] = torch.zeros(len(pts), 2)  # this keyframe's vote follows (scenechange.vote_labels)
        new[RUN_KEY] = torch.zeros(len(pts))
        in_object = torch.from_numpy(small[pix[:, 0], pix[:, 1]])
        new[BIRTH_KEY] = torch.where(in_object, float(taken), NO_BIRTH)  # the background gets no grace
        new[EXPOSURE_KEY] = torch.zeros(len(pts))
        ops.append_gaussians(self.params, self.optimizer, new)
        self._keep_densify_stats(torch.cat([torch.arange(self.n_gaussians - len(pts)),
                                            torch.full((len(pts),), -1, dtype=torch.long)]))

    @torch.no_grad()
    def _remove(self, index: torch.Tensor) -> None:
        """Evict the Gaussians at index [k], with their optimiser state and densify statistics."""
        keep = torch.ones(self.n_gaussians, dtype=torch.bool)
        keep[index] = False
        ops.remove_gaussians(self.params, self.optimizer, ~keep)
        self._keep_densify_stats(torch.nonzero(keep).flatten())

    def _keep_densify_stats(self, old_index: torch.Tensor) -> None:
        """Carry the densify policy's gradient statistics over a change of the Gaussian set: row i of
        the new set was row old_index[i] of the old one (-1 = new, starts at zero). Before, they were
        dropped at every change of count, i.e. at every keyframe, so densification never triggered."""
        st = self._strategy_state
        if st.get("grad2d") is None:
            return
        for k in ("grad2d", "count"):
            v = st[k]
            pad = torch.cat([v, torch.zeros(1)])  # index -1 reads the zero
            st[k] = pad[old_index]

    # ---- rendering ---------------------------------------------------------------------------
    def _rows(self, name: str, index: torch.Tensor | None) -> torch.Tensor:
        """Parameter ``name``'s rows at index [M] (all N when None), differentiably."""
        return self.params[name] if index is None else self.params[name][index]

    def _train_rows(self, index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Every trained parameter's rows at index [M] (all N when None) for a train step's forward.

        With selective_adam: fresh leaf tensors [M, ...] (copies), whose .grad after backward is the
        visible rows' gradient, so nothing N-sized is allocated or zeroed. Without: differentiable
        gathers of the parameters, whose dense .grad [N, ...] torch Adam steps.
        The counts (votes, runs, birth, exposure) are left out: a train step never reads them.
        """
        if self.cfg.selective_adam:
            return {n: (p.detach() if index is None else p.detach().index_select(0, index)).requires_grad_()
                    for n, p in self.params.items() if p.requires_grad}
        return {n: self._rows(n, index) for n, p in self.params.items() if p.requires_grad}

    def _rgb(self, viewmat: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """Activated colours [M, 3] of rows (``_train_rows``) seen through viewmat [4, 4] (view-dependent when sh_degree > 0)."""
        return sh_to_rgb(rows["colors"], rows["means"], camera_centre(viewmat), self.cfg.sh_degree)

    def _raster(self, colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
                rows: dict[str, torch.Tensor]):
        """Render colors [M, D] of the Gaussians rows (``_train_rows``, [M, ...] each) through one camera."""
        return rasterize(rows["means"], rows["quats"], rows["log_scales"].exp(), torch.sigmoid(rows["opacity_logits"]),
                         colors, viewmat[None], K[None], width, height, near_plane=self.cfg.near_plane,
                         far_plane=self.cfg.far_plane, render_mode="RGB+ED", backend=self.cfg.backend)

    def _render_raw(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                    with_queries: bool = True, models: list[str] | None = None) -> dict:
        with self._lock:
            return self._capture(copy=False).render_raw(T_world_cam, K, width, height, with_queries, models)

    def render(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> dict:
        """"rgb" [H, W, 3] 0..1, "depth" [H, W] (0 where alpha < 0.5), "alpha" [H, W], "queries" {model: [H, W, l]}."""
        with self._lock:
            return self._capture(copy=False).render(T_world_cam, K, width, height)

    # ---- snapshots -----------------------------------------------------------------------------
    def _capture(self, copy: bool) -> MemorySnapshot:
        """The current state as a MemorySnapshot (copy=False shares the live tensors: hold the lock)."""
        def c(x: torch.Tensor) -> torch.Tensor:
            x = x.detach()
            return x.clone() if copy else x
        # scales and opacities are computed afresh from the parameters: already a copy
        return MemorySnapshot(
            # a live view (copy=False) may see parameters edited since the last publish: version -1
            # makes the attention cache compare queries instead of trusting the version
            cfg=self.cfg, version=self._version if copy else -1, iteration=self.iteration, means=c(self.params["means"]),
            quats=c(self.params["quats"]), scales=self.scales, opacities=self.opacities, colors=c(self.params["colors"]),
            queries={m: c(self.params[query_key(m)]) for m in self.cfg.models}, label_votes=c(self.params[VOTES_KEY]),
            label_contradictions=c(self.params[RUN_KEY]),
            W={m: c(w) for m, w in self.W.items()},
            banks={m: BankView(b.rows, b.unit_rows, b.version) for m, b in self.banks.items()},
            keyframes=self.keyframes, caches=self._caches)

    def _publish(self) -> None:
        """Hand queries a fresh snapshot (call holding the lock, at the end of a mutation).

        Attention caches that queries use are brought up to date here, by the writer, so a
        query right after a train step finds them ready.
        """
        self._version += 1
        self._stats = self._counts()
        snap = self._capture(copy=True)
        for m, cache in self._caches.items():
            if cache._state is not None and m in snap.W and m in snap.banks and len(snap.banks[m]):
                snap.attention(m)
        self._snapshot = snap

    def snapshot(self) -> MemorySnapshot:
        """The last published snapshot, without waiting for a running train step.

        The lock is taken only when nothing was published since the last mutation that did not
        publish (e.g. parameters edited by hand).
        """
        snap = self._snapshot
        if snap is None:
            with self._lock:
                if self._snapshot is None:
                    self._publish()
                snap = self._snapshot
        return snap

    # ---- queries -----------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model not in self.cfg.models:
            raise ValueError(f"unknown model {model!r}; configured: {sorted(self.cfg.models)}")
        if model not in self.banks or len(self.banks[model]) == 0 or model not in self.W:
            raise ValueError(f"model {model!r} has no memory yet (no keyframe carried its features)")

    def relevance(self, model: str, text_emb: torch.Tensor, T_world_cam: np.ndarray, K: np.ndarray,
                  width: int, height: int) -> dict:
        """"relevance" [H, W] cos(decoded feature, text) without decoding (0 where alpha < 0.01), "depth", "alpha"."""
        with self._lock:
            return self._capture(copy=False).relevance(model, text_emb, T_world_cam, K, width, height)

    def decode(self, model: str, queries: torch.Tensor) -> torch.Tensor:
        """Full decoding of queries [M, l] -> features [M, d], chunked under cfg.decode_budget_bytes."""
        with self._lock:
            return self._capture(copy=False).decode(model, queries)

    def gaussian_relevance(self, model: str, text_emb: torch.Tensor, rows: torch.Tensor | None = None
                           ) -> torch.Tensor:
        """[N] cosine between each Gaussian's decoded query and the text [d] (per-Gaussian attention cache);
        [N, k] for texts [k, d]; only the Gaussians ``rows`` [M] (indices) when given."""
        with self._lock:
            return self._capture(copy=False).gaussian_relevance(model, text_emb, rows)

    def attention(self, model: str):
        """Per-Gaussian attention (snapshot.py's cache state: top rows ``idx`` [N, k], weights ``w`` [N, k])."""
        with self._lock:
            return self._capture(copy=False).attention(model)

    def query_norms(self, model: str) -> torch.Tensor:
        """[N] length of each Gaussian's principal query (seeded ones are unit length)."""
        with self._lock:
            return self._capture(copy=False).query_norms(model)

    def label_support(self, max_contradictions: int = 0, prior: float = 1.0) -> torch.Tensor:
        """[N] each Gaussian's share of keyframes that saw it inside a detector region (labelvotes.support)."""
        with self._lock:
            return self._capture(copy=False).label_support(max_contradictions, prior)

    def label_contradicted(self) -> torch.Tensor:
        """[N] bool: a standing label contradiction (MemorySnapshot.label_contradicted)."""
        with self._lock:
            return self._capture(copy=False).label_contradicted()

    # ---- training ----------------------------------------------------------------------------
    def _sample_view(self) -> TrainView:
        return sample_view(self._views, self.cfg, self._rng)

    def train_step(self) -> dict[str, float]:
        """One optimiser step on a sampled keyframe; returns losses including "loss" (empty if nothing to train)."""
        with self._lock:
            if not self._views or self.n_gaussians == 0:
                return {}
            t0 = time.perf_counter()
            cfg = self.cfg
            v = self._sample_view()
            h, w = v.rgb.shape[:2]
            models = [m for m in cfg.models if m in self.W]
            # Only what this view can see is rendered, so the step's cost follows the visible set.
            vis = (frustum_index(self.means, self.scales, v.viewmat, v.K, w, h, cfg.near_plane, cfg.far_plane)
                   if cfg.frustum_cull else None)
            # gather the visible rows before activating them: colours, scales and opacities of the
            # rest are never computed (bench_scale: the step at 200k did all N of them)
            catch_up = cfg.selective_adam and cfg.selective_adam_catch_up
            if catch_up:  # the momentum steps dense Adam gave these rows while they were out of view
                catch_up_rows(self.optimizer, vis)
            rows = self._train_rows(vis)
            chans = torch.cat([self._rgb(v.viewmat, rows)] + [rows[query_key(m)] for m in models], -1)
            img, alpha, meta = self._raster(chans, v.viewmat, v.K, w, h, rows)
            loss, losses = view_losses(cfg, v, img[0], models, self.W, self.banks, self._gen, rows)
            if not cfg.selective_adam:
                self.optimizer.zero_grad(set_to_none=True)
            if self.wm_optimizer is not None:
                self.wm_optimizer.zero_grad(set_to_none=True)
            if meta["means2d"].requires_grad:
                meta["means2d"].retain_grad()  # view-space gradient for the densify policy
            loss.backward()
            if cfg.selective_adam:
                selective_adam_step(self.optimizer, {n: r.grad for n, r in rows.items()}, vis, catch_up)
            else:
                self.optimizer.step()
            if self.wm_optimizer is not None:
                self.wm_optimizer.step()
                self._wm_version += 1
            self.iteration += 1
            with torch.no_grad():  # training has now had a say about every Gaussian this view rendered
                seen = meta["radii"][0] > 0
                idx = torch.nonzero(seen).flatten() if vis is None else vis[seen]
                self.params[EXPOSURE_KEY].data.index_add_(0, idx, torch.ones(len(idx)))
            # the densify policy keeps statistics for all N Gaussians: "index" says whose rows meta's are
            meta = dict(meta, width=w, height=h, index=vis)
            if catch_up and self.strategy.refine_due(self.iteration):
                self._catch_up_all()  # the policy reads every row's opacity and scale
            refined = self.strategy.step_post_backward(self.params, self.optimizer, self._strategy_state,
                                                       self.iteration, meta, self.extent, self._gen)
            out = {k: float(x.detach()) for k, x in losses.items()}
            out["loss"] = float(loss.detach())
            out.update({k: float(x) for k, x in refined.items()})
            self.last_loss = out["loss"]
            self.train_time_s += time.perf_counter() - t0
            self._publish()
            return out

    def _catch_up_all(self) -> None:
        """Every row to where dense Adam would have it (selective_adam_catch_up): before anything that
        reads all N rows (densify, seeding and free space at a keyframe, saving). O(N), not per step."""
        if self.cfg.selective_adam and self.cfg.selective_adam_catch_up:
            catch_up_rows(self.optimizer, None)

    def train(self, iterations: int) -> dict[str, float]:
        """Run `iterations` train steps (offline); returns the last step's losses."""
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        out: dict[str, float] = {}
        for _ in range(iterations):
            out = self.train_step()
        return out

    # ---- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a saved memory holds, as plain tensors and JSON-able values (checkpoint.py writes it).

        Keys: "config" (dataclasses.asdict), "params" {name: tensor}, "W" {model: tensor},
        "banks" {model: {"rows", "counts", "centre_sum", "centre_n", "seen", "merges", "theta",
        "max_rows", "centring"}}, "iteration", "extent", "keyframes" (count; keyframes are not stored).
        """
        with self._lock:
            self._catch_up_all()  # the moments are not saved: what they still owe the values is
            return {
                "config": dataclasses.asdict(self.cfg),
                "params": {k: v.detach().contiguous().clone() for k, v in self.params.items() if k not in (BIRTH_KEY, EXPOSURE_KEY)},
                "W": {m: w.detach().contiguous().clone() for m, w in self.W.items()},
                "banks": {m: {"rows": b.rows.contiguous().clone(), "counts": b.counts.contiguous().clone(),
                              "centre_sum": b._sum.clone(), "centre_n": b._n, "seen": b.seen, "merges": b.merges,
                              "theta": b.theta, "max_rows": b.max_rows, "centring": b.centring}
                          for m, b in self.banks.items()},
                "iteration": self.iteration,
                "extent": self.extent,
                "keyframes": len(self._views),
            }

    @classmethod
    def from_state(cls, state: dict, cfg: MemoryConfig | None = None) -> "M3Memory":
        """A memory from a ``state_dict()`` (validated by checkpoint.py when read from disk), published."""
        cfg = cfg if cfg is not None else MemoryConfig.from_dict(state["config"])
        mem = cls(cfg)
        with mem._lock:
            params = dict(state["params"])
            if VOTES_KEY not in params:  # saved before label votes: no keyframe has voted
                params[VOTES_KEY] = torch.zeros(int(params["means"].shape[0]), 2)
            if RUN_KEY not in params:  # saved before label verdicts: none contradicted
                params[RUN_KEY] = torch.zeros(int(params["means"].shape[0]))
            params[BIRTH_KEY] = torch.full((int(params["means"].shape[0]),), NO_BIRTH)  # ages are not saved: all old
            params[EXPOSURE_KEY] = torch.full((int(params["means"].shape[0]),), 1e9)  # and all trained
            mem.params = nn.ParameterDict({n: nn.Parameter(t.clone(), requires_grad=n not in (VOTES_KEY, RUN_KEY, BIRTH_KEY,
                                                                                               EXPOSURE_KEY))
                                           for n, t in params.items()})
            for m, b in state["banks"].items():
                s = cfg.models[m]
                bank = MemoryBank(int(b["rows"].shape[1]), s.theta, s.max_rows, centre=bool(b.get("centring", s.centred)))
                bank.set_rows(b["rows"].clone(), counts=b.get("counts"), centre_sum=b.get("centre_sum"),
                              centre_n=int(b.get("centre_n", 0)))
                bank.seen, bank.merges = int(b.get("seen", 0)), int(b.get("merges", 0))
                mem.banks[m] = bank
            for m, W in state["W"].items():
                mem.W[m] = nn.Parameter(W.clone(), requires_grad=cfg.learnable_wm)
            mem.iteration = int(state.get("iteration", 0))
            mem.extent = float(state.get("extent", 1.0))
            mem._build_optimizers()
            mem._publish()
        return mem

    def save(self, path: str | Path) -> None:
        """Write the memory to one directory atomically (see checkpoint.py).

        The state is copied under the memory's lock (``state_dict``); writing and fsync run outside
        it. Holding it throughout, autosaves of 2-3 s every second on a busy disk left training a
        few steps in ten seconds (test_autosave_load).
        """
        from m3_ros.memory.checkpoint import save_memory
        with self._save_lock:
            save_memory(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "M3Memory":
        """Load a memory saved by `save` (validated; never unpickles). Keyframes are not stored."""
        from m3_ros.memory.checkpoint import load_memory
        return load_memory(cls, Path(path))

"""M3Memory: the orchestrator the nodes, CLI and benchmarks drive (keyframes -> Gaussians + banks -> training -> queries).

Thread safety: one re-entrant lock guards every mutation (add_keyframe, train_step, train,
load, reset) and the direct queries (render, relevance, gaussian_relevance, decode, stats, save).
Each mutation ends by publishing a read-only ``MemorySnapshot`` (snapshot.py); ``snapshot()``
hands it out without taking the lock, so queries run on it while a train step is in progress.
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from m3_ros import geometry
from m3_ros.memory import ops
from m3_ros.memory.attention import candidate_rows, memory_attention
from m3_ros.memory.bank import MemoryBank
from m3_ros.memory.compact import grid_hw, index_feature_map
from m3_ros.memory.gaussians import empty_params, logit, nn_log_scales, query_key, voxel_downsample
from m3_ros.memory.losses import depth_loss, feature_loss, rgb_loss
from m3_ros.memory.rasterize import rasterize
from m3_ros.memory.sh import camera_centre, check_sh_degree, dc_to_colors, sh_to_rgb
from m3_ros.memory.snapshot import AttentionCache, BankView, MemorySnapshot
from m3_ros.memory.strategy import DensifyConfig, DensifyStrategy
from m3_ros.types import FeatureMap, Keyframe


@dataclass
class ModelSlot:
    """One foundation model's slice of the memory."""

    channels: int = 16
    """Principal-query channels l for this model."""
    theta: float = 0.8
    """Algorithm 1 similarity threshold for this model's bank."""
    max_rows: int = 5000
    """Bound on the bank's rows; beyond it the most similar pair of rows is merged (bank.py)."""
    centre: bool | None = None
    """Subtract the bank's running feature mean before every cosine (admission, assignment, attention
    keys; bank.py). None = centre patch-grid models (sample_mode "bilinear"), not region models:
    DINOv2-S at theta 0.75 keeps 16 rows on a dev table walk raw and ~200 centred, while a region
    model's few label embeddings would have a mean that jumps with every new label (and a single
    label would centre to nothing)."""
    weight: float = 1.0
    """Multiplier on this model's feature loss."""
    sample_mode: Literal["bilinear", "nearest"] = "bilinear"
    """How ground-truth features are sampled: bilinear for patch grids, nearest for region maps."""

    @property
    def centred(self) -> bool:
        """Whether this model's bank centres (``centre``, or its default for the sample mode)."""
        return self.sample_mode == "bilinear" if self.centre is None else bool(self.centre)


@dataclass
class MemoryConfig:
    """Everything M3Memory needs; nodes fill it from ROS parameters, the CLI and benches from YAML."""

    models: dict[str, ModelSlot] = field(default_factory=dict)
    """Foundation model name -> its slot."""
    tau: float = 0.05
    """Softmax temperature of the memory attention (reference code)."""
    learnable_wm: bool = True
    """Learn W_m (paper); False keeps the reference code's fixed random N(0, 1) W_m."""
    wm_init: Literal["pca", "random"] = "pca"
    """Learnable W_m starts from the first bank's top-l principal directions, or N(0, 1)."""
    sh_degree: int = 0
    """Colour SH degree 0..3 (0 = one view-independent RGB per Gaussian, the cheap CPU default)."""
    max_gaussians: int = 50_000
    """Hard cap on the Gaussian count (seeding and densification)."""
    voxel_size: float = 0.02
    """Voxel edge (m) for downsampling back-projected seed points."""
    seed_stride: int = 2
    """Back-project every seed_stride-th pixel."""
    unexplained_depth_rel: float = 0.1
    """A pixel is unexplained if the rendered alpha < 0.5 or its depth is off by this fraction."""
    inherit_radius: float = 0.02
    """A new Gaussian whose pixel has no feature for a model takes the query of the nearest
    existing Gaussian within this distance (m); 0 = leave it at zero."""
    init_opacity: float = 0.5
    """Opacity of new Gaussians."""
    label_depth_rel: float = 0.1
    """Region-map models ("nearest" sampling): a pixel takes its cell's feature, for seeding and as a
    training target, only if its depth is within this fraction of the cell's median depth (0 = off).
    A cell is labelled when most of its pixels are the region; without the check the rest, across
    the silhouette and often metres behind, seeded far Gaussians carrying the object's query (the
    cause of bench_grounding's 2 m render-mode errors)."""
    window: int = 64
    """Keyframes kept for training (older ones are evicted at random, so coverage stays spread)."""
    recent: int = 3
    """The newest `recent` keyframes are drawn with probability recent_prob."""
    recent_prob: float = 0.5
    """Probability that a train step uses one of the newest keyframes."""
    train_scale: float = 0.5
    """Training renders at this fraction of the keyframe resolution."""
    feature_points: int = 2000
    """Feature-loss sample points per view and model."""
    attention_topk: int = 0
    """Training decodes feature points with each point's top-k bank rows; 0 = the method's exact
    softmax (over at most train_max_rows candidate rows), which bench_memory measured faster
    than top-32 at 5k rows (100 vs 135 ms per step), so it is the default."""
    train_max_rows: int = 512
    """Banks larger than this are attended in training over at most this many candidate rows,
    picked per step from a subsample of the feature points (0 = always all rows)."""
    lambda_ssim: float = 0.2
    """SSIM weight in the RGB loss."""
    lambda_depth: float = 0.1
    """Weight of the L1 depth term."""
    lambda_feature: float = 0.5
    """Weight of the feature loss (summed over models)."""
    lr_means: float = 1.6e-4
    """Mean learning rate, times the scene extent (no decay: training is open-ended)."""
    lr_scales: float = 5e-3
    """Log-scale learning rate."""
    lr_quats: float = 1e-3
    """Rotation learning rate."""
    lr_opacity: float = 0.05
    """Opacity-logit learning rate."""
    lr_colors: float = 2.5e-3
    """Colour learning rate."""
    lr_queries: float = 5e-3
    """Principal-query learning rate (10x the offline reference: queries start seeded, views are few)."""
    lr_wm: float = 1e-3
    """W_m learning rate."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    """Densify / prune policy."""
    near_plane: float = 0.01
    """Rasterizer near plane (m)."""
    far_plane: float = 100.0
    """Rasterizer far plane (m)."""
    backend: Literal["auto", "torch", "cpu", "cuda"] = "auto"
    """Rasterizer backend."""
    relevance_tile: int = 32
    """Relevance maps pick candidate bank rows per tile x tile pixel block (see RelevanceIndex.relevance_image)."""
    relevance_stride: int = 4
    """Pixel stride of the subsample that votes for each tile's candidate rows."""
    relevance_candidates: int = 8
    """Rows each subsampled pixel votes for."""
    relevance_max_rows: int = 64
    """Cap on a tile's candidate rows (most-voted win); softmax and norm are exact over them."""
    decode_budget_bytes: int = 256 << 20
    """Memory budget of one chunk of full decoding."""
    cache_top_rows: int = 64
    """Per-Gaussian attention cache: rows kept per Gaussian (all rows, i.e. exact, for banks up to this size)."""
    cache_q_tol: float = 1e-3
    """The cache re-decodes a Gaussian whose query moved more than this (relative) since it was decoded."""
    cache_w_tol: float = 2e-3
    """The cache re-decodes everything once W_m moved more than this (relative Frobenius) since the last full refresh."""
    seed: int = 0
    """Seed for all randomness (W_m init, sampling)."""

    def __post_init__(self) -> None:
        for name, slot in self.models.items():
            if slot.channels <= 0:
                raise ValueError(f"model {name!r}: channels must be positive, got {slot.channels}")
            if not 0.0 < slot.theta <= 1.0:
                raise ValueError(f"model {name!r}: theta must be in (0, 1], got {slot.theta}")
            if slot.max_rows < 2:
                raise ValueError(f"model {name!r}: max_rows must be at least 2 (merging needs a pair), got {slot.max_rows}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if not 0.0 < self.train_scale <= 1.0:
            raise ValueError(f"train_scale must be in (0, 1], got {self.train_scale}")
        check_sh_degree(self.sh_degree)
        for name in ("relevance_tile", "relevance_stride", "relevance_candidates", "relevance_max_rows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_gaussians <= 0:
            raise ValueError(f"max_gaussians must be positive, got {self.max_gaussians}")

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryConfig":
        """Inverse of dataclasses.asdict (YAML/JSON); unknown keys raise ValueError."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown MemoryConfig keys: {sorted(bad)}")
        d["models"] = {k: v if isinstance(v, ModelSlot) else ModelSlot(**v) for k, v in d.get("models", {}).items()}
        if "densify" in d and not isinstance(d["densify"], DensifyConfig):
            d["densify"] = DensifyConfig(**d["densify"])
        return cls(**d)


@dataclass
class _TrainView:
    """A keyframe prepared for training at train_scale."""

    kf: Keyframe
    rgb: torch.Tensor  # [h, w, 3] 0..1
    depth: torch.Tensor  # [h, w] metres, 0 = none
    K: torch.Tensor  # [3, 3] scaled intrinsics
    viewmat: torch.Tensor  # [4, 4] world -> camera
    scale: float
    cell_depth: dict = field(default_factory=dict)  # region model -> [h, w] median depth of each feature cell


def _cell_index(u: np.ndarray, v: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Feature cell (row, col) that nearest sampling reads at pixel coordinates (u, v) (FeatureMap convention)."""
    (H, W), (h, w) = image_hw, grid_hw
    # grid_sample "nearest" rounds (u + 0.5) * w / W - 0.5 half to even, as np.rint does
    col = np.clip(np.rint((np.asarray(u, dtype=np.float64) + 0.5) * w / W - 0.5), 0, w - 1).astype(np.int64)
    row = np.clip(np.rint((np.asarray(v, dtype=np.float64) + 0.5) * h / H - 0.5), 0, h - 1).astype(np.int64)
    return row, col


def cell_median_depth(depth: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Median valid depth [h, w] of the pixels of depth [H, W] that fall in each feature cell (0 = none)."""
    H, W = depth.shape
    h, w = grid_hw
    vv, uu = np.mgrid[0:H, 0:W]
    row, col = _cell_index(uu, vv, (H, W), (h, w))
    lab = np.where(np.isfinite(depth) & (depth > 0), row * w + col + 1, 0)
    med = ndimage.median(np.nan_to_num(depth), labels=lab, index=np.arange(1, h * w + 1))
    return np.nan_to_num(np.asarray(med, dtype=np.float64), nan=0.0).reshape(h, w)


def label_depth_consistent(z: np.ndarray, u: np.ndarray, v: np.ndarray, cell_depth: np.ndarray,
                           image_hw: tuple[int, int], rel: float) -> np.ndarray:
    """[M] True where depth z [M] at pixels (u, v) [M] is within rel of its cell's median depth."""
    row, col = _cell_index(u, v, image_hw, cell_depth.shape)
    med = cell_depth[row, col]
    return (med > 0) & (np.abs(np.asarray(z, dtype=np.float64) - med) <= rel * med)


def _check_keyframe(kf: Keyframe) -> None:
    if kf.rgb.ndim != 3 or kf.rgb.shape[2] != 3:
        raise ValueError(f"keyframe {kf.index}: rgb must be [H, W, 3], got {kf.rgb.shape}")
    if kf.depth.shape != kf.rgb.shape[:2]:
        raise ValueError(f"keyframe {kf.index}: depth {kf.depth.shape} does not match rgb {kf.rgb.shape[:2]}")
    if np.asarray(kf.K).shape != (3, 3) or np.asarray(kf.T_world_cam).shape != (4, 4):
        raise ValueError(f"keyframe {kf.index}: K must be [3, 3] and T_world_cam [4, 4]")
    if not np.all(np.isfinite(kf.T_world_cam)):
        raise ValueError(f"keyframe {kf.index}: T_world_cam has non-finite values")


class M3Memory:
    """Spatial multimodal memory: Gaussians with principal queries + one PSC bank and W_m per model."""

    def __init__(self, cfg: MemoryConfig) -> None:
        self.cfg = cfg
        self._lock = threading.RLock()
        self.reset()

    # ---- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (Gaussians, banks, W_m, keyframes, optimiser state)."""
        with self._lock:
            cfg = self.cfg
            self._gen = torch.Generator().manual_seed(cfg.seed)
            self._rng = random.Random(cfg.seed)
            self.params = empty_params({m: s.channels for m, s in cfg.models.items()}, cfg.sh_degree)
            self.banks: dict[str, MemoryBank] = {}
            self.W: dict[str, nn.Parameter] = {}
            self._wm_version = 0
            self._views: list[_TrainView] = []
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

    def _build_optimizers(self) -> None:
        cfg = self.cfg
        lrs = {"means": cfg.lr_means * self.extent, "log_scales": cfg.lr_scales, "quats": cfg.lr_quats,
               "opacity_logits": cfg.lr_opacity, "colors": cfg.lr_colors}
        lrs.update({query_key(m): cfg.lr_queries for m in cfg.models})
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
        with self._lock:
            return {"keyframes": len(self._views), "gaussians": self.n_gaussians,
                    "bank_rows": {m: len(b) for m, b in self.banks.items()}, "iteration": self.iteration,
                    "last_loss": self.last_loss, "train_time_s": self.train_time_s}

    # ---- W_m -------------------------------------------------------------------------------
    def _init_wm(self, model: str, dim: int) -> None:
        l = self.cfg.models[model].channels
        W = torch.randn(l, dim, generator=self._gen)  # the reference code's fixed N(0, 1)
        bank = self.banks[model]
        if self.cfg.learnable_wm and self.cfg.wm_init == "pca" and len(bank) > 0:
            # Row space = the bank's principal directions, so a query can point at any of the
            # first rows (a random l-dim subspace of d keeps only ~sqrt(l/d) of each row's cosine).
            _, _, Vh = torch.linalg.svd(bank.unit_rows, full_matrices=False)
            r = min(l, Vh.shape[0])
            W[:r] = Vh[:r] * np.sqrt(dim)
        self.W[model] = nn.Parameter(W, requires_grad=self.cfg.learnable_wm)
        self._wm_version += 1
        self._build_wm_optimizer()

    def _build_wm_optimizer(self) -> None:
        ws = [p for p in self.W.values() if p.requires_grad]
        self.wm_optimizer = torch.optim.Adam(ws, lr=self.cfg.lr_wm) if ws else None

    @torch.no_grad()
    def _queries_for_rows(self, model: str, idx: torch.Tensor) -> torch.Tensor:
        """Least-squares principal queries [M, l] whose q·W_m points at bank rows idx [M] (-1 -> 0)."""
        W = self.W[model].detach()
        bank = self.banks[model]
        q = torch.zeros(idx.shape[0], W.shape[0])
        ok = idx >= 0
        if ok.any():
            q[ok] = bank.unit_rows[idx[ok]] @ torch.linalg.pinv(W)  # [M, l]
            q[ok] = F.normalize(q[ok], dim=-1)
        return q

    # ---- keyframes ---------------------------------------------------------------------------
    def add_keyframe(self, kf: Keyframe) -> None:
        """Grow the banks with kf's features, seed Gaussians where kf sees unexplained geometry, keep kf for training."""
        _check_keyframe(kf)
        with self._lock:
            cfg = self.cfg
            H, W = kf.size
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
            self._cam_centres.append(np.asarray(kf.T_world_cam)[:3, 3].copy())
            self._seed(kf, feats)
            self._update_extent()
            view = self._prepare_view(self._compact(kf))
            self._views.append(view)
            if len(self._views) > cfg.window:
                # Evict a random keyframe among the older ones: the window keeps spanning history.
                old = len(self._views) - cfg.recent
                self._views.pop(self._rng.randrange(max(old, 1)))
            self._publish()

    def _compact(self, kf: Keyframe) -> Keyframe:
        """The keyframe as the memory keeps it: region maps indexed (compact.py), instance masks
        dropped (their labels already live in the region maps), models it does not hold dropped."""
        feats = {}
        for m, fm in kf.features.items():
            if m not in self.cfg.models:
                continue
            if self.cfg.models[m].sample_mode == "nearest" and isinstance(fm, FeatureMap):
                fm = index_feature_map(fm) or fm
            feats[m] = fm
        return dataclasses.replace(kf, features=feats, instances=[])

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

    def _prepare_view(self, kf: Keyframe) -> _TrainView:
        s = self.cfg.train_scale
        H, W = kf.size
        h, w = max(1, round(H * s)), max(1, round(W * s))
        rgb = torch.from_numpy(np.ascontiguousarray(kf.rgb)).float().div(255.0)
        if (h, w) != (H, W):
            rgb = F.interpolate(rgb.permute(2, 0, 1)[None], size=(h, w), mode="area")[0].permute(1, 2, 0)
        depth = torch.from_numpy(np.nan_to_num(np.asarray(kf.depth, dtype=np.float32)))
        if (h, w) != (H, W):
            # Nearest, so edges never average foreground and background depth.
            depth = F.interpolate(depth[None, None], size=(h, w), mode="nearest")[0, 0]
        sx = w / W
        cell_depth = {}
        if self.cfg.label_depth_rel > 0:
            full = np.nan_to_num(np.asarray(kf.depth, dtype=np.float64))
            for m, fm in kf.features.items():
                if m in self.cfg.models and self.cfg.models[m].sample_mode == "nearest":
                    cell_depth[m] = cell_median_depth(full, grid_hw(fm))
        return _TrainView(kf=kf, rgb=rgb.contiguous(), depth=depth.contiguous(),
                          K=torch.tensor(geometry.scale_intrinsics(kf.K, sx), dtype=torch.float32),
                          viewmat=torch.tensor(geometry.invert(np.asarray(kf.T_world_cam)), dtype=torch.float32),
                          scale=sx, cell_depth=cell_depth)

    @torch.no_grad()
    def _seed(self, kf: Keyframe, feats: dict) -> None:
        cfg = self.cfg
        room = cfg.max_gaussians - self.n_gaussians
        if room <= 0:
            return
        pts, pix = geometry.backproject(np.asarray(kf.depth, dtype=np.float64), np.asarray(kf.K),
                                        np.asarray(kf.T_world_cam), stride=cfg.seed_stride)
        if len(pts) == 0:
            return
        if self.n_gaussians > 0:
            H, W = kf.size
            out = self._render_raw(np.asarray(kf.T_world_cam), np.asarray(kf.K), W, H, with_queries=False)
            alpha = out["alpha"][pix[:, 0], pix[:, 1]]
            dr = out["depth_raw"][pix[:, 0], pix[:, 1]]
            z = np.asarray(kf.depth)[pix[:, 0], pix[:, 1]]
            # Expected depth blends both sides of a depth edge: edge pixels count as explained
            # unless nothing is rendered there.
            dmap = np.where(np.asarray(kf.depth) > 0, np.asarray(kf.depth), np.nan)
            span = ndimage.maximum_filter(np.nan_to_num(dmap, nan=0.0), 3) - ndimage.minimum_filter(np.nan_to_num(dmap, nan=np.inf), 3)
            edge = (span > cfg.unexplained_depth_rel * np.nan_to_num(dmap, nan=0.0))[pix[:, 0], pix[:, 1]]
            unexplained = (alpha < 0.5) | ((np.abs(dr - z) > cfg.unexplained_depth_rel * z) & ~edge)
            pts, pix = pts[unexplained], pix[unexplained]
            if len(pts) == 0:
                return
        keep = voxel_downsample(pts, cfg.voxel_size)
        if len(keep) > room:
            keep = keep[np.sort(torch.randperm(len(keep), generator=self._gen)[:room].numpy())]
        pts, pix = pts[keep], pix[keep]
        M = len(pts)
        rgb = torch.from_numpy(kf.rgb[pix[:, 0], pix[:, 1]].astype(np.float32) / 255.0)
        new = {
            "means": torch.from_numpy(pts).float(),
            "log_scales": torch.from_numpy(nn_log_scales(pts, self.means.numpy().astype(np.float64))).float(),
            "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(M, 1),
            "opacity_logits": torch.full((M,), float(logit(torch.tensor(cfg.init_opacity)))),
            "colors": dc_to_colors(logit(rgb), cfg.sh_degree),  # higher SH orders start at 0
        }
        uv = torch.from_numpy(pix[:, ::-1].astype(np.float32).copy())  # (u, v)
        tree = cKDTree(self.means.numpy()) if self.n_gaussians > 0 and cfg.inherit_radius > 0 else None
        for m, slot in cfg.models.items():
            q = torch.zeros(M, slot.channels)
            if m in feats and m in self.W:
                gt = feats[m].sample(uv, mode="nearest")  # [M, d]
                if slot.sample_mode == "nearest" and cfg.label_depth_rel > 0:
                    cd = cell_median_depth(np.nan_to_num(np.asarray(kf.depth, dtype=np.float64)),
                                           tuple(feats[m].features.shape[:2]))
                    z = np.asarray(kf.depth)[pix[:, 0], pix[:, 1]]
                    ok = label_depth_consistent(z, pix[:, 1], pix[:, 0], cd, kf.size, cfg.label_depth_rel)
                    gt[torch.from_numpy(~ok)] = 0.0  # across the silhouette: no feature (inherits below)
                q = self._queries_for_rows(m, self.banks[m].assign(gt))
            if tree is not None:
                # No feature here in this keyframe (a missed detection, a model that skipped it):
                # geometry the memory already knows keeps what it decoded before.
                none = torch.nonzero(q.abs().sum(1) == 0).flatten()
                if len(none):
                    dist, nn = tree.query(pts[none.numpy()], distance_upper_bound=cfg.inherit_radius)
                    ok = np.isfinite(dist)
                    if ok.any():
                        q[none[torch.from_numpy(ok)]] = self.params[query_key(m)].detach()[torch.from_numpy(nn[ok])]
            new[query_key(m)] = q
        ops.append_gaussians(self.params, self.optimizer, new)

    # ---- rendering ---------------------------------------------------------------------------
    def _activated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.params
        return p["means"], p["quats"], p["log_scales"].exp(), torch.sigmoid(p["opacity_logits"])

    def _rgb(self, viewmat: torch.Tensor) -> torch.Tensor:
        """Activated colours [N, 3] seen through viewmat [4, 4] (view-dependent when sh_degree > 0)."""
        p = self.params
        return sh_to_rgb(p["colors"], p["means"], camera_centre(viewmat), self.cfg.sh_degree)

    def _raster(self, colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int):
        means, quats, scales, opac = self._activated()
        return rasterize(means, quats, scales, opac, colors, viewmat[None], K[None], width, height,
                         near_plane=self.cfg.near_plane, far_plane=self.cfg.far_plane, render_mode="RGB+ED",
                         backend=self.cfg.backend)

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
        means, quats, scales, opac = self._activated()
        return MemorySnapshot(
            # a live view (copy=False) may see parameters edited since the last publish: version -1
            # makes the attention cache compare queries instead of trusting the version
            cfg=self.cfg, version=self._version if copy else -1, iteration=self.iteration, means=c(means), quats=c(quats),
            scales=c(scales), opacities=c(opac), colors=c(self.params["colors"]),
            queries={m: c(self.params[query_key(m)]) for m in self.cfg.models},
            W={m: c(w) for m, w in self.W.items()},
            banks={m: BankView(b.rows, b.unit_rows, b.version) for m, b in self.banks.items()},
            keyframes=self.keyframes, caches=self._caches)

    def _publish(self) -> None:
        """Hand queries a fresh snapshot (call holding the lock, at the end of a mutation).

        Attention caches that queries use are brought up to date here, by the writer, so a
        query right after a train step finds them ready.
        """
        self._version += 1
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

    def gaussian_relevance(self, model: str, text_emb: torch.Tensor) -> torch.Tensor:
        """[N] cosine between each Gaussian's decoded query and the text (per-Gaussian attention cache)."""
        with self._lock:
            return self._capture(copy=False).gaussian_relevance(model, text_emb)

    def query_norms(self, model: str) -> torch.Tensor:
        """[N] length of each Gaussian's principal query (seeded ones are unit length)."""
        with self._lock:
            return self._capture(copy=False).query_norms(model)

    # ---- training ----------------------------------------------------------------------------
    def _sample_view(self) -> _TrainView:
        n = len(self._views)
        if n > self.cfg.recent and self._rng.random() < self.cfg.recent_prob:
            return self._views[n - 1 - self._rng.randrange(self.cfg.recent)]
        return self._views[self._rng.randrange(n)]

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
            chans = [self._rgb(v.viewmat)] + [self.params[query_key(m)] for m in models]
            img, alpha, meta = self._raster(torch.cat(chans, -1), v.viewmat, v.K, w, h)
            img = img[0]
            losses: dict[str, torch.Tensor] = {}
            losses["rgb"] = rgb_loss(img[..., :3], v.rgb, cfg.lambda_ssim)
            losses["depth"] = depth_loss(img[..., -1], v.depth)
            loss = losses["rgb"] + cfg.lambda_depth * losses["depth"]
            c = 3
            for m in models:
                l = cfg.models[m].channels
                fm = v.kf.features.get(m)
                if fm is not None:
                    n = min(cfg.feature_points, h * w)
                    flat = torch.randperm(h * w, generator=self._gen)[:n]
                    pv, pu = flat // w, flat % w
                    q = img[pv, pu, c:c + l]  # [n, l] rendered principal queries
                    uv = torch.stack([(pu.float() + 0.5) / v.scale - 0.5, (pv.float() + 0.5) / v.scale - 0.5], -1)
                    gt = fm.sample(uv, mode=cfg.models[m].sample_mode)  # [n, d]
                    cd = v.cell_depth.get(m)
                    if cd is not None:
                        ok = label_depth_consistent(v.depth[pv, pu].numpy(), uv[:, 0].numpy(), uv[:, 1].numpy(), cd,
                                                    v.kf.size, cfg.label_depth_rel)
                        gt = torch.where(torch.from_numpy(ok)[:, None], gt, 0.0)  # zero targets are ignored
                    b = self.banks[m]
                    rows, unit = b.rows, b.unit_rows
                    if 0 < cfg.train_max_rows < len(b):
                        cand = candidate_rows(q.detach(), self.W[m].detach(), unit, cfg.tau,
                                              max_rows=cfg.train_max_rows, generator=self._gen)
                        rows, unit = rows[cand], unit[cand]
                    pred = memory_attention(q, self.W[m], rows, unit, cfg.tau, cfg.attention_topk)
                    losses[f"feat_{m}"] = feature_loss(pred, gt)
                    loss = loss + cfg.lambda_feature * cfg.models[m].weight * losses[f"feat_{m}"]
                c += l
            self.optimizer.zero_grad(set_to_none=True)
            if self.wm_optimizer is not None:
                self.wm_optimizer.zero_grad(set_to_none=True)
            if meta["means2d"].requires_grad:
                meta["means2d"].retain_grad()  # view-space gradient for the densify policy
            loss.backward()
            self.optimizer.step()
            if self.wm_optimizer is not None:
                self.wm_optimizer.step()
                self._wm_version += 1
            self.iteration += 1
            meta = dict(meta, width=w, height=h)
            refined = self.strategy.step_post_backward(self.params, self.optimizer, self._strategy_state,
                                                       self.iteration, meta, self.extent)
            out = {k: float(x.detach()) for k, x in losses.items()}
            out["loss"] = float(loss.detach())
            out.update({k: float(x) for k, x in refined.items()})
            self.last_loss = out["loss"]
            self.train_time_s += time.perf_counter() - t0
            self._publish()
            return out

    def train(self, iterations: int) -> dict[str, float]:
        """Run `iterations` train steps (offline); returns the last step's losses."""
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        out: dict[str, float] = {}
        for _ in range(iterations):
            out = self.train_step()
        return out

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the memory to one directory atomically (see checkpoint.py)."""
        from m3_ros.memory.checkpoint import save_memory
        with self._lock:
            save_memory(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "M3Memory":
        """Load a memory saved by `save` (validated; never unpickles). Keyframes are not stored."""
        from m3_ros.memory.checkpoint import load_memory
        mem = load_memory(cls, Path(path))
        with mem._lock:
            mem._publish()
        return mem

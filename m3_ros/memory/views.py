"""Keyframes as the memory keeps them: input checks, compact storage, and views prepared for training
(train-scale images, intrinsics, per-cell label depths for region models)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from m3_ros import geometry
from m3_ros.memory.compact import grid_hw, index_feature_map
from m3_ros.memory.config import MemoryConfig
from m3_ros.types import FeatureMap, Keyframe


@dataclass
class TrainView:
    """A keyframe prepared for training at train_scale."""

    kf: Keyframe
    rgb: torch.Tensor  # [h, w, 3] 0..1
    depth: torch.Tensor  # [h, w] metres, 0 = none
    K: torch.Tensor  # [3, 3] scaled intrinsics
    viewmat: torch.Tensor  # [4, 4] world -> camera
    scale: float
    cell_depth: dict = field(default_factory=dict)  # region model -> [h, w] median depth of each feature cell
    stale: torch.Tensor | None = None  # [h, w] bool: what the scene no longer looks like here (no loss there)

    @property
    def stale_fraction(self) -> float:
        return float(self.stale.float().mean()) if self.stale is not None else 0.0


def mark_stale(v: TrainView, means: torch.Tensor, radius_px: int) -> int:
    """Mark the pixels of v (train scale) within radius_px keyframe pixels of the projections of
    means [G, 3] as stale: the Gaussians there have gone (or come) since v was taken, so v's
    colour, depth and labels at those pixels describe an old scene. Returns the pixels newly marked.

    Points behind v's camera or outside its image mark nothing."""
    h, w = v.rgb.shape[:2]
    if int(means.shape[0]) == 0:
        return 0
    uv, z = geometry.project(means.detach().double().numpy(), v.K.double().numpy(),  # train-scale intrinsics
                             np.asarray(v.kf.T_world_cam, dtype=np.float64))
    front = z > 1e-3
    u = np.rint(np.where(front, uv[:, 0], -1.0)).astype(np.int64)
    r = np.rint(np.where(front, uv[:, 1], -1.0)).astype(np.int64)
    ok = (u >= 0) & (u < w) & (r >= 0) & (r < h)
    if not ok.any():
        return 0
    hit = np.zeros((h, w), dtype=bool)
    hit[r[ok], u[ok]] = True
    rad = max(1, int(np.ceil(radius_px * v.scale)))
    yy, xx = np.mgrid[-rad:rad + 1, -rad:rad + 1]
    hit = ndimage.binary_dilation(hit, structure=(yy ** 2 + xx ** 2) <= rad ** 2)
    new = torch.from_numpy(hit)
    before = 0 if v.stale is None else int(v.stale.sum())
    v.stale = new if v.stale is None else (v.stale | new)
    return int(v.stale.sum()) - before


def cell_index(u: np.ndarray, v: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
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
    row, col = cell_index(uu, vv, (H, W), (h, w))
    lab = np.where(np.isfinite(depth) & (depth > 0), row * w + col + 1, 0)
    med = ndimage.median(np.nan_to_num(depth), labels=lab, index=np.arange(1, h * w + 1))
    return np.nan_to_num(np.asarray(med, dtype=np.float64), nan=0.0).reshape(h, w)


def label_depth_consistent(z: np.ndarray, u: np.ndarray, v: np.ndarray, cell_depth: np.ndarray,
                           image_hw: tuple[int, int], rel: float) -> np.ndarray:
    """[M] True where depth z [M] at pixels (u, v) [M] is within rel of its cell's median depth."""
    row, col = cell_index(u, v, image_hw, cell_depth.shape)
    med = cell_depth[row, col]
    return (med > 0) & (np.abs(np.asarray(z, dtype=np.float64) - med) <= rel * med)


def check_keyframe(kf: Keyframe) -> None:
    if kf.rgb.ndim != 3 or kf.rgb.shape[2] != 3:
        raise ValueError(f"keyframe {kf.index}: rgb must be [H, W, 3], got {kf.rgb.shape}")
    if kf.depth.shape != kf.rgb.shape[:2]:
        raise ValueError(f"keyframe {kf.index}: depth {kf.depth.shape} does not match rgb {kf.rgb.shape[:2]}")
    if np.asarray(kf.K).shape != (3, 3) or np.asarray(kf.T_world_cam).shape != (4, 4):
        raise ValueError(f"keyframe {kf.index}: K must be [3, 3] and T_world_cam [4, 4]")
    if not np.all(np.isfinite(kf.T_world_cam)):
        raise ValueError(f"keyframe {kf.index}: T_world_cam has non-finite values")


def compact_keyframe(kf: Keyframe, cfg: MemoryConfig) -> Keyframe:
    """The keyframe as the memory keeps it: region maps indexed (compact.py), instance masks
    dropped (their labels already live in the region maps), models it does not hold dropped."""
    feats = {}
    for m, fm in kf.features.items():
        if m not in cfg.models:
            continue
        if cfg.models[m].regions and isinstance(fm, FeatureMap):
            fm = index_feature_map(fm) or fm
        feats[m] = fm
    return dataclasses.replace(kf, features=feats, instances=[])


def prepare_view(kf: Keyframe, cfg: MemoryConfig) -> TrainView:
    """kf at cfg.train_scale: area-resized colour, nearest-resized depth, scaled intrinsics."""
    s = cfg.train_scale
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
    if cfg.label_depth_rel > 0:
        full = np.nan_to_num(np.asarray(kf.depth, dtype=np.float64))
        for m, fm in kf.features.items():
            if m in cfg.models and cfg.models[m].regions:
                cell_depth[m] = cell_median_depth(full, grid_hw(fm))
    return TrainView(kf=kf, rgb=rgb.contiguous(), depth=depth.contiguous(),
                     K=torch.tensor(geometry.scale_intrinsics(kf.K, sx), dtype=torch.float32),
                     viewmat=torch.tensor(geometry.invert(np.asarray(kf.T_world_cam)), dtype=torch.float32),
                     scale=sx, cell_depth=cell_depth)

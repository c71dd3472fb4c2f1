"""Analytic RGB-D scene for memory tests: a wall and two fronto-parallel boxes, piecewise-constant features."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from m3_ros.geometry import intrinsics_matrix
from m3_ros.types import FeatureMap, Instance, Keyframe

# (z, x0, x1, y0, y1, rgb, region id): world frame = first camera's optical frame.
RECTS = [
    (1.5, -0.35, 0.05, -0.2, 0.2, (0.9, 0.1, 0.1), 1),  # red box face
    (1.7, 0.15, 0.5, -0.1, 0.3, (0.1, 0.8, 0.2), 2),  # green box face
    (2.0, -10, 10, -10, 10, (0.5, 0.5, 0.6), 0),  # wall
]


def region_features(d: int = 32, seed: int = 0) -> torch.Tensor:
    """[3, d] one random feature per region (pairwise cosine well below 0.9)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, d, generator=g) + 0.2


def render_view(tx: float, W: int = 40, H: int = 30, d: int = 32, index: int = 0,
                with_features: bool = True) -> tuple[Keyframe, np.ndarray]:
    """Keyframe of a camera at (tx, 0, 0) looking down +z, and its region ids [H, W]."""
    K = intrinsics_matrix(0.8 * W, 0.8 * W, (W - 1) / 2, (H - 1) / 2)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rx, ry = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    depth = np.full((H, W), np.inf)
    rgb = np.zeros((H, W, 3))
    region = np.zeros((H, W), np.int64)
    for z, x0, x1, y0, y1, col, rid in RECTS:
        x, y = tx + rx * z, ry * z
        hit = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (z < depth)
        depth[hit] = z
        rgb[hit] = col
        region[hit] = rid
    T = np.eye(4)
    T[0, 3] = tx
    feats = {}
    if with_features:
        f = region_features(d)[torch.from_numpy(region)]  # [H, W, d]
        feats["dino"] = FeatureMap("dino", f.float(), (H, W))
    kf = Keyframe(index=index, stamp=float(index), rgb=(rgb * 255).astype(np.uint8), depth=depth.astype(np.float32),
                  K=K, T_world_cam=T, features=feats)
    return kf, region


def labelled_view(tx: float, index: int, bleed_px: int = 0) -> tuple[Keyframe, np.ndarray]:
    """The scene seen from (tx, 0, 0) by a region model that labels the two boxes (not the wall), and
    the wall pixels [H, W] its red-box mask holds: with bleed_px, that mask (and so the red label)
    spills this far onto the wall left of the box."""
    kf, region = render_view(tx, W=80, H=60, index=index, with_features=False)
    mask = region == 1
    if bleed_px:
        grown = ndimage.binary_dilation(mask, np.ones((1, 2 * bleed_px + 1), bool))
        left = np.zeros_like(mask)
        left[:, : int(np.flatnonzero(mask.any(0))[0])] = True
        mask = mask | (grown & left & (region == 0))
    f = torch.zeros(*mask.shape, 32)
    f[torch.from_numpy(mask)] = region_features(32)[1]
    f[torch.from_numpy(region == 2)] = region_features(32)[2]
    kf.features["labels"] = FeatureMap("labels", f, mask.shape)
    kf.instances = [Instance(mask=mask, label="red box"), Instance(mask=region == 2, label="green box")]
    return kf, mask & (region == 0)

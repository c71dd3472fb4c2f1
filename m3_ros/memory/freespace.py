"""Free-space evidence: what a new depth image says about the Gaussians already in the memory.

A depth pixel says two things: there is a surface at depth d, and the ray up to d is empty. A
Gaussian whose centre projects onto the image *clearly in front of* the observed surface sits in
space the new ray passed through: the thing it belonged to has moved (or it was a floater). Such
Gaussians lose opacity and, once nearly transparent, are removed (M3Memory._clear_free_space); the
place the object moved to is then unexplained geometry and seeding.py seeds it.

Only "the ray passes through" counts as evidence, and it is read conservatively:
- the observed depth is the *minimum* over a window around the projected centre (holes ignored),
  so a Gaussian at a silhouette, or misregistered by a few pixels (pose error), always has its own
  surface in the window and is never seen through;
- a window with too few valid pixels (holes, depth cut at the pipeline's max_depth) gives no
  evidence;
- "clearly" is a margin that grows with range like stereo depth noise, ``max(margin, noise z^2)``,
  plus the Gaussian's own extent (``extent`` times its largest scale);
- a Gaussian behind the observed surface (hidden) or at it (surface) is kept; so is one that
  projects outside the image or lies behind the camera.
Pure numpy / torch; no ROS, no memory state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

OUTSIDE, THROUGH, SURFACE, HIDDEN, UNKNOWN = 0, 1, 2, 3, 4
"""Codes of ``classify``: out of the image or behind the camera; clearly in front of the observed
surface (free-space evidence); on it; behind it; in the image without a usable depth there."""


@dataclass
class FreeSpaceConfig:
    """Free-space evidence: how a depth image is read, and what the memory does with it."""

    enabled: bool = True
    """Read every new keyframe's depth as free-space evidence (M3Memory.add_keyframe)."""
    decay: float = 0.2
    """Each piece of evidence multiplies a Gaussian's opacity by this."""
    min_opacity: float = 0.05
    """A Gaussian seen through whose opacity falls below this is removed: an opaque one (0.9) after
    two pieces of evidence, a freshly seeded one (0.5) after two. After the first its opacity is
    already below grounding's min_opacity (0.2)."""
    stale_points: int = 5
    """A keyframe kept for training in which at least this many of the removed Gaussians lay on the
    observed surface saw the old state: it leaves the training window (training on it would pull
    the moved object back into place)."""
    relabel_radius: float = 0.03
    """After a removal, Gaussians on the observed surface within this distance (m) of a removed one
    (where the object stood: the table under it) take the new keyframe's features as queries, so
    they stop answering for what was there."""
    margin: float = 0.05
    """Smallest depth margin (m) by which a Gaussian must lie in front of the observed surface."""
    noise: float = 0.02
    """Margin growing with range: ``noise * z^2`` (m), a few sigma of stereo depth noise."""
    extent: float = 2.0
    """The Gaussian's largest scale times this is added to the margin (a large one reaches further)."""
    window: float = 0.02
    """Half-width of the min-filter window as a fraction of the image width (pixels rounded up)."""
    min_valid: float = 0.5
    """Fraction of valid depth pixels the window needs for any evidence."""
    near: float = 0.1
    """Gaussians closer to the camera than this (m) get no evidence."""

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"FreeSpaceConfig.decay must be in (0, 1), got {self.decay}")
        if not 0.0 <= self.min_opacity < 1.0:
            raise ValueError(f"FreeSpaceConfig.min_opacity must be in [0, 1), got {self.min_opacity}")
        if self.stale_points < 1:
            raise ValueError(f"FreeSpaceConfig.stale_points must be >= 1, got {self.stale_points}")
        for name in ("relabel_radius", "margin", "noise", "extent", "window", "near"):
            if getattr(self, name) < 0:
                raise ValueError(f"FreeSpaceConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.min_valid <= 1.0:
            raise ValueError(f"FreeSpaceConfig.min_valid must be in (0, 1], got {self.min_valid}")

    def radius_px(self, width: int) -> int:
        """Window half-width in pixels for an image width pixels wide."""
        return int(np.ceil(self.window * width))


def project_pixels(K: np.ndarray, T_world_cam: np.ndarray, means: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Nearest pixels [N, 2] (v, u) of means [N, 3] in an image of size (H, W), clipped to it."""
    T_cam_world = np.linalg.inv(np.asarray(T_world_cam, dtype=np.float64))
    pc = means.detach().double().numpy() @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    z = np.maximum(pc[:, 2], 1e-6)
    K = np.asarray(K, dtype=np.float64)
    u = np.clip(np.rint(K[0, 0] * pc[:, 0] / z + K[0, 2]), 0, size[1] - 1).astype(np.int64)
    v = np.clip(np.rint(K[1, 1] * pc[:, 1] / z + K[1, 2]), 0, size[0] - 1).astype(np.int64)
    return np.stack([v, u], 1)


def window_min_depth(depth: np.ndarray, radius: int, min_valid: float) -> np.ndarray:
    """Nearest valid depth [H, W] within a (2 radius + 1)^2 window of depth [H, W] (0 / non-finite =
    hole, ignored); 0 where fewer than min_valid of the window's pixels are valid (no evidence)."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    if radius <= 0:
        return np.where(valid, d, 0.0)
    size = 2 * radius + 1
    # outside the image counts as a hole: border windows see less and need the same valid fraction
    dmin = ndimage.minimum_filter(np.where(valid, d, np.inf), size=size, mode="constant", cval=np.inf)
    frac = ndimage.uniform_filter(valid.astype(np.float64), size=size, mode="constant", cval=0.0)
    return np.where((frac >= min_valid - 1e-9) & np.isfinite(dmin), dmin, 0.0)


def classify(depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray, means: torch.Tensor,
             scales: torch.Tensor | None, params: FreeSpaceConfig, evidence: bool = True) -> torch.Tensor:
    """What one depth image says about each Gaussian.

    Args:
        depth: [H, W] metric z along the optical axis, 0 / non-finite = no return.
        K: [3, 3] intrinsics of depth.
        T_world_cam: [4, 4] optical camera -> memory frame.
        means: [N, 3] Gaussian centres in the memory frame.
        scales: [N, 3] activated scales (m), or None (extent term off).
        params: margins and window.
        evidence: False skips the window filter: no Gaussian is THROUGH (cheaper, for SURFACE / HIDDEN only).

    Returns:
        [N] int8 codes OUTSIDE, THROUGH, SURFACE, HIDDEN or UNKNOWN (module constants).
    """
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    H, W = d.shape
    n = int(means.shape[0])
    out = torch.full((n,), OUTSIDE, dtype=torch.int8)
    if n == 0:
        return out
    T_cam_world = np.linalg.inv(np.asarray(T_world_cam, dtype=np.float64))
    pc = means.detach().double().numpy() @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]  # [N, 3]
    z = pc[:, 2]
    front = z > params.near
    zs = np.where(front, z, 1.0)
    K = np.asarray(K, dtype=np.float64)
    u = np.rint(K[0, 0] * pc[:, 0] / zs + K[0, 2]).astype(np.int64)  # integer pixel centres
    v = np.rint(K[1, 1] * pc[:, 1] / zs + K[1, 2]).astype(np.int64)
    inside = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    idx = np.nonzero(inside)[0]
    if len(idx) == 0:
        return out
    zi, ui, vi = z[idx], u[idx], v[idx]
    margin = np.maximum(params.margin, params.noise * zi ** 2)
    if scales is not None and params.extent > 0:
        margin = margin + params.extent * scales.detach().double().numpy()[idx].max(-1)
    at = d[vi, ui]  # the depth right at the projected centre
    code = np.full(len(idx), UNKNOWN, dtype=np.int8)
    code[(at > 0) & (np.abs(zi - at) <= margin)] = SURFACE
    code[(at > 0) & (zi > at + margin)] = HIDDEN
    if evidence:  # every valid pixel of the window lies beyond the Gaussian by the margin
        near_d = window_min_depth(d, params.radius_px(W), params.min_valid)[vi, ui]
        code[(near_d > 0) & (zi < near_d - margin)] = THROUGH
    out[torch.from_numpy(idx)] = torch.from_numpy(code)
    return out


@torch.no_grad()
def decayed_logits(opacity_logits: torch.Tensor, through: torch.Tensor, decay: float) -> torch.Tensor:
    """Opacity logits [N] with the opacity of the Gaussians where through [N] (bool) is True
    multiplied by decay (0 < decay < 1): one piece of free-space evidence."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in (0, 1), got {decay}")
    a = torch.sigmoid(opacity_logits[through]) * decay
    out = opacity_logits.clone()
    out[through] = torch.log(a) - torch.log1p(-a)
    return out

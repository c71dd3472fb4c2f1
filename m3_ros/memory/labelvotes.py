"""Label support: how often each Gaussian was seen on the surface *inside* a detector region.

A region model (labelled masks -> text embeddings) supervises only the pixels inside its regions;
the floor and whatever the detector never names get no feature target at all. Gaussians there
still grow queries: training pulls every Gaussian that blends into a labelled pixel towards that
label, and a keyframe with a pose error seeds an object's label onto the floor beside it. Cosine
attention is scale-invariant, so such a weak query decodes as strongly as the object's own.

Every keyframe that carries a region model's features votes, per Gaussian whose centre its depth
sees (the pixel's depth agrees with the centre's), "inside a region" or "outside every region".
The votes are counts kept with the Gaussians (cloned with them, saved with them); grounding trusts
a Gaussian's region-model relevance in proportion to its support (GroundingConfig.label_support).
Pure numpy / torch; no ROS, no memory state.
"""
from __future__ import annotations

import numpy as np
import torch

from m3_ros import geometry

VOTES_KEY = "label_votes"
"""ParameterDict key of the [N, 2] vote counts (inside a region, outside every region); not trained."""


def surface_votes(means: np.ndarray, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                  regions: np.ndarray, tol: float = 0.02, noise: float = 0.02, near: float = 0.1) -> torch.Tensor:
    """Votes [N, 2] (inside, outside) of one keyframe for Gaussian centres means [N, 3].

    A centre votes when it projects into the image at depth z > near and the depth [H, W] (0 = no
    return) of its pixel lies within max(tol, noise * z^2) of z (the pixel sees it, not something
    in front of or behind it); it votes inside when regions [H, W] (bool) is True at that pixel.
    The tolerance grows with range like stereo noise (a few sigma of a D435 at noise = 0.02).
    """
    N = len(means)
    out = torch.zeros(N, 2)
    if N == 0:
        return out
    H, W = depth.shape
    uv, z = geometry.project(np.asarray(means, dtype=np.float64), np.asarray(K, dtype=np.float64),
                             np.asarray(T_world_cam, dtype=np.float64))
    ok = np.isfinite(uv).all(1) & (z > near)
    u = np.floor(np.where(ok, uv[:, 0], -1)).astype(np.int64)
    v = np.floor(np.where(ok, uv[:, 1], -1)).astype(np.int64)
    ok &= (u >= 0) & (u < W) & (v >= 0) & (v < H)
    idx = np.flatnonzero(ok)
    d = np.asarray(depth, dtype=np.float64)[v[idx], u[idx]]
    seen = np.isfinite(d) & (d > 0) & (np.abs(d - z[idx]) <= np.maximum(tol, noise * z[idx] ** 2))
    idx = idx[seen]
    inside = np.asarray(regions, dtype=bool)[v[idx], u[idx]]
    out[torch.from_numpy(idx[inside]), 0] = 1.0
    out[torch.from_numpy(idx[~inside]), 1] = 1.0
    return out


def support(votes: torch.Tensor) -> torch.Tensor:
    """[N] share of inside votes, (inside + 1) / (inside + outside + 2) for votes [N, 2]: 0.5 for
    a Gaussian no keyframe voted on, towards 0 for one seen outside every region again and again."""
    return (votes[:, 0] + 1.0) / (votes.sum(1) + 2.0)

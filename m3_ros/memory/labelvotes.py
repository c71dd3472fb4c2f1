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


def incidence(depth: np.ndarray, K: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """|cos| [P] of the angle between the viewing ray and the surface normal at pixels (u, v) [P] of a
    depth image [H, W] (normal from the back-projected neighbours); 1 where a neighbour has no depth."""
    H, W = depth.shape
    d = np.asarray(depth, dtype=np.float64)

    def point(uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
        uu, vv = np.clip(uu, 0, W - 1), np.clip(vv, 0, H - 1)
        return geometry.unproject(uu, vv, d[vv, uu], K)

    p0 = point(u, v)
    tu = point(u + 1, v) - point(u - 1, v)
    tv = point(u, v + 1) - point(u, v - 1)
    n = np.cross(tu, tv)
    nn = np.linalg.norm(n, axis=1) * np.linalg.norm(p0, axis=1)
    ok = np.isfinite(nn) & (nn > 0)
    for du, dv in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ok &= d[np.clip(v + dv, 0, H - 1), np.clip(u + du, 0, W - 1)] > 0
    cos = np.ones(len(u))
    cos[ok] = np.abs(np.einsum("ni,ni->n", n[ok], p0[ok])) / nn[ok]
    return cos


def surface_votes(means: np.ndarray, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                  regions: np.ndarray, tol: float = 0.02, noise: float = 0.02, near: float = 0.1,
                  min_cos: float = 0.25) -> torch.Tensor:
    """Votes [N, 2] (inside, outside) of one keyframe for Gaussian centres means [N, 3].

    A centre votes when it projects into the image at depth z > near and the depth [H, W] (0 = no
    return) of its pixel lies within max(tol, noise * z^2) of z, measured across the surface (the
    pixel sees it, not something in front of or behind it); it votes inside when regions [H, W]
    (bool) is True at that pixel. The tolerance grows with range like stereo noise (a few sigma of
    a D435 at noise = 0.02). Along the ray it is that tolerance over the cosine of the incidence
    angle (at most 1 / min_cos): a Gaussian 5 mm above a table seen at 15 degrees lies 2 cm in front
    of its pixel's depth, and had never voted (a moved object's label stayed where it had stood).
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
    cos = np.maximum(incidence(depth, np.asarray(K, dtype=np.float64), u[idx], v[idx]), min_cos)
    seen = np.isfinite(d) & (d > 0) & (np.abs(d - z[idx]) <= np.maximum(tol, noise * z[idx] ** 2) / cos)
    idx = idx[seen]
    inside = np.asarray(regions, dtype=bool)[v[idx], u[idx]]
    out[torch.from_numpy(idx[inside]), 0] = 1.0
    out[torch.from_numpy(idx[~inside]), 1] = 1.0
    return out


def support(votes: torch.Tensor) -> torch.Tensor:
    """[N] share of inside votes, (inside + 1) / (inside + outside + 2) for votes [N, 2]: 0.5 for
    a Gaussian no keyframe voted on, towards 0 for one seen outside every region again and again."""
    return (votes[:, 0] + 1.0) / (votes.sum(1) + 2.0)

"""Label support: how often each Gaussian was seen on the surface *inside* a detector region.

A region model (labelled masks -> text embeddings) supervises only the pixels inside its regions;
the floor and whatever the detector never names get no feature target at all. Gaussians there
still grow queries: training pulls every Gaussian that blends into a labelled pixel towards that
label, and a keyframe with a pose error seeds an object's label onto the floor beside it. Cosine
attention is scale-invariant, so such a weak query decodes as strongly as the object's own.

Every keyframe that carries a region model's features votes, per Gaussian whose centre its depth
sees (the pixel's depth agrees with the centre's), "inside a region" or "outside every region";
with MemoryConfig.vote_same_label, inside a region of another label than the Gaussian's own (its
top attention row) counts as outside.
The votes are counts kept with the Gaussians (cloned with them, saved with them); grounding trusts
a Gaussian's region-model relevance in proportion to its support (GroundingConfig.label_support).
Tried for moved objects and not kept (2026-12-05, dev scenes only; bench_scale.py moved-object
trials, where a small object's old place kept answering): a run count of outside votes since the
last inside one, zeroing support from 2, 3 or 4 such votes on, changed no dev trial (table seed 1:
2 of 4 with and without it; two_tables seed 1: 1-2 of 2) and moved dev phrasings' accuracy by
-0.13 (table seed 1) to +0.10 (two_tables seed 1); the
old place's Gaussians were voted *inside* after the move (inside the table's region, with
vote_same_label off), so a run never started. Giving a Gaussian seen inside another label's
region that label's row (the newest label wins, as a labelled voxel map does) answered the new
place first in 4 of 4 table-seed-1 trials (2 of 4 before) and dev_sweep's 160 queries 0.74 within
5 cm (0.68 before), but it flipped the table top at an object's base between the table's and the
object's label at every keyframe, and test_moved_object's old duck place answered again (2 of 2
runs); with a strict surface test and eroded regions the duck place still answered and dev fell
to 0.62.
Pure numpy / torch; no ROS, no memory state.
"""
from __future__ import annotations

import numpy as np
import torch

from m3_ros import geometry
from m3_ros.memory.attention import attention_logits

VOTES_KEY = "label_votes"
"""ParameterDict key of the [N, 2] vote counts (inside a region, outside every region); not trained."""
RUN_KEY = "label_contradictions"
"""ParameterDict key of the [N] count of keyframes whose region maps contradicted a Gaussian's label
since one last confirmed it (labelchange.label_verdict, read on free space's surface); not trained."""


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


def surface_pixels(means: np.ndarray, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                   tol: float = 0.02, noise: float = 0.02, near: float = 0.1, min_cos: float = 0.25
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centres of means [N, 3] that a depth image [H, W] (0 = no return) sees on its surface:
    (index [S], row v [S], column u [S] of their pixels).

    A centre is seen when it projects into the image at depth z > near and its pixel's depth lies
    within max(tol, noise * z^2) of z, measured across the surface (the pixel sees it, not something
    in front of or behind it). The tolerance grows with range like stereo noise (a few sigma of a
    D435 at noise = 0.02). Along the ray it is that tolerance over the cosine of the incidence angle
    (at most 1 / min_cos): a Gaussian 5 mm above a table seen at 15 degrees lies 2 cm in front of its
    pixel's depth, and had never voted (a moved object's label stayed where it had stood).
    """
    none = np.zeros(0, dtype=np.int64)
    if len(means) == 0:
        return none, none, none
    H, W = depth.shape
    uv, z = geometry.project(np.asarray(means, dtype=np.float64), np.asarray(K, dtype=np.float64),
                             np.asarray(T_world_cam, dtype=np.float64))
    ok = np.isfinite(uv).all(1) & (z > near)
    u = np.rint(np.where(ok, uv[:, 0], -1)).astype(np.int64)  # pixel centres at integers (geometry)
    v = np.rint(np.where(ok, uv[:, 1], -1)).astype(np.int64)
    ok &= (u >= 0) & (u < W) & (v >= 0) & (v < H)
    idx = np.flatnonzero(ok)
    d = np.asarray(depth, dtype=np.float64)[v[idx], u[idx]]
    cos = np.maximum(incidence(depth, np.asarray(K, dtype=np.float64), u[idx], v[idx]), min_cos)
    seen = np.isfinite(d) & (d > 0) & (np.abs(d - z[idx]) <= np.maximum(tol, noise * z[idx] ** 2) / cos)
    idx = idx[seen]
    return idx, v[idx], u[idx]


def surface_votes(means: np.ndarray, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                  regions: np.ndarray, agree=None, **seen_kw) -> torch.Tensor:
    """Votes [N, 2] (inside, outside) of one keyframe for Gaussian centres means [N, 3].

    Every centre the depth sees on its surface (surface_pixels; seen_kw its tolerances) votes inside
    when regions [H, W] (bool) is True at its pixel, outside otherwise. ``agree(idx [S], v [S], u [S])
    -> [S] bool``, if given, is asked about the inside ones: those it refuses (a region of another
    label than the Gaussian's own) vote outside.
    """
    out = torch.zeros(len(means), 2)
    idx, v, u = surface_pixels(means, depth, K, T_world_cam, **seen_kw)
    if len(idx) == 0:
        return out
    inside = np.asarray(regions, dtype=bool)[v, u]
    if agree is not None and inside.any():
        inside[inside] = np.asarray(agree(idx[inside], v[inside], u[inside]), dtype=bool)
    out[torch.from_numpy(idx[inside]), 0] = 1.0
    out[torch.from_numpy(idx[~inside]), 1] = 1.0
    return out


def carries_row(queries: torch.Tensor, rows: torch.Tensor, W_m: torch.Tensor, bank_unit: torch.Tensor,
                tau: float) -> np.ndarray:
    """[S] True where bank row rows[i] (-1 = the pixel has no usable label, e.g. across a silhouette)
    is -1 or the top attention row of principal query queries[i] [S, l]; a zero query carries none."""
    top = attention_logits(queries, W_m, bank_unit, tau).argmax(-1)
    top[queries.norm(dim=1) == 0] = -2
    return ((rows < 0) | (top == rows)).numpy()


def support(votes: torch.Tensor, contradictions: torch.Tensor | None = None, max_contradictions: int = 0,
            prior: float = 1.0) -> torch.Tensor:
    """[N] share of inside votes, (inside + prior) / (inside + outside + 2 prior) for votes [N, 2]: 0.5
    for a Gaussian no keyframe voted on, towards 0 for one seen outside every region again and again
    (``prior``: pseudo-votes on each side; smaller trusts the first few votes more).
    With max_contradictions > 0, 0 where contradictions [N] (RUN_KEY) reach it: the newest views
    call the place something else (a moved object's old place)."""
    if not prior > 0:
        raise ValueError(f"support prior must be > 0 (pseudo-votes), got {prior}")
    s = (votes[:, 0] + prior) / (votes.sum(1) + 2.0 * prior)
    if contradictions is not None and max_contradictions > 0:
        s = torch.where(contradictions >= max_contradictions, torch.zeros_like(s), s)
    return s

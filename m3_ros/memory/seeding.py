"""Seeding: new Gaussians where a keyframe sees geometry the memory does not explain yet.

Pixels are back-projected from depth; those the current memory already renders (alpha >= 0.5 and
depth within ``unexplained_depth_rel``) are skipped, the rest voxel-downsampled. A new Gaussian's
principal query starts where attention already decodes its pixel's feature (its nearest bank
row, ``wm.queries_for_rows``), so the memory answers right after the keyframe (M3_METHOD.md,
"queryable at once").
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from m3_ros import geometry
from m3_ros.memory.compact import grid_hw
from m3_ros.memory.config import MemoryConfig
from m3_ros.memory.gaussians import logit, nn_log_scales, voxel_downsample
from m3_ros.memory.sh import dc_to_colors
from m3_ros.memory.views import cell_median_depth, label_depth_consistent
from m3_ros.types import Keyframe


def unexplained(kf: Keyframe, pix: np.ndarray, alpha: np.ndarray, depth_raw: np.ndarray, rel: float) -> np.ndarray:
    """[M] True at pixels pix [M, 2] (v, u) that the rendered alpha / expected depth [H, W] do not explain."""
    a = alpha[pix[:, 0], pix[:, 1]]
    dr = depth_raw[pix[:, 0], pix[:, 1]]
    depth = np.asarray(kf.depth)
    z = depth[pix[:, 0], pix[:, 1]]
    # Expected depth blends both sides of a depth edge: edge pixels count as explained
    # unless nothing is rendered there.
    dmap = np.where(depth > 0, depth, np.nan)
    span = ndimage.maximum_filter(np.nan_to_num(dmap, nan=0.0), 3) - ndimage.minimum_filter(np.nan_to_num(dmap, nan=np.inf), 3)
    edge = (span > rel * np.nan_to_num(dmap, nan=0.0))[pix[:, 0], pix[:, 1]]
    return (a < 0.5) | ((np.abs(dr - z) > rel * z) & ~edge)


def seed_points(kf: Keyframe, cfg: MemoryConfig, room: int, render_fn, generator: torch.Generator,
                existing_means: np.ndarray | None = None, objects: np.ndarray | None = None,
                small: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World points [M, 3] and their pixels [M, 2] (v, u) to seed from kf, at most room of them,
    none in a voxel that already holds cfg.max_per_voxel of existing_means [N, 3]. ``objects``
    [H, W] bool (``detected_mask``) is seeded at cfg.object_voxel_size; ``small`` [H, W] bool
    (``small_regions``, computed here when None) is what object_gap fills in.

    render_fn(T_world_cam, K, W, H) -> {"alpha", "depth_raw"} renders the current memory, or is
    None when the memory is empty (everything is unexplained).
    """
    none = (np.zeros((0, 3)), np.zeros((0, 2), dtype=np.int64))
    if room <= 0:
        return none
    depth = np.asarray(kf.depth, dtype=np.float64)
    pts, pix = geometry.backproject(depth, np.asarray(kf.K), np.asarray(kf.T_world_cam), stride=cfg.seed_stride)
    fine = np.zeros(len(pts), dtype=bool)
    if objects is not None and cfg.object_voxel_size > 0:
        # detected objects: every pixel, finer voxels (small things keep enough Gaussians to be
        # found and grasped; floor and walls keep the coarse budget)
        opts, opix = geometry.backproject(np.where(objects, depth, 0.0), np.asarray(kf.K), np.asarray(kf.T_world_cam))
        coarse = ~objects[pix[:, 0], pix[:, 1]] if len(pix) else np.zeros(0, dtype=bool)
        pts, pix = np.concatenate([pts[coarse], opts]), np.concatenate([pix[coarse], opix])
        fine = np.concatenate([np.zeros(int(coarse.sum()), dtype=bool), np.ones(len(opts), dtype=bool)])
    if len(pts) == 0:
        return none
    if render_fn is not None:
        H, W = kf.size
        out = render_fn(np.asarray(kf.T_world_cam), np.asarray(kf.K), W, H)
        keep = unexplained(kf, pix, out["alpha"], out["depth_raw"], cfg.unexplained_depth_rel)
        if fine.any() and cfg.object_gap > 0 and existing_means is not None and len(existing_means):
            # small objects the memory explains only coarsely (seen from afar) are filled in
            if small is None:
                small = small_regions(kf, cfg.object_max_extent)
            fill = small[pix[:, 0], pix[:, 1]] & fine & ~keep
            if fill.any():
                gap, _ = cKDTree(existing_means).query(pts[fill], distance_upper_bound=cfg.object_gap)
                keep[np.flatnonzero(fill)[~np.isfinite(gap)]] = True
        pts, pix, fine = pts[keep], pix[keep], fine[keep]
        if len(pts) == 0:
            return none
    keep = voxel_downsample(pts, cfg.voxel_size)
    if fine.any():
        keep = np.union1d(keep[~fine[keep]], np.flatnonzero(fine)[voxel_downsample(pts[fine], cfg.object_voxel_size)])
    if existing_means is not None and cfg.max_per_voxel > 0:
        keep = keep[~over_budget(pts[keep], existing_means, cfg.voxel_size, cfg.max_per_voxel)]
    if len(keep) > room:
        keep = keep[np.sort(torch.randperm(len(keep), generator=generator)[:room].numpy())]
    return pts[keep], pix[keep]


def detected_mask(kf: Keyframe) -> np.ndarray | None:
    """[H, W] True inside any detector region of kf (None when kf carries no instances)."""
    if not kf.instances:
        return None
    m = np.zeros(kf.size, dtype=bool)
    for inst in kf.instances:
        if inst.mask.shape == m.shape:
            m |= inst.mask
    return m


def small_regions(kf: Keyframe, max_extent: float) -> np.ndarray:
    """[H, W] True inside kf's detector regions whose depth points span less than max_extent (m)
    along every axis of kf's world frame (5th-95th percentile; regions without depth are not small)."""
    m = np.zeros(kf.size, dtype=bool)
    depth = np.asarray(kf.depth, dtype=np.float64)
    for inst in kf.instances:
        mask = np.asarray(inst.mask, dtype=bool)
        if mask.shape != m.shape:
            continue
        pts, _ = geometry.backproject(np.where(mask, depth, 0.0), np.asarray(kf.K), np.asarray(kf.T_world_cam))
        if len(pts) >= 3:
            span = np.percentile(pts, 95, axis=0) - np.percentile(pts, 5, axis=0)
            if float(span.max()) < max_extent:
                m |= mask
    return m


def over_budget(pts: np.ndarray, existing_means: np.ndarray, voxel: float, k: int) -> np.ndarray:
    """[M] True for points pts [M, 3] whose voxel already holds >= k of existing_means [N, 3]."""
    if k <= 0 or len(existing_means) == 0 or len(pts) == 0:
        return np.zeros(len(pts), dtype=bool)
    keys = np.floor(existing_means / voxel).astype(np.int64)
    cells, counts = np.unique(keys, axis=0, return_counts=True)
    full = {tuple(c) for c in cells[counts >= k]}
    if not full:
        return np.zeros(len(pts), dtype=bool)
    return np.fromiter((tuple(c) in full for c in np.floor(pts / voxel).astype(np.int64)), dtype=bool, count=len(pts))


BIRTH_KEY = "birth"
"""Non-trained per-Gaussian value [N]: for a seed inside an object-sized detector region
(small_regions), how many keyframes the memory had taken when it was seeded (its age, for
least_useful); NO_BIRTH for every other Gaussian. Not saved: a loaded memory's Gaussians are all old."""
NO_BIRTH = -1e9
"""BIRTH_KEY of a Gaussian that is not an object seed (background, or loaded from disk)."""

EXPOSURE_KEY = "exposure"
"""Non-trained per-Gaussian count [N]: train steps whose render reached it (radii > 0), i.e. how
often training has had a say about its opacity (MemoryConfig.evict_exposure). Not saved: a loaded
memory's Gaussians count as trained."""


def least_useful(opacities: torch.Tensor, n: int, spared: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [n] of the Gaussians to evict first: the most transparent (they explain the least).

    Gaussians marked in spared [N] bool go only after every other one. M3Memory spares young object
    seeds (spared_seeds): a seed starts at init_opacity, below what
    training gives most surfaces, so until it has been trained its opacity does not say how useful
    it is. Without this, a memory at
    its limit evicted each keyframe's seeds at the next keyframe (dev: a cube moved across a room
    table was seeded by the one view that detected it and gone two views later). M3Memory gives a
    birth only to seeds of object-sized detector regions: sparing every seed (~5000 a keyframe in a
    room at the limit) turned eviction onto older object Gaussians (dev sweep 0.66 within 5 cm
    against 0.68, wrong object 0.10 against 0.06). Sparing object seeds only, dev (2026-12-05,
    bench/results/*ograce*; grace = MemoryConfig.recent, not tuned): dev sweep 0.72 within 5 cm
    against 0.68 (two_tables 0.69 against 0.60, room 0.66 against 0.64, table 0.83 both), median
    2.9 against 3.6 cm, wrong object 0.09 against 0.06; moved-object trials 8 of 14 against 7 of 13
    (the trial sets differ: an object counts only if found before it moved).
    """
    n = min(int(n), int(opacities.shape[0]))
    key = opacities if spared is None else opacities + 2.0 * spared.to(opacities.dtype)  # opacities lie in [0, 1]
    return torch.topk(key, n, largest=False).indices


def spared_seeds(birth: torch.Tensor, exposure: torch.Tensor, taken: int, cfg: MemoryConfig) -> torch.Tensor:
    """[N] bool: the object seeds (birth [N], BIRTH_KEY) least_useful evicts last, with ``taken``
    keyframes taken. By training exposure (exposure [N], EXPOSURE_KEY) when cfg.evict_exposure > 0:
    rendered fewer times than that, from a keyframe within the newest ``window``. Otherwise the seeds
    of the newest evict_grace (None: ``recent``) keyframes before this one. cfg.spare_objects: every
    object seed, whatever its age."""
    if cfg.spare_objects:
        return birth > NO_BIRTH / 2
    if cfg.evict_exposure > 0:
        return (birth > taken - 1 - cfg.window) & (exposure < cfg.evict_exposure)
    grace = cfg.recent if cfg.evict_grace is None else cfg.evict_grace
    return birth > taken - 1 - grace


def footprint_cap(kf: Keyframe, pts: np.ndarray, cfg: MemoryConfig) -> np.ndarray:
    """[M] largest initial scale (m) of points pts [M, 3] seeded from kf: twice the spacing of the
    samples they came from (seed_stride pixels at their depth, at least a voxel).

    The nearest-neighbour scale assumes dense samples. An isolated far sample (a patch of floor
    seen once across the room) would start as a disc the size of the gap to its neighbours: on
    the table dev walk (seed 0) discs 0.6-0.8 m wide at 0.9 opacity stood beside the camera's
    path and pulled every rendered depth 20-30 % short.
    """
    z = geometry.transform_points(geometry.invert(np.asarray(kf.T_world_cam, dtype=np.float64)), pts)[:, 2]
    spacing = np.maximum(z, 0.0) * cfg.seed_stride / float(np.asarray(kf.K)[0, 0])
    return 2.0 * np.maximum(spacing, cfg.voxel_size)


def seed_geometry(kf: Keyframe, pts: np.ndarray, pix: np.ndarray, existing_means: np.ndarray,
                  cfg: MemoryConfig) -> dict[str, torch.Tensor]:
    """Means, log-scales (nearest-neighbour spacing), identity rotations, opacity and colour of new Gaussians."""
    M = len(pts)
    rgb = torch.from_numpy(kf.rgb[pix[:, 0], pix[:, 1]].astype(np.float32) / 255.0)
    log_scales = np.minimum(nn_log_scales(pts, existing_means.astype(np.float64)),
                            np.log(footprint_cap(kf, pts, cfg))[:, None])
    return {
        "means": torch.from_numpy(pts).float(),
        "log_scales": torch.from_numpy(log_scales).float(),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(M, 1),
        "opacity_logits": torch.full((M,), float(logit(torch.tensor(cfg.init_opacity)))),
        "colors": dc_to_colors(logit(rgb), cfg.sh_degree),  # higher SH orders start at 0
    }


def pixel_features(kf: Keyframe, fm, pix: np.ndarray, cfg: MemoryConfig, model: str) -> torch.Tensor:
    """Ground-truth features [M, d] of model at pixels pix [M, 2] (v, u), nearest cell; zero across
    a region's silhouette (depth off its cell's median) for region models."""
    uv = torch.from_numpy(pix[:, ::-1].astype(np.float32).copy())  # (u, v)
    gt = fm.sample(uv, mode="nearest")  # [M, d]
    if cfg.models[model].regions and cfg.label_depth_rel > 0:
        cd = cell_median_depth(np.nan_to_num(np.asarray(kf.depth, dtype=np.float64)), grid_hw(fm))
        z = np.asarray(kf.depth)[pix[:, 0], pix[:, 1]]
        ok = label_depth_consistent(z, pix[:, 1], pix[:, 0], cd, kf.size, cfg.label_depth_rel)
        gt[torch.from_numpy(~ok)] = 0.0  # across the silhouette: no feature (inherits below)
    return gt


def inherit_queries(q: torch.Tensor, pts: np.ndarray, tree: cKDTree | None, known: torch.Tensor, radius: float,
                    allowed: np.ndarray | None = None) -> None:
    """Give rows of q [M, l] that are zero (no feature in this keyframe: a missed detection, a model
    that skipped it) the query of the nearest known Gaussian within radius (known [N, l]), in place.
    ``allowed`` [M] bool limits this to some rows (None = all)."""
    if tree is None:
        return
    zero = q.abs().sum(1) == 0
    if allowed is not None:
        zero &= torch.from_numpy(np.asarray(allowed, dtype=bool))
    none = torch.nonzero(zero).flatten()
    if len(none):
        dist, nn = tree.query(pts[none.numpy()], distance_upper_bound=radius)
        ok = np.isfinite(dist)
        if ok.any():
            q[none[torch.from_numpy(ok)]] = known[torch.from_numpy(nn[ok])]

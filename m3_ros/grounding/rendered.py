"""Rendered relevance for grounding: cameras (scaled, windowed, a keyframe's), relevance and depth
rendered from them and lifted to 3D points, which Gaussians a camera sees, and the keyframe views
that verify a contested answer and refine a rendered one (ground.py decides when).

``memory`` is an ``M3Memory`` or a ``MemorySnapshot``, as in ground.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from m3_ros.geometry import backproject, invert, project, scale_intrinsics, transform_points
from m3_ros.memory.attention import attention_logits

if TYPE_CHECKING:
    from m3_ros.grounding.ground import GroundingConfig


def baseline_score(memory, model: str, text_emb: torch.Tensor) -> float:
    """Cosine between the text and what a zero principal query decodes to."""
    channels = memory.cfg.models[model].channels
    with torch.no_grad():
        f = memory.decode(model, torch.zeros(1, channels))[0]
        return float(torch.nn.functional.cosine_similarity(f.float(), text_emb.float().reshape(-1), dim=0))


Camera = tuple  # (T_world_cam [4, 4], K [3, 3], width, height), in view mode optionally + measured depth [height, width]


def scaled_camera(T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int, scale: float,
                   centre: np.ndarray | None = None, radius: float = 0.0) -> Camera:
    """The camera at ``scale`` of its resolution; with ``centre`` [3], only a window around it.

    The window spans 2·radius around the projected centre (at least 16 px): verification reads
    only pixels near a region, and a window renders in a fraction of the full view's time.
    """
    w, h = max(8, int(round(width * scale))), max(8, int(round(height * scale)))
    Ks = scale_intrinsics(K, w / width, h / height)
    if centre is not None:
        uv, z = project(np.asarray(centre, dtype=np.float64)[None], Ks, T_world_cam)
        if z[0] > 0.05:
            half = int(np.ceil(max(8.0, 1.5 * radius * max(Ks[0, 0], Ks[1, 1]) / z[0])))
            u0 = int(np.clip(np.floor(uv[0, 0]) - half, 0, max(w - 1, 0)))
            v0 = int(np.clip(np.floor(uv[0, 1]) - half, 0, max(h - 1, 0)))
            u1, v1 = min(w, u0 + 2 * half), min(h, v0 + 2 * half)
            if u1 - u0 >= 4 and v1 - v0 >= 4:
                Ks[0, 2] -= u0
                Ks[1, 2] -= v0
                w, h = u1 - u0, v1 - v0
    return T_world_cam, Ks, w, h


def keyframe_camera(memory, i: int, cfg: GroundingConfig, centre: np.ndarray | None = None,
                     radius: float = 0.0) -> Camera:
    kf = memory.keyframes[i]
    H, W = kf.size
    return scaled_camera(kf.T_world_cam, kf.K, W, H, cfg.view_scale, centre, radius)


def means_tree(memory, min_opacity: float):
    """(cKDTree over the means of opaque-enough Gaussians, their indices); memoised by snapshots."""
    if hasattr(memory, "means_tree"):
        return memory.means_tree(min_opacity)
    keep = np.flatnonzero(memory.opacities.detach().cpu().numpy() >= min_opacity)
    return cKDTree(memory.means.detach().cpu().numpy()[keep].astype(np.float64)), keep


@torch.no_grad()
def pixel_mass(memory, model: str, queries: torch.Tensor, match: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Attention mass [M] that rendered queries [M, l] put on the bank rows ``match`` [t] (bool)."""
    bank = memory.banks[model]
    W = memory.W[model].detach()
    out = torch.empty(queries.shape[0])
    for b in range(0, queries.shape[0], chunk):
        w = torch.softmax(attention_logits(queries[b:b + chunk].float(), W, bank.unit_rows, memory.cfg.tau), dim=-1)
        out[b:b + chunk] = w[:, match].sum(-1)
    return out


def render_relevance(memory, model: str, text_emb: torch.Tensor, camera: Camera, cfg: GroundingConfig,
                      match: torch.Tensor | None, baseline: float | None = None) -> dict:
    """"relevance" [h, w], "alpha" and "depth" from one camera: cosine (``match`` None, the
    confidence_norm discount towards ``baseline``, the zero query's score, applied) or row mass on
    the ``match`` rows (times the same confidence)."""
    T, K, w, h = camera
    if match is None:
        out = memory.relevance(model, text_emb, T, K, w, h)
        rel = np.asarray(out["relevance"], dtype=np.float64)
        alpha = np.asarray(out["alpha"], dtype=np.float64)
        if cfg.confidence_norm > 0 and "query_norm" in out:
            c = np.clip(np.asarray(out["query_norm"], dtype=np.float64) / (np.maximum(alpha, 1e-6) * cfg.confidence_norm), 0, 1)
            if baseline is None:
                baseline = baseline_score(memory, model, text_emb)
            rel = c * rel + (1 - c) * baseline
        return {"relevance": rel, "alpha": alpha, "depth": out["depth"]}
    out = memory.render(T, K, w, h)
    q = out["queries"][model]
    alpha = np.asarray(out["alpha"], dtype=np.float64)
    rel = pixel_mass(memory, model, q.reshape(-1, q.shape[-1]), match).reshape(h, w).numpy().astype(np.float64)
    if cfg.confidence_norm > 0:
        qn = q.norm(dim=-1).numpy().astype(np.float64)
        rel = rel * np.clip(qn / (np.maximum(alpha, 1e-6) * cfg.confidence_norm), 0, 1)
    return {"relevance": np.where(alpha >= 0.01, rel, 0.0), "alpha": alpha, "depth": out["depth"]}


def render_points(memory, model: str, text_emb: torch.Tensor, cameras: list[Camera],
                   cfg: GroundingConfig, max_depth: float | None = None, match: torch.Tensor | None = None
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Render relevance + depth from cameras; lift rendered pixels to 3D (see confidence_norm, snap_radius).

    ``match`` [t] bool: score row mass on those bank rows instead of cosine (see ``GroundingConfig.score``).
    Returns points [M, 3] (memory frame), their relevance [M], one relevance map [h, w] per camera.
    """
    pts_all, sc_all, maps = [np.zeros((0, 3))], [np.zeros(0)], []
    baseline = baseline_score(memory, model, text_emb) if match is None and cfg.confidence_norm > 0 else None
    for T, K, w, h in cameras:
        out = render_relevance(memory, model, text_emb, (T, K, w, h), cfg, match, baseline)
        rel, alpha = out["relevance"], out["alpha"]
        depth = np.where(alpha > 0.5, np.asarray(out["depth"], dtype=np.float64), 0.0)
        if max_depth is not None:
            depth = np.where(depth <= max_depth, depth, 0.0)
        # expected depth blends both sides of a silhouette: such pixels float between surfaces
        span = ndimage.maximum_filter(depth, 3) - ndimage.minimum_filter(np.where(depth > 0, depth, np.inf), 3)
        depth = np.where(span <= cfg.edge_depth_rel * depth, depth, 0.0)
        pts, pix = backproject(depth, K, T)
        maps.append(np.where(alpha > 0.5, rel, np.nan))
        sc = rel[pix[:, 0], pix[:, 1]]
        if cfg.snap_radius > 0 and len(pts):
            tree, keep = means_tree(memory, cfg.min_opacity)
            dist, nn = tree.query(pts, distance_upper_bound=cfg.snap_radius)
            ok = np.isfinite(dist)
            pts = memory.means[torch.from_numpy(keep[nn[ok]])].detach().cpu().numpy().astype(np.float64)
            sc = sc[ok]
        pts_all.append(pts)
        sc_all.append(sc)
    return np.concatenate(pts_all), np.concatenate(sc_all), maps


def pixel_spacing(points: np.ndarray, cameras: list[Camera]) -> float:
    """Median distance (m) between neighbouring rendered pixels at points [M, 3], seen by the first camera."""
    if len(points) == 0 or not cameras:
        return 0.0
    T, K, _, _ = cameras[0]
    z = transform_points(invert(np.asarray(T, dtype=np.float64)), points)[:, 2]
    z = z[z > 0]
    return float(np.median(z) / max(K[0, 0], K[1, 1])) if len(z) else 0.0


def checked_depth(depth, width: int, height: int) -> np.ndarray:
    """A measured depth image as float [height, width] metres (0 where invalid), or ValueError."""
    d = np.asarray(depth, dtype=np.float64)
    if d.shape != (height, width):
        raise ValueError(f"view mode: the camera's depth image is {d.shape}, expected ({height}, {width})")
    return np.where(np.isfinite(d) & (d > 0), d, 0.0)


def seen_from(points: np.ndarray, camera: Camera, depth: np.ndarray, cfg: GroundingConfig) -> np.ndarray:
    """[M] whether the camera (T_world_cam, K, w, h) sees each point [M, 3]: it projects into the
    image within view_max_depth and no more than view_margin behind the depth [h, w] there
    (measured or rendered; 0 = unknown, not seen)."""
    T, K, w, h = camera
    uv, z = project(points, K, T)
    u, v = np.floor(uv[:, 0]), np.floor(uv[:, 1])
    inside = (z > 0) & (z <= cfg.view_max_depth) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    seen = np.zeros(len(points), dtype=bool)
    iu, iv = u[inside].astype(np.int64), v[inside].astype(np.int64)
    d = depth[iv, iu]
    seen[inside] = (d > 0) & (z[inside] <= d + cfg.view_margin)
    return seen


def views_seeing(memory, point: np.ndarray, n: int) -> list[int]:
    """Up to n keyframes whose image contains ``point`` [3], spread over viewing directions."""
    cands, dirs = [], []
    for i, kf in enumerate(memory.keyframes):
        H, W = kf.size
        uv, z = project(point[None], kf.K, kf.T_world_cam)
        u, v = uv[0]
        if 0.1 < z[0] < 4.0 and 0.1 * W <= u < 0.9 * W and 0.1 * H <= v < 0.9 * H:
            d = point - kf.T_world_cam[:3, 3]
            cands.append(i)
            dirs.append(d / np.linalg.norm(d))
    if not cands:
        return []
    dirs = np.array(dirs)
    chosen = [0]
    while len(chosen) < min(n, len(cands)):
        # farthest-point sampling on the viewing directions: see the object from all around
        sim = dirs @ dirs[chosen].T  # [c, k]
        chosen.append(int(np.argmin(sim.max(axis=1))))
    return [cands[j] for j in chosen]


def refine(memory, model: str, text_emb: torch.Tensor, region: tuple, thr: float, cfg: GroundingConfig,
            views: list[int], maps: list[np.ndarray], match: torch.Tensor | None = None) -> tuple:
    """Re-estimate the best region's centre from views all around it.

    The first pass renders the views that see the most of the memory; their lifted pixels
    lie on the faces turned towards those cameras, so their centre sits on the near side
    of the object. Views spread around the coarse centre see every face.
    """
    centre = region[0]
    ids = views_seeing(memory, centre, cfg.refine_views)
    if len(ids) < 2:
        return region
    # only pixels within refine_radius of the centre are used: render just a window around it
    cams = [keyframe_camera(memory, i, cfg, centre, cfg.refine_radius) for i in ids]
    pts, sc, new_maps = render_points(memory, model, text_emb, cams, cfg, match=match)
    near = (sc >= thr) & (np.linalg.norm(pts - centre, axis=1) <= cfg.refine_radius)
    if near.sum() < cfg.min_region_points:
        return region
    views.extend(ids)
    maps.extend(new_maps)
    return (np.median(pts[near], axis=0), float(sc[near].mean()), pts[near])


def verify(memory, model: str, text_emb: torch.Tensor, regions: list, thr: float, cfg: GroundingConfig,
            views: list[int], maps: list[np.ndarray], match: torch.Tensor | None = None) -> list:
    """Veto regions whose rendered relevance does not pass ``thr``; keep the others' order.

    ``thr`` is the absolute floor (Otsu / zero-query baseline), not the near-the-best cut:
    rendering blends neighbours, so rendered scores run a little below per-Gaussian ones.

    Rendered from keyframes whose image contains a region, the pixels around its centre show
    what is actually visible there. A region of Gaussians hidden behind (or inside) another object
    can decode the query without being it; rendered, that spot shows the other object. The
    veto uses the 90th percentile near the centre, since pixels of the support surface
    around a real object dilute a mean.
    """
    head, tail = regions[: cfg.verify_regions], regions[cfg.verify_regions:]
    kept, vetoed = [], []
    for region in head:
        ids = views_seeing(memory, region[0], cfg.verify_views)
        cams = [keyframe_camera(memory, i, cfg, region[0], cfg.verify_radius) for i in ids]
        pts, sc, new_maps = render_points(memory, model, text_emb, cams, cfg, match=match)
        near = np.linalg.norm(pts - region[0], axis=1) <= cfg.verify_radius
        if near.sum() >= cfg.min_region_points:
            views.extend(ids)
            maps.extend(new_maps)
            # what renders at the region is not what the query asks for
            if np.percentile(sc[near], 90) < thr:
                vetoed.append(region)
                continue
        # regions no view shows directly (occluded, or seen only at grazing angles) are kept:
        # the benchmark lost flat and round objects when those were vetoed too
        kept.append(region)
    return kept + tail + vetoed


def views_covering(memory, n_views: int) -> list[int]:
    """Indices of the keyframes that see the most Gaussian means."""
    means = memory.means.detach().cpu().numpy().astype(np.float64)
    counts = []
    for i, kf in enumerate(memory.keyframes):
        H, W = kf.size
        uv, z = project(means, kf.K, kf.T_world_cam)
        inside = (z > 0.05) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        counts.append(int(inside.sum()))
    order = np.argsort(counts)[::-1]
    return [int(i) for i in order[:n_views]]

"""The last metre: find the memory's answer again in the camera's current view (no ROS).

The memory answers in ``map``; a grasp executes in ``odom``, through ``map -> odom``. Where that
correction is off (a view ICP refused, drift since the last accepted keyframe), the arm reaches for
where the memory *thinks* the object is. The current view has no such error: its depth, its detector
regions and its odometry pose are one consistent snapshot. So, near the memory's answer, look for a
detector region whose label means the query, take its depth points as the target, and plan on the
view's own depth (a robot's "look, then reach"). Where no region qualifies, the memory's answer stands.

Constants were chosen a priori, before any grasp trial used them (bench/results/dev_grasp_rules.md,
round 5); the study that decides whether the suite's grasps use it is there too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.geometry import backproject
from m3_ros.types import Instance


@dataclass
class LiveConfig:
    search_m: float = 0.30
    """A region counts if its centre is within this distance (m) of the memory's answer: about the 2 %
    odometry drift of a 15 m walk, the error ICP leaves where it refuses views (a priori)."""
    min_similarity: float = 0.5
    """A region's label must mean the query: cosine of label and query embeddings at least this. The
    detector's synonyms of one object agree at about this level (freespace.py: 0.49 in 95 % of pairs)."""
    min_points: int = 30
    """A region needs this many pixels with valid depth to place it."""
    max_depth: float = 2.0
    """Depth beyond this (m) is not used: at arm's reach the object is near, and far depth is noisy."""
    cloud_m: float = 0.30
    """The planning cloud: the view's depth points within this horizontal distance (m) of the target,
    wide enough for the planner's support ring (GraspConfig.support_ring 0.18 m)."""
    stride: int = 1
    """Depth pixels taken every ``stride`` in u and v for the planning cloud."""


@dataclass
class LiveView:
    """One camera frame as the robot sees it now: depth [H, W] m, K [3, 3], its pose T_map_cam [4, 4]
    (odometry through the current ``map -> odom``) and the detector's regions of that frame."""

    depth: np.ndarray
    K: np.ndarray
    T_map_cam: np.ndarray
    instances: list[Instance]


@dataclass
class LiveTarget:
    point: np.ndarray  # [3] map: the region's median depth point
    cloud: np.ndarray  # [M, 3] map: the view's depth points around it (plan on these)
    label: str  # the region's label
    similarity: float  # cosine of its label and the query
    moved_m: float  # distance from the memory's answer


def refine_in_view(target: np.ndarray, text_emb: torch.Tensor, view: LiveView,
                   embed: Callable[[list[str]], torch.Tensor], cfg: LiveConfig | None = None
                   ) -> tuple[LiveTarget | None, str]:
    """(the target found in the view, or None; why) for the memory's answer target [3] (map).

    text_emb [d] is the query's embedding and embed(labels) -> [n, d] embeds labels in the same space.
    Among the view's regions whose label has cosine >= min_similarity with the query and whose centre
    lies within search_m of target, the one nearest target wins: the text says which regions can be
    the object, the memory says which of them it is (a look-alike next to it may match the text better).
    """
    cfg = cfg or LiveConfig()
    target = np.asarray(target, dtype=np.float64).reshape(3)
    depth = np.asarray(view.depth, dtype=np.float32)
    if not np.all(np.isfinite(target)):
        return None, "target is not finite"
    if depth.ndim != 2 or not np.all(np.isfinite(view.T_map_cam)):
        return None, "the view has no usable depth or pose"
    regions = [i for i in view.instances if i.label.strip() and np.asarray(i.mask).shape == depth.shape]
    if not regions:
        return None, "no detector region in the current view"
    sims = (F.normalize(embed([i.label for i in regions]).float(), dim=-1)
            @ F.normalize(text_emb.float(), dim=0)).numpy()  # [n]
    near = np.where(np.isfinite(depth) & (depth > 0) & (depth <= cfg.max_depth), depth, 0.0)
    best: LiveTarget | None = None
    why = f"no region within {cfg.search_m} m of the memory's answer whose label means the query"
    for inst, sim in zip(regions, sims):
        if sim < cfg.min_similarity:
            continue
        pts, _ = backproject(np.where(np.asarray(inst.mask, dtype=bool), near, 0.0), view.K, view.T_map_cam)
        if len(pts) < cfg.min_points:
            continue
        centre = np.median(pts, axis=0)
        d = float(np.linalg.norm(centre - target))
        if d <= cfg.search_m and (best is None or d < best.moved_m):
            best = LiveTarget(point=centre, cloud=np.zeros((0, 3)), label=inst.label, similarity=float(sim),
                              moved_m=d)
    if best is None:
        return None, why
    pts, _ = backproject(near, view.K, view.T_map_cam, stride=cfg.stride)
    best.cloud = pts[np.linalg.norm(pts[:, :2] - best.point[:2], axis=1) <= cfg.cloud_m]
    return best, f"found '{best.label}' ({best.similarity:.2f}) {100 * best.moved_m:.1f} cm from the memory's answer"

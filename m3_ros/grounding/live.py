"""The last metre: find the memory's answer again in the camera's current view (no ROS).

The memory answers in ``map``; a grasp executes in ``odom``, through ``map -> odom``. Where that
correction is off (a view ICP refused, drift since the last accepted keyframe), the arm reaches for
where the memory *thinks* the object is. The current view has no such error: its depth, its detector
regions and its odometry pose are one consistent snapshot. So, near the memory's answer, look for the
detector region that is the memory's object, take its depth points as the target, and plan on the
view's own depth (a robot's "look, then reach"). Where no region qualifies, the memory's answer stands.

Which regions can be the memory's object is asked of the memory, not of the query: the memory's
feature at its answer (in the text model's space: for the label model, a blend of the labels its views
gave that object) against each region's label. The query's words would not do: MiniLM weighs colour
words little ("a small yellow cube" means "my blue cube" more than the detector's "a blue square block"
does). Among those, position decides.

Constants were chosen a priori, before any grasp trial used them (bench/results/dev_grasp_rules.md,
round 5); the study that decides whether the suite's grasps use it is there too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from m3_ros.geometry import backproject, project
from m3_ros.types import Instance


@dataclass
class LiveConfig:
    search_m: float = 0.30
    """A region counts if its centre is within this distance (m) of the memory's answer: about the 2 %
    odometry drift of a 15 m walk, the error ICP leaves where it refuses views (a priori)."""
    min_similarity: float = 0.5
    """A region's label must name the memory's object: cosine of the label's embedding and the memory's
    feature at its answer at least this. The detector's synonyms of one object agree at about this level
    (freespace.py: 0.49 in 95 % of pairs). Set for the label model's space (MiniLM); a CLIP text model
    scores image features against text on another scale."""
    answer_gaussians: int = 16
    """The memory's feature at its answer: the mean decoded feature of this many Gaussians nearest it."""
    min_points: int = 30
    """A region needs this many pixels with valid depth to place it."""
    max_depth: float = 2.0
    """Depth beyond this (m) is not used: at arm's reach the object is near, and far depth is noisy."""
    cloud_m: float = 0.30
    """The planning cloud: the view's depth points within this horizontal distance (m) of the target,
    wide enough for the planner's support ring (GraspConfig.support_ring 0.18 m)."""
    stride: int = 1
    """Depth pixels taken every ``stride`` in u and v for the planning cloud."""
    frames: int = 3
    """The latest frames kept (MemoryPipeline); each detector misses an object now and then (the
    evaluation's detector one time in five), and a look-alike nearby must not win because of it."""
    still_m: float = 0.05
    """Only frames taken within this distance (m) of the newest camera position count (and ...)"""
    still_deg: float = 5.0
    """... this angle, degrees): views from where the robot stands now, so odometry between them is
    negligible, not views from before it walked there."""
    step_back_m: float = 0.30
    """The farthest step back (m) step_back_to_see proposes: the odometry of a 30 cm step drifts
    about 6 mm (2 %), well under the 30 cm a refused ICP leaves (a priori)."""
    step_m: float = 0.05
    """step_back_to_see tries steps back in increments of this (m)."""
    frame_margin: float = 0.10
    """The target must project this fraction of the image's height inside its borders, so the object
    around the point is in view too: a 10 cm object at 0.5 m spans about this much (a priori)."""


@dataclass
class LiveView:
    """One camera frame as the robot sees it now: depth [H, W] m, K [3, 3], its pose T_map_cam [4, 4]
    (odometry through the current ``map -> odom``) and the detector's regions of that frame."""

    depth: np.ndarray
    K: np.ndarray
    T_map_cam: np.ndarray
    instances: list[Instance]


def still_views(poses: list[np.ndarray], cfg: LiveConfig | None = None) -> list[int]:
    """Indices of the camera poses [4, 4] (odometry, oldest first) taken from where the newest was."""
    cfg = cfg or LiveConfig()
    if not poses:
        return []
    newest = np.asarray(poses[-1], dtype=np.float64)
    keep = []
    for i, T in enumerate(poses):
        T = np.asarray(T, dtype=np.float64)
        dR = Rotation.from_matrix(newest[:3, :3].T @ T[:3, :3])
        if (np.linalg.norm(T[:3, 3] - newest[:3, 3]) <= cfg.still_m
                and np.degrees(dR.magnitude()) <= cfg.still_deg):
            keep.append(i)
    return keep


@dataclass
class LiveTarget:
    point: np.ndarray  # [3] map: the region's median depth point
    view: LiveView  # the frame it was found in
    label: str  # the region's label
    similarity: float  # cosine of its label and the memory's feature at its answer
    moved_m: float  # distance from the memory's answer

    def cloud(self, cfg: LiveConfig | None = None) -> np.ndarray:
        """[M, 3] map: its view's depth points around it, what a grasp is planned on (view_cloud; built
        on request: the memory node's ground service returns the point, the grasp planner node cuts the
        same cloud from the depth topic)."""
        v = self.view
        return view_cloud(v.depth, v.K, v.T_map_cam, self.point, cfg)


def refine_in_view(target: np.ndarray, feature: torch.Tensor, views: list[LiveView],
                   embed: Callable[[list[str]], torch.Tensor], cfg: LiveConfig | None = None
                   ) -> tuple[LiveTarget | None, str]:
    """(the target found in the views, or None; why) for the memory's answer target [3] (map).

    feature [d] is the memory's feature at target (MemoryPipeline.feature_at) and embed(labels) ->
    [n, d] embeds labels in the same space. Among the views' detector regions whose centre lies within
    search_m of target and whose label has cosine >= min_similarity with feature, the nearest wins: the
    label says which regions can be the object, the position which of them it is (MiniLM barely tells
    "a small blue cube" from "a small yellow cube", and neither does a feature blended from such labels).
    Its own view gives the planning cloud (LiveTarget.cloud). views: frames of one standpoint (still_views), each placed in map.

    Nothing is looked for unless the answer itself lies in some view's image (within max_depth): where
    the camera does not see the object (too close below it, behind the robot), a look-alike it does see
    (a yellow cube for "my blue cube": MiniLM weighs colour words little) must not stand in for it.
    """
    cfg = cfg or LiveConfig()
    target = np.asarray(target, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(target)):
        return None, "target is not finite"
    cands = []  # (view, instance)
    for v in views:
        if np.asarray(v.depth).ndim == 2 and np.all(np.isfinite(v.T_map_cam)):
            cands += [(v, i) for i in v.instances if i.label.strip() and np.asarray(i.mask).shape == v.depth.shape]
    if not cands:
        return None, "no detector region in the current view"
    if not any(_in_frame(target, v, cfg) for v, _ in cands):
        return None, "the memory's answer is outside the current view"
    sims = (F.normalize(embed([i.label for _, i in cands]).float(), dim=-1)
            @ F.normalize(feature.float(), dim=0)).numpy()  # [n]
    found: list[LiveTarget] = []
    for (view, inst), sim in zip(cands, sims):
        if sim < cfg.min_similarity:
            continue
        near = _near_depth(view.depth, cfg)
        pts, _ = backproject(np.where(np.asarray(inst.mask, dtype=bool), near, 0.0), view.K, view.T_map_cam)
        if len(pts) < cfg.min_points:
            continue
        centre = np.median(pts, axis=0)
        d = float(np.linalg.norm(centre - target))
        if d <= cfg.search_m:
            found.append(LiveTarget(point=centre, view=view, label=inst.label, similarity=float(sim), moved_m=d))
    if not found:
        return None, f"no region within {cfg.search_m} m of the memory's answer whose label names its object"
    hit = min(found, key=lambda f: f.moved_m)
    return hit, (f"found '{hit.label}' ({hit.similarity:.2f}) {100 * hit.moved_m:.1f} cm from the "
                 f"memory's answer in {len(views)} view(s)")


def step_back_to_see(target: np.ndarray, T_map_base: np.ndarray, T_base_cam: np.ndarray, K: np.ndarray,
                     size: tuple[int, int], cfg: LiveConfig | None = None) -> float | None:
    """How far (m) to step straight back from the base pose T_map_base [4, 4] for the camera (mount
    T_base_cam [4, 4], intrinsics K [3, 3], image size (W, H)) to see target [3] (map) with
    cfg.frame_margin clear of the image's borders and within max_depth: 0.0 if it does from here,
    None if no step up to step_back_m does.

    A head camera pitched down does not see the floor at the arm's reach (the default A1 mount: the
    frame's lower edge 55 degrees below the horizon, the floor at reach 56-61 degrees): a robot
    looks from a step back, then steps in to grasp (MemoryPipeline.refine_in_view needs the view).
    """
    cfg = cfg or LiveConfig()
    target = np.asarray(target, dtype=np.float64).reshape(1, 3)
    if not np.all(np.isfinite(target)) or not np.all(np.isfinite(T_map_base)):
        return None
    for s in np.arange(0.0, cfg.step_back_m + 1e-9, cfg.step_m):
        back = np.eye(4)
        back[0, 3] = -s  # base_link x points ahead
        T_map_cam = np.asarray(T_map_base) @ back @ np.asarray(T_base_cam)
        if _projects_inside(target[0], K, T_map_cam, size, cfg.frame_margin * size[1], cfg.max_depth):
            return float(s)
    return None


def _in_frame(point: np.ndarray, view: LiveView, cfg: LiveConfig) -> bool:
    """Whether point [3] (map) projects into view's image at a depth in (0, max_depth]."""
    H, W = np.asarray(view.depth).shape
    return _projects_inside(point, view.K, view.T_map_cam, (W, H), 0.0, cfg.max_depth)


def _projects_inside(point: np.ndarray, K: np.ndarray, T_map_cam: np.ndarray, size: tuple[int, int],
                     margin_px: float, max_depth: float) -> bool:
    """Whether point [3] (map) projects at least margin_px inside an image of size (W, H) (pixel
    centres at integers) at a depth in (0, max_depth]."""
    (u, v), z = (a[0] for a in project(np.asarray(point, dtype=np.float64)[None], K, T_map_cam))
    W, H = size
    m = margin_px - 0.5
    return bool(0.0 < z <= max_depth and m <= u < W - 1 - m and m <= v < H - 1 - m)


def view_cloud(depth: np.ndarray, K: np.ndarray, T_frame_cam: np.ndarray, centre: np.ndarray,
               cfg: LiveConfig | None = None) -> np.ndarray:
    """A view's depth points [M, 3] (in the frame of T_frame_cam [4, 4]) within cfg.cloud_m horizontally
    of centre [3]: what a grasp is planned on after refine_in_view (the grasp planner node builds the
    same from the depth topic)."""
    cfg = cfg or LiveConfig()
    pts, _ = backproject(_near_depth(depth, cfg), K, T_frame_cam, stride=cfg.stride)
    return pts[np.linalg.norm(pts[:, :2] - np.asarray(centre, dtype=np.float64)[:2], axis=1) <= cfg.cloud_m]


def _near_depth(depth: np.ndarray, cfg: LiveConfig) -> np.ndarray:
    """depth [H, W] with invalid and far pixels set to 0."""
    d = np.asarray(depth, dtype=np.float32)
    return np.where(np.isfinite(d) & (d > 0) & (d <= cfg.max_depth), d, 0.0)

"""Evaluation metrics: how far an answer is from the target, whether it hit another object,
and the 2D IoU of a thresholded relevance map. Plain numpy; no simulator, no ROS."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3_ros import geometry
from m3_ros.grounding.ground import otsu_threshold

SUCCESS_M = 0.05
"""An answer within 5 cm of the target's centre is a success (the issue's criterion)."""
ON_OBJECT_M = 0.03
"""An answer within 3 cm of another object's bounding box lies on that object (wrong object)."""


@dataclass
class Box:
    """An object's ground-truth axis-aligned box in the world frame."""

    name: str
    centre: np.ndarray  # [3]
    size: np.ndarray  # [3]


def box_distance(p: np.ndarray, box: Box) -> float:
    """Distance from point p [3] to the box surface (0 inside)."""
    d = np.maximum(np.abs(np.asarray(p) - box.centre) - box.size / 2, 0.0)
    return float(np.linalg.norm(d))


@dataclass
class Judgement:
    """One grounding answer judged against the truth."""

    error_m: float
    """Distance to the nearest valid target's centre (inf when there is no answer)."""
    success: bool
    """error_m <= SUCCESS_M."""
    wrong_object: bool
    """Not a success, and the answer lies on (within ON_OBJECT_M of) an object that is not a target."""
    hit: str
    """Name of the object the answer lies on, "" when none."""


def judge(point_world: np.ndarray | None, targets: list[str], boxes: list[Box]) -> Judgement:
    """Judge an answer (world frame [3], or None for "no answer") against valid target names."""
    if point_world is None or not np.all(np.isfinite(point_world)):
        return Judgement(float("inf"), False, False, "")
    by = {b.name: b for b in boxes}
    err = min(float(np.linalg.norm(point_world - by[t].centre)) for t in targets)
    d = {b.name: box_distance(point_world, b) for b in boxes}
    near = min(d, key=d.get) if d else ""
    hit = near if near and d[near] <= ON_OBJECT_M else ""
    ok = err <= SUCCESS_M
    return Judgement(err, ok, (not ok) and hit != "" and hit not in targets, hit)


def otsu_iou(relevance: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the Otsu-thresholded relevance [H, W] (NaN = nothing rendered) with a mask [H, W]."""
    valid = np.isfinite(relevance)
    if not valid.any():
        return 0.0
    thr = otsu_threshold(relevance[valid])
    pred = valid & (relevance > thr)
    inter = np.count_nonzero(pred & mask)
    union = np.count_nonzero(pred | mask)
    return float(inter / union) if union else 0.0


def local_alignments(views: list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]], boxes: list[Box],
                     max_range: float) -> dict[str, np.ndarray]:
    """Per box, map -> world [4, 4] as the robot would have it standing where it last saw the object.

    views: the memory's keyframes in order, each (T_map_cam [4, 4] the memory's pose, T_world_cam [4, 4]
    the true pose, K [3, 3], (H, W)). A box's alignment is T_world_cam · T_map_cam⁻¹ of the last view whose
    image holds its centre in front of the camera within max_range (m); occlusion is not checked (a robot
    standing there relocalises on what is around the object). Boxes no view holds are left out.
    Why: without a loop closure, a map is right where it was built and offset elsewhere by the drift met
    on the way (two tables: 4-6 cm); one end-of-walk alignment judges the far part by the near part's.
    """
    out: dict[str, np.ndarray] = {}
    if not boxes:
        return out
    centres = np.stack([b.centre for b in boxes]).astype(float)
    for T_map_cam, T_world_cam, K, (H, W) in reversed(views):  # the newest view first
        uv, z = geometry.project(centres, np.asarray(K, float), np.asarray(T_world_cam, float))
        held = (z > 0.0) & (z <= max_range) & np.all(uv >= -0.5, axis=1) & (uv[:, 0] < W - 0.5) & \
            (uv[:, 1] < H - 0.5)  # pixel centres at integers
        if held.any():
            T_world_map = np.asarray(T_world_cam, float) @ geometry.invert(np.asarray(T_map_cam, float))
            for i in np.flatnonzero(held):
                out.setdefault(boxes[i].name, T_world_map)
    return out


def judge_local(point_map: np.ndarray | None, targets: list[str], boxes: list[Box], local: dict[str, np.ndarray],
                T_world_map: np.ndarray) -> bool:
    """Success of a map-frame answer [3] (None: no answer) when each target is judged through its own
    local alignment (local_alignments; T_world_map [4, 4] for a target no view held)."""
    if point_map is None or not np.all(np.isfinite(point_map)):
        return False
    p = np.append(np.asarray(point_map, float), 1.0)
    return any(judge((local.get(t, T_world_map) @ p)[:3], [t], boxes).success for t in targets)

"""Drift correction with stereo-like depth noise: far walls join the map and weigh in ICP."""
import sys
from pathlib import Path

import numpy as np

from m3_ros.geometry import transform_points
from m3_ros.sim.sensors import DepthNoise, apply_depth_noise
from m3_ros.tracking import DriftTracker, PointMap, TrackerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boxes_scene import K, camera, ray_cast  # noqa: E402

WALL_X = 3.0
WALL = ((WALL_X, -3.0, 0.0), (WALL_X + 0.05, 3.0, 1.0))  # a 6 m wall, 1 m high


def noisy(depth: np.ndarray, seed: int = 0) -> np.ndarray:
    """D435-like depth (sigma 4 mm at 1 m, 16 mm at 2 m), seeded."""
    return apply_depth_noise(depth, DepthNoise(), np.random.default_rng(seed)).astype(np.float64)


def test_a_noisy_far_wall_joins_the_map_on_its_plane():
    """A wall 2-3 m away scatters by 1.6-3.6 cm: with the noise model the map keeps it, on its plane."""
    tr = DriftTracker(TrackerConfig(max_depth=4.0))
    T = camera((0.6, 0.0, 0.6), target=(WALL_X, 0.0, 0.5))
    depth = noisy(ray_cast(T, boxes=[WALL], floor=False))
    pts = tr.keyframe_points(depth, K)
    assert len(pts) > 1000 and pts[:, 2].min() > 2.0
    raw = transform_points(T, pts)
    noisy_map, exact_map = PointMap(tr.cfg.map), PointMap(tr.cfg.map)
    noisy_map.add(raw, tr.depth_sigma(pts))
    exact_map.add(raw)  # the same points taken for exact ones
    # the planarity test without the noise model throws the wall away
    assert len(exact_map) < 0.2 * len(noisy_map), (len(exact_map), len(noisy_map))
    assert len(noisy_map) > 0.5 * len(np.unique(np.floor(raw / tr.cfg.map.voxel_m), axis=0))
    off_raw = np.abs(raw[:, 0] - WALL_X)
    off_map = np.abs(noisy_map.points[:, 0] - WALL_X)
    assert np.median(off_map) < 0.3 * np.median(off_raw), (np.median(off_map), np.median(off_raw))
    tilt = np.degrees(np.arccos(np.abs(noisy_map.normals[:, 0])))
    assert np.median(tilt) < 12.0, np.median(tilt)  # 8.5 deg here; random normals would give ~60

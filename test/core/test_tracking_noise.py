"""Drift correction with stereo-like depth noise: far walls join the map and weigh in ICP."""
import sys
from pathlib import Path

import numpy as np

from m3_ros.geometry import transform_points
from m3_ros.sim.sensors import DepthNoise, apply_depth_noise
from m3_ros.tracking import DriftTracker, PointMap, TrackerConfig, _voxel_keys

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


def _wall_map(ratio: float | None, views: list[tuple[float, int]]) -> tuple[PointMap, DriftTracker]:
    """A PointMap of a wall seen from (distance m, noise seed) views, in order, with refine_ratio = ratio."""
    tr = DriftTracker(TrackerConfig(max_depth=4.0))
    tr.cfg.map.refine_ratio = ratio
    x = 3.0075  # mid-voxel: the plane's own points share one layer of 1.5 cm voxels
    pm = PointMap(tr.cfg.map)
    for dist, seed in views:
        T = camera((x - dist, 0.0, 0.6), target=(x, 0.0, 0.5))
        pts = tr.keyframe_points(noisy(ray_cast(T, boxes=[((x, -3.0, 0.0), (x + 0.05, 3.0, 1.0))], floor=False),
                                       seed), K)
        pm.add(transform_points(T, pts), tr.depth_sigma(pts))
    return pm, tr


def test_a_closer_view_replaces_a_far_views_points_and_a_far_one_does_not_undo_it():
    """First seen from 3.4 m (4.6 cm noise), then from 1 m (4 mm): with refine_ratio the map keeps the close
    view's point in each voxel both saw; without it, the first view's; a later far view changes nothing."""
    far, tr = _wall_map(None, [(3.4, 0)])
    near, _ = _wall_map(None, [(1.0, 1)])
    first, _ = _wall_map(None, [(3.4, 0), (1.0, 1)])
    refined, _ = _wall_map(0.5, [(3.4, 0), (1.0, 1)])
    again, _ = _wall_map(0.5, [(3.4, 0), (1.0, 1), (3.4, 2)])
    v = tr.cfg.map.voxel_m
    shared = np.intersect1d(_voxel_keys(far.points, v), _voxel_keys(near.points, v))  # voxels both views fill
    assert len(shared) > 100

    def sigma_shared(pm: PointMap) -> np.ndarray:
        return pm.sigma[np.isin(_voxel_keys(pm.points, v), shared)]

    assert float(np.median(sigma_shared(first))) > 0.03  # the far view's points stay: 0.046 at 3.4 m
    assert float(np.mean(sigma_shared(refined) < 0.01)) > 0.9  # the 1 m view's (4 mm) replace them
    assert abs(len(refined) - len(first)) < 0.01 * len(first)  # replaced, not added beside
    np.testing.assert_array_equal(sigma_shared(again), sigma_shared(refined))
    off = np.abs(refined.points[np.isin(_voxel_keys(refined.points, v), shared), 0] - 3.0075)
    assert float(np.median(off)) < 0.002  # the replacing points sit on the wall too

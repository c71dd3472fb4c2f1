"""Depth-to-map ICP (m3_ros.tracking) on ray-cast geometry: a floor with boxes on it."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from m3_ros.geometry import intrinsics_matrix, invert, look_at, transform_points
from m3_ros.tracking import DriftTracker, IcpConfig, PointMap, TrackerConfig, icp

K = intrinsics_matrix(208.0, 208.0, 159.5, 119.5)
W, H = 320, 240
# axis-aligned boxes (min corner, max corner) standing on the floor z = 0
BOXES = [((0.8, -0.4, 0.0), (1.2, 0.0, 0.5)), ((1.0, 0.5, 0.0), (1.3, 0.9, 0.3)), ((1.6, -0.1, 0.0), (1.9, 0.3, 0.7))]


def ray_cast(T_world_cam: np.ndarray, boxes=BOXES, floor: bool = True) -> np.ndarray:
    """Metric z depth [H, W] of the floor and the boxes seen from T_world_cam (0 = nothing)."""
    v, u = np.mgrid[0:H, 0:W]
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1).reshape(-1, 3)
    o = T_world_cam[:3, 3]
    d = d_cam @ T_world_cam[:3, :3].T  # world direction with unit camera z, so the ray parameter is depth z
    t = np.full(len(d), np.inf)
    if floor:
        with np.errstate(divide="ignore", invalid="ignore"):
            tf = -o[2] / d[:, 2]
        t = np.where((tf > 0) & np.isfinite(tf), tf, t)
    for lo, hi in boxes:
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (np.array(lo) - o) / d, (np.array(hi) - o) / d
        tn = np.nanmax(np.minimum(t1, t2), 1)
        tx = np.nanmin(np.maximum(t1, t2), 1)
        hit = (tn <= tx) & (tn > 0)
        t = np.where(hit & (tn < t), tn, t)
    t[t > 4.0] = 0.0
    return np.where(np.isfinite(t), t, 0.0).reshape(H, W)


def camera(eye, target=(1.3, 0.2, 0.2)) -> np.ndarray:
    return look_at(np.array(eye, float), np.array(target, float))


def se3(rotvec_deg, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix()
    T[:3, 3] = t
    return T


def pose_error(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(camera position error m, rotation error deg)."""
    dR = T_a[:3, :3].T @ T_b[:3, :3]
    return float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3])), float(np.degrees(Rotation.from_matrix(dR).magnitude()))


def mapped(views, boxes=BOXES, floor=True) -> tuple[DriftTracker, PointMap]:
    tr = DriftTracker()
    pm = PointMap(tr.cfg.map)
    for T in views:
        pm.add(transform_points(T, tr.keyframe_points(ray_cast(T, boxes, floor), K)))
    return tr, pm


@pytest.mark.parametrize("offset", [se3((0, 0, 4.0), (0.05, -0.04, 0.0)), se3((1.0, -1.0, -3.0), (-0.06, 0.03, 0.02)),
                                    se3((0, 0, -6.0), (0.0, 0.10, 0.0))])
def test_recovers_known_offset(offset):
    views = [camera((-0.3, -0.6, 1.0)), camera((-0.4, 0.6, 1.1)), camera((0.0, 0.0, 1.2))]
    tr, pm = mapped(views)
    T_true = camera((-0.2, 0.1, 1.05))
    pts = tr.keyframe_points(ray_cast(T_true), K)
    T_guess = offset @ T_true
    res = icp(pts, T_guess, pm)
    assert res.accepted, res.reason
    e_t, e_r = pose_error(res.T_corr @ T_guess, T_true)
    e0_t, e0_r = pose_error(T_guess, T_true)
    assert e0_t > 0.03 or e0_r > 3.0  # the offset was real
    assert e_t < 0.01 and e_r < 0.5, (e_t, e_r, res)


def test_correct_pose_is_not_made_worse():
    views = [camera((-0.3, -0.6, 1.0)), camera((-0.4, 0.6, 1.1))]
    tr, pm = mapped(views)
    T_true = camera((-0.2, 0.1, 1.05))
    res = icp(tr.keyframe_points(ray_cast(T_true), K), T_true, pm)
    e_t, e_r = pose_error(res.T_corr @ T_true, T_true)
    assert e_t < 0.003 and e_r < 0.2, (e_t, e_r, res.reason)


def test_refuses_floor_only_slide():
    views = [camera((-0.3, -0.6, 1.0)), camera((-0.4, 0.6, 1.1))]
    tr, pm = mapped(views, boxes=[])
    T_true = camera((-0.2, 0.1, 1.05))
    slide = se3((0, 0, 5.0), (0.08, -0.05, 0.0))  # in the floor's plane: nothing observes it
    res = icp(tr.keyframe_points(ray_cast(T_true, boxes=[]), K), slide @ T_true, pm)
    assert not res.accepted and "degenerate" in res.reason, res
    np.testing.assert_array_equal(res.T_corr, np.eye(4))


def test_refuses_without_overlap_and_too_large():
    views = [camera((-0.3, -0.6, 1.0))]
    tr, pm = mapped(views)
    T_true = camera((-0.2, 0.1, 1.05))
    pts = tr.keyframe_points(ray_cast(T_true), K)
    far = icp(pts, se3((0, 0, 0), (5.0, 5.0, 0.0)) @ T_true, pm)
    assert not far.accepted and "correspondences" in far.reason
    # a correction past the bound is refused even if ICP would find it
    small = icp(pts, se3((0, 0, 4.0), (0.05, 0.0, 0.0)) @ T_true, pm, IcpConfig(max_correction_m=0.01))
    assert not small.accepted and "exceeds" in small.reason


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_tracker_removes_drift_along_a_path(gain):
    """Odometry that drifts by a growing yaw and slip: the tracked poses stay near the truth.

    Exact geometry: the full correction (gain 1) holds the pose within 2 cm. The default gain 0.5
    (which averages ICP noise on real depth) lags a drift this fast (0.8 deg and 1.3 cm a keyframe)
    but still removes most of it.
    """
    tr = DriftTracker(TrackerConfig(gain=gain))
    errs_odom, errs_map = [], []
    for k in range(12):
        a = np.radians(-60 + 10 * k)
        T_true = camera((1.3 - 1.6 * np.cos(a), 0.2 - 1.6 * np.sin(a), 1.05))
        drift = se3((0, 0, 0.8 * k), (0.01 * k, -0.008 * k, 0.0))  # T_odom_world
        T_odom_cam = drift @ T_true
        T_map_cam, _ = tr.track(ray_cast(T_true), K, T_odom_cam)
        errs_odom.append(pose_error(T_odom_cam, T_true)[0])
        errs_map.append(pose_error(T_map_cam, T_true)[0])
    assert errs_odom[-1] > 0.15
    assert tr.accepted >= 8
    if gain == 1.0:
        assert max(errs_map) < 0.02, np.round(errs_map, 3)
        # T_map_odom undoes the drift: T_map_odom @ T_odom_world ~ identity
        e_t, e_r = pose_error(tr.T_map_odom @ drift, np.eye(4))
        assert e_t < 0.03 and e_r < 0.5
    else:
        assert errs_map[-1] < 0.5 * errs_odom[-1], (np.round(errs_map, 3), np.round(errs_odom, 3))

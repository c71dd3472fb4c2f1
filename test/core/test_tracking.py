"""Depth-to-map ICP (m3_ros.tracking) on ray-cast geometry: a floor with boxes on it."""
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from m3_ros.geometry import transform_points
from m3_ros.tracking import DriftTracker, IcpConfig, OdometryPrior, PointMap, TrackerConfig, icp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boxes_scene import BOXES, K, camera, ray_cast  # noqa: E402



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


def test_a_strong_prior_keeps_the_guess_and_a_weak_one_lets_geometry_decide():
    views = [camera((-0.3, -0.6, 1.0)), camera((-0.4, 0.6, 1.1)), camera((0.0, 0.0, 1.2))]
    tr, pm = mapped(views)
    T_true = camera((-0.2, 0.1, 1.05))
    pts = tr.keyframe_points(ray_cast(T_true), K)
    T_guess = se3((0, 0, 3.0), (0.04, -0.03, 0.0)) @ T_true
    weak = icp(pts, T_guess, pm, prior_info=OdometryPrior().information(0.3))
    strong = icp(pts, T_guess, pm, prior_info=OdometryPrior(weight=1e6).information(0.3))
    assert pose_error(weak.T_corr @ T_guess, T_true)[0] < 0.01
    assert strong.translation_m < 0.005 and strong.rotation_deg < 0.2, (strong.translation_m, strong.rotation_deg)


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


@pytest.mark.parametrize("gain,prior", [(1.0, None), (0.5, None), (0.5, OdometryPrior())])
def test_tracker_removes_drift_along_a_path(gain, prior):
    """Odometry that drifts by a growing yaw and slip: the tracked poses stay near the truth.

    Exact geometry: every keyframe lands within 2 cm of the truth, whatever the gain: the keyframe
    is placed at ICP's estimate. The default gain 0.5 (which averages ICP noise on real depth) only
    smooths the correction the next ICP starts from; the published T_map_odom agrees with the newest
    keyframe, so it undoes the drift at either gain (the smoothed one lags a drift this fast, 0.8 deg
    and 1.3 cm a keyframe, and answers moved with that lag). With an odometry prior, exact geometry
    outweighs it.
    """
    tr = DriftTracker(TrackerConfig(gain=gain, prior=prior))
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
    assert max(errs_map) < 0.02, np.round(errs_map, 3)
    # T_map_odom undoes the drift (T_map_odom @ T_odom_world ~ identity)
    e_t, e_r = pose_error(tr.T_map_odom @ drift, np.eye(4))
    assert e_t < 0.03 and e_r < 0.5, (e_t, e_r)


def test_reference_from_saved_views_keeps_tracking():
    """A loaded memory's keyframes become the reference: the next keyframe aligns with them."""
    views = [camera((-0.3, -0.6, 1.0)), camera((-0.4, 0.6, 1.1))]
    tr = DriftTracker(TrackerConfig(gain=1.0))
    tr.set_reference([(ray_cast(T), K, T) for T in views])
    assert len(tr.map) > 1000
    T_true = camera((-0.2, 0.1, 1.05))
    T_map_cam, res = tr.track(ray_cast(T_true), K, se3((0, 0, 3.0), (0.04, -0.03, 0.0)) @ T_true)
    assert res.accepted, res.reason
    e_t, e_r = pose_error(T_map_cam, T_true)
    assert e_t < 0.01 and e_r < 0.5



def test_pose_readers_do_not_wait_for_a_running_icp(while_held):
    """T_map_odom (published on /tf at every status) and the diagnostics counters are read while ICP
    runs (it holds the tracker's lock, up to a second on a loaded machine)."""
    tr = DriftTracker()
    T0 = tr.T_map_odom
    answered, got = while_held(tr._lock, lambda: (tr.T_map_odom, tr.stats()))  # as track() holds it
    assert answered, "T_map_odom / stats() waited for ICP"
    assert np.array_equal(got[0], T0) and got[1]["accepted"] == 0

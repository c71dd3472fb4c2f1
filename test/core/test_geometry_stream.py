"""Conventions (poses, projection, optical frame) and stream handling (sync, keyframes)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from m3_ros.geometry import (backproject, intrinsics_matrix, invert, look_at, matrix_to_pose, pose_to_matrix,
                             project, transform_points)
from m3_ros.stream import ApproximateSync, KeyframeSelector, KeyframeSelectorConfig


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=3), st.integers(0, 10_000))
def test_pose_round_trip_and_inverse(t, seed):
    q = Rotation.random(random_state=seed).as_quat()  # x, y, z, w
    T = pose_to_matrix(t, q)
    t2, q2 = matrix_to_pose(T)
    assert np.allclose(t2, t) and (np.allclose(q2, q) or np.allclose(q2, -q))
    assert np.allclose(invert(T) @ T, np.eye(4), atol=1e-12)


def test_pose_rejects_nan_and_zero_quaternion():
    with pytest.raises(ValueError, match="non-finite"):
        pose_to_matrix([0, np.nan, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="zero"):
        pose_to_matrix([0, 0, 0], [0, 0, 0, 0])


def test_quaternion_order_is_ros_xyzw():
    T = pose_to_matrix([0, 0, 0], [0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])  # 90 deg about z
    assert np.allclose(T[:3, :3] @ [1, 0, 0], [0, 1, 0])


def test_backproject_project_round_trip_and_optical_axes():
    K = intrinsics_matrix(100, 100, 31.5, 23.5)
    T = look_at([2.0, 0.0, 1.0], [0.0, 0.0, 0.5])
    depth = np.full((48, 64), 1.7, np.float32)
    depth[0, 0] = 0.0
    depth[1, 1] = np.nan
    pts, pix = backproject(depth, K, T)
    assert len(pts) == 48 * 64 - 2
    uv, z = project(pts, K, T)
    assert np.allclose(uv, pix[:, ::-1], atol=1e-9) and np.allclose(z, 1.7)
    # optical frame: z looks at the target, y points down in the world
    assert np.allclose(T[:3, 2], np.array([-2.0, 0, -0.5]) / np.linalg.norm([-2.0, 0, -0.5]))
    assert T[2, 1] < 0
    assert np.allclose(transform_points(invert(T), T[:3, 3][None]), 0, atol=1e-12)


def test_approximate_sync_matches_within_slop_only():
    s = ApproximateSync(["color", "depth", "odom"], slop=0.02)
    assert s.add("color", 1.00, "c1") is None
    assert s.add("depth", 1.01, "d1") is None
    assert s.add("odom", 1.05, "o_far") is None        # outside the slop
    m = s.add("odom", 0.995, "o1")
    assert m == {"color": "c1", "depth": "d1", "odom": "o1"}
    assert s.add("odom", 1.0, "o2") is None             # the same colour frame is not emitted twice
    with pytest.raises(ValueError, match="unknown stream"):
        s.add("imu", 1.0, None)
    with pytest.raises(ValueError, match="non-finite"):
        s.add("color", float("nan"), None)


def test_keyframe_selector_motion_turn_and_time():
    sel = KeyframeSelector(KeyframeSelectorConfig(min_translation=0.1, min_rotation_deg=10, min_interval=0.3,
                                                  max_interval=5.0))
    T = np.eye(4)
    assert sel.consider(0.0, T)                 # the first frame
    T1 = T.copy(); T1[0, 3] = 0.05
    assert not sel.consider(1.0, T1)            # too little motion
    T2 = T.copy(); T2[0, 3] = 0.2
    assert not sel.consider(0.1, T2)            # too soon
    assert sel.consider(1.2, T2)                # moved enough
    T3 = T2.copy(); T3[:3, :3] = Rotation.from_euler("z", 15, degrees=True).as_matrix()
    assert sel.consider(1.6, T3)                # turned enough
    assert sel.consider(7.0, T3)                # nothing moved, but 5 s passed
    with pytest.raises(ValueError, match="non-finite"):
        sel.consider(8.0, np.full((4, 4), np.nan))

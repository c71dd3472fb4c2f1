"""TransformBuffer: chains, Slerp interpolation at a stamp, clear errors."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from m3_ros.tf_buffer import ConnectivityError, ExtrapolationError, TransformBuffer


def T_of(xyz, rotvec) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = xyz
    return T


def test_interpolates_position_linearly_and_rotation_by_slerp():
    buf = TransformBuffer()
    buf.set_transform("odom", "base_link", 1.0, T_of([0, 0, 0], [0, 0, 0]))
    buf.set_transform("odom", "base_link", 2.0, T_of([1.0, 2.0, 0], [0, 0, np.pi / 2]))
    T = buf.lookup("odom", "base_link", 1.25)
    np.testing.assert_allclose(T[:3, 3], [0.25, 0.5, 0.0], atol=1e-12)
    yaw = Rotation.from_matrix(T[:3, :3]).as_euler("xyz")[2]
    assert yaw == pytest.approx(np.pi / 8, abs=1e-9)
    # an exact sample comes back unchanged
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 2.0), T_of([1.0, 2.0, 0], [0, 0, np.pi / 2]),
                               atol=1e-12)


def test_chain_with_a_static_edge_and_the_inverse_direction():
    buf = TransformBuffer()
    T_base_cam = T_of([0.2, 0.0, 0.3], [-np.pi / 2, 0, -np.pi / 2])
    buf.set_transform("base_link", "camera_optical", 0.0, T_base_cam, static=True)
    buf.set_transform("odom", "base_link", 5.0, T_of([1, 0, 0], [0, 0, 0.1]))
    buf.set_transform("odom", "base_link", 6.0, T_of([2, 0, 0], [0, 0, 0.3]))
    T_odom_base = buf.lookup("odom", "base_link", 5.5)
    T_odom_cam = buf.lookup("odom", "camera_optical", 5.5)  # the static edge holds at any stamp
    np.testing.assert_allclose(T_odom_cam, T_odom_base @ T_base_cam, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("camera_optical", "odom", 5.5), np.linalg.inv(T_odom_cam), atol=1e-12)
    # siblings meet at their common parent
    buf.set_transform("base_link", "arm_base", 0.0, T_of([0, 0.1, 0.2], [0, 0, 0]), static=True)
    T_cam_arm = buf.lookup("camera_optical", "arm_base", 5.5)
    np.testing.assert_allclose(T_cam_arm, np.linalg.inv(T_base_cam) @ T_of([0, 0.1, 0.2], [0, 0, 0]), atol=1e-12)


def test_extrapolation_and_missing_frames_are_clear_errors():
    buf = TransformBuffer()
    buf.set_transform("odom", "base_link", 1.0, np.eye(4))
    buf.set_transform("odom", "base_link", 2.0, np.eye(4))
    with pytest.raises(ExtrapolationError, match="future") as e:
        buf.lookup("odom", "base_link", 2.5)
    assert e.value.future
    with pytest.raises(ExtrapolationError, match="past") as e:
        buf.lookup("odom", "base_link", 0.5)
    assert not e.value.future
    with pytest.raises(ConnectivityError, match="no transform chain between 'odom' and 'camera'"):
        buf.lookup("odom", "camera", 1.5)
    with pytest.raises(ValueError, match="loop"):
        buf.set_transform("base_link", "odom", 1.0, np.eye(4))
    with pytest.raises(ValueError, match="finite"):
        buf.set_transform("odom", "base_link", 3.0, np.full((4, 4), np.nan))


def test_cache_keeps_only_recent_samples_and_out_of_order_inserts():
    buf = TransformBuffer(cache_time=1.0)
    for t in [3.0, 1.0, 2.0, 2.5]:
        buf.set_transform("odom", "base_link", t, T_of([t, 0, 0], [0, 0, 0]))
    assert buf.latest_stamp("base_link") == 3.0
    assert buf.lookup("odom", "base_link", None)[0, 3] == pytest.approx(3.0)  # None: the newest sample
    assert buf.lookup("odom", "base_link", 2.25)[0, 3] == pytest.approx(2.25)
    with pytest.raises(ExtrapolationError):
        buf.lookup("odom", "base_link", 1.5)  # 1.0 fell out of the 1 s cache

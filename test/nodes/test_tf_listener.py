"""TFListener's hole check: a pose is never interpolated across missing odometry / TF.

On a loaded machine the memory node once lost ~4 s of /tf and placed keyframes 10-30 cm off by
interpolating across the hole; ``check_gap`` is what now refuses such a stamp.
"""
import threading

import numpy as np
import pytest
import rclpy

from m3_ros.nodes.common import TFListener
from m3_ros.tf_buffer import GapError


@pytest.fixture()
def listener():
    rclpy.init()
    node = rclpy.create_node("tf_listener_test")
    try:
        yield TFListener(node, cache_time=10.0)
    finally:
        node.destroy_node()
        rclpy.shutdown()


def _pose(x: float) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = x
    return T


def test_a_stamp_inside_a_hole_is_refused_and_dense_samples_pass(listener):
    for t in (0.0, 0.1, 0.2, 1.5, 1.6):  # a 1.3 s hole between 0.2 and 1.5
        listener.set_transform("odom", "base_link", t, _pose(t))
    listener.check_gap("base_link", 0.15, 0.5)  # between samples 0.1 s apart
    listener.check_gap("base_link", 1.5, 0.5)  # on a sample
    with pytest.raises(GapError, match=r"jump from 0.200 to 1.500"):
        listener.check_gap("base_link", 1.0, 0.5)
    listener.check_gap("base_link", 1.0, 2.0)  # a wider allowance takes it
    # interpolation itself still answers there: the check is what refuses it
    assert listener.lookup("odom", "base_link", 1.0)[0, 3] == pytest.approx(1.0)


def test_static_edges_and_unknown_frames_have_no_holes(listener):
    listener.set_transform("base_link", "camera", 0.0, _pose(0.2), static=True)
    listener.check_gap("camera", 5.0, 0.1)
    listener.check_gap("nowhere", 5.0, 0.1)


def test_samples_out_of_order_fill_the_hole(listener):
    for t in (0.0, 1.0):
        listener.set_transform("odom", "base_link", t, _pose(t))
    with pytest.raises(GapError):
        listener.check_gap("base_link", 0.5, 0.5)
    listener.set_transform("odom", "base_link", 0.45, _pose(0.45))  # a late sample arrives
    listener.check_gap("base_link", 0.5, 0.6)
    listener.check_gap("base_link", 0.3, 0.5)


def test_feeding_and_looking_up_from_two_threads(listener):
    """The node feeds the buffer from its pose group and reads it from its sensors group."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def feed():
        t = 0.0
        while not stop.is_set():
            listener.set_transform("odom", "base_link", t, _pose(t))
            t += 0.01

    th = threading.Thread(target=feed)
    listener.set_transform("odom", "base_link", -1.0, _pose(-1.0))
    th.start()
    try:
        for _ in range(3000):
            try:
                T = listener.lookup("odom", "base_link", None)
                assert np.isfinite(T).all()
            except BaseException as e:  # noqa: BLE001 - any failure is the finding
                errors.append(e)
                break
    finally:
        stop.set()
        th.join()
    assert not errors, errors

"""launch_testing test of launch/sim_demo.launch.py, for `colcon test` on a machine with ROS 2.

launch_testing cannot be installed here, so this file reports itself as skipped; the
same behaviour (the simulator and the M3 nodes start from config/sim.yaml and
config/m3.yaml, the memory fills up) is proven here by test/nodes/test_loop.py, which
starts the same entry points with the same parameter files as processes.
"""
import os
import unittest

import pytest

launch_testing = pytest.importorskip(
    "launch_testing", reason="launch_testing is not installable from PyPI; test/nodes/test_loop.py covers this here")
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402

from m3_ros.msg import MemoryStatus  # noqa: E402


@pytest.mark.launch_test
def generate_test_description():
    path = os.path.join(get_package_share_directory("m3_ros"), "launch", "sim_demo.launch.py")
    return LaunchDescription([IncludeLaunchDescription(PythonLaunchDescriptionSource(path)),
                              launch_testing.actions.ReadyToTest()])


class TestMemoryFills(unittest.TestCase):
    def test_memory_gets_keyframes(self):
        rclpy.init()
        node = rclpy.create_node("m3_sim_launch_test")
        got = []
        node.create_subscription(MemoryStatus, "memory/status", got.append, 10)
        try:
            end = node.get_clock().now().nanoseconds + int(120e9)
            while node.get_clock().now().nanoseconds < end and not any(m.keyframes > 0 and m.gaussians > 0 for m in got):
                rclpy.spin_once(node, timeout_sec=0.5)
            self.assertTrue(any(m.keyframes > 0 and m.gaussians > 0 for m in got))
        finally:
            node.destroy_node()
            rclpy.shutdown()

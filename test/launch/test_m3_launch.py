"""launch_testing test of launch/m3.launch.py, for `colcon test` on a machine with ROS 2.

launch_testing cannot be installed here, so this file reports itself as skipped; the
same behaviour (the nodes start from config/m3.yaml and `ground` answers across
processes) is proven here by test/nodes/test_dds.py, which starts the same entry
points with the same parameter file as processes.
"""
import os
import unittest

import pytest

launch_testing = pytest.importorskip(
    "launch_testing", reason="launch_testing is not installable from PyPI; test/nodes/test_dds.py covers this here")
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402

from m3_ros.srv import GroundQuery  # noqa: E402


@pytest.mark.launch_test
def generate_test_description():
    path = os.path.join(get_package_share_directory("m3_ros"), "launch", "m3.launch.py")
    return LaunchDescription([IncludeLaunchDescription(PythonLaunchDescriptionSource(path)),
                              launch_testing.actions.ReadyToTest()])


class TestGroundAnswers(unittest.TestCase):
    def test_ground_rejects_empty_query(self):
        rclpy.init()
        node = rclpy.create_node("m3_launch_test")
        try:
            cli = node.create_client(GroundQuery, "ground")
            self.assertTrue(cli.wait_for_service(timeout_sec=30.0))
            fut = cli.call_async(GroundQuery.Request(query=""))
            rclpy.spin_until_future_complete(node, fut, timeout_sec=30.0)
            self.assertFalse(fut.result().success)
            self.assertIn("empty", fut.result().message)
        finally:
            node.destroy_node()
            rclpy.shutdown()

"""The embedded pybullet scene plus the M3 nodes (what scripts/demo.py starts as processes).

    ros2 launch m3_ros sim_demo.launch.py
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("m3_ros")
    m3_params = os.path.join(share, "config", "m3.yaml")
    sim_params = os.path.join(share, "config", "sim.yaml")
    return LaunchDescription([
        Node(package="m3_ros", executable="sim_node", name="sim_node",
             parameters=[sim_params], output="screen"),
        Node(package="m3_ros", executable="memory_node", name="memory_node",
             parameters=[m3_params, {"use_sim_time": True}], output="screen"),
        Node(package="m3_ros", executable="grasp_planner_node", name="grasp_planner_node",
             parameters=[m3_params, {"use_sim_time": True}], output="screen"),
    ])

"""The embedded pybullet scene plus the M3 nodes (what scripts/demo.py starts as processes).

    ros2 launch m3_ros sim_demo.launch.py rviz:=true

sim_node publishes /clock, /tf and /tf_static like a robot; the other nodes run on sim time.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("m3_ros")
    m3_params = os.path.join(share, "config", "m3.yaml")
    sim_params = os.path.join(share, "config", "sim.yaml")
    rviz_config = os.path.join(share, "config", "m3.rviz")
    return LaunchDescription([
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz with config/m3.rviz"),
        Node(package="m3_ros", executable="sim_node", name="sim_node",
             parameters=[sim_params], output="screen"),
        Node(package="m3_ros", executable="memory_node", name="memory_node",
             parameters=[m3_params, {"use_sim_time": True}], output="screen"),
        Node(package="m3_ros", executable="grasp_planner_node", name="grasp_planner_node",
             parameters=[m3_params, {"use_sim_time": True}], output="screen"),
        Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz_config],
             parameters=[{"use_sim_time": True}], condition=IfCondition(LaunchConfiguration("rviz"))),
    ])

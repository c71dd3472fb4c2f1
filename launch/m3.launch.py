"""Memory node (with the `ground` service) and the grasp planner, for a real robot.

    ros2 launch m3_ros m3.launch.py odom_topic:=/odom use_sim_time:=false

Topic remaps map the package's relative names onto the robot's drivers. Camera poses come
from /tf (odom -> base_link) and /tf_static (base_link -> camera optical frame) as the
robot publishes them; odometry and the camera_mount parameter are fallbacks.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    params = os.path.join(get_package_share_directory("m3_ros"), "config", "m3.yaml")
    color = LaunchConfiguration("color_topic")
    depth = LaunchConfiguration("depth_topic")
    info = LaunchConfiguration("camera_info_topic")
    odom = LaunchConfiguration("odom_topic")
    sim_time = {"use_sim_time": LaunchConfiguration("use_sim_time")}
    remaps = [
        ("camera/color/image_raw", color),
        ("camera/depth/image_raw", depth),
        ("camera/color/camera_info", info),
        ("odom", odom),
    ]
    return LaunchDescription([
        DeclareLaunchArgument("color_topic", default_value="camera/color/image_raw"),
        DeclareLaunchArgument("depth_topic", default_value="camera/depth/image_raw"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera/color/camera_info"),
        DeclareLaunchArgument("odom_topic", default_value="odom"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="true when a simulator or a bag publishes /clock"),
        Node(package="m3_ros", executable="memory_node", name="memory_node",
             parameters=[params, sim_time], remappings=remaps, output="screen"),
        Node(package="m3_ros", executable="grasp_planner_node", name="grasp_planner_node",
             parameters=[params, sim_time], remappings=[("odom", odom)], output="screen"),
    ])

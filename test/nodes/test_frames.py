"""A memory_node process checks frame ids and never takes a pose from outside the samples.

Odometry with the wrong child frame and a depth image in another frame are warned about by
name; a colour frame stamped after the last odometry (and before the first) is dropped
with an extrapolation reason once newer frames show that its pose will not come, and one
stamped inside a hole in the odometry wider than ``tf_max_gap_s`` is dropped with a gap reason.
"""
import os

import numpy as np
import rclpy
from nav_msgs.msg import Odometry
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from m3_ros.nodes import convert
from m3_ros.procs import CONFIG_DIR, NodeProcess, wait_for

QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
CAM = "camera_color_optical_frame"


def test_frame_ids_checked_and_no_extrapolation(tmp_path):
    params = {"reliable_sensors": True, "camera_mount": "[0.2, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5]", "pose_wait": 0.5}
    with NodeProcess("memory_node", dict(os.environ), tmp_path, params_file=CONFIG_DIR / "m3.yaml",
                     params=params) as mem:
        rclpy.init()
        node = rclpy.create_node("frames_sender")
        try:
            info_pub = node.create_publisher(CameraInfo, "camera/color/camera_info", QOS)
            color_pub = node.create_publisher(Image, "camera/color/image_raw", QOS)
            depth_pub = node.create_publisher(Image, "camera/depth/image_raw", QOS)
            odom_pub = node.create_publisher(Odometry, "odom", QOS)
            wait_for(lambda: all(p.get_subscription_count() > 0 for p in (info_pub, color_pub, depth_pub, odom_pub)),
                     60, what="memory_node subscriptions")
            info_pub.publish(CameraInfo(width=32, height=24, k=[30.0, 0, 16, 0, 30.0, 12, 0, 0, 1]))

            def odom(t, child="base_link"):
                od = Odometry(header=Header(stamp=convert.sec_to_stamp(t), frame_id="odom"), child_frame_id=child)
                od.pose.pose.orientation.w = 1.0
                odom_pub.publish(od)

            def frame(t, depth_frame=CAM):
                c = convert.array_to_image(np.zeros((24, 32, 3), np.uint8), "rgb8",
                                           Header(stamp=convert.sec_to_stamp(t), frame_id=CAM))
                d = convert.array_to_image(np.ones((24, 32), np.float32), "32FC1",
                                           Header(stamp=convert.sec_to_stamp(t), frame_id=depth_frame))
                color_pub.publish(c)
                depth_pub.publish(d)

            odom(0.5, child="base")  # not base_frame
            wait_for(lambda: "odometry is 'odom' -> 'base' but odom_frame/base_frame are 'odom'/'base_link'"
                     in mem.log_text(), 30, what="the child-frame warning")
            odom(1.0)
            odom(2.0)
            frame(0.9)   # before the first odom -> base_link sample
            frame(1.5, depth_frame="camera_depth_optical_frame")
            wait_for(lambda: "depth image frame_id 'camera_depth_optical_frame' is not the camera frame" in mem.log_text(),
                     30, what="the depth-frame warning")
            # 1.5 lies between samples 1 s apart (> tf_max_gap_s, 0.5 in m3.yaml): its pose would be made up
            wait_for(lambda: "no camera pose at the image stamp (gap)" in mem.log_text(), 30, what="a gap drop")
            assert "jump from 1.000 to 2.000" in mem.log_text()
            frame(3.0)   # after the last one ...
            frame(4.0)   # ... and newer frames show that it will not come
            wait_for(lambda: "extrapolation into the future" in mem.log_text(), 30, what="a future-extrapolation drop")
            wait_for(lambda: "extrapolation into the past" in mem.log_text(), 30, what="a past-extrapolation drop")
        finally:
            node.destroy_node()
            rclpy.shutdown()
        assert mem.alive(), mem.log_text()

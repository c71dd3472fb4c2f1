"""Malformed sensor input reaches a memory_node process: each is dropped with a clear reason, the node lives on."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rclpy
from nav_msgs.msg import Odometry
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from m3_ros.nodes import convert
from m3_ros.procs import CONFIG_DIR, NodeProcess, wait_for

HERE = Path(__file__).resolve().parent
QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)


def frame(node_pubs, t, color, depth, odom_q=(0.0, 0.0, 0.0, 1.0)):
    color_pub, depth_pub, odom_pub = node_pubs
    stamp = convert.sec_to_stamp(t)
    color.header = Header(stamp=stamp, frame_id="camera_color_optical_frame")
    depth.header = Header(stamp=stamp, frame_id="camera_color_optical_frame")
    od = Odometry(header=Header(stamp=stamp, frame_id="odom"), child_frame_id="base_link")
    od.pose.pose.orientation.x, od.pose.pose.orientation.y, od.pose.pose.orientation.z, od.pose.pose.orientation.w = odom_q
    color_pub.publish(color)
    depth_pub.publish(depth)
    odom_pub.publish(od)


def test_malformed_input_is_dropped_with_reasons(tmp_path):
    params = {"reliable_sensors": True, "camera_mount": "[0.2, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5]"}
    with NodeProcess("memory_node", dict(os.environ), tmp_path, params_file=CONFIG_DIR / "m3.yaml",
                     params=params) as mem:
        rclpy.init()
        node = rclpy.create_node("bad_input_sender")
        try:
            info_pub = node.create_publisher(CameraInfo, "camera/color/camera_info", QOS)
            pubs = (node.create_publisher(Image, "camera/color/image_raw", QOS),
                    node.create_publisher(Image, "camera/depth/image_raw", QOS),
                    node.create_publisher(Odometry, "odom", QOS))
            wait_for(lambda: all(p.get_subscription_count() > 0 for p in (info_pub, *pubs)), 30,
                     what="memory_node subscriptions")
            rgb = np.zeros((24, 32, 3), np.uint8)
            depth = np.ones((24, 32), np.float32)
            info_pub.publish(CameraInfo(width=32, height=24))  # K all zeros
            frame(pubs, 1.0, convert.array_to_image(rgb, "rgb8"), convert.array_to_image(depth, "32FC1"))
            info_pub.publish(CameraInfo(width=32, height=24, k=[30.0, 0, 16, 0, 30.0, 12, 0, 0, 1]))
            yuv = Image(height=24, width=32, encoding="yuv422", step=64, data=bytes(24 * 64))
            wait_for(lambda: "K is missing" in mem.log_text(), 30, what="camera_info complaint")
            frame(pubs, 2.0, yuv, convert.array_to_image(depth, "32FC1"))
            frame(pubs, 3.0, convert.array_to_image(rgb, "rgb8"), convert.array_to_image(np.ones((10, 10), np.float32), "32FC1"))
            frame(pubs, 4.0, convert.array_to_image(rgb, "rgb8"), convert.array_to_image(depth, "32FC1"),
                  odom_q=(float("nan"), 0.0, 0.0, 1.0))
            for reason in ["unsupported image encoding 'yuv422'", "differ in size", "non-finite"]:
                wait_for(lambda r=reason: r in mem.log_text(), 30, what=f"log line '{reason}'")
        finally:
            node.destroy_node()
            rclpy.shutdown()
        assert mem.alive(), mem.log_text()
        out = subprocess.run([sys.executable, str(HERE / "ground_client.py"), "--query", "duck"],
                             capture_output=True, text=True, timeout=90)
        res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
        assert res["success"] is False and res["message"], res

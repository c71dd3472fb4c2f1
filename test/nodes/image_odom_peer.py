"""Publisher or subscriber process for the Image + Odometry round trip (RELIABLE QoS, counted)."""
import argparse
import json
import sys
import time

import numpy as np
import rclpy
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from m3_ros.nodes import convert

QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def pattern(i: int, h: int = 120, w: int = 160) -> np.ndarray:
    """A frame whose content identifies its index."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def publish(n: int, timeout: float) -> int:
    node = Node("image_odom_pub")
    img_pub = node.create_publisher(Image, "camera/color/image_raw", QOS)
    odo_pub = node.create_publisher(Odometry, "odom", QOS)
    t0 = time.monotonic()
    # wait for discovery of the subscriber instead of a fixed sleep
    while img_pub.get_subscription_count() == 0 or odo_pub.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.05)
        if time.monotonic() - t0 > timeout:
            print(json.dumps({"error": "no subscriber"}))
            return 2
    for i in range(n):
        header = Header(stamp=convert.sec_to_stamp(100.0 + 0.1 * i), frame_id="camera_color_optical_frame")
        img_pub.publish(convert.array_to_image(pattern(i), "rgb8", header))
        od = Odometry()
        od.header = Header(stamp=header.stamp, frame_id="odom")
        od.child_frame_id = "base_link"
        od.pose.pose.position.x = 0.1 * i
        od.pose.pose.orientation.w = 1.0
        odo_pub.publish(od)
        time.sleep(0.02)
    # linger so RELIABLE retransmissions can finish before the process ends
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps({"published": n}))
    return 0


def subscribe(n: int, timeout: float) -> int:
    node = Node("image_odom_sub")
    got = {"images": 0, "odom": 0, "bad": 0, "stamps": []}

    def on_img(msg: Image) -> None:
        i = round((convert.stamp_to_sec(msg.header.stamp) - 100.0) / 0.1)
        ok = np.array_equal(convert.rgb_from_image(msg), pattern(i))
        got["images"] += 1
        got["bad"] += 0 if ok else 1
        got["stamps"].append(i)

    def on_odom(msg: Odometry) -> None:
        i = round((convert.stamp_to_sec(msg.header.stamp) - 100.0) / 0.1)
        got["odom"] += 1
        got["bad"] += 0 if abs(msg.pose.pose.position.x - 0.1 * i) < 1e-9 and msg.child_frame_id == "base_link" else 1

    node.create_subscription(Image, "camera/color/image_raw", on_img, QOS)
    node.create_subscription(Odometry, "odom", on_odom, QOS)
    t0 = time.monotonic()
    while (got["images"] < n or got["odom"] < n) and time.monotonic() - t0 < timeout:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps(got))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["pub", "sub"])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    rclpy.init()
    try:
        return publish(a.n, a.timeout) if a.mode == "pub" else subscribe(a.n, a.timeout)
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())

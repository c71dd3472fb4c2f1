"""A memory_node process corrects drifting odometry: map -> odom on /tf (REP-105), answers in map.

Frames of boxes on a floor (ray-cast depth) come with odometry that drifts by a growing yaw and
slip; the node's map -> odom must take most of the drift out, and
the ground service must accept map (the memory's frame), odom and base_link.
"""
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from m3_ros.geometry import invert, matrix_to_pose, transform_points
from m3_ros.nodes import convert
from m3_ros.nodes.common import tf_qos
from m3_ros.procs import CONFIG_DIR, NodeProcess, wait_for
from m3_ros.srv import GroundQuery

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from boxes_scene import H, K, W, camera, ray_cast  # noqa: E402

QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
CAM = "camera_color_optical_frame"


def yaw_slip(k: int) -> np.ndarray:
    """T_odom_world after k steps: 0.8 deg of yaw and 1.3 cm of slip a step."""
    a = np.radians(0.8 * k)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    T[:3, 3] = [0.01 * k, -0.008 * k, 0.0]
    return T


def test_map_odom_takes_out_the_drift_and_answers_in_map(tmp_path):
    # the camera is base_link itself (identity mount), so odometry carries the optical pose
    params = {"reliable_sensors": True, "camera_mount": "[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]", "pose_wait": 0.5,
              "models": ["minilm_labels"], "channels": [16], "thetas": [1.0], "status_period": 0.2,
              "training": False, "publish_relevance": False}
    with NodeProcess("memory_node", dict(os.environ), tmp_path, params_file=CONFIG_DIR / "m3.yaml",
                     params=params) as mem:
        rclpy.init()
        node = rclpy.create_node("drift_sender")
        executor = None
        got: list = []
        lock = threading.Lock()

        def on_tf(msg: TFMessage) -> None:
            with lock:
                got.extend(t for t in msg.transforms if t.header.frame_id == "map" and t.child_frame_id == "odom")

        try:
            node.create_subscription(TFMessage, "/tf", on_tf, tf_qos())
            diag: list = []
            node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diag.append(m), 10)
            info_pub = node.create_publisher(CameraInfo, "camera/color/camera_info", QOS)
            color_pub = node.create_publisher(Image, "camera/color/image_raw", QOS)
            depth_pub = node.create_publisher(Image, "camera/depth/image_raw", QOS)
            odom_pub = node.create_publisher(Odometry, "odom", QOS)
            ground = node.create_client(GroundQuery, "ground")
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            threading.Thread(target=executor.spin, daemon=True).start()
            wait_for(lambda: all(p.get_subscription_count() > 0 for p in (info_pub, color_pub, depth_pub, odom_pub)),
                     60, what="memory_node subscriptions")
            # map -> odom goes out from the start, as the identity
            wait_for(lambda: len(got) > 0, 30, what="map -> odom on /tf")
            with lock:
                first = convert.transform_msg_to_matrix(got[-1].transform)
            np.testing.assert_allclose(first, np.eye(4), atol=1e-9)
            # wait until the models are loaded, or frames are dropped unseen
            wait_for(lambda: "models loaded" in mem.log_text(), 240, what="models loaded")
            info_pub.publish(CameraInfo(width=W, height=H, k=[K[0, 0], 0, K[0, 2], 0, K[1, 1], K[1, 2], 0, 0, 1]))
            steps = 12
            for k in range(steps):
                a = np.radians(-60 + 10 * k)
                T_true = camera((1.3 - 1.6 * np.cos(a), 0.2 - 1.6 * np.sin(a), 1.05))
                T_odom_cam = yaw_slip(k) @ T_true
                t = 10.0 + k
                pos, quat = matrix_to_pose(T_odom_cam)
                for dt in (-0.05, 0.05):  # samples around the image stamp
                    od = Odometry(header=Header(stamp=convert.sec_to_stamp(t + dt), frame_id="odom"),
                                  child_frame_id="base_link")
                    od.pose.pose.position.x, od.pose.pose.position.y, od.pose.pose.position.z = (float(v) for v in pos)
                    (od.pose.pose.orientation.x, od.pose.pose.orientation.y, od.pose.pose.orientation.z,
                     od.pose.pose.orientation.w) = (float(v) for v in quat)
                    odom_pub.publish(od)
                hdr = Header(stamp=convert.sec_to_stamp(t), frame_id=CAM)
                rgb = np.full((H, W, 3), 128, np.uint8)
                color_pub.publish(convert.array_to_image(rgb, "rgb8", hdr))
                depth_pub.publish(convert.array_to_image(ray_cast(T_true).astype(np.float32), "32FC1", hdr))
                time.sleep(1.0)  # one keyframe at a time: the next prediction uses this one's correction

            # odometry puts the last camera over 10 cm off; map -> odom takes out most of it (the
            # tracker's gain 0.5 lags a drift this fast: test/core/test_tracking.py)
            err_odom = _cam_err(np.eye(4), steps)
            assert err_odom > 0.1
            wait_for(lambda: _cam_err(_latest(got, lock), steps) < 0.5 * err_odom, 30,
                     what="map -> odom to take out the drift")
            # /diagnostics says how many keyframes ICP refined
            wait_for(lambda: diag and int(_diag_value(diag[-1], "tracking/accepted") or 0) >= 5, 30,
                     what="tracking/accepted >= 5 on /diagnostics")
            # the ground service takes the memory's frame, odom and base_link (the memory may be empty:
            # a frame it does not know would be refused before that)
            assert ground.wait_for_service(timeout_sec=30)
            answers = {}
            for frame in ("map", "odom", "base_link", ""):
                fut = ground.call_async(GroundQuery.Request(query="box", frame_id=frame, top_k=1))
                wait_for(lambda: fut.done(), 60, what=f"ground in {frame!r}")
                r = fut.result()
                assert "unknown frame" not in r.message, (frame, r.message)
                if r.success:
                    assert all(p.header.frame_id == (frame or "map") for p in r.points), r.points
                    answers[frame] = np.array([[p.point.x, p.point.y, p.point.z] for p in r.points])
            if "map" in answers and "odom" in answers:  # odom = inv(T_map_odom) map
                np.testing.assert_allclose(answers["odom"], transform_points(invert(_latest(got, lock)), answers["map"]),
                                           atol=1e-3)
        finally:
            if executor is not None:
                executor.shutdown()
            node.destroy_node()
            rclpy.shutdown()
        assert mem.alive(), mem.log_text()


def _diag_value(msg, key: str) -> str | None:
    return next((kv.value for st in msg.status for kv in st.values if kv.key == key), None)


def _latest(got: list, lock: threading.Lock) -> np.ndarray:
    with lock:
        return convert.transform_msg_to_matrix(got[-1].transform)


def _cam_err(T_map_odom: np.ndarray, steps: int) -> float:
    """Position error of the last camera in map: |T_map_odom @ T_odom_cam - T_true|."""
    a = np.radians(-60 + 10 * (steps - 1))
    T_true = camera((1.3 - 1.6 * np.cos(a), 0.2 - 1.6 * np.sin(a), 1.05))
    T = T_map_odom @ yaw_slip(steps - 1) @ T_true
    return float(np.linalg.norm(T[:3, 3] - T_true[:3, 3]))

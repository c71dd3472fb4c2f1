"""The camera pose of a frame is interpolated at its stamp, over DDS, not taken from the nearest odometry.

Odometry at t = 1.0 s (x = 0, yaw = 0) and t = 1.2 s (x = 0.2 m, yaw = 0.2 rad) brackets one
RGB-D frame stamped 1.1 s with a labelled "yellow duck" patch on a labelled wall. The memory node (label model
only, so it starts in seconds) grounds "yellow duck" in odom and in base_link; the two answers
differ by the base pose the node used for that frame: x = 0.1 m, yaw = 0.1 rad.
"""
import os
import time

import numpy as np
import rclpy
from nav_msgs.msg import Odometry
from rclpy.qos import QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from m3_ros.msg import LabeledInstance, LabeledInstanceArray
from m3_ros.nodes import convert
from m3_ros.procs import CONFIG_DIR, NodeProcess, wait_for
from m3_ros.srv import GroundQuery

QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
CAM = "camera_color_optical_frame"
PARAMS = {"reliable_sensors": True, "camera_mount": "[0.2, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5]",
          "models": "[minilm_labels]", "channels": "[16]", "thetas": "[1.0]",
          "training": False}  # the two answers below come from the same, untouched memory
H, W = 48, 64


def test_pose_is_interpolated_at_the_image_stamp(tmp_path):
    with NodeProcess("memory_node", dict(os.environ), tmp_path, params_file=CONFIG_DIR / "m3.yaml",
                     params=PARAMS) as mem:
        rclpy.init()
        node = rclpy.create_node("pose_sender")
        try:
            pubs = {name: node.create_publisher(t, topic, QOS) for name, t, topic in [
                ("info", CameraInfo, "camera/color/camera_info"), ("color", Image, "camera/color/image_raw"),
                ("depth", Image, "camera/depth/image_raw"), ("odom", Odometry, "odom"),
                ("inst", LabeledInstanceArray, "camera/instances")]}
            ground = node.create_client(GroundQuery, "ground")
            wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 60, what="subscriptions")
            wait_for(lambda: "models loaded" in mem.log_text(), 120, what="models loaded")
            pubs["info"].publish(CameraInfo(width=W, height=H, k=[60.0, 0, W / 2, 0, 60.0, H / 2, 0, 0, 1]))
            for t, x, yaw in [(1.0, 0.0, 0.0), (1.2, 0.2, 0.2)]:
                od = Odometry(header=Header(stamp=convert.sec_to_stamp(t), frame_id="odom"), child_frame_id="base_link")
                od.pose.pose.position.x = x
                q = Rotation.from_euler("z", yaw).as_quat()
                o = od.pose.pose.orientation
                o.x, o.y, o.z, o.w = (float(v) for v in q)
                pubs["odom"].publish(od)
            header = Header(stamp=convert.sec_to_stamp(1.1), frame_id=CAM)
            rgb = np.full((H, W, 3), 90, np.uint8)
            mask = np.zeros((H, W), bool)
            mask[16:32, 24:40] = True
            rgb[mask] = (240, 220, 30)
            inst = LabeledInstanceArray(header=header, instances=[
                LabeledInstance(id=i + 1, label=label, score=1.0,
                                mask=convert.array_to_image(m.astype(np.uint8) * 255, "mono8", header))
                for i, (label, m) in enumerate([("yellow duck", mask), ("grey concrete wall", ~mask)])])
            # a detector is known to be there (an earlier, empty detection), so the frame waits for its own
            pubs["inst"].publish(LabeledInstanceArray(header=Header(stamp=convert.sec_to_stamp(0.5), frame_id=CAM)))
            pubs["inst"].publish(inst)
            time.sleep(0.5)  # both detections ahead of the frame: they travel on another topic than the image
            pubs["color"].publish(convert.array_to_image(rgb, "rgb8", header))
            pubs["depth"].publish(convert.array_to_image(np.full((H, W), 1.0, np.float32), "32FC1", header))

            def call(frame):
                fut = ground.call_async(GroundQuery.Request(query="yellow duck", frame_id=frame, top_k=1))
                rclpy.spin_until_future_complete(node, fut, timeout_sec=30)
                return fut.result()

            deadline = time.monotonic() + 60
            while not (res := call("odom")).success:
                assert time.monotonic() < deadline, f"{res.message}\n{mem.log_text()[-3000:]}"
                time.sleep(0.5)
            in_base = call("base_link")
            assert in_base.success, in_base.message
        finally:
            node.destroy_node()
            rclpy.shutdown()
    p_odom = np.array([res.points[0].point.x, res.points[0].point.y, res.points[0].point.z])
    p_base = np.array([in_base.points[0].point.x, in_base.points[0].point.y, in_base.points[0].point.z])
    # p_odom = R(yaw) p_base + (x, 0, 0): recover x and yaw from the two answers and the camera height
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", 0.1).as_matrix()
    T[0, 3] = 0.1
    np.testing.assert_allclose(T[:3, :3] @ p_base + T[:3, 3], p_odom, atol=1e-4)
    for wrong in (0.0, 0.2):  # either neighbour would be centimetres off
        Tw = np.eye(4)
        Tw[:3, :3] = Rotation.from_euler("z", wrong).as_matrix()
        Tw[0, 3] = wrong
        assert np.linalg.norm(Tw[:3, :3] @ p_base + Tw[:3, 3] - p_odom) > 0.05

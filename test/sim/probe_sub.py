"""Subscriber process for test_sim_node: records what sim_node publishes, optionally grasps.

Usage: python probe_sub.py OUT.npz FRAMES [grasp_object [offset_x]]
Collects FRAMES colour frames with matching depth / camera_info / instances / ground truth,
the odom at each frame's stamp, the latched mount and walk state; with grasp_object, waits
for walk_state "done", publishes a top-down TCP pose at that object's true box centre
(+ offset_x metres) and records the GraspResult.
"""
import sys
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from m3_ros.msg import GraspResult, LabeledInstanceArray, SceneGroundTruth


def key(h):
    return (h.stamp.sec, h.stamp.nanosec)


def main() -> int:
    out, frames = sys.argv[1], int(sys.argv[2])
    grasp_obj = sys.argv[3] if len(sys.argv) > 3 else ""
    offset = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    rclpy.init()
    node = rclpy.create_node("probe_sub")
    rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = {k: {} for k in ("rgb", "depth", "info", "inst", "gt", "odom")}
    state = {"mount": None, "walk": [], "result": None}

    def store(k):
        return lambda m: got[k].__setitem__(key(m.header), m)
    node.create_subscription(Image, "camera/color/image_raw", store("rgb"), rel)
    node.create_subscription(Image, "camera/depth/image_raw", store("depth"), rel)
    node.create_subscription(CameraInfo, "camera/color/camera_info", store("info"), rel)
    node.create_subscription(LabeledInstanceArray, "camera/instances", store("inst"), rel)
    node.create_subscription(SceneGroundTruth, "sim/ground_truth", store("gt"), rel)
    node.create_subscription(Odometry, "odom", store("odom"), QoSProfile(depth=200))
    node.create_subscription(TransformStamped, "camera/mount", lambda m: state.__setitem__("mount", m), latched)
    node.create_subscription(String, "sim/walk_state", lambda m: state["walk"].append(m.data), latched)
    node.create_subscription(GraspResult, "arm/grasp_result", lambda m: state.__setitem__("result", m), rel)
    pub = node.create_publisher(PoseStamped, "arm/grasp_pose", rel)

    def complete():
        return [k for k in got["rgb"] if all(k in got[n] for n in ("depth", "info", "inst", "gt", "odom"))]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (len(complete()) < frames or state["mount"] is None):
        rclpy.spin_once(node, timeout_sec=0.05)
    res = {}
    if grasp_obj:
        while time.monotonic() < deadline and "done" not in state["walk"]:
            rclpy.spin_once(node, timeout_sec=0.05)
        gt = got["gt"][max(got["gt"])]
        o = next(o for o in gt.objects if o.name == grasp_obj)
        msg = PoseStamped()
        msg.header.frame_id = "odom"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = o.center.x + offset, o.center.y, o.center.z
        # Top-down: TCP z = down, fingers (TCP y) close along the box's shorter horizontal side.
        if o.size.x <= o.size.y:  # y_tcp = world x, z_tcp = -z, x_tcp = y x z = world y
            msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = (
                0.7071068, 0.7071068, 0.0, 0.0)
        else:  # y_tcp = world y, x_tcp = world x, z_tcp = -z: 180 deg about x
            msg.pose.orientation.x, msg.pose.orientation.w = 1.0, 0.0
        while time.monotonic() < deadline and pub.get_subscription_count() == 0:
            rclpy.spin_once(node, timeout_sec=0.05)  # sim_node's grasp subscription discovered
        pub.publish(msg)
        while time.monotonic() < deadline and state["result"] is None:
            rclpy.spin_once(node, timeout_sec=0.05)
        r = state["result"]
        if r is not None:
            res = dict(grasp_success=r.success, grasp_object=r.object, grasp_lift=r.lift_height,
                       grasp_message=r.message, true_center=[o.center.x, o.center.y, o.center.z])
    keys = sorted(complete())[:frames]
    arrays = {}
    for i, k in enumerate(keys):
        rgb, dep, info, gt, inst, od = (got[n][k] for n in ("rgb", "depth", "info", "gt", "inst", "odom"))
        arrays[f"rgb{i}"] = np.frombuffer(bytes(rgb.data), np.uint8).reshape(rgb.height, rgb.width, 3)
        arrays[f"depth{i}"] = np.frombuffer(bytes(dep.data), "<f4").reshape(dep.height, dep.width)
        arrays[f"seg{i}"] = np.frombuffer(bytes(gt.segmentation.data), "<i4").reshape(
            gt.segmentation.height, gt.segmentation.width)
        arrays[f"K{i}"] = np.array(info.k).reshape(3, 3)
        p, q = od.pose.pose.position, od.pose.pose.orientation
        arrays[f"odom{i}"] = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
        arrays[f"labels{i}"] = np.array([f"{x.id}:{x.label}" for x in inst.instances])
        arrays[f"encodings{i}"] = np.array([rgb.encoding, dep.encoding, gt.segmentation.encoding,
                                            rgb.header.frame_id, od.header.frame_id, od.child_frame_id])
        arrays[f"objects{i}"] = np.array([f"{o.name}:{o.segmentation_id}" for o in gt.objects])
        arrays[f"stamp{i}"] = np.array(k)
    m = state["mount"]
    if m is not None:
        t, r = m.transform.translation, m.transform.rotation
        arrays["mount"] = np.array([t.x, t.y, t.z, r.x, r.y, r.z, r.w])
        arrays["mount_frames"] = np.array([m.header.frame_id, m.child_frame_id])
    arrays["walk"] = np.array(state["walk"])
    for k, v in res.items():
        arrays[k] = np.array(v)
    np.savez(out, **arrays)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

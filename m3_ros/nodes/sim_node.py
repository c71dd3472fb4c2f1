"""sim_node: the embedded pybullet simulator (m3_ros.sim.SimWorld) on real ROS 2 topics.

Publishes, stamped with simulation time (also on ``/clock``), like a real robot:
  /tf (odom -> base_link and base_link -> gripper TCP at the clock rate), /tf_static
  (base_link -> camera_color_optical_frame), camera/color/image_raw (rgb8),
  camera/depth/image_raw (32FC1 m or 16UC1 mm), camera/color/camera_info,
  odom (odom -> base_link, with twist in base_link; ``publish_odom``),
  camera/mount (base_link -> optical frame, TRANSIENT_LOCAL; ``publish_mount``, a fallback
  for consumers without TF),
  camera/instances (oracle detector: masks from the simulator's segmentation and the
  scene's descriptions, with miss / erosion / synonym noise), sim/ground_truth (evaluation
  only; the memory never reads it), sim/walk_state ("walking", then "done"; TRANSIENT_LOCAL),
  the stage of an executing grasp (std_msgs/String on ``grasp_stage_topic``: approaching,
  closing, lifting) and its outcome on the result topic.
Subscribes: the grasp topic (geometry_msgs/PoseStamped of the gripper TCP in odom), the
cancel topic (std_msgs/Empty: the executing grasp stops and the arm holds where it is) and
sim/go_to (std_msgs/String, an object name: the robot stands at that object's ``grasp_base``
at once and ends its walk; the stand-in for navigation).
Under drifting odometry (``sensors: realistic``) the ground truth is published in odom through
the robot's current odometry error, as the memory sees the world, and a grasp pose in odom is
executed where odom puts it in the world.
The mount is also the parameter ``camera_mount`` ([x, y, z, qx, qy, qz, qw]).
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty, Header, String
from tf2_msgs.msg import TFMessage

from m3_ros.geometry import invert, matrix_to_pose, pose_to_matrix, transform_points
from m3_ros.msg import GraspResult, LabeledInstance, LabeledInstanceArray, ObjectState, SceneGroundTruth
from m3_ros.nodes.common import tf_qos, tf_static_qos
from m3_ros.sim.generate import resolve_scene
from m3_ros.sim.world import OracleNoise, SimFrame, SimWorld


def _stamp(t: float) -> Time:
    sec = int(np.floor(t))
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def _image(header: Header, arr: np.ndarray, encoding: str) -> Image:
    """numpy [H, W(, C)] -> sensor_msgs/Image (little-endian, tightly packed)."""
    arr = np.ascontiguousarray(arr)
    msg = Image(header=header, height=arr.shape[0], width=arr.shape[1], encoding=encoding,
                is_bigendian=0)
    msg.step = arr.strides[0]
    msg.data = arr.tobytes()
    return msg


def _transform(header: Header, child: str, T: np.ndarray) -> TransformStamped:
    tf = TransformStamped(header=header, child_frame_id=child)
    pos, q = matrix_to_pose(T)
    tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = (float(x) for x in pos)
    r = tf.transform.rotation
    r.x, r.y, r.z, r.w = (float(x) for x in q)
    return tf


def _fill_pose(pose_msg, T: np.ndarray) -> None:
    pos, q = matrix_to_pose(T)
    pose_msg.position.x, pose_msg.position.y, pose_msg.position.z = (float(x) for x in pos)
    pose_msg.orientation.x, pose_msg.orientation.y, pose_msg.orientation.z, pose_msg.orientation.w = (
        float(x) for x in q)


# One place for every parameter and its default (config/sim.yaml overrides).
PARAMS: dict[str, object] = {
    "scene": "default",
    "seed": 0,
    "renderer": "auto",
    "sensors": "ideal",
    "camera_rate_hz": 5.0,
    "clock_rate_hz": 20.0,
    "real_time_factor": 1.0,
    "walk_speed": 0.4,
    "camera_width": 0,
    "camera_height": 0,
    "depth_encoding": "32FC1",
    "label_miss_rate": 0.0,
    "label_erode_px": 0,
    "label_synonym_rate": 0.0,
    "grasp_pose_topic": "arm/grasp_pose",
    "grasp_result_topic": "arm/grasp_result",
    "grasp_stage_topic": "arm/grasp_stage",
    "grasp_cancel_topic": "arm/grasp_cancel",
    "camera_reliable": True,
    "publish_odom": True,
    "publish_mount": True,
    "odom_frame": "odom",
    "base_frame": "base_link",
    "camera_frame": "camera_color_optical_frame",
    "tcp_frame": "gripper_tcp",
}


class SimNode(Node):
    """Thin wrapper: parameters and QoS here, everything simulated in SimWorld."""

    def __init__(self) -> None:
        super().__init__("sim_node")
        def P(name: str):
            return self.declare_parameter(name, PARAMS[name])
        self.scene_name = P("scene").value
        self.seed = int(P("seed").value)
        renderer = P("renderer").value
        sensors = P("sensors").value
        self.camera_rate = float(P("camera_rate_hz").value)
        self.clock_rate = float(P("clock_rate_hz").value)
        self.rtf = float(P("real_time_factor").value)
        walk_speed = float(P("walk_speed").value)
        width = int(P("camera_width").value)
        height = int(P("camera_height").value)
        self.depth_encoding = P("depth_encoding").value
        noise = OracleNoise(miss_rate=float(P("label_miss_rate").value),
                            erode_px=int(P("label_erode_px").value),
                            synonym_rate=float(P("label_synonym_rate").value))
        # all zero: the sensor model's detector (noisy under realistic sensors, perfect under ideal)
        self.noise = noise if (noise.miss_rate or noise.erode_px or noise.synonym_rate) else None
        grasp_topic = P("grasp_pose_topic").value
        result_topic = P("grasp_result_topic").value
        stage_topic = P("grasp_stage_topic").value
        cancel_topic = P("grasp_cancel_topic").value
        reliable = bool(P("camera_reliable").value)
        self.publish_odom = bool(P("publish_odom").value)
        publish_mount = bool(P("publish_mount").value)
        self.odom_frame = P("odom_frame").value
        self.base_frame = P("base_frame").value
        self.camera_frame = P("camera_frame").value
        self.tcp_frame = P("tcp_frame").value
        if self.depth_encoding not in ("32FC1", "16UC1"):
            raise ValueError(f"depth_encoding must be 32FC1 or 16UC1, got {self.depth_encoding!r}")
        if self.camera_rate <= 0 or self.clock_rate <= 0:
            raise ValueError(f"camera_rate_hz and clock_rate_hz must be > 0, got "
                             f"{self.camera_rate}, {self.clock_rate}")
        if self.rtf < 0:
            raise ValueError(f"real_time_factor must be >= 0 (0 = as fast as possible), got {self.rtf}")

        scene = resolve_scene(self.scene_name, self.seed)  # a scene file, or a generated family
        if width > 0:
            scene.camera.width = width
        if height > 0:
            scene.camera.height = height
        self.world = SimWorld(scene, seed=self.seed, renderer=renderer, walk_speed=walk_speed,
                              sensors=sensors).connect()
        self.get_logger().info(
            f"scene {self.scene_name!r} seed {self.seed}: renderer {self.world.renderer}, "
            f"{scene.camera.width}x{scene.camera.height} @ {self.camera_rate} Hz, walk "
            f"{self.world.walk_duration:.1f} s sim, real-time factor {self.rtf or 'max'}")
        mount_pos, mount_q = matrix_to_pose(self.world.T_base_cam)
        self.declare_parameter("camera_mount", [float(x) for x in [*mount_pos, *mount_q]])
        self.set_parameters([Parameter("camera_mount", Parameter.Type.DOUBLE_ARRAY,
                                       [float(x) for x in [*mount_pos, *mount_q]])])

        cam_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_rgb = self.create_publisher(Image, "camera/color/image_raw", cam_qos)
        self.pub_depth = self.create_publisher(Image, "camera/depth/image_raw", cam_qos)
        self.pub_info = self.create_publisher(CameraInfo, "camera/color/camera_info", cam_qos)
        self.pub_inst = self.create_publisher(LabeledInstanceArray, "camera/instances", cam_qos)
        self.pub_gt = self.create_publisher(SceneGroundTruth, "sim/ground_truth", cam_qos)
        self.pub_odom = self.create_publisher(Odometry, "odom", QoSProfile(depth=50)) if self.publish_odom else None
        self.pub_clock = self.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        self.pub_tf = self.create_publisher(TFMessage, "/tf", tf_qos())
        self.pub_tf_static = self.create_publisher(TFMessage, "/tf_static", tf_static_qos())
        self.pub_walk = self.create_publisher(String, "sim/walk_state", latched)
        self.pub_result = self.create_publisher(GraspResult, result_topic, QoSProfile(depth=10))
        self.pub_stage = self.create_publisher(String, stage_topic, QoSProfile(depth=10))
        self.create_subscription(PoseStamped, grasp_topic, self._on_grasp, QoSProfile(depth=10))
        self.create_subscription(Empty, cancel_topic, self._on_cancel, QoSProfile(depth=10))
        self.create_subscription(String, "sim/go_to", self._on_go_to,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.grasps: deque[PoseStamped] = deque()
        self.go_to: deque[str] = deque()
        self.cancel_requested = False
        self.walk_state = ""

        mount = _transform(Header(stamp=_stamp(self.world.time), frame_id=self.base_frame), self.camera_frame,
                           self.world.T_base_cam)
        self.pub_tf_static.publish(TFMessage(transforms=[mount]))
        if publish_mount:
            self.pub_mount = self.create_publisher(TransformStamped, "camera/mount", latched)
            self.pub_mount.publish(mount)

    # ------------------------------------------------------------------ callbacks
    def _on_grasp(self, msg: PoseStamped) -> None:
        self.grasps.append(msg)  # executed from the main loop, between physics steps

    def _on_go_to(self, msg: String) -> None:
        self.go_to.append(msg.data)  # executed from the main loop, between physics steps

    def run_go_to(self, name: str) -> None:
        """Stand at object ``name``'s grasp_base (a warning if it has none or does not exist)."""
        obj = next((o for o in self.world.scene.objects if o.name == name), None)
        if obj is None or obj.grasp_base is None:
            why = "no such object" if obj is None else "it has no grasp_base in the scene"
            self.get_logger().warning(f"go_to {name!r} ignored: {why}")
            return
        self.world.teleport_base(obj.grasp_base)
        self.get_logger().info(f"go_to {name!r}: standing at {list(obj.grasp_base)}")

    def _T_odom_world(self) -> np.ndarray:
        """world -> odom [4, 4] through the current odometry error (identity under ideal sensors)."""
        return self.world.T_odom_base @ invert(self.world.T_world_base)

    def _on_cancel(self, msg: Empty) -> None:
        self.cancel_requested = True  # read by the executing grasp's should_abort (or dropped)

    # ------------------------------------------------------------------ publishing
    def _header(self, frame_id: str) -> Header:
        return Header(stamp=_stamp(self.world.time), frame_id=frame_id)

    def publish_state(self) -> None:
        """/clock, /tf (odom -> base_link -> gripper TCP), odom and the walk state at the current sim time."""
        self.pub_clock.publish(Clock(clock=_stamp(self.world.time)))
        T_odom_base = self.world.T_odom_base  # what odometry reports (drifts with realistic sensors)
        T_base_tcp = invert(self.world.T_world_base) @ self.world.tcp_pose()
        h = self._header(self.odom_frame)
        self.pub_tf.publish(TFMessage(transforms=[
            _transform(h, self.base_frame, T_odom_base),
            _transform(self._header(self.base_frame), self.tcp_frame, T_base_tcp),
        ]))
        if self.pub_odom is not None:
            odom = Odometry(header=h, child_frame_id=self.base_frame)
            _fill_pose(odom.pose.pose, T_odom_base)
            lin, ang = self.world.base_velocity()
            odom.twist.twist.linear.x, odom.twist.twist.linear.y, odom.twist.twist.linear.z = (float(x) for x in lin)
            odom.twist.twist.angular.x, odom.twist.twist.angular.y, odom.twist.twist.angular.z = (
                float(x) for x in ang)
            self.pub_odom.publish(odom)
        state = "done" if self.world.walk_done else "walking"
        if state != self.walk_state:
            self.walk_state = state
            self.pub_walk.publish(String(data=state))
            self.get_logger().info(f"walk state: {state} at t={self.world.time:.2f} s")

    def publish_frame(self, frame: SimFrame) -> None:
        """Colour, depth, camera_info, oracle instances and ground truth, one stamp."""
        h = self._header(self.camera_frame)
        self.pub_rgb.publish(_image(h, frame.rgb, "rgb8"))
        if self.depth_encoding == "32FC1":
            self.pub_depth.publish(_image(h, frame.depth.astype("<f4"), "32FC1"))
        else:
            mm = np.clip(np.round(frame.depth * 1000.0), 0, 65535).astype("<u2")
            self.pub_depth.publish(_image(h, mm, "16UC1"))
        K = frame.K
        info = CameraInfo(header=h, height=frame.rgb.shape[0], width=frame.rgb.shape[1],
                          distortion_model="plumb_bob")
        info.d = [0.0] * 5
        info.k = [float(x) for x in K.reshape(-1)]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [float(K[0, 0]), 0.0, float(K[0, 2]), 0.0, 0.0, float(K[1, 1]), float(K[1, 2]), 0.0,
                  0.0, 0.0, 1.0, 0.0]
        self.pub_info.publish(info)
        arr = LabeledInstanceArray(header=h)
        for inst in self.world.oracle_instances(frame, self.noise):
            arr.instances.append(LabeledInstance(
                id=int(inst.id), label=inst.label, score=float(inst.score),
                mask=_image(h, inst.mask.astype(np.uint8) * 255, "mono8")))
        self.pub_inst.publish(arr)
        gt = SceneGroundTruth(header=self._header(self.odom_frame),
                              segmentation=_image(h, frame.segmentation.astype("<i4"), "32SC1"))
        T_odom_world = self._T_odom_world()
        for o in self.world.objects():
            s = ObjectState(name=o.name, description=o.description, segmentation_id=int(o.segmentation_id))
            _fill_pose(s.pose, T_odom_world @ o.T_world_obj)
            c = transform_points(T_odom_world, np.asarray(o.aabb_center, dtype=np.float64)[None])[0]
            s.center.x, s.center.y, s.center.z = (float(x) for x in c)
            s.size.x, s.size.y, s.size.z = (float(x) for x in o.aabb_size)
            gt.objects.append(s)
        self.pub_gt.publish(gt)

    def run_grasp(self, msg: PoseStamped) -> None:
        """Execute one queued grasp and publish its GraspResult."""
        result = GraspResult(grasp=msg)
        frame = msg.header.frame_id or self.odom_frame
        if frame != self.odom_frame:
            result.success, result.message = False, f"rejected: grasp pose frame {frame!r} is not {self.odom_frame!r}"
        else:
            p, o = msg.pose.position, msg.pose.orientation
            try:
                T_odom_tcp = pose_to_matrix(np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]))
                T = invert(self._T_odom_world()) @ T_odom_tcp  # where the arm really goes
                self.cancel_requested = False  # a cancel sent before this grasp began is not for it
                out = self.world.execute_grasp(T, on_stage=lambda s: self.pub_stage.publish(String(data=s)),
                                               should_abort=self._grasp_tick)
                result.success, result.object = out.success, out.object
                result.lift_height, result.message = float(out.lift_height), out.message
            except ValueError as e:
                result.success, result.message = False, f"rejected: {e}"
        result.header = self._header(self.odom_frame)
        self.get_logger().info(f"grasp: {result.message}")
        self.pub_result.publish(result)

    def _grasp_tick(self) -> bool:
        """Polled before each physics step of a grasp: the clock and /tf go on at the clock
        rate, the real-time factor holds, and a cancel stops the arm (returns True)."""
        if self.world.time + 1e-9 >= self._next_tick:
            self._next_tick += 1.0 / self.clock_rate
            rclpy.spin_once(self, timeout_sec=0.0)  # receives the cancel; new grasps queue up
            self.publish_state()
            self._hold_rate()
        return self.cancel_requested or not rclpy.ok()

    def _hold_rate(self) -> None:
        if self.rtf > 0:
            lag = (self.world.time - self._sim0) / self.rtf - (time.monotonic() - self._wall0)
            if lag > 0:
                time.sleep(lag)

    # ------------------------------------------------------------------ main loop
    def loop(self) -> None:
        """Advance sim time in clock ticks, render at the camera rate, hold the real-time factor."""
        clock_dt = 1.0 / self.clock_rate
        next_frame = self.world.time
        self._wall0, self._sim0 = time.monotonic(), self.world.time
        self._next_tick = self.world.time
        while rclpy.ok():
            rclpy.spin_once(self, timeout_sec=0.0)
            while self.go_to:
                self.run_go_to(self.go_to.popleft())
            while self.grasps:
                self._next_tick = self.world.time
                self.run_grasp(self.grasps.popleft())
            self.publish_state()
            if self.world.time + 1e-9 >= next_frame:
                frame = self.world.render()
                if not frame.dropped:  # the sensor model lost it: a robot would never receive it
                    self.publish_frame(frame)
                next_frame += 1.0 / self.camera_rate
            self.world.advance(clock_dt)
            self._hold_rate()

    def destroy_node(self) -> None:
        self.world.disconnect()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = SimNode()
        node.loop()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        if rclpy.ok():
            raise
        # A signal shut the context down mid-publish: a clean end, not an error.
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

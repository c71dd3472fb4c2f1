"""memory_node: RGB-D + odometry (+ labelled instances) -> M3 memory; `ground` service.

Thin: parameters, QoS, message conversion; the work is in ``m3_ros.pipeline``.
Threads: sensor callbacks only convert and hand frames to the feature worker; a timer
in its own callback group trains; services run in a third group, so the executor
never waits on training.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PointStamped, TransformStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import ColorRGBA, Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from m3_ros.geometry import invert, pose_to_matrix, transform_points
from m3_ros.grounding import GroundingConfig
from m3_ros.msg import LabeledInstanceArray, MemoryStatus
from m3_ros.nodes import convert
from m3_ros.nodes.common import latched_qos, sensor_qos, spin_node
from m3_ros.pipeline import MemoryPipeline, PipelineConfig
from m3_ros.srv import GroundQuery, MemoryIO
from m3_ros.stream import ApproximateSync, KeyframeSelectorConfig

# One place for every parameter and its default (config/m3.yaml overrides).
PARAMS: dict[str, object] = {
    "color_topic": "camera/color/image_raw",
    "depth_topic": "camera/depth/image_raw",
    "camera_info_topic": "camera/color/camera_info",
    "odom_topic": "odom",
    "instances_topic": "camera/instances",
    "mount_topic": "camera/mount",
    "camera_mount": [0.0],  # [x, y, z, qx, qy, qz, qw] base_link -> camera optical; [0.0] = take it from mount_topic
    "odom_frame": "odom",
    "reliable_sensors": False,
    "sync_slop": 0.05,
    "instances_slop": 0.02,
    "instances_wait": 1.0,
    "models": ["clip", "dinov2_s", "minilm_labels"],
    "clip_arch": "ViT-B-16",
    "clip_checkpoint": "",
    "siglip_path": "",
    "channels": [16, 16, 16],
    "thetas": [0.80, 0.75, 1.0],
    "kf_min_translation": 0.10,
    "kf_min_rotation_deg": 10.0,
    "kf_min_interval": 0.3,
    "kf_max_interval": 5.0,
    "train_period": 0.05,
    "train_budget": 0.04,
    "status_period": 1.0,
    "cloud_period": 2.0,
    "cloud_min_opacity": 0.3,
    "memory_dir": "",
    "grounding_mode": "gaussians",
    "grounding_views": 3,
    "grounding_view_scale": 0.5,
    "max_query_chars": 200,
    "publish_relevance": True,
}


class MemoryNode(Node):
    def __init__(self) -> None:
        super().__init__("memory_node")
        for k, v in PARAMS.items():
            self.declare_parameter(k, v)
        p = {k: self.get_parameter(k).value for k in PARAMS}
        self.p = p
        models = list(p["models"])
        if len(p["channels"]) != len(models) or len(p["thetas"]) != len(models):
            raise ValueError(f"channels {p['channels']} and thetas {p['thetas']} must have one entry per model {models}")
        cfg = PipelineConfig(
            models=models,
            channels={m: int(c) for m, c in zip(models, p["channels"])},
            thetas={m: float(t) for m, t in zip(models, p["thetas"])},
            keyframes=KeyframeSelectorConfig(p["kf_min_translation"], p["kf_min_rotation_deg"],
                                             p["kf_min_interval"], p["kf_max_interval"]),
            grounding=GroundingConfig(mode=p["grounding_mode"], n_views=int(p["grounding_views"]),
                                      view_scale=float(p["grounding_view_scale"]),
                                      max_query_chars=int(p["max_query_chars"])),
            foundation_overrides={"clip_arch": p["clip_arch"], "clip_checkpoint": p["clip_checkpoint"],
                                  "siglip_path": p["siglip_path"]},
        )
        self.pipeline = MemoryPipeline(cfg)
        self.odom_frame = p["odom_frame"]
        self.T_base_cam: np.ndarray | None = None
        mount = list(p["camera_mount"])
        if len(mount) == 7:
            self.T_base_cam = pose_to_matrix(mount[:3], mount[3:])
        elif mount != [0.0]:
            raise ValueError(f"camera_mount must be [x, y, z, qx, qy, qz, qw] or [0.0], got {mount}")
        self.K: np.ndarray | None = None
        self.last_T_odom_base: np.ndarray | None = None
        self.last_T_odom_cam: np.ndarray | None = None
        self.last_header = Header(frame_id=self.odom_frame)
        self.sync = ApproximateSync(["color", "depth", "odom"], slop=float(p["sync_slop"]))
        # Once a detector publishes instances, each frame waits (up to instances_wait) for its own.
        self.instances: dict[float, LabeledInstanceArray] = {}
        self.waiting: dict[float, tuple] = {}
        self._frame_lock = threading.Lock()
        self._rejects = 0
        self._last_reject: dict[str, float] = {}
        self._steps_since_status = 0
        self._last_status_t = time.monotonic()

        sensors = MutuallyExclusiveCallbackGroup()
        train = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        qos = sensor_qos(bool(p["reliable_sensors"]))
        self.create_subscription(Image, p["color_topic"], lambda m: self._on("color", m), qos, callback_group=sensors)
        self.create_subscription(Image, p["depth_topic"], lambda m: self._on("depth", m), qos, callback_group=sensors)
        self.create_subscription(Odometry, p["odom_topic"], lambda m: self._on("odom", m), qos, callback_group=sensors)
        self.create_subscription(CameraInfo, p["camera_info_topic"], self._on_info, qos, callback_group=sensors)
        self.create_subscription(LabeledInstanceArray, p["instances_topic"], self._on_instances, qos, callback_group=sensors)
        self.create_subscription(TransformStamped, p["mount_topic"], self._on_mount, latched_qos(), callback_group=sensors)

        self.status_pub = self.create_publisher(MemoryStatus, "memory/status", 10)
        self.cloud_pub = self.create_publisher(PointCloud2, "memory/gaussians", latched_qos())
        self.relevance_pub = self.create_publisher(Image, "memory/relevance_image", latched_qos())
        self.marker_pub = self.create_publisher(MarkerArray, "memory/grounded_markers", latched_qos())

        self.create_service(GroundQuery, "ground", self._on_ground, callback_group=services)
        self.create_service(MemoryIO, "memory/save", self._on_save, callback_group=services)
        self.create_service(MemoryIO, "memory/load", self._on_load, callback_group=services)
        self.create_service(Trigger, "memory/reset", self._on_reset, callback_group=services)
        self.create_timer(float(p["train_period"]), self._on_train, callback_group=train)
        self.create_timer(float(p["status_period"]), self._on_status, callback_group=services)
        self.create_timer(float(p["cloud_period"]), self._on_cloud, callback_group=services)

        # Heavy models load in a worker thread; the node answers (with a clear "not ready") meanwhile.
        self._loader = threading.Thread(target=self._load, daemon=True)
        self._loader.start()

    # ---- start-up ---------------------------------------------------------------
    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            self.pipeline.load()
        except Exception as e:
            self.get_logger().error(f"memory pipeline failed to load: {e}")
            return
        self.get_logger().info(
            f"models loaded in {time.monotonic() - t0:.1f}s: {self.pipeline.model_names}; "
            f"grounding text model: {self.pipeline.text_model_name}")
        if self.p["memory_dir"]:
            try:
                self.pipeline.load_memory(self.p["memory_dir"])
                self.get_logger().info(f"resumed memory from {self.p['memory_dir']}")
            except (FileNotFoundError, ValueError) as e:
                self.get_logger().info(f"starting a new memory ({e})")

    # ---- sensors ------------------------------------------------------------------
    def _on_info(self, msg: CameraInfo) -> None:
        try:
            self.K = convert.intrinsics_from_camera_info(msg)
        except ValueError as e:
            self._reject(f"camera_info: {e}")

    def _on_mount(self, msg: TransformStamped) -> None:
        try:
            self.T_base_cam = convert.transform_msg_to_matrix(msg.transform)
        except ValueError as e:
            self._reject(f"camera mount: {e}")

    def _on_instances(self, msg: LabeledInstanceArray) -> None:
        t = convert.stamp_to_sec(msg.header.stamp)
        with self._frame_lock:
            self.instances[t] = msg
            for old in sorted(self.instances)[:-20]:
                del self.instances[old]
        self._flush_waiting()

    def _flush_waiting(self) -> None:
        """Process waiting frames whose instances arrived, or that waited long enough."""
        ready = []
        with self._frame_lock:
            newest = max(self.waiting, default=-np.inf)
            for t in sorted(self.waiting):
                match = self._instances_for(t)
                if match is not None or newest - t > float(self.p["instances_wait"]):
                    ready.append((self.waiting.pop(t), match))
        for frame, inst in ready:
            self._process(*frame, inst)

    def _instances_for(self, stamp: float) -> LabeledInstanceArray | None:
        if not self.instances:
            return None
        t_near = min(self.instances, key=lambda t: abs(t - stamp))
        return self.instances[t_near] if abs(t_near - stamp) <= float(self.p["instances_slop"]) else None

    def _reject(self, why: str) -> None:
        """Log a dropped input once per kind of problem every 5 s (a bad stream would flood the log)."""
        self._rejects += 1
        kind = why.split(":")[0][:40]
        now = time.monotonic()
        if now - self._last_reject.get(kind, -np.inf) >= 5.0:
            self._last_reject[kind] = now
            self.get_logger().warning(f"dropped input ({self._rejects} so far): {why}")

    def _on(self, name: str, msg) -> None:
        try:
            match = self.sync.add(name, convert.stamp_to_sec(msg.header.stamp), msg)
        except ValueError as e:
            return self._reject(str(e))
        if match is None:
            return
        frame = (match["color"], match["depth"], match["odom"])
        if not self.instances:  # no detector on this robot (yet): go on without instances
            return self._process(*frame, None)
        with self._frame_lock:
            self.waiting[convert.stamp_to_sec(match["color"].header.stamp)] = frame
        self._flush_waiting()

    def _process(self, color: Image, depth: Image, odom: Odometry, inst_msg: LabeledInstanceArray | None) -> None:
        if self.K is None:
            return self._reject("no camera_info received yet")
        if self.T_base_cam is None:
            return self._reject(f"no camera mount (parameter camera_mount or topic {self.p['mount_topic']})")
        try:
            rgb = convert.rgb_from_image(color)
            d = convert.depth_from_image(depth)
            T_odom_base = convert.pose_msg_to_matrix(odom.pose.pose)
            if rgb.shape[:2] != d.shape:
                raise ValueError(f"colour {rgb.shape[:2]} and depth {d.shape} differ in size")
            T_odom_cam = T_odom_base @ self.T_base_cam
            stamp = convert.stamp_to_sec(color.header.stamp)
            inst = convert.instances_from_msg(inst_msg, rgb.shape[:2]) if inst_msg is not None else []
            self.last_T_odom_base, self.last_T_odom_cam = T_odom_base, T_odom_cam
            self.last_size, self.camera_frame = rgb.shape[:2], color.header.frame_id
            self.last_header = Header(stamp=color.header.stamp, frame_id=self.odom_frame)
            self.pipeline.offer_frame(stamp, rgb, d, self.K, T_odom_cam, inst)
        except ValueError as e:
            self._reject(str(e))

    # ---- training & status -----------------------------------------------------------
    def _on_train(self) -> None:
        self._steps_since_status += self.pipeline.train_for(float(self.p["train_budget"]))

    def _on_status(self) -> None:
        s = self.pipeline.stats()
        now = time.monotonic()
        msg = MemoryStatus()
        msg.header = self.last_header
        msg.keyframes = int(s["keyframes"])
        msg.gaussians = int(s["gaussians"])
        msg.models = self.pipeline.model_names
        msg.bank_rows = [int(s["bank_rows"].get(m, 0)) for m in msg.models]
        msg.train_iteration = int(s["iteration"])
        msg.last_loss = float(s["last_loss"])
        msg.train_rate_hz = float(self._steps_since_status / max(now - self._last_status_t, 1e-6))
        msg.train_time_s = float(s["train_time_s"])
        msg.ready = bool(self.pipeline.ready and s["gaussians"] > 0)
        self._steps_since_status, self._last_status_t = 0, now
        self.status_pub.publish(msg)

    def _on_cloud(self) -> None:
        mem = self.pipeline.memory
        if mem is None or mem.n_gaussians == 0 or self.cloud_pub.get_subscription_count() == 0:
            return
        keep = mem.opacities.detach().cpu().numpy() >= float(self.p["cloud_min_opacity"])
        means = mem.means.detach().cpu().numpy()[keep]
        header = Header(stamp=self.last_header.stamp, frame_id=self.odom_frame)
        self.cloud_pub.publish(convert.points_to_cloud(means, header))

    # ---- services -----------------------------------------------------------------
    def _frame_transform(self, frame_id: str) -> np.ndarray:
        """T_frame_odom for the supported output frames."""
        if frame_id in ("", self.odom_frame):
            return np.eye(4)
        if frame_id == "base_link" and self.last_T_odom_base is not None:
            return invert(self.last_T_odom_base)
        raise ValueError(f"unknown frame '{frame_id}' (supported: '{self.odom_frame}', 'base_link')")

    def _on_ground(self, req: GroundQuery.Request, res: GroundQuery.Response) -> GroundQuery.Response:
        t0 = time.monotonic()
        try:
            T = self._frame_transform(req.frame_id)
            out = self.pipeline.ground(req.query, int(req.top_k) or 1)
        except ValueError as e:
            res.success, res.message = False, str(e)
            self.get_logger().info(f"ground('{req.query[:60]}') rejected: {e}")
            return res
        pts = transform_points(T, out.points)
        frame = req.frame_id or self.odom_frame
        for p in pts:
            ps = PointStamped()
            ps.header = Header(stamp=self.last_header.stamp, frame_id=frame)
            ps.point.x, ps.point.y, ps.point.z = (float(v) for v in p)
            res.points.append(ps)
        res.scores = [float(s) for s in out.scores]
        res.model = out.model
        res.success = True
        res.message = (f"grounded '{req.query}' with text model {out.model} ({out.mode} mode, "
                       f"{out.n_candidates} candidate points, {1e3 * (time.monotonic() - t0):.0f} ms)")
        self.get_logger().info(res.message)
        self._publish_query_outputs(req.query, out, pts, frame)
        return res

    def _publish_query_outputs(self, query: str, out, pts: np.ndarray, frame: str) -> None:
        header = Header(stamp=self.last_header.stamp, frame_id=frame)
        ma = MarkerArray()
        for i, (p, s) in enumerate(zip(pts, out.scores)):
            for kind in (Marker.SPHERE, Marker.TEXT_VIEW_FACING):
                m = Marker(header=header, ns="grounding", id=2 * i + (kind == Marker.TEXT_VIEW_FACING), type=kind)
                m.pose.position.x, m.pose.position.y, m.pose.position.z = float(p[0]), float(p[1]), float(p[2])
                m.pose.orientation.w = 1.0
                if kind == Marker.SPHERE:
                    m.scale.x = m.scale.y = m.scale.z = 0.04
                    m.color = ColorRGBA(r=1.0, g=0.2, b=0.2, a=0.9)
                else:
                    m.pose.position.z += 0.06
                    m.scale.z = 0.03
                    m.text = f"{query} ({s:.2f})"
                    m.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
                ma.markers.append(m)
        self.marker_pub.publish(ma)
        if self.p["publish_relevance"] and self.last_T_odom_cam is not None and self.K is not None:
            # the query's relevance as seen from the robot's current camera, at half resolution
            h, w = self.last_size[0] // 2, self.last_size[1] // 2
            K = self.K.copy()
            K[:2] *= 0.5
            try:
                rel = self.pipeline.relevance_map(query, self.last_T_odom_cam, K, max(w, 8), max(h, 8))
            except ValueError as e:
                self.get_logger().warning(f"no relevance image: {e}")
                return
            img = np.nan_to_num(rel, nan=0.0).astype(np.float32)
            header = Header(stamp=self.last_header.stamp, frame_id=self.camera_frame)
            self.relevance_pub.publish(convert.array_to_image(img, "32FC1", header))

    def _path(self, req_path: str) -> str:
        path = req_path or self.p["memory_dir"]
        if not path:
            raise ValueError("no path given and the memory_dir parameter is empty")
        return path

    def _memory_io(self, req: MemoryIO.Request, res: MemoryIO.Response, action, done: str,
                   verb: str) -> MemoryIO.Response:
        try:
            path = self._path(req.path)
            action(path)
            res.success, res.message = True, f"{done} {path}"
        except (ValueError, OSError) as e:  # CheckpointError is a ValueError
            res.success, res.message = False, f"{verb} failed: {e}"
        self.get_logger().info(res.message)
        return res

    def _on_save(self, req: MemoryIO.Request, res: MemoryIO.Response) -> MemoryIO.Response:
        return self._memory_io(req, res, self.pipeline.save, "saved memory to", "save")

    def _on_load(self, req: MemoryIO.Request, res: MemoryIO.Response) -> MemoryIO.Response:
        return self._memory_io(req, res, self.pipeline.load_memory, "loaded memory from", "load")

    def _on_reset(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.pipeline.reset()
        res.success, res.message = True, "memory reset"
        return res

    def close(self) -> None:
        self.pipeline.close()


def main(args: list[str] | None = None) -> int:
    return spin_node(MemoryNode, threads=4, args=args)


if __name__ == "__main__":
    raise SystemExit(main())

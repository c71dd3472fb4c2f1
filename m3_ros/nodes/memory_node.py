"""memory_node: RGB-D + odometry (+ labelled instances) -> M3 memory; `ground` service.

Thin: parameters, QoS, message conversion; the work is in ``m3_ros.pipeline``.
Threads: sensor callbacks only convert and hand frames to the feature worker; a timer
in its own callback group trains; services run in a third group, so the executor
never waits on training; /tf and odometry are taken in in a fourth, so slow frame processing never
drops the poses that frames are placed with. Status, cloud and autosave timers have a group each,
and what they read (counters, T_map_odom) never waits for ingestion or ICP.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped, TransformStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import ColorRGBA, Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from tf2_msgs.msg import TFMessage

from m3_ros.geometry import invert, matrix_to_pose, pose_to_matrix, scale_intrinsics, transform_points
from m3_ros.grounding import GroundingConfig
from m3_ros.msg import LabeledInstanceArray, MemoryStatus
from m3_ros.nodes import convert
from m3_ros.nodes.common import LatestOnly, Param, TFListener, declare_params, latched_qos, sensor_qos, spin_node, tf_qos
from m3_ros.nodes.memory_params import GROUNDING_FIELDS, KEYFRAME_FIELDS, PARAM_SPECS, PARAMS, odometry_prior
from m3_ros.pipeline import SWITCH_INTERVAL_S, MemoryPipeline, PipelineConfig
from m3_ros.srv import GroundQuery, MemoryIO
from m3_ros.stream import ApproximateSync, KeyframeSelectorConfig
from m3_ros.tf_buffer import ConnectivityError, ExtrapolationError, GapError, TransformError


def _rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryNode(Node):
    def __init__(self) -> None:
        super().__init__("memory_node")
        specs = {k: dataclasses.replace(PARAM_SPECS.get(k, Param(v)), default=v) for k, v in PARAMS.items()}
        p = declare_params(self, specs, self._apply_live)
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
            grounding=GroundingConfig(**{f: p[k] for k, f in GROUNDING_FIELDS.items()}),
            foundation_overrides={"clip_arch": p["clip_arch"], "clip_checkpoint": p["clip_checkpoint"],
                                  "siglip_path": p["siglip_path"]},
            refine_poses=bool(p["refine_poses"]),
        )
        cfg.tracking.prior = odometry_prior(p)
        self.pipeline = MemoryPipeline(cfg)
        self.odom_frame = p["odom_frame"]
        # the memory's frame: answers, the Gaussian cloud and markers are in it unless asked otherwise
        self.memory_frame = p["map_frame"] if p["refine_poses"] else self.odom_frame
        if p["refine_poses"] and self.memory_frame == self.odom_frame:
            raise ValueError(f"map_frame and odom_frame are both {self.odom_frame!r}; refine_poses needs two frames")
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
        # Poses come at each image's stamp from TF (odometry feeds the same buffer), so only
        # colour and depth are synchronised.
        self.sync = ApproximateSync(["color", "depth"], slop=float(p["sync_slop"]))
        # Once a detector publishes instances, each frame waits (up to instances_wait) for its own.
        self.instances: dict[float, LabeledInstanceArray] = {}
        self.waiting: dict[float, tuple] = {}  # stamp -> (colour, depth, steady time it arrived)
        self._frame_lock = threading.Lock()
        self._rejects = 0
        self._reject_counts: dict[str, int] = {}
        self._last_reject: dict[str, float] = {}
        self._rate_ref = (0, 0, time.monotonic())  # (memory, iteration, time) at the last status
        # markers and relevance image of the newest query, at most once per query_outputs_period_s
        self._outputs = LatestOnly(self._publish_query_outputs, lambda: float(self.p["query_outputs_period_s"]),
                                   "query-outputs", lambda e: self.get_logger().warning(f"query outputs: {e}"))
        self.info: CameraInfo | None = None
        self.stamps = convert.StampChecks(max_future_s=float(p["max_future_stamp_s"]))
        self._stamp_lock = threading.Lock()
        self._saved_state: tuple | None = None

        sensors = MutuallyExclusiveCallbackGroup()
        train = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        qos = sensor_qos(bool(p["reliable_sensors"]))
        self.create_subscription(Image, p["color_topic"], lambda m: self._on("color", m), qos, callback_group=sensors)
        self.create_subscription(Image, p["depth_topic"], lambda m: self._on("depth", m), qos, callback_group=sensors)
        # /tf in its own group: frame processing (ICP, conversion) in the sensors group took seconds on a
        # loaded machine, /tf's queue (100 samples, ~4 s) overflowed, and poses were interpolated across the
        # gap (10-30 cm off on the default walk). Intake only records; a sensors-group timer flushes frames.
        # Odometry is a pose source too (the odom -> base edge where no /tf carries it): same group.
        self._tf_new = threading.Event()
        poses = MutuallyExclusiveCallbackGroup()
        self.tf = TFListener(self, cache_time=float(p["tf_cache_s"]), callback_group=poses, on_update=self._tf_new.set)
        # a pose history as deep as /tf's (100, seconds at odometry rates): with the sensors' depth of 5
        # (0.25 s at 20 Hz) odometry samples were lost whenever 20 queued ground calls delayed intake
        self.create_subscription(Odometry, p["odom_topic"], self._on_odom,
                                 sensor_qos(bool(p["reliable_sensors"]), depth=100), callback_group=poses)
        self.create_subscription(CameraInfo, p["camera_info_topic"], self._on_info, qos, callback_group=sensors)
        self.create_subscription(LabeledInstanceArray, p["instances_topic"], self._on_instances, qos, callback_group=sensors)
        self.create_subscription(TransformStamped, p["mount_topic"], self._on_mount, latched_qos(), callback_group=sensors)

        self.status_pub = self.create_publisher(MemoryStatus, "memory/status", 10)
        self.cloud_pub = self.create_publisher(PointCloud2, "memory/gaussians", latched_qos())
        self.relevance_pub = self.create_publisher(Image, "memory/relevance_image", latched_qos())
        self.marker_pub = self.create_publisher(MarkerArray, "memory/grounded_markers", latched_qos())
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", tf_qos()) if p["refine_poses"] else None

        # Deep request queue: the default depth (10) silently drops calls when 20 clients ask at once.
        self.create_service(GroundQuery, "ground", self._on_ground, callback_group=services,
                            qos_profile=QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.create_service(MemoryIO, "memory/save", self._on_save, callback_group=services)
        self.create_service(MemoryIO, "memory/load", self._on_load, callback_group=services)
        self.create_service(Trigger, "memory/reset", self._on_reset, callback_group=services)
        # Training and reporting pace on the machine's steady clock: with use_sim_time a ROS timer
        # would stop whenever /clock does (before the simulator starts, or when it pauses).
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(float(p["train_period"]), self._on_train, callback_group=train, clock=steady)
        self.create_timer(0.02, self._flush_tick, callback_group=sensors, clock=steady)
        # Each periodic report in its own group: in the reentrant services group a slow tick (waiting
        # for a lock) was joined by the next ones until they held every executor thread.
        self.create_timer(float(p["status_period"]), self._on_status, callback_group=MutuallyExclusiveCallbackGroup(),
                          clock=steady)
        self.create_timer(float(p["cloud_period"]), self._on_cloud, callback_group=MutuallyExclusiveCallbackGroup(),
                          clock=steady)
        if float(p["autosave_period_s"]) > 0:
            if not (p["autosave_path"] or p["memory_dir"]):
                raise ValueError("autosave_period_s > 0 needs autosave_path or memory_dir")
            self.create_timer(float(p["autosave_period_s"]), self._on_autosave,
                              callback_group=MutuallyExclusiveCallbackGroup(), clock=steady)

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
            self.info = msg
        except ValueError as e:
            self._reject(str(e))

    def _apply_live(self, changed: dict[str, object]) -> None:
        """Parameters accepted by the on-set callback take effect here (the rest are rejected there)."""
        self.p.update(changed)
        if "training" in changed:  # once this returns, no step runs (one in flight has finished)
            self.pipeline.pause_training(not changed["training"])
        for k, v in changed.items():
            if k in GROUNDING_FIELDS:
                setattr(self.pipeline.cfg.grounding, GROUNDING_FIELDS[k], v)
            elif k in KEYFRAME_FIELDS:
                setattr(self.pipeline.cfg.keyframes, KEYFRAME_FIELDS[k], float(v))
        self.get_logger().info(f"parameters changed: {changed}")

    def _on_odom(self, msg: Odometry) -> None:
        try:
            self._check_stamp("odom", msg)
            self.tf.add_odometry(msg, self.odom_frame, self.p["base_frame"])
        except ValueError as e:
            self._reject(str(e))

    def _on_mount(self, msg: TransformStamped) -> None:
        parent = msg.header.frame_id or self.p["base_frame"]
        if parent != self.p["base_frame"]:
            self.get_logger().warning(f"camera mount on {self.p['mount_topic']} is from {parent!r}, not base_frame "
                                      f"{self.p['base_frame']!r}", throttle_duration_sec=5.0)
        try:
            T = convert.transform_msg_to_matrix(msg.transform, "camera mount")
            if msg.child_frame_id:
                self.tf.set_transform(parent, msg.child_frame_id, 0.0, T, static=True)
            self.T_base_cam = T
        except ValueError as e:
            self._reject(f"camera mount: {e}")

    def _on_instances(self, msg: LabeledInstanceArray) -> None:
        t = convert.stamp_to_sec(msg.header.stamp)
        with self._frame_lock:
            self.instances[t] = msg
            for old in sorted(self.instances)[:-20]:
                del self.instances[old]
        self._flush_waiting()

    def _flush_tick(self) -> None:
        # after new poses, and while frames wait (one may have waited out pose_wait with nothing new arriving)
        if self._tf_new.is_set() or self.waiting:
            self._tf_new.clear()
            self._flush_waiting()

    def _flush_waiting(self) -> None:
        """Process waiting frames whose instances arrived (or waited long enough, or there is no
        detector) and whose pose at the image stamp is known (or will not come)."""
        ready = []
        wait = float(self.p["pose_wait"])
        with self._frame_lock:
            newest = max(self.waiting, default=-np.inf)
            now = time.monotonic()
            for t in sorted(self.waiting):
                match = self._instances_for(t)
                if match is None and self.instances and newest - t <= float(self.p["instances_wait"]):
                    continue
                color, depth, arrived = self.waiting[t]
                try:
                    pose = self._pose_at(color, depth, t)
                except TransformError as e:
                    late = not isinstance(e, (ExtrapolationError, GapError)) or getattr(e, "future", False)
                    # odometry / TF for this stamp may still arrive: newer frames are not pose_wait ahead yet,
                    # or it came in less than pose_wait ago (poses are taken in by their own callback group, so
                    # a sample sent before the image can be recorded after it; test_frames, publishing faster than
                    # real time, showed this)
                    if late and (newest - t <= wait or now - arrived < wait):
                        continue
                    pose = e
                del self.waiting[t]
                ready.append(((color, depth), pose, match))
        for frame, pose, inst in ready:
            # the text before the first colon (40 characters at most) is the kind: throttled and counted apart
            if isinstance(pose, ExtrapolationError) and pose.future:
                self._reject(f"no camera pose at the image stamp (late): odometry / TF never reached it: {pose}")
            elif isinstance(pose, ExtrapolationError):
                self._reject(f"no camera pose at the image stamp (early): odometry / TF start after it: {pose}")
            elif isinstance(pose, GapError):
                self._reject(f"no camera pose at the image stamp (gap): {pose}")
            elif isinstance(pose, TransformError):
                self._reject(f"no camera pose at the image stamp (no tf): {pose}")
            else:
                self._process(*frame, *pose, inst)

    def _pose_at(self, color: Image, depth: Image, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(T_odom_base, T_odom_cam) [4, 4] at stamp t: TF (odometry included), interpolated."""
        cam = self.p["camera_frame"] or color.header.frame_id
        if not cam:
            raise ConnectivityError("the colour image has no header.frame_id and the camera_frame parameter is empty")
        for what, fid in (("colour image", color.header.frame_id), ("depth image", depth.header.frame_id)):
            if fid and fid != cam:
                self.get_logger().warning(f"{what} frame_id {fid!r} is not the camera frame {cam!r} (camera_frame "
                                          f"parameter or the colour image's): depth must be registered to colour",
                                          throttle_duration_sec=5.0)
        odom, base = self.odom_frame, self.p["base_frame"]
        T_odom_base = self.tf.lookup(odom, base, t)
        try:
            T_odom_cam = self.tf.lookup(odom, cam, t)
        except ConnectivityError as e:
            if self.T_base_cam is None:
                raise ConnectivityError(
                    f"no camera mount: no transform {base} -> {cam} on /tf_static, topic {self.p['mount_topic']} "
                    f"or parameter camera_mount ({e})") from e
            T_odom_cam = T_odom_base @ self.T_base_cam
        for frame in (base, cam):  # the moving edges: a pose across a hole in them is made up
            self.tf.check_gap(frame, t, float(self.p["tf_max_gap_s"]))
        return T_odom_base, T_odom_cam

    def _instances_for(self, stamp: float) -> LabeledInstanceArray | None:
        if not self.instances:
            return None
        t_near = min(self.instances, key=lambda t: abs(t - stamp))
        return self.instances[t_near] if abs(t_near - stamp) <= float(self.p["instances_slop"]) else None

    def _reject(self, why: str) -> None:
        """Log a dropped input once per kind of problem every 5 s (a bad stream would flood the log)."""
        kind = why.split(":")[0][:40]
        now = time.monotonic()
        with self._stamp_lock:  # called from the sensors and the pose groups
            self._rejects += 1
            self._reject_counts[kind] = self._reject_counts.get(kind, 0) + 1
            log = now - self._last_reject.get(kind, -np.inf) >= 5.0
            if log:
                self._last_reject[kind] = now
            n = self._rejects
        if log:
            self.get_logger().warning(f"dropped input ({n} so far): {why}")

    def _check_stamp(self, name: str, msg) -> None:
        """convert.StampChecks against this node's clock; a jump back restarts the time-ordered state."""
        now = self.get_clock().now().nanoseconds * 1e-9
        t = convert.stamp_to_sec(msg.header.stamp)
        with self._stamp_lock:  # odometry (pose group) and images (sensors group) check from two threads
            self.stamps.check(name, t, now if now > 0 else None)  # 0: simulated time not started yet
            jumped = self.stamps.jumped
        if jumped:  # a bag played again or a simulator restarted
            # throttled as _reject is: a bad stream jumps at every message (a fuzzed one logged 33 lines in 7 s)
            self.get_logger().warning(f"{name} stamps jumped back to {t:.3f}; restarting time sync",
                                      throttle_duration_sec=5.0)
            self.sync = ApproximateSync(["color", "depth"], slop=float(self.p["sync_slop"]))
            self.pipeline.selector.reset()

    def _on(self, name: str, msg) -> None:
        try:
            self._check_stamp(name, msg)
            match = self.sync.add(name, convert.stamp_to_sec(msg.header.stamp), msg)
        except ValueError as e:
            return self._reject(str(e))
        if match is None:
            return
        with self._frame_lock:
            self.waiting[convert.stamp_to_sec(match["color"].header.stamp)] = (match["color"], match["depth"],
                                                                               time.monotonic())
        self._flush_waiting()

    def _process(self, color: Image, depth: Image, T_odom_base: np.ndarray, T_odom_cam: np.ndarray,
                 inst_msg: LabeledInstanceArray | None) -> None:
        if self.K is None:
            return self._reject("no camera_info received yet")
        try:
            rgb = convert.rgb_from_image(color)
            if self.info is not None:
                convert.check_camera_info_size(self.info, rgb.shape[:2])
            d = convert.depth_from_image(depth)
            if rgb.shape[:2] != d.shape:
                raise ValueError(f"image size: colour {rgb.shape[:2]} and depth {d.shape} differ in size")
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
        if not self.p["training"]:
            self.pipeline.train_for(0.0, max_steps=0)  # new keyframes still join the memory, untrained
            return
        self.pipeline.train_for(float(self.p["train_budget"]))

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
        # from the iteration count, read here only: a step counter shared with the training thread
        # lost its resets (`+=` read it before a train call of seconds and wrote it back after)
        # and the published rate grew with the iteration (27 Hz reported while 1 step/s ran)
        mem_id, last_it, last_t = self._rate_ref
        steps = int(s["iteration"]) - last_it if mem_id == id(self.pipeline.memory) else 0
        msg.train_rate_hz = float(max(steps, 0) / max(now - last_t, 1e-6))
        msg.train_time_s = float(s["train_time_s"])
        msg.ready = bool(self.pipeline.ready and s["gaussians"] > 0)
        self._rate_ref = (id(self.pipeline.memory), int(s["iteration"]), now)
        self.status_pub.publish(msg)
        self._publish_diagnostics(msg)
        self._publish_map_odom()

    def _publish_map_odom(self) -> None:
        """map -> odom on /tf (REP-105), post-dated by one status period so that lookups at the
        current time between two publications do not extrapolate (as AMCL's transform_tolerance)."""
        if self.tf_pub is None:
            return
        t, q = matrix_to_pose(self.pipeline.T_map_odom)
        tf = TransformStamped(child_frame_id=self.odom_frame)
        stamp = self.get_clock().now().nanoseconds * 1e-9 + float(self.p["status_period"])
        tf.header = Header(stamp=convert.sec_to_stamp(stamp), frame_id=self.memory_frame)
        tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = (float(v) for v in t)
        tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z, tf.transform.rotation.w = (
            float(v) for v in q)
        self.tf_pub.publish(TFMessage(transforms=[tf]))

    def _publish_diagnostics(self, status: MemoryStatus) -> None:
        """/diagnostics: training rate, dropped inputs per cause, bank rows, RSS."""
        st = DiagnosticStatus(name=f"{self.get_name()}: memory", hardware_id=self.get_fully_qualified_name())
        values = {"ready": str(status.ready), "training": str(bool(self.p["training"])),
                  "train_rate_hz": f"{status.train_rate_hz:.2f}", "train_iteration": str(status.train_iteration),
                  "keyframes": str(status.keyframes), "gaussians": str(status.gaussians),
                  "rss_mb": f"{_rss_mb():.1f}", "dropped_total": str(self._rejects),
                  "tf_backend": self.tf.backend, "urgent_train_steps": str(self.pipeline.urgent_steps)}
        values.update({f"bank_rows/{m}": str(r) for m, r in zip(status.models, status.bank_rows)})
        values.update({f"dropped/{k}": str(n) for k, n in sorted(self._reject_counts.items())})
        if self.p["refine_poses"]:  # drift correction: ICP results and the reason of the last refusal
            values.update({f"tracking/{k}": str(v) for k, v in self.pipeline.tracker.stats().items()})
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        if not status.ready:
            st.level, st.message = DiagnosticStatus.WARN, "no memory yet (models loading or no keyframe)"
        elif self.p["training"] and status.train_rate_hz == 0.0:
            st.level, st.message = DiagnosticStatus.WARN, "training is on but no train step ran"
        else:
            st.level, st.message = DiagnosticStatus.OK, f"{status.keyframes} keyframes, {status.gaussians} Gaussians"
        self.diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[st]))

    def _on_autosave(self) -> None:
        """Save a changed memory atomically (checkpoint.py: temp dir + rename); never fatal."""
        mem = self.pipeline.memory
        if mem is None or mem.n_gaussians == 0:
            return
        state = (id(mem), mem.iteration, mem.n_gaussians)
        if state == self._saved_state:
            return
        path = self.p["autosave_path"] or self.p["memory_dir"]
        t0 = time.monotonic()
        try:
            self.pipeline.save(path)
        except (ValueError, OSError) as e:
            self.get_logger().warning(f"autosave to {path} failed: {e}")
            return
        self._saved_state = state
        self.get_logger().info(f"autosaved memory to {path} ({state[2]} Gaussians, iteration {state[1]}) "
                               f"in {time.monotonic() - t0:.2f} s")

    def _on_cloud(self) -> None:
        mem = self.pipeline.memory
        if mem is None or mem.n_gaussians == 0 or self.cloud_pub.get_subscription_count() == 0:
            return
        # one published snapshot: the live tensors change size under a train step's densify / prune
        # (reading opacities and means one after the other crashed the node: 50000 vs 49068 rows)
        snap = mem.snapshot()
        keep = snap.opacities.cpu().numpy() >= float(self.p["cloud_min_opacity"])
        means = snap.means.cpu().numpy()[keep]
        header = Header(stamp=self.last_header.stamp, frame_id=self.memory_frame)
        self.cloud_pub.publish(convert.points_to_cloud(means, header))

    # ---- services -----------------------------------------------------------------
    def _frame_transform(self, frame_id: str) -> np.ndarray:
        """T_frame_memory for the supported output frames (the memory lives in memory_frame)."""
        if frame_id in ("", self.memory_frame):
            return np.eye(4)
        T_odom_memory = invert(self.pipeline.T_map_odom)  # the identity without refinement
        if frame_id == self.odom_frame:
            return T_odom_memory
        if frame_id == self.p["base_frame"] and self.last_T_odom_base is not None:
            return invert(self.last_T_odom_base) @ T_odom_memory  # where the robot stood at the last frame
        try:  # any frame on /tf, at its newest sample
            return self.tf.lookup(frame_id, self.odom_frame, None) @ T_odom_memory
        except TransformError as e:
            frames = sorted({self.memory_frame, self.odom_frame})
            raise ValueError(f"unknown frame '{frame_id}' (supported: {', '.join(repr(f) for f in frames)}, "
                             f"'{self.p['base_frame']}' and frames on /tf: {e})") from e

    def _on_ground(self, req: GroundQuery.Request, res: GroundQuery.Response) -> GroundQuery.Response:
        t0 = time.monotonic()
        try:
            T = self._frame_transform(req.frame_id)
            out = self.pipeline.ground(req.query, int(req.top_k) or 1)
        except ValueError as e:
            res.success, res.message = False, str(e)
            self.get_logger().info(f"ground('{req.query[:60]}') rejected: {e}")
            return res
        pts = out.points
        in_view = ""
        if req.in_view:  # the last metre: the best point found again in the current frames, if it is
            try:
                found, why = self.pipeline.refine_in_view(out.points[0])
            except ValueError as e:  # the memory changed under the answer (reset, load): keep the answer
                found, why = None, str(e)
            if found is not None:
                pts = np.concatenate([found.point[None], out.points[1:]])
            res.in_view, in_view = found is not None, f"; in view: {why}"
        pts = transform_points(T, pts)
        frame = req.frame_id or self.memory_frame
        for p in pts:
            ps = PointStamped()
            ps.header = Header(stamp=self.last_header.stamp, frame_id=frame)
            ps.point.x, ps.point.y, ps.point.z = (float(v) for v in p)
            res.points.append(ps)
        res.scores = [float(s) for s in out.scores]
        res.model = out.model
        res.success = True
        weak = f", weak match: its region has {len(out.region_points[0])} points" if out.weak else ""
        res.message = (f"grounded '{req.query}' with text model {out.model} ({out.mode} mode, "
                       f"{out.n_candidates} candidate points{weak}, {1e3 * (time.monotonic() - t0):.0f} ms){in_view}")
        self.get_logger().info(res.message)
        # markers and the relevance image go out after the answer: the client never waits for them
        self._outputs.submit(req.query, out, pts, frame)
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
            self._publish_relevance(query)

    def _publish_relevance(self, query: str) -> None:
        """memory/relevance_image: the query's relevance from the robot's current camera, at half resolution."""
        H, W = self.last_size
        h, w = max(H // 2, 8), max(W // 2, 8)
        K = scale_intrinsics(self.K, w / W, h / H)
        try:
            T_memory_cam = self.pipeline.T_map_odom @ self.last_T_odom_cam  # the identity without refinement
            rel = self.pipeline.relevance_map(query, T_memory_cam, K, w, h)
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
        self._outputs.close()
        self.pipeline.close()


def main(args: list[str] | None = None) -> int:
    # the executor's thread is pure Python (~70 % of a core under 20 clients): see SWITCH_INTERVAL_S
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return spin_node(MemoryNode, threads=5, args=args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Small helpers shared by the thin nodes: QoS, clean main(), TF lookups, parameter declarations."""
from __future__ import annotations

import bisect
import faulthandler
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)


def sensor_qos(reliable: bool, depth: int = 5) -> QoSProfile:
    """BEST_EFFORT sensor QoS as a real camera driver publishes; RELIABLE when tests count."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else qos_profile_sensor_data.reliability,
                      durability=qos_profile_sensor_data.durability)


def latched_qos(depth: int = 1) -> QoSProfile:
    """RELIABLE + TRANSIENT_LOCAL: late joiners get the last message (like /tf_static)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def spin_node(make_node: Callable[[], Node], threads: int = 3, args: list[str] | None = None) -> int:
    """Run one node on a multi-threaded executor; end cleanly on Ctrl-C or external shutdown.

    ``kill -USR1 <pid>`` writes every thread's Python stack to stderr (a stuck callback shows there).
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


class LatestOnly:
    """Runs ``fn(*args)`` on a thread of its own for the newest ``submit``ted arguments, one call at a
    time and at most once per ``min_period_s()`` seconds; arguments overtaken while waiting are
    dropped. For outputs of which only the newest matters (markers, a relevance image): under a
    stream of queries they ran back to back and took a core from training (test_autosave_load).
    """

    def __init__(self, fn: Callable[..., None], min_period_s: Callable[[], float], name: str,
                 on_error: Callable[[Exception], None] | None = None):
        self._fn, self._period, self._on_error = fn, min_period_s, on_error
        self._cv = threading.Condition()
        self._args: tuple | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, *args) -> None:
        with self._cv:
            self._args = args
            self._cv.notify()

    def _run(self) -> None:
        last = float("-inf")
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._args is not None or self._closed)
                if self._closed:
                    return
                # wait out the period; submissions meanwhile replace the arguments
                self._cv.wait_for(lambda: self._closed, timeout=max(0.0, last + self._period() - time.monotonic()))
                if self._closed:
                    return
                args, self._args = self._args, None
            try:
                self._fn(*args)
            except Exception as e:  # a failed output never stops the next ones
                if self._on_error is not None:
                    self._on_error(e)
            last = time.monotonic()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=5.0)


# ---------------------------------------------------------------------- TF
def on_executor(node: Node, start: Callable[[], "rclpy.task.Future"]) -> "rclpy.task.Future":
    """Issue an rclpy async request (``start`` sends it and returns its Future) from the thread that
    spins ``node``; returns a Future with the same result.

    rclpy 7.1's ActionClient files a goal, result or cancel request under its sequence number only
    after sending it, so a spinning thread that takes the response first drops it ("Ignoring
    unexpected goal response", ros2/rclpy#1123) and the Future never completes. Sent from the
    spinning thread, the response cannot overtake the filing, so the executor must be single-threaded.
    (Service clients hold a lock and need none of this.)
    """
    async def task():
        return await start()
    if node.executor is None:
        raise RuntimeError(f"node {node.get_name()!r} is not added to an executor")
    return node.executor.create_task(task)


def tf_qos() -> QoSProfile:
    """What tf2_ros's TransformListener uses for /tf."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)


def tf_static_qos() -> QoSProfile:
    """What tf2_ros's static broadcaster and listener use for /tf_static (latched)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TFListener:
    """Transforms from ``/tf`` and ``/tf_static`` for one node, looked up at a stamp.

    The buffer is tf2_ros's where it imports (a ROS machine), else ``m3_ros.tf_buffer``
    (same semantics: interpolation at the stamp, errors instead of extrapolation). Both
    are fed from this class's own subscriptions, so ``on_update`` can tell the node that
    new transforms arrived (frames waiting for their pose are then retried). Odometry and
    a mount parameter can be added as fallbacks with :meth:`set_transform`. Lookup errors
    are ``m3_ros.tf_buffer.TransformError`` (a ValueError) in both cases.
    """

    def __init__(self, node: Node, cache_time: float = 10.0, callback_group=None,
                 on_update: Callable[[], None] | None = None):
        from m3_ros.tf_buffer import TransformBuffer
        from tf2_msgs.msg import TFMessage
        self._node = node
        self._on_update = on_update
        self._lock = threading.Lock()  # the fallback buffer is read and fed from different executor threads
        self._cache_time = float(cache_time)
        self._stamps: dict[str, list[float]] = {}  # child frame -> sorted stamps of its dynamic samples (gaps)
        try:
            import tf2_ros  # noqa: F401
            from rclpy.duration import Duration
            self._tf2 = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time))
            self.backend = "tf2_ros"
        except ImportError:
            self._tf2 = None
            self._core = TransformBuffer(cache_time=cache_time)
            self.backend = "m3_ros.tf_buffer"
        node.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False), tf_qos(),
                                 callback_group=callback_group)
        node.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True), tf_static_qos(),
                                 callback_group=callback_group)

    def _record(self, child: str, stamp: float) -> None:
        with self._lock:
            st = self._stamps.setdefault(child, [])
            if not st or stamp > st[-1]:
                st.append(stamp)
            else:
                i = bisect.bisect_left(st, stamp)
                if i == len(st) or st[i] != stamp:
                    st.insert(i, stamp)
            drop = bisect.bisect_left(st, st[-1] - self._cache_time)
            if drop > 0:
                del st[:drop]

    def check_gap(self, child: str, stamp: float, max_gap: float) -> None:
        """GapError when ``stamp`` lies between two samples of the dynamic edge into ``child`` that are
        more than ``max_gap`` seconds apart (a lookup there interpolates across missing data)."""
        from m3_ros.tf_buffer import GapError
        with self._lock:
            st = self._stamps.get(child, [])
            i = bisect.bisect_left(st, stamp)
            if 0 < i < len(st) and st[i] != stamp and st[i] - st[i - 1] > max_gap:
                raise GapError(f"no {child} pose near t={stamp:.3f}: its samples jump from {st[i - 1]:.3f} to "
                               f"{st[i]:.3f} ({st[i] - st[i - 1]:.2f} s > {max_gap:.2f} s; lost /tf or odometry)")

    def _on_tf(self, msg, static: bool) -> None:
        from m3_ros.nodes import convert
        for tf in msg.transforms:
            try:
                if self._tf2 is not None:
                    convert.transform_msg_to_matrix(tf.transform)  # the same checks as the fallback
                    if static:
                        self._tf2.set_transform_static(tf, "tf_static")
                    else:
                        self._tf2.set_transform(tf, "tf")
                else:
                    T = convert.transform_msg_to_matrix(tf.transform)
                    with self._lock:
                        self._core.set_transform(tf.header.frame_id, tf.child_frame_id,
                                                 convert.stamp_to_sec(tf.header.stamp), T, static=static)
                if not static:  # after the buffer took it: a malformed one leaves no stamp
                    self._record(tf.child_frame_id, convert.stamp_to_sec(tf.header.stamp))
            except ValueError as e:
                self._node.get_logger().warning(
                    f"dropped {'/tf_static' if static else '/tf'} transform {tf.header.frame_id} -> "
                    f"{tf.child_frame_id}: {e}", throttle_duration_sec=5.0)
        if self._on_update is not None:
            self._on_update()

    def set_transform(self, parent: str, child: str, stamp: float, T_parent_child, static: bool = False) -> None:
        """Add one transform (odometry, a mount parameter); ValueError when it is malformed."""
        if self._tf2 is None:
            with self._lock:
                self._core.set_transform(parent, child, stamp, T_parent_child, static=static)
            if not static:
                self._record(child, float(stamp))
            return
        from geometry_msgs.msg import TransformStamped
        from m3_ros.geometry import matrix_to_pose
        from m3_ros.nodes import convert
        pos, q = matrix_to_pose(T_parent_child)
        tf = TransformStamped()
        tf.header.frame_id, tf.child_frame_id = parent, child
        tf.header.stamp = convert.sec_to_stamp(stamp)
        tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = (float(v) for v in pos)
        r = tf.transform.rotation
        r.x, r.y, r.z, r.w = (float(v) for v in q)
        if static:
            self._tf2.set_transform_static(tf, "m3_ros")
        else:
            self._tf2.set_transform(tf, "m3_ros")
            self._record(child, float(stamp))

    def lookup(self, target: str, source: str, stamp: float | None):
        """T_target_source [4, 4] at ``stamp`` seconds (None: the newest); TransformError otherwise."""
        if self._tf2 is None:
            with self._lock:
                return self._core.lookup(target, source, stamp)
        import tf2_ros
        from rclpy.time import Time
        from m3_ros.nodes import convert
        from m3_ros.tf_buffer import ConnectivityError, ExtrapolationError, TransformError
        t = Time() if stamp is None else Time(nanoseconds=int(round(stamp * 1e9)))
        try:
            tf = self._tf2.lookup_transform(target, source, t)
        except tf2_ros.ExtrapolationException as e:
            raise ExtrapolationError(f"{target} <- {source}: {e}", future="future" in str(e)) from e
        except (tf2_ros.ConnectivityException, tf2_ros.LookupException) as e:
            raise ConnectivityError(f"{target} <- {source}: {e}") from e
        except tf2_ros.TransformException as e:
            raise TransformError(f"{target} <- {source}: {e}") from e
        return convert.transform_msg_to_matrix(tf.transform)

    def add_odometry(self, msg, odom_frame: str, base_frame: str) -> None:
        """nav_msgs/Odometry as the odom -> base edge; warns when its frame ids are not the expected ones."""
        from m3_ros.nodes import convert
        parent, child = msg.header.frame_id or odom_frame, msg.child_frame_id or base_frame
        if parent != odom_frame or child != base_frame:
            self._node.get_logger().warning(
                f"odometry is {parent!r} -> {child!r} but odom_frame/base_frame are {odom_frame!r}/"
                f"{base_frame!r}: using the message's frames, so poses need a TF chain to those frames",
                throttle_duration_sec=5.0)
        self.set_transform(parent, child, convert.stamp_to_sec(msg.header.stamp),
                           convert.pose_msg_to_matrix(msg.pose.pose), static=False)
        if self._on_update is not None:
            self._on_update()


# ---------------------------------------------------------------------- parameters
@dataclass
class Param:
    """One node parameter: default, what it means, its range and whether it may change live."""

    default: object
    description: str = ""
    range: tuple[float, float] | None = None
    """Inclusive (min, max) for int/float parameters (checked by rclpy on every set)."""
    choices: tuple[str, ...] | None = None
    """Allowed values of a string parameter."""
    live: bool = False
    """May change while the node runs (applied by the node's on-set callback)."""


def declare_params(node: Node, specs: dict[str, "Param"],
                   apply_live: Callable[[dict[str, object]], None] | None = None) -> dict[str, object]:
    """Declare every parameter with a descriptor; return {name: value}.

    Sets of parameters that are not ``live`` are rejected with a reason naming them; live
    ones are checked (choices) and handed to ``apply_live`` once accepted.
    """
    from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                    SetParametersResult)
    from rclpy.parameter import Parameter

    for name, spec in specs.items():
        d = ParameterDescriptor(description=spec.description + ("" if spec.live else " (fixed at start-up)"))
        if spec.range is not None:
            lo, hi = spec.range
            if isinstance(spec.default, bool):
                raise ValueError(f"parameter {name}: a range on a bool")
            if isinstance(spec.default, int):
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
            else:
                d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        if spec.choices:
            d.additional_constraints = f"one of: {', '.join(spec.choices)}"
        value = node.declare_parameter(name, spec.default, d).value
        if spec.choices and value not in spec.choices:
            raise ValueError(f"parameter {name}={value!r} is not one of {list(spec.choices)}")
    live = sorted(n for n, s in specs.items() if s.live)

    def on_set(params: list[Parameter]) -> SetParametersResult:
        for prm in params:
            spec = specs.get(prm.name)
            if spec is None:
                continue  # e.g. use_sim_time: rclpy's own
            if not spec.live:
                return SetParametersResult(successful=False, reason=(
                    f"parameter '{prm.name}' is fixed at start-up: restart the node to change it "
                    f"(live parameters: {', '.join(live)})"))
            if spec.choices and prm.value not in spec.choices:
                return SetParametersResult(successful=False, reason=(
                    f"parameter '{prm.name}' must be one of {list(spec.choices)}, got {prm.value!r}"))
        return SetParametersResult(successful=True)

    def on_done(params: list[Parameter]) -> None:
        changed = {p.name: p.value for p in params if p.name in specs}
        if changed and apply_live is not None:
            apply_live(changed)

    node.add_on_set_parameters_callback(on_set)
    node.add_post_set_parameters_callback(on_done)
    return {n: node.get_parameter(n).value for n in specs}

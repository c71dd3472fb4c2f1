"""Malformed sensor input reaches a memory_node process: each is dropped with a clear reason logged
once per cause, the node lives on and keeps answering. A hypothesis test then fuzzes every input
topic of the same running node with random messages."""
import os
import time

import numpy as np
import pytest
import rclpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from m3_ros.msg import LabeledInstance, LabeledInstanceArray
from m3_ros.nodes import convert
from m3_ros.procs import CONFIG_DIR, NodeProcess, wait_for
from m3_ros.srv import GroundQuery

QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
K = [30.0, 0, 16, 0, 30.0, 12, 0, 0, 1]
# The label model alone: this test is about inputs, and it starts in a few seconds.
PARAMS = {"reliable_sensors": True, "camera_mount": "[0.2, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5]",
          "models": "[minilm_labels]", "channels": "[16]", "thetas": "[1.0]", "pose_wait": 0.2}


class Sender:
    def __init__(self):
        self.node = rclpy.create_node("bad_input_sender")
        n = self.node
        self.info = n.create_publisher(CameraInfo, "camera/color/camera_info", QOS)
        self.color = n.create_publisher(Image, "camera/color/image_raw", QOS)
        self.depth = n.create_publisher(Image, "camera/depth/image_raw", QOS)
        self.odom = n.create_publisher(Odometry, "odom", QOS)
        self.inst = n.create_publisher(LabeledInstanceArray, "camera/instances", QOS)
        self.ground = n.create_client(GroundQuery, "ground")
        self.dropped_total, self.n_diag = 0, 0  # the node's own counter of refused inputs, from /diagnostics
        self.dropped_kinds: dict[str, int] = {}  # per cause (the text before the reason's first colon)
        self.before_fuzzing, self.kinds_before_fuzzing = None, {}
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        wait_for(lambda: all(p.get_subscription_count() > 0
                             for p in (self.info, self.color, self.depth, self.odom, self.inst)), 60,
                 what="memory_node subscriptions")
        assert self.ground.wait_for_service(timeout_sec=60)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        self.n_diag += 1
        for status in msg.status:
            for kv in status.values:
                if kv.key.startswith("dropped/"):
                    self.dropped_kinds[kv.key[len("dropped/"):]] = int(kv.value)
                if kv.key == "dropped_total":
                    self.dropped_total = int(kv.value)

    def spin_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
            rclpy.spin_once(self.node, timeout_sec=0.1)

    def settled_total(self, timeout: float = 30.0) -> int:
        """dropped_total once two /diagnostics messages in a row agree (the queues have drained)."""
        seen: list[int] = []
        n0 = self.n_diag
        deadline = time.monotonic() + timeout
        while len(seen) < 2 or seen[-1] != seen[-2]:
            assert time.monotonic() < deadline, f"dropped_total did not settle: {seen}"
            rclpy.spin_once(self.node, timeout_sec=0.1)
            if self.n_diag != n0:
                n0 = self.n_diag
                seen.append(self.dropped_total)
        return seen[-1]

    def frame(self, t, color=None, depth=None, odom_q=(0.0, 0.0, 0.0, 1.0), odom=True):
        color = color or convert.array_to_image(np.zeros((24, 32, 3), np.uint8), "rgb8")
        depth = depth or convert.array_to_image(np.ones((24, 32), np.float32), "32FC1")
        stamp = convert.sec_to_stamp(t)
        color.header = Header(stamp=stamp, frame_id="camera_color_optical_frame")
        depth.header = Header(stamp=stamp, frame_id="camera_color_optical_frame")
        if odom:
            od = Odometry(header=Header(stamp=stamp, frame_id="odom"), child_frame_id="base_link")
            o = od.pose.pose.orientation
            o.x, o.y, o.z, o.w = odom_q
            self.odom.publish(od)
        self.color.publish(color)
        self.depth.publish(depth)

    def call_ground(self, query="duck", timeout=60.0):
        fut = self.ground.call_async(GroundQuery.Request(query=query, top_k=1))
        rclpy.spin_until_future_complete(self.node, fut, timeout_sec=timeout)
        assert fut.done(), "ground was not answered"
        return fut.result()


@pytest.fixture(scope="module")
def node_and_sender(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("bad_input")
    with NodeProcess("memory_node", dict(os.environ), log_dir, params_file=CONFIG_DIR / "m3.yaml",
                     params=PARAMS) as mem:
        rclpy.init()
        sender = Sender()
        try:
            yield mem, sender
        finally:
            sender.node.destroy_node()
            rclpy.shutdown()


def test_malformed_input_is_dropped_with_reasons(node_and_sender):
    mem, s = node_and_sender
    wait_for(lambda: "models loaded" in mem.log_text(), 120, what="models loaded")
    clock = iter(np.arange(1.0, 1000.0, 1.0))  # increasing stamps, so no case trips the order check

    def until(reason, send, timeout=30.0):
        """send() every 0.3 s until the node logs reason (BEST_EFFORT-sized queues may drop a burst)."""
        deadline = time.monotonic() + timeout
        while reason not in mem.log_text():
            assert time.monotonic() < deadline, f"no log line {reason!r}:\n{mem.log_text()[-3000:]}"
            send()
            time.sleep(0.3)

    until("K is missing", lambda: s.info.publish(CameraInfo(width=32, height=24)))  # K all zeros
    distorted = CameraInfo(width=32, height=24, k=K, d=[0.1, 0.0, 0.0, 0.0, 0.0], distortion_model="plumb_bob")
    until("distorted images are not supported", lambda: s.info.publish(distorted))
    for _ in range(5):  # the same problem again and again is logged once (per 5 s)
        s.info.publish(distorted)
    until("camera_info is 64x48 but the colour image is 32x24",
          lambda: (s.info.publish(CameraInfo(width=64, height=48, k=K)), s.frame(next(clock))))
    good_info = CameraInfo(width=32, height=24, k=K)
    yuv = Image(height=24, width=32, encoding="yuv422", step=64, data=bytes(24 * 64))
    cases = [
        ("unsupported image encoding 'yuv422'", dict(color=yuv)),
        ("differ in size", dict(depth=convert.array_to_image(np.ones((10, 10), np.float32), "32FC1"))),
        ("orientation has non-finite values", dict(odom_q=(float("nan"), 0.0, 0.0, 1.0))),
        ("is not a unit quaternion (norm 3)", dict(odom_q=(0.0, 0.0, 0.0, 3.0))),
        ("depth: no valid pixel", dict(depth=convert.array_to_image(np.full((24, 32), np.nan, np.float32), "32FC1"))),
        ("no camera pose at the image stamp", dict(odom=False)),  # a frame without odometry
    ]
    for reason, kw in cases:
        until(reason, lambda kw=kw: (s.info.publish(good_info), s.frame(next(clock), **kw)))
    until("ahead of this node's clock", lambda: s.frame(time.time() + 3600.0))
    t = next(clock) + 100.0
    until("is older than the previous one", lambda: (s.frame(t + 1.0), s.frame(t)))  # out of order
    assert mem.log_text().count("distorted images are not supported") == 1, mem.log_text()
    assert mem.alive(), mem.log_text()
    res = s.call_ground()  # good frames between the bad ones may have made a keyframe of a black image
    assert res.success or any(w in res.message for w in ("memory is empty", "no keyframe carried its features")), res
    s.before_fuzzing = s.settled_total()
    s.kinds_before_fuzzing = dict(s.dropped_kinds)


def images(max_side=40):
    encodings = st.sampled_from(["rgb8", "bgr8", "rgba8", "mono8", "32FC1", "16UC1", "mono16", "yuv422", "", "8UC3"])
    return st.builds(lambda enc, h, w, step, data, be: Image(height=h, width=w, encoding=enc, step=step, data=data,
                                                               is_bigendian=be),
                     encodings, st.integers(0, max_side), st.integers(0, max_side), st.integers(0, 200),
                     st.binary(max_size=4000), st.integers(0, 1))


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
stamps = st.builds(lambda sec, ns: (sec, ns), st.integers(-(2 ** 31), 2 ** 31 - 1), st.integers(0, 2 ** 32 - 1))


def _header(stamp, frame="camera_color_optical_frame"):
    from builtin_interfaces.msg import Time
    return Header(stamp=Time(sec=stamp[0], nanosec=stamp[1]), frame_id=frame)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(color=images(), depth=images(), stamp=stamps, t_depth=stamps, t_odom=stamps,
       k=st.lists(floats, min_size=9, max_size=9), d=st.lists(floats, max_size=8),
       size=st.tuples(st.integers(0, 100), st.integers(0, 100)), q=st.tuples(floats, floats, floats, floats),
       pos=st.tuples(floats, floats, floats), label=st.text(max_size=30), mask=images(),
       odom_frames=st.tuples(st.sampled_from(["odom", "", "map", "base_link"]), st.sampled_from(["base_link", "", "x"])))
def test_fuzzed_messages_never_kill_the_node(node_and_sender, color, depth, stamp, t_depth, t_odom, k, d, size, q,
                                             pos, label, mask, odom_frames):
    mem, s = node_and_sender
    s.info.publish(CameraInfo(header=_header(stamp), width=size[0], height=size[1], k=k, d=d))
    od = Odometry(header=_header(t_odom, odom_frames[0]), child_frame_id=odom_frames[1])
    (od.pose.pose.position.x, od.pose.pose.position.y, od.pose.pose.position.z) = pos
    o = od.pose.pose.orientation
    o.x, o.y, o.z, o.w = q
    s.odom.publish(od)
    mask.header = _header(stamp)
    s.inst.publish(LabeledInstanceArray(header=_header(stamp), instances=[
        LabeledInstance(id=1, label=label, score=0.5, mask=mask)]))
    color.header, depth.header = _header(stamp), _header(t_depth if t_depth[0] % 2 else stamp)
    s.color.publish(color)
    s.depth.publish(depth)
    time.sleep(0.03)  # pace the stream: the node's KEEP_LAST(5) queues would drop a burst unseen


def test_node_survived_the_fuzzing_and_answers(node_and_sender):
    mem, s = node_and_sender
    # The fuzzed messages reached the node and were refused, counted by the node's own counters on
    # /diagnostics (published every status_period) since the fuzzing began. Not the "(N so far)" of
    # the last log line: a cause logs once per 5 s, so it lags (it read 99 in a CI run). How many
    # camera_info messages arrive depends on timing: the sensor queues keep the last 5 (a camera's
    # QoS), and on 2 cores the node's sensor callbacks paused up to 1.3 s during the fuzzing (traced),
    # so 15 to 79 of 100 fuzzed camera_infos were refused in runs here. The pose queue is 100 deep:
    # the 100 odometry messages all arrive (90 refused in every run here), so over 50 refusals in all
    # is far below what arrives whatever the timing, and each fuzzed topic must have some.
    assert s.before_fuzzing is not None, "test_malformed_input_is_dropped_with_reasons did not finish"
    s.spin_until(lambda: s.dropped_total - s.before_fuzzing > 50, 30,
                 what=f"over 50 refused since the fuzzing began on /diagnostics "
                      f"(before {s.before_fuzzing}, now {s.dropped_total})")
    s.settled_total()  # the queues have drained: the last fuzzed messages went through the callbacks
    rose = {k for k, n in s.dropped_kinds.items() if n > s.kinds_before_fuzzing.get(k, 0)}
    assert any(k.startswith("camera_info") for k in rose), (s.kinds_before_fuzzing, s.dropped_kinds)
    assert "quaternion" in rose, (s.kinds_before_fuzzing, s.dropped_kinds)  # the odometry
    assert mem.alive(), mem.log_text()[-5000:]
    assert "Traceback" not in mem.log_text(), mem.log_text()[-5000:]
    res = s.call_ground()
    assert res.message, res  # answered (the memory may be empty or hold a fuzzed frame)
    # every cause was logged; none flooded the log (one line per cause per 5 s)
    log = mem.log_text().splitlines()
    dropped = [ln for ln in log if "dropped input" in ln]
    assert 0 < len(dropped) < 200, len(dropped)
    jumps = [ln for ln in log if "jumped back" in ln]  # random stamps jump back at most messages
    assert 0 < len(jumps) <= 10, jumps

"""The nodes as a ROS 2 robot expects them, over real DDS with the simulator on /clock.

One run of sim_node + memory_node + grasp_planner_node (all with ``use_sim_time``, the
parameter files of launch/sim_demo.launch.py) serves every assertion here, in order:
- the simulator publishes poses only on /tf and /tf_static (no odom topic, no mount topic),
  and the memory node grounds "yellow bath duck" within 5 cm of the duck from them;
- set-parameter calls change grounding live, and fixed or out-of-range values are rejected;
- /diagnostics reports training, bank rows, RSS;
- a ``grasp`` action goal lifts the duck with >= 3 feedback stages; a second goal cancelled
  while the arm approaches ends CANCELED and the arm stands still (TCP from /tf).
"""
import threading
import time

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

import os

from m3_ros.action import Grasp
from m3_ros.msg import MemoryStatus, SceneGroundTruth
from m3_ros.nodes.common import TFListener, latched_qos, on_executor, sensor_qos
from m3_ros.procs import CONFIG_DIR, NodeProcess, wait_for
from m3_ros.srv import GroundQuery

QUERY = "yellow bath duck"
SIM_TIME = {"use_sim_time": True}
SETTLE_S = 3.0


class Client:
    """An in-process node on sim time: status, truth, walk state, diagnostics, TF, calls."""

    def __init__(self):
        self.node = rclpy.create_node("citizen_test", parameter_overrides=[Parameter("use_sim_time", value=True)])
        n = self.node
        self.status = self.truth = self.diag = None
        self.walk = ""
        rel = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        n.create_subscription(MemoryStatus, "memory/status", lambda m: setattr(self, "status", m), 10)
        n.create_subscription(SceneGroundTruth, "sim/ground_truth", lambda m: setattr(self, "truth", m), rel)
        n.create_subscription(String, "sim/walk_state", lambda m: setattr(self, "walk", m.data), latched_qos())
        n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: setattr(self, "diag", m), 10)
        self.tf = TFListener(n)
        self.ground_cli = n.create_client(GroundQuery, "ground")
        self.param_cli = n.create_client(SetParameters, "/memory_node/set_parameters")
        self.grasp_cli = ActionClient(n, Grasp, "grasp")
        self.executor = SingleThreadedExecutor()  # on_executor needs one spinning thread
        self.executor.add_node(n)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def wait(self, fut, timeout=60.0):
        done = threading.Event()
        fut.add_done_callback(lambda _: done.set())
        assert done.wait(timeout), "no answer in time"
        return fut.result()

    def ground(self, query=QUERY):
        assert self.ground_cli.wait_for_service(timeout_sec=30)
        return self.wait(self.ground_cli.call_async(GroundQuery.Request(query=query, top_k=1)))

    def set_params(self, **values):
        assert self.param_cli.wait_for_service(timeout_sec=30)
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.wait(self.param_cli.call_async(req)).results

    def centre(self, name):
        for o in self.truth.objects:
            if o.name == name:
                return np.array([o.center.x, o.center.y, o.center.z])
        raise KeyError(name)

    def tcp_in_base(self):
        return self.tf.lookup("base_link", "gripper_tcp", None)[:3, 3]

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    logs = tmp_path_factory.mktemp("citizen")
    env = dict(os.environ)
    procs = [NodeProcess("memory_node", env, logs, params_file=CONFIG_DIR / "m3.yaml", params=SIM_TIME),
             NodeProcess("grasp_planner_node", env, logs, params_file=CONFIG_DIR / "m3.yaml", params=SIM_TIME)]
    rclpy.init()
    client = Client()
    try:
        def alive():
            for p in procs:
                assert p.alive(), f"{p.name} exited:\n{p.log_text()[-3000:]}"
            return True
        wait_for(lambda: alive() and client.status is not None and len(client.status.models) > 0, 240,
                 what="memory_node models loaded")
        # like a robot without the package's conveniences: poses only on /tf and /tf_static
        procs.append(NodeProcess("sim_node", env, logs, params_file=CONFIG_DIR / "sim.yaml",
                                 params={"publish_odom": False, "publish_mount": False}))
        wait_for(lambda: alive() and client.walk == "done" and client.status is not None and client.status.ready
                 and client.truth is not None, 300, interval=0.2, what="the walk and a ready memory")
        time.sleep(SETTLE_S)  # train on the last keyframes, as the demo does before its query
        yield client, procs
    finally:
        client.close()
        rclpy.try_shutdown()
        for p in procs:
            p.stop()


def test_tf_alone_drives_the_memory_to_the_duck(robot):
    client, procs = robot
    n = client.node
    assert n.count_publishers("odom") == 0 and n.count_publishers("camera/mount") == 0
    assert n.count_publishers("/tf") >= 1 and n.count_publishers("/tf_static") >= 1
    assert client.status.keyframes > 0
    res = client.ground()
    assert res.success, res.message
    p = res.points[0].point
    err = np.linalg.norm(np.array([p.x, p.y, p.z]) - client.centre("duck"))
    dists = {o.name: round(float(np.linalg.norm(np.array([p.x, p.y, p.z]) - client.centre(o.name))), 3)
             for o in client.truth.objects}
    assert err <= 0.05, (err, res.message, dists, client.status.keyframes, client.status.train_iteration)
    # the memory node runs on /clock: its status carries the simulator's stamps, not wall time
    assert 0.0 < client.status.header.stamp.sec < 10_000


def test_diagnostics_report_training_bank_rows_and_memory(robot):
    client, _ = robot
    wait_for(lambda: client.diag is not None, 30, what="/diagnostics")
    st = client.diag.status[0]
    values = {kv.key: kv.value for kv in st.values}
    assert {"train_rate_hz", "rss_mb", "keyframes", "gaussians", "dropped_total"} <= set(values)
    assert any(k.startswith("bank_rows/") and int(v) > 0 for k, v in values.items())
    assert float(values["rss_mb"]) > 100.0


def test_set_parameters_change_grounding_live(robot):
    client, _ = robot
    # a threshold: demanding more than any score can beat leaves no candidate
    assert client.set_params(grounding_baseline_margin=2.0)[0].successful
    res = client.ground()
    assert not res.success and "better than an unlabelled surface" in res.message, res.message
    assert client.set_params(grounding_baseline_margin=0.03)[0].successful
    # the mode
    assert client.set_params(grounding_mode="render")[0].successful
    res = client.ground()
    assert res.success and "render mode" in res.message, res.message
    assert client.set_params(grounding_mode="gaussians")[0].successful
    res = client.ground()
    assert res.success and "gaussians mode" in res.message, res.message
    # query length
    assert client.set_params(max_query_chars=5)[0].successful
    res = client.ground()
    assert not res.success and "at most 5" in res.message, res.message
    assert client.set_params(max_query_chars=200)[0].successful
    # rejections: a start-up parameter, a value out of range, an unknown mode
    fixed = client.set_params(models=["dinov2_s"])[0]
    assert not fixed.successful and "fixed at start-up" in fixed.reason, fixed.reason
    out_of_range = client.set_params(grounding_view_scale=5.0)[0]
    assert not out_of_range.successful, out_of_range.reason
    bad_mode = client.set_params(grounding_mode="magic")[0]
    assert not bad_mode.successful and "must be one of" in bad_mode.reason
    # training off: the iteration count stands still; on again: it moves
    assert client.set_params(training=False)[0].successful
    time.sleep(1.5)
    it0 = client.status.train_iteration
    time.sleep(2.5)
    assert client.status.train_iteration == it0
    assert client.set_params(training=True)[0].successful
    wait_for(lambda: client.status.train_iteration > it0, 30, what="training to resume")


def _send(client, goal, stages):
    assert client.grasp_cli.wait_for_server(timeout_sec=30)
    fut = on_executor(client.node, lambda: client.grasp_cli.send_goal_async(
        goal, feedback_callback=lambda m: stages.append(m.feedback.stage)))
    handle = client.wait(fut)
    assert handle.accepted
    return handle


def test_grasp_action_lifts_the_duck_then_a_cancelled_goal_stops_the_arm(robot):
    client, _ = robot
    duck = client.centre("duck")
    # a point goal (the duck's true centre): grounding by text is what the demo's action goal and
    # the first test here check; this one checks planning, execution, feedback and cancel
    goal = Grasp.Goal()
    goal.target.header.frame_id = "odom"
    goal.target.point.x, goal.target.point.y, goal.target.point.z = (float(v) for v in duck)
    stages: list[str] = []
    handle = _send(client, goal, stages)
    res = client.wait(on_executor(client.node, handle.get_result_async), 240)
    assert res.status == GoalStatus.STATUS_SUCCEEDED, res.result.message
    assert res.result.success and res.result.object == "duck", res.result.message
    seen = list(dict.fromkeys(stages))
    assert len(seen) >= 3 and seen == [s for s in ("grounding", "planning", "approaching", "closing", "lifting")
                                       if s in seen], stages
    assert {"planning", "approaching", "closing", "lifting"} <= set(seen)

    # a second goal at the duck's old place (the memory still holds it there), cancelled while
    # the arm approaches
    tcp_before = client.tcp_in_base()
    stages2: list[str] = []
    handle = _send(client, goal, stages2)
    wait_for(lambda: "approaching" in stages2, 60, what="the arm to start approaching")
    wait_for(lambda: np.linalg.norm(client.tcp_in_base() - tcp_before) > 0.01, 30, what="the arm to move")
    cancel = client.wait(on_executor(client.node, handle.cancel_goal_async))
    assert len(cancel.goals_canceling) == 1
    res = client.wait(on_executor(client.node, handle.get_result_async), 60)
    assert res.status == GoalStatus.STATUS_CANCELED, (res.status, res.result.message)
    assert "aborted" in res.result.message and not res.result.success
    assert "closing" not in stages2 and "lifting" not in stages2
    # the arm stands where it stopped (/tf at the clock rate), short of the planned grasp
    stop = client.tcp_in_base()
    time.sleep(1.5)
    assert np.linalg.norm(client.tcp_in_base() - stop) < 0.005
    T_base = client.tf.lookup("odom", "base_link", None)
    planned = res.result.grasp.pose.position
    stop_odom = (T_base @ np.append(stop, 1.0))[:3]
    assert np.linalg.norm(stop_odom - np.array([planned.x, planned.y, planned.z])) > 0.03


def test_sensor_qos_keeps_the_history_it_is_given():
    """Best-effort sensor QoS with the requested depth (it had returned the 5-deep sensor profile for
    any depth, and memory_node's odometry lost samples whenever intake was delayed 0.25 s)."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    deep, reliable = sensor_qos(False, depth=100), sensor_qos(True, depth=7)
    assert deep.depth == 100 and deep.reliability == ReliabilityPolicy.BEST_EFFORT
    assert reliable.depth == 7 and reliable.reliability == ReliabilityPolicy.RELIABLE
    assert deep.durability == reliable.durability == DurabilityPolicy.VOLATILE

"""The main demo: simulator + memory node + grasp planner as separate processes.

The robot walks around the table while the memory trains; the demo asks the memory for
"yellow bath duck" as it goes (to time the first correct answer), then grasps it through the
``grasp`` action (feedback: grounding, planning, approaching, closing, lifting), saves
pictures and prints one RESULT line. Same nodes and same parameter files as
launch/sim_demo.launch.py, and like it every process but the simulator runs on the
simulator's ``/clock`` (``use_sim_time``); camera poses come from ``/tf`` + ``/tf_static``.

With ``--scene FAMILY --seed N --sensors realistic`` it runs on a generated scene
(m3_ros.sim.generate) with drifting odometry and the noisy detector; the target is then the
first reachable object, asked for with its first ``dev`` phrasing (config/phrasings.yaml), and
before the grasp the robot stands at the target's ``grasp_base`` (sim/go_to, the stand-in for
navigation). Answers are asked for in odom and judged against sim/ground_truth, which the
simulator publishes in odom through the robot's odometry error: the error a user would see.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from m3_ros.action import Grasp
from m3_ros.msg import MemoryStatus, SceneGroundTruth
from m3_ros.nodes import convert
from m3_ros.nodes.common import TFListener, latched_qos, on_executor
from m3_ros.procs import CONFIG_DIR, NodeProcess, PACKAGE_ROOT, ros_test_env
from m3_ros.srv import GroundQuery, MemoryIO, PlanGrasp
from m3_ros.tf_buffer import TransformError
from m3_ros.viz import heatmap

QUERY = "yellow bath duck"
TARGET = "duck"


def pick_target(scene_name: str, seed: int) -> tuple[str, str, bool]:
    """(target object, query, go_to first) for a scene: the duck on the default scene, else the
    first reachable object with a grasp_base and its first single-referent ``dev`` phrasing."""
    from m3_ros.eval.phrasings import scene_queries
    from m3_ros.sim.generate import resolve_scene

    if scene_name == "default":
        return TARGET, QUERY, False
    scene = resolve_scene(scene_name, seed)
    dev = {q.targets[0]: q for q in reversed(scene_queries(scene, "dev")) if len(q.targets) == 1}
    for o in scene.objects:
        if getattr(o, "reachable", True) and o.grasp_base is not None and o.name in dev:
            return o.name, dev[o.name].text, True
    raise ValueError(f"scene {scene_name!r} seed {seed} has no reachable object with a grasp_base")


class DemoClient(Node):
    """Listens to the graph and calls the services; all state is kept for the report."""

    def __init__(self) -> None:
        super().__init__("m3_demo", parameter_overrides=[Parameter("use_sim_time", value=True)])
        self.status: MemoryStatus | None = None
        self.truth: SceneGroundTruth | None = None
        self.walk_state = ""
        self.grasp_feedback: list[str] = []  # the grasp action's feedback messages
        self.color: Image | None = None
        self.info: CameraInfo | None = None
        self.relevance: Image | None = None
        self.tf = TFListener(self)
        rel = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(MemoryStatus, "memory/status", lambda m: setattr(self, "status", m), 10)
        self.create_subscription(SceneGroundTruth, "sim/ground_truth", lambda m: setattr(self, "truth", m), rel)
        self.create_subscription(String, "sim/walk_state", lambda m: setattr(self, "walk_state", m.data), latched_qos())
        self.create_subscription(Image, "camera/color/image_raw", lambda m: setattr(self, "color", m), rel)
        self.create_subscription(CameraInfo, "camera/color/camera_info", lambda m: setattr(self, "info", m), rel)
        self.create_subscription(Image, "memory/relevance_image", lambda m: setattr(self, "relevance", m), latched_qos())
        self.ground = self.create_client(GroundQuery, "ground")
        self.grasp_client = ActionClient(self, Grasp, "grasp")
        self.save = self.create_client(MemoryIO, "memory/save")
        self.plan = self.create_client(PlanGrasp, "plan_grasp")
        self.go_to = self.create_publisher(String, "sim/go_to", rel)

    def camera_pose(self, color: Image, timeout: float = 3.0) -> np.ndarray | None:
        """T_odom_cam [4, 4] at the colour frame's stamp, from /tf + /tf_static.

        Waits up to ``timeout`` s: the image and the /tf sample of its stamp travel on different
        topics, and the image often arrives first (a lookup then would extrapolate).
        """
        stamp = convert.stamp_to_sec(color.header.stamp)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.tf.lookup("odom", color.header.frame_id, stamp)
            except TransformError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)

    def _wait(self, fut, timeout: float, what: str):
        done = threading.Event()
        fut.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"{what} did not finish in {timeout}s")
        return fut.result()

    def grasp(self, query: str, timeout: float, log) -> tuple[Grasp.Result, int, list[str]]:
        """Send a grasp goal; returns (result, GoalStatus, the feedback stages in order)."""
        if not self.grasp_client.wait_for_server(timeout_sec=timeout):
            raise TimeoutError("action server 'grasp' not available")
        stages: list[str] = []

        def on_feedback(msg) -> None:
            stages.append(msg.feedback.stage)
            self.grasp_feedback.append(msg.feedback.message)
            log(f"grasp feedback: {msg.feedback.stage} {msg.feedback.message}".rstrip())

        goal = Grasp.Goal(query=query)
        handle = self._wait(on_executor(self, lambda: self.grasp_client.send_goal_async(goal, feedback_callback=on_feedback)),
                            timeout, "sending the grasp goal")
        if not handle.accepted:
            raise RuntimeError("the grasp goal was rejected")
        res = self._wait(on_executor(self, handle.get_result_async), timeout, "the grasp")
        return res.result, res.status, stages

    def call(self, client, request, timeout: float):
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available")
        done = threading.Event()
        fut = client.call_async(request)
        fut.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"service {client.srv_name} did not answer in {timeout}s")
        return fut.result()

    def true_centre(self, name: str) -> np.ndarray | None:
        if self.truth is None:
            return None
        for o in self.truth.objects:
            if o.name == name:
                return np.array([o.center.x, o.center.y, o.center.z])
        return None


def _save_pictures(out: Path, demo: DemoClient, snapshot: tuple, memory_dir: Path, grasp_pose, log) -> list[str]:
    """rendered RGB | camera image, relevance heatmap, grasp drawn on the camera image.

    snapshot: (colour Image, camera_info, T_odom_cam) taken when the query was asked,
    before the arm moved anything.
    """
    from PIL import Image as PILImage, ImageDraw

    from m3_ros.geometry import project
    from m3_ros.memory.memory import M3Memory

    saved = []
    color, info, frame_pose = snapshot
    if color is None or info is None or frame_pose is None:
        log("no camera frame to draw on: " + ("no colour image" if color is None else "no camera_info" if info is None
                                              else "no /tf pose at the colour image's stamp"))
        return saved
    cam = convert.rgb_from_image(color)
    K = convert.intrinsics_from_camera_info(info)
    H, W = cam.shape[:2]
    try:
        mem = M3Memory.load(str(memory_dir))
        r = mem.render(frame_pose, K, W, H)
        rendered = (np.clip(np.asarray(r["rgb"]), 0, 1) * 255).astype(np.uint8)
        PILImage.fromarray(np.concatenate([rendered, cam], axis=1)).save(out / "rendered_vs_camera.png")
        saved.append("rendered_vs_camera.png")
    except (OSError, ValueError) as e:
        log(f"could not render the saved memory: {e}")
    if demo.relevance is not None:
        rel = convert.image_to_array(demo.relevance)
        PILImage.fromarray(heatmap(rel, empty=rel == 0)).resize((rel.shape[1] * 2, rel.shape[0] * 2), PILImage.NEAREST).save(out / "relevance.png")
        saved.append("relevance.png")
    if grasp_pose is not None:
        T = convert.pose_msg_to_matrix(grasp_pose.pose)
        pts = np.array([T[:3, 3], T[:3, 3] - 0.10 * T[:3, 2], T[:3, 3] + 0.04 * T[:3, 1], T[:3, 3] - 0.04 * T[:3, 1]])
        uv, z = project(pts, K, frame_pose)
        img = PILImage.fromarray(cam.copy())
        d = ImageDraw.Draw(img)
        if np.all(z > 0):
            c, a, f1, f2 = [tuple(map(float, p)) for p in uv]
            d.line([a, c], fill=(0, 255, 0), width=2)       # approach
            d.line([f1, f2], fill=(255, 0, 255), width=2)   # closing axis
            d.ellipse([c[0] - 3, c[1] - 3, c[0] + 3, c[1] + 3], outline=(255, 0, 0), width=2)
        img = img.resize((W * 2, H * 2), PILImage.NEAREST)
        img.save(out / "grasp.png")
        saved.append("grasp.png")
    return saved


def wait_for_clock(node: Node, timeout: float, sim: NodeProcess) -> None:
    """Until the node's clock (use_sim_time) has received /clock from the simulator."""
    t0 = time.monotonic()
    while node.get_clock().now().nanoseconds == 0:
        if not sim.alive():
            raise RuntimeError(f"sim_node exited early; log: {sim.log_path}\n" + sim.log_text()[-3000:])
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"no /clock from the simulator in {timeout}s")
        time.sleep(0.05)


def run(out: Path, sim_params: dict | None = None, m3_params: dict | None = None,
        max_walk_s: float = 240.0, settle_s: float = 3.0, quiet: bool = False,
        settle_steps_per_keyframe: int = 8, settle_max_s: float = 60.0, look_keyframes: int = 2,
        look_max_s: float = 20.0) -> dict:
    """Run the whole loop once; returns the report (also written to out/report.json).

    ``sim_params`` may name a scene (``scene``, ``seed``, ``sensors``); the target and query
    follow from it (see pick_target). After the walk the robot waits ``settle_s`` and until the
    memory has trained ``settle_steps_per_keyframe`` steps per keyframe (at most ``settle_max_s``):
    on a loaded machine the walk alone can leave a memory with a step or two per keyframe, and a
    robot acts on a settled memory, not on whatever a busy CPU managed during the walk. On a
    generated scene the robot then walks to the target's grasp base and looks until the memory
    has taken ``look_keyframes`` keyframes there (at most ``look_max_s``) before asking and grasping.
    """
    sim_params = dict(sim_params or {})
    target, query, go_to = pick_target(str(sim_params.get("scene", "default")), int(sim_params.get("seed", 0)))
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    env = ros_test_env()
    t_start = time.monotonic()

    def log(msg: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", flush=True)

    log(f"output folder: {out}  (ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, node logs in {logs})")
    import os
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    # The memory node loads its models first (seconds); the robot starts walking once it listens.
    sim_time = {"use_sim_time": True}  # as launch/sim_demo.launch.py: the nodes run on the simulator's /clock
    procs = [
        NodeProcess("memory_node", env, logs, params_file=CONFIG_DIR / "m3.yaml", params={**sim_time, **(m3_params or {})}),
        NodeProcess("grasp_planner_node", env, logs, params_file=CONFIG_DIR / "m3.yaml", params=sim_time),
    ]
    rclpy.init()
    demo = DemoClient()
    executor = SingleThreadedExecutor()
    executor.add_node(demo)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    report: dict = {"query": query, "target": target, "output": str(out),
                    **{k: sim_params[k] for k in ("scene", "seed", "sensors") if k in sim_params}}
    try:
        t_load = time.monotonic()
        while demo.status is None or not demo.status.models:
            if not procs[0].alive():
                raise RuntimeError(f"memory_node exited early; log: {procs[0].log_path}\n" + procs[0].log_text()[-3000:])
            if time.monotonic() - t_load > 180:
                raise TimeoutError("memory_node did not load its models in 180 s")
            time.sleep(0.2)
        log(f"memory node ready with models {list(demo.status.models)}; starting the simulator")
        procs.append(NodeProcess("sim_node", env, logs, params_file=CONFIG_DIR / "sim.yaml", params=sim_params))
        wait_for_clock(demo, 60.0, procs[-1])
        first_kf_t = None
        first_correct_s = None
        last_print = 0.0
        last_query = 0.0
        t_walk0 = time.monotonic()
        while True:
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited early (code {p.proc.returncode}); log: {p.log_path}\n"
                                       + p.log_text()[-3000:])
            now = time.monotonic()
            s = demo.status
            if s is not None and s.keyframes > 0 and first_kf_t is None:
                first_kf_t = now
            if s is not None and s.ready and now - last_query > 2.0 and first_correct_s is None:
                last_query = now
                truth = demo.true_centre(target)
                try:
                    res = demo.call(demo.ground, GroundQuery.Request(query=query, frame_id="odom", top_k=1), 30.0)
                    if res.success and truth is not None:
                        p0 = res.points[0].point
                        err = np.linalg.norm(np.array([p0.x, p0.y, p0.z]) - truth)
                        log(f"ground('{query}') -> error {100 * err:.1f} cm ({res.model})")
                        if err <= 0.05:
                            first_correct_s = time.monotonic() - first_kf_t
                except TimeoutError as e:
                    log(str(e))
            if now - last_print > 2.0:
                last_print = now
                if s is None:
                    log(f"waiting for the memory node... sim: {demo.walk_state or 'starting'}")
                else:
                    rows = ", ".join(f"{m}={r}" for m, r in zip(s.models, s.bank_rows))
                    log(f"sim: {demo.walk_state or '?':8s} | keyframes {s.keyframes:3d} | gaussians {s.gaussians:6d} | "
                        f"bank rows [{rows}] | iter {s.train_iteration:5d} @ {s.train_rate_hz:4.1f} Hz | loss {s.last_loss:.3f}")
            if demo.walk_state == "done" and s is not None and s.ready:
                break
            if now - t_walk0 > max_walk_s:
                raise TimeoutError(f"the walk did not finish in {max_walk_s}s (walk_state={demo.walk_state!r})")
            time.sleep(0.1)
        log(f"walk done; training at least {settle_s:.0f}s more and until {settle_steps_per_keyframe} steps "
            "per keyframe before the final query")
        t_settle = time.monotonic()
        time.sleep(settle_s)
        # the target follows the keyframe count as it arrives: on a loaded machine the status lags the
        # walk (a run counted 3 keyframes at the end of the walk and the memory then held 10)
        while (demo.status.train_iteration < settle_steps_per_keyframe * int(demo.status.keyframes)
               and time.monotonic() - t_settle < settle_max_s):
            time.sleep(0.2)
        log(f"memory trained {demo.status.train_iteration} steps on {demo.status.keyframes} keyframes")
        if go_to:  # navigation stand-in: stand with the target in the arm's reach, as a robot would
            k0 = int(demo.status.keyframes)
            demo.go_to.publish(String(data=target))
            log(f"standing at the grasp base of {target!r}")
            time.sleep(1.0)  # the simulator moves the base between physics steps; TF follows
            # look before grasping: the way to the grasp base added odometry error that only keyframes
            # seen from there take out (ICP against the map, half a correction per keyframe)
            t_look = time.monotonic()
            while int(demo.status.keyframes) < k0 + look_keyframes and time.monotonic() - t_look < look_max_s:
                time.sleep(0.1)
            log(f"looked at the target: {int(demo.status.keyframes) - k0} keyframes from the grasp base")
        truth = demo.true_centre(target)
        res = demo.call(demo.ground, GroundQuery.Request(query=query, frame_id="odom", top_k=3), 60.0)
        if not res.success:
            raise RuntimeError(f"grounding failed: {res.message}")
        p0 = res.points[0].point
        point = np.array([p0.x, p0.y, p0.z])
        err_cm = float(100 * np.linalg.norm(point - truth)) if truth is not None else float("nan")
        if first_correct_s is None and err_cm <= 5.0 and first_kf_t is not None:
            first_correct_s = time.monotonic() - first_kf_t
        log(f"{res.message}")
        log(f"grounded point {np.round(point, 3).tolist()} vs the true centre of {target} "
            f"{np.round(truth, 3).tolist() if truth is not None else None}: {err_cm:.1f} cm")
        # what the memory dropped on the way (free-space removals, rejected input) explains a far answer
        for line in procs[0].log_text().splitlines():
            if "free space seen by" in line or "dropped input" in line:
                log(f"memory_node: {line.strip()[-300:]}")
        report["go_to"] = go_to
        color = demo.color
        snapshot = (color, demo.info, demo.camera_pose(color) if color is not None else None)
        # the planner's service first (plan only, nothing sent to the arm), then the grasp action
        planned_only = demo.call(demo.plan, PlanGrasp.Request(query=query, execute=False), 60.0)
        log(f"plan_grasp: {planned_only.message}")
        report["plan_grasp"] = {"success": bool(planned_only.success), "message": planned_only.message}
        grasp, status, stages = demo.grasp(query, 180.0, log)
        grasp_ok, grasp_obj = bool(grasp.success), grasp.object
        log(f"grasp result: {grasp.message}")
        planned = bool(grasp.grasp.header.frame_id)
        mem_dir = out / "memory"
        saved = demo.call(demo.save, MemoryIO.Request(path=str(mem_dir)), 60.0)
        log(saved.message)
        s = demo.status
        pictures = _save_pictures(out, demo, snapshot, mem_dir, grasp.grasp if planned else None, log)
        report.update({
            "error_cm": err_cm, "grasp": "success" if grasp_ok and grasp_obj == target else "failure",
            "grasped_object": grasp_obj, "keyframes": int(s.keyframes), "gaussians": int(s.gaussians),
            "bank_rows": dict(zip(s.models, [int(r) for r in s.bank_rows])),
            "train_s": float(s.train_time_s), "train_iterations": int(s.train_iteration),
            "first_correct_s": first_correct_s, "model": res.model, "pictures": pictures,
            "grasp_stages": stages, "grasp_status": int(status),
            # the planner found the answer again in the camera's current frames (ground_in_view)
            "grasp_in_view": any("found again in the current view" in m for m in demo.grasp_feedback),
            "grasp_on_depth": any("planned on the current depth image" in m for m in demo.grasp_feedback),
            # sim time: the demo's clock and the planner's stamp on the grasp both follow /clock
            "clock": {"demo_now_s": demo.get_clock().now().nanoseconds * 1e-9,
                      "grasp_stamp_s": convert.stamp_to_sec(grasp.grasp.header.stamp) if planned else None,
                      "status_stamp_s": convert.stamp_to_sec(s.header.stamp), "wall_s": time.time()},
            "wall_s": time.monotonic() - t_start,
        })
        (out / "report.json").write_text(json.dumps(report, indent=2))
        return report
    finally:
        executor.shutdown(timeout_sec=2.0)
        demo.destroy_node()
        rclpy.try_shutdown()
        codes = {p.name: p.stop() for p in procs}
        log(f"nodes stopped: {codes}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default out/demo-<time>)")
    ap.add_argument("--scene", default="default", help="scene name, YAML path or generated family (table, two_tables, room)")
    ap.add_argument("--seed", type=int, default=0, help="layout and sensor seed")
    ap.add_argument("--sensors", choices=["ideal", "realistic"], default="ideal")
    a = ap.parse_args(argv)
    out = a.out or PACKAGE_ROOT / "out" / time.strftime("demo-%Y%m%d-%H%M%S")
    sim_params = {} if (a.scene, a.seed, a.sensors) == ("default", 0, "ideal") else \
        {"scene": a.scene, "seed": a.seed, "sensors": a.sensors}
    try:
        r = run(out, sim_params=sim_params)
    except (RuntimeError, TimeoutError, ValueError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print()
    print(f"keyframes {r['keyframes']}, gaussians {r['gaussians']}, bank rows {r['bank_rows']}, "
          f"training {r['train_s']:.1f} s ({r['train_iterations']} steps)")
    print(f"pictures in {out}: {', '.join(r['pictures'])}")
    fc = f"{r['first_correct_s']:.1f}" if r["first_correct_s"] is not None else "never"
    print(f'RESULT query="{r["query"]}" target={r["target"]} error_cm={r["error_cm"]:.1f} grasp={r["grasp"]} keyframes={r["keyframes"]} '
          f'gaussians={r["gaussians"]} train_s={r["train_s"]:.1f} first_correct_s={fc}')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

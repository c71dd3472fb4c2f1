"""grasp_planner_node: a text query or a target point -> gripper pose for the arm controller.

Geometry comes from the memory's Gaussians (``memory/gaussians``), targets from the
memory node's ``ground`` service; the planning itself is ``m3_ros.grasp.plan_grasp``. With
``ground_in_view`` the ground service finds its answer again in the current camera frames (the last
metre, m3_ros/grounding/live.py), and the grasp is planned on the newest depth image around it,
put in odom through TF: where the robot stands now, not where the memory's map -> odom puts it.

- action ``grasp`` (``m3_ros/action/Grasp``): grounds, plans, sends the pose to the arm
  controller and follows it; feedback names the stage (grounding, planning, approaching,
  closing, lifting); cancelling stops the arm (``arm/grasp_cancel``). One goal at a time.
- service ``plan_grasp`` (``m3_ros/srv/PlanGrasp``): plan only, or plan and send (no feedback).
The robot's position (for side approaches) is ``odom -> base_link`` from TF, or odometry.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import ColorRGBA, Empty, Header, String
from visualization_msgs.msg import Marker

from m3_ros.action import Grasp
from m3_ros.geometry import transform_points
from m3_ros.grasp import GraspConfig, GraspPlan, plan_grasp
from m3_ros.grounding.live import LiveConfig, view_cloud
from m3_ros.msg import GraspResult
from m3_ros.nodes import convert
from m3_ros.nodes.common import Param, TFListener, declare_params, latched_qos, sensor_qos, spin_node
from m3_ros.srv import GroundQuery, PlanGrasp
from m3_ros.tf_buffer import TransformError

GROUND_IN_VIEW = True
"""Default of the ground_in_view parameter: on by bench/results/dev_grasp_rules.md round 5 (the suite's
grasp trials on fresh dev walks: 27 of 45 against 24 planned on the memory after looking)."""
PARAMS: dict[str, Param] = {
    "cloud_topic": Param("memory/gaussians", "memory geometry (PointCloud2 in odom)"),
    "ground_service": Param("ground", "the memory node's GroundQuery service"),
    "ground_in_view": Param(GROUND_IN_VIEW, "ask the ground service to find its answer again in the current camera "
                            "frames, and plan on the newest depth image there (the last metre)", live=True),
    "depth_topic": Param("camera/depth/image_raw", "depth image (aligned with camera_info) for in-view grasps"),
    "camera_info_topic": Param("camera/color/camera_info", "intrinsics of the depth image"),
    "grasp_topic": Param("arm/grasp_pose", "where the planned TCP pose goes to the arm controller"),
    "grasp_result_topic": Param("arm/grasp_result", "the arm controller's GraspResult"),
    "grasp_stage_topic": Param("arm/grasp_stage", "the arm controller's stage (std_msgs/String)"),
    "grasp_cancel_topic": Param("arm/grasp_cancel", "std_msgs/Empty: stop the executing grasp"),
    "odom_topic": Param("odom", "odometry (fallback for odom -> base_link when TF has none)"),
    "odom_frame": Param("odom", "the frame targets and grasps are in"),
    "base_frame": Param("base_link", "the robot base frame (side grasps come from there)"),
    "service_timeout": Param(20.0, "s to wait for the ground service", range=(0.1, 600.0), live=True),
    "execute_timeout": Param(120.0, "s to wait for the arm controller's result", range=(1.0, 3600.0),
                             live=True),
    "radius": Param(0.10, "m around the target searched for the object", range=(0.01, 1.0), live=True),
    "max_width": Param(0.08, "m, widest gripper opening", range=(0.005, 0.5), live=True),
    "finger_depth": Param(0.025, "m below the object's top for the fingertip centre", range=(0.0, 0.2),
                          live=True),
}
STAGES = ("grounding", "planning", "approaching", "closing", "lifting")


class GraspPlannerNode(Node):
    def __init__(self) -> None:
        super().__init__("grasp_planner_node")
        self.p = declare_params(self, PARAMS, self._apply_live)
        self.cfg = GraspConfig(radius=float(self.p["radius"]), max_width=float(self.p["max_width"]),
                               finger_depth=float(self.p["finger_depth"]))
        self.points: np.ndarray | None = None
        self.points_frame = ""  # the memory publishes its cloud in map (refined poses) or odom
        self.depth: Image | None = None  # the newest depth image and camera_info (in-view grasps)
        self.info: CameraInfo | None = None
        group = ReentrantCallbackGroup()
        self.tf = TFListener(self, callback_group=group)
        self.create_subscription(PointCloud2, self.p["cloud_topic"], self._on_cloud, latched_qos(), callback_group=group)
        self.create_subscription(Odometry, self.p["odom_topic"], self._on_odom, 10, callback_group=group)
        self.create_subscription(Image, self.p["depth_topic"], lambda m: setattr(self, "depth", m), sensor_qos(False),
                                 callback_group=group)
        self.create_subscription(CameraInfo, self.p["camera_info_topic"], lambda m: setattr(self, "info", m),
                                 sensor_qos(False), callback_group=group)
        self.create_subscription(GraspResult, self.p["grasp_result_topic"], self._on_result, 10, callback_group=group)
        self.create_subscription(String, self.p["grasp_stage_topic"], self._on_stage, 10, callback_group=group)
        self.ground_client = self.create_client(GroundQuery, self.p["ground_service"], callback_group=group)
        self.grasp_pub = self.create_publisher(PoseStamped, self.p["grasp_topic"], 10)
        self.cancel_pub = self.create_publisher(Empty, self.p["grasp_cancel_topic"], 10)
        self.marker_pub = self.create_publisher(Marker, "grasp/marker", latched_qos())
        self.create_service(PlanGrasp, "plan_grasp", self._on_plan, callback_group=group)
        self._busy = threading.Lock()
        self._events: list[tuple[str, object]] = []  # ("stage", str) / ("result", GraspResult)
        self._events_cv = threading.Condition()
        self.action = ActionServer(self, Grasp, "grasp", execute_callback=self._execute,
                                   goal_callback=self._on_goal, cancel_callback=lambda _: CancelResponse.ACCEPT,
                                   callback_group=group)

    def _apply_live(self, changed: dict[str, object]) -> None:
        self.p.update(changed)
        for k in ("radius", "max_width", "finger_depth"):
            setattr(self.cfg, k, float(self.p[k]))

    # ---- inputs ---------------------------------------------------------------------
    def _on_cloud(self, msg: PointCloud2) -> None:
        try:
            self.points = convert.cloud_to_points(msg)
            self.points_frame = msg.header.frame_id or self.p["odom_frame"]
        except ValueError as e:
            self.get_logger().warning(f"bad memory cloud: {e}", throttle_duration_sec=5.0)

    def _on_odom(self, msg: Odometry) -> None:
        try:
            self.tf.add_odometry(msg, self.p["odom_frame"], self.p["base_frame"])
        except ValueError as e:
            self.get_logger().warning(f"dropped odometry: {e}", throttle_duration_sec=5.0)

    def _on_stage(self, msg: String) -> None:
        with self._events_cv:
            self._events.append(("stage", msg.data))
            self._events_cv.notify_all()

    def _on_result(self, msg: GraspResult) -> None:
        with self._events_cv:
            self._events.append(("result", msg))
            self._events_cv.notify_all()

    def _viewpoint(self) -> np.ndarray | None:
        try:
            return self.tf.lookup(self.p["odom_frame"], self.p["base_frame"], None)[:3, 3]
        except TransformError:
            return None

    # ---- planning -------------------------------------------------------------------
    def _ground(self, query: str) -> tuple[np.ndarray, bool]:
        """(target [3] in odom, whether the ground service found it again in the current frames)."""
        if not self.ground_client.wait_for_service(timeout_sec=float(self.p["service_timeout"])):
            raise ValueError(f"service '{self.p['ground_service']}' is not available")
        done = threading.Event()
        fut = self.ground_client.call_async(GroundQuery.Request(query=query, frame_id=self.p["odom_frame"], top_k=1,
                                                                in_view=bool(self.p["ground_in_view"])))
        fut.add_done_callback(lambda _: done.set())
        if not done.wait(float(self.p["service_timeout"])):
            raise ValueError("grounding timed out")
        res = fut.result()
        if not res.success:
            raise ValueError(f"grounding failed: {res.message}")
        pt = res.points[0].point
        return np.array([pt.x, pt.y, pt.z]), bool(res.in_view)

    def _target(self, query: str, target) -> tuple[np.ndarray, bool]:
        if query.strip():
            return self._ground(query)
        if target.header.frame_id not in ("", self.p["odom_frame"]):
            raise ValueError(f"target frame '{target.header.frame_id}' is not '{self.p['odom_frame']}'")
        return np.array([target.point.x, target.point.y, target.point.z]), False

    def _view_points(self, target: np.ndarray) -> np.ndarray | None:
        """The newest depth image's points [M, 3] around target [3], in odom through TF at its stamp;
        None (with a warning) where there is no usable depth, camera_info or transform."""
        depth_msg, info = self.depth, self.info
        try:
            if depth_msg is None or info is None:
                raise ValueError(f"no depth image on '{self.p['depth_topic']}' or camera_info yet")
            depth = convert.depth_from_image(depth_msg)
            K = convert.intrinsics_from_camera_info(info)
            convert.check_camera_info_size(info, depth.shape)  # the memory node's rule: aligned, same size
            T = self.tf.lookup(self.p["odom_frame"], depth_msg.header.frame_id, convert.stamp_to_sec(depth_msg.header.stamp))
        except (ValueError, TransformError) as e:
            self.get_logger().warning(f"in-view grasp planned on the memory instead: {e}")
            return None
        return view_cloud(depth, K, T, target, LiveConfig())

    def _plan(self, target: np.ndarray, in_view: bool = False) -> tuple[GraspPlan, PoseStamped, str]:
        """(plan, its pose in odom, what it was planned on)."""
        if in_view and (points := self._view_points(target)) is not None:
            return *self._finish(plan_grasp(target, points, self.cfg, viewpoint=self._viewpoint())), "depth"
        if self.points is None:
            raise ValueError(f"no memory geometry received on '{self.p['cloud_topic']}' yet")
        points = self.points
        if self.points_frame != self.p["odom_frame"]:
            # the memory's map drifts from odom as odometry does: map the cloud with the newest map -> odom
            try:
                T = self.tf.lookup(self.p["odom_frame"], self.points_frame, None)
            except TransformError as e:
                raise ValueError(f"memory cloud in '{self.points_frame}' cannot be put in "
                                 f"'{self.p['odom_frame']}': {e}") from e
            points = transform_points(T, points)
        return *self._finish(plan_grasp(target, points, self.cfg, viewpoint=self._viewpoint())), "memory"

    def _finish(self, plan: GraspPlan) -> tuple[GraspPlan, PoseStamped]:
        """The plan's pose message in odom, and its marker published."""
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.p["odom_frame"])
        pose = PoseStamped(header=header, pose=convert.matrix_to_pose_msg(plan.T_world_tcp))
        # an ARROW points along its x axis: rotate the TCP frame so x takes the approach (z) direction
        T_arrow = plan.T_world_tcp @ np.array([[0, 0, -1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
        T_arrow[:3, 3] -= 0.1 * plan.T_world_tcp[:3, 2]
        marker = Marker(header=header, ns="grasp", id=0, type=Marker.ARROW, pose=convert.matrix_to_pose_msg(T_arrow),
                        color=ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0))
        marker.scale.x, marker.scale.y, marker.scale.z = 0.1, 0.01, 0.015
        self.marker_pub.publish(marker)
        return plan, pose

    @staticmethod
    def _describe(plan: GraspPlan, source: str) -> str:
        t = plan.T_world_tcp[:3, 3]
        on = "the current depth image" if source == "depth" else "the memory's points"
        return (f"{plan.approach} grasp at ({t[0]:.3f}, {t[1]:.3f}, {t[2]:.3f}), width {plan.width * 100:.1f} cm, "
                f"{len(plan.object_points)} object points, planned on {on}")

    def _on_plan(self, req: PlanGrasp.Request, res: PlanGrasp.Response) -> PlanGrasp.Response:
        try:
            plan, res.grasp, source = self._plan(*self._target(req.query, req.target))
        except ValueError as e:
            res.success, res.message = False, str(e)
            self.get_logger().info(f"plan_grasp failed: {e}")
            return res
        res.width, res.score, res.approach = float(plan.width), float(plan.score), plan.approach
        res.success = True
        res.message = self._describe(plan, source)
        if req.execute:
            self.grasp_pub.publish(res.grasp)
            res.message += "; sent to the arm controller"
        self.get_logger().info(res.message)
        return res

    # ---- the grasp action -------------------------------------------------------------
    def _on_goal(self, goal: Grasp.Goal) -> GoalResponse:
        if self._busy.locked():
            self.get_logger().info("grasp goal rejected: another grasp is executing")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, goal_handle) -> Grasp.Result:
        if not self._busy.acquire(blocking=False):
            goal_handle.abort()
            return Grasp.Result(success=False, message="another grasp is executing")
        try:
            return self._run_goal(goal_handle)
        finally:
            self._busy.release()

    def _run_goal(self, goal_handle) -> Grasp.Result:
        goal: Grasp.Goal = goal_handle.request
        result = Grasp.Result()

        def feedback(stage: str, message: str = "") -> None:
            goal_handle.publish_feedback(Grasp.Feedback(stage=stage, message=message))
            self.get_logger().info(f"grasp: {stage} {message}".rstrip())

        def stop(message: str, canceled: bool = False) -> Grasp.Result:
            result.success, result.message = False, message
            goal_handle.canceled() if canceled else goal_handle.abort()
            self.get_logger().info(f"grasp {'canceled' if canceled else 'failed'}: {message}")
            return result

        try:
            if goal.query.strip():
                feedback("grounding", goal.query)
            target, in_view = self._target(goal.query, goal.target)
            if goal_handle.is_cancel_requested:
                return stop("canceled before planning", canceled=True)
            where = ", found again in the current view" if in_view else ""
            feedback("planning", f"target ({target[0]:.3f}, {target[1]:.3f}, {target[2]:.3f}){where}")
            plan, result.grasp, source = self._plan(target, in_view)
        except ValueError as e:
            return stop(str(e))
        if goal_handle.is_cancel_requested:
            return stop("canceled before the arm moved", canceled=True)
        with self._events_cv:
            self._events.clear()
        self.grasp_pub.publish(result.grasp)
        sent_stamp = result.grasp.header.stamp
        feedback("planning", self._describe(plan, source) + "; sent to the arm controller")
        deadline = time.monotonic() + float(self.p["execute_timeout"])
        cancel_sent = False
        while True:
            if goal_handle.is_cancel_requested and not cancel_sent:
                self.cancel_pub.publish(Empty())
                cancel_sent = True
                deadline = min(deadline, time.monotonic() + 30.0)
            with self._events_cv:
                if not self._events:
                    self._events_cv.wait(timeout=0.05)
                events, self._events = self._events, []
            for kind, data in events:
                if kind == "stage" and data in STAGES:
                    feedback(data)
                elif kind == "result" and data.grasp.header.stamp == sent_stamp:
                    result.success, result.object = bool(data.success), data.object
                    result.lift_height, result.message = float(data.lift_height), data.message
                    if cancel_sent:
                        return stop(data.message, canceled=True)
                    if result.success:
                        goal_handle.succeed()
                        self.get_logger().info(f"grasp succeeded: {data.message}")
                        return result
                    return stop(data.message)
            if time.monotonic() > deadline:
                return stop(f"no result from the arm controller on '{self.p['grasp_result_topic']}' "
                            f"within {self.p['execute_timeout']} s", canceled=cancel_sent)


def main(args: list[str] | None = None) -> int:
    return spin_node(GraspPlannerNode, threads=4, args=args)


if __name__ == "__main__":
    raise SystemExit(main())

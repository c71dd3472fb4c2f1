"""grasp_planner_node: a text query or a target point -> gripper pose for the arm controller.

Geometry comes from the memory's Gaussians (``memory/gaussians``), targets from the
memory node's ``ground`` service; the planning itself is ``m3_ros.grasp.plan_grasp``.
"""
from __future__ import annotations

import threading

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker

from m3_ros.grasp import GraspConfig, plan_grasp
from m3_ros.nodes import convert
from m3_ros.nodes.common import latched_qos, spin_node
from m3_ros.srv import GroundQuery, PlanGrasp

PARAMS: dict[str, object] = {
    "cloud_topic": "memory/gaussians",
    "ground_service": "ground",
    "grasp_topic": "arm/grasp_pose",
    "odom_topic": "odom",
    "odom_frame": "odom",
    "service_timeout": 20.0,
    "radius": 0.10,
    "max_width": 0.08,
    "finger_depth": 0.025,
}


class GraspPlannerNode(Node):
    def __init__(self) -> None:
        super().__init__("grasp_planner_node")
        for k, v in PARAMS.items():
            self.declare_parameter(k, v)
        self.p = {k: self.get_parameter(k).value for k in PARAMS}
        self.cfg = GraspConfig(radius=float(self.p["radius"]), max_width=float(self.p["max_width"]),
                               finger_depth=float(self.p["finger_depth"]))
        self.points: np.ndarray | None = None
        self.base_xyz: np.ndarray | None = None
        group = ReentrantCallbackGroup()
        self.create_subscription(PointCloud2, self.p["cloud_topic"], self._on_cloud, latched_qos(), callback_group=group)
        self.create_subscription(Odometry, self.p["odom_topic"], self._on_odom, 10, callback_group=group)
        self.ground_client = self.create_client(GroundQuery, self.p["ground_service"], callback_group=group)
        self.grasp_pub = self.create_publisher(PoseStamped, self.p["grasp_topic"], 10)
        self.marker_pub = self.create_publisher(Marker, "grasp/marker", latched_qos())
        self.create_service(PlanGrasp, "plan_grasp", self._on_plan, callback_group=group)

    def _on_cloud(self, msg: PointCloud2) -> None:
        try:
            self.points = convert.cloud_to_points(msg)
        except ValueError as e:
            self.get_logger().warning(f"bad memory cloud: {e}", throttle_duration_sec=5.0)

    def _on_odom(self, msg: Odometry) -> None:
        p = msg.pose.pose.position
        self.base_xyz = np.array([p.x, p.y, p.z])

    def _ground(self, query: str) -> np.ndarray:
        if not self.ground_client.wait_for_service(timeout_sec=float(self.p["service_timeout"])):
            raise ValueError(f"service '{self.p['ground_service']}' is not available")
        done = threading.Event()
        fut = self.ground_client.call_async(GroundQuery.Request(query=query, frame_id=self.p["odom_frame"], top_k=1))
        fut.add_done_callback(lambda _: done.set())
        if not done.wait(float(self.p["service_timeout"])):
            raise ValueError("grounding timed out")
        res = fut.result()
        if not res.success:
            raise ValueError(f"grounding failed: {res.message}")
        pt = res.points[0].point
        return np.array([pt.x, pt.y, pt.z])

    def _on_plan(self, req: PlanGrasp.Request, res: PlanGrasp.Response) -> PlanGrasp.Response:
        try:
            if req.query.strip():
                target = self._ground(req.query)
            else:
                if req.target.header.frame_id not in ("", self.p["odom_frame"]):
                    raise ValueError(f"target frame '{req.target.header.frame_id}' is not '{self.p['odom_frame']}'")
                target = np.array([req.target.point.x, req.target.point.y, req.target.point.z])
            if self.points is None:
                raise ValueError(f"no memory geometry received on '{self.p['cloud_topic']}' yet")
            plan = plan_grasp(target, self.points, self.cfg, viewpoint=self.base_xyz)
        except ValueError as e:
            res.success, res.message = False, str(e)
            self.get_logger().info(f"plan_grasp failed: {e}")
            return res
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.p["odom_frame"])
        res.grasp = PoseStamped(header=header, pose=convert.matrix_to_pose_msg(plan.T_world_tcp))
        res.width, res.score, res.approach = float(plan.width), float(plan.score), plan.approach
        res.success = True
        res.message = (f"{plan.approach} grasp at ({plan.T_world_tcp[0, 3]:.3f}, {plan.T_world_tcp[1, 3]:.3f}, "
                       f"{plan.T_world_tcp[2, 3]:.3f}), width {plan.width * 100:.1f} cm, "
                       f"{len(plan.object_points)} object points")
        # an ARROW points along its x axis: rotate the TCP frame so x takes the approach (z) direction
        T_arrow = plan.T_world_tcp @ np.array([[0, 0, -1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
        T_arrow[:3, 3] -= 0.1 * plan.T_world_tcp[:3, 2]
        marker = Marker(header=header, ns="grasp", id=0, type=Marker.ARROW, pose=convert.matrix_to_pose_msg(T_arrow),
                        color=ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0))
        marker.scale.x, marker.scale.y, marker.scale.z = 0.1, 0.01, 0.015
        self.marker_pub.publish(marker)
        if req.execute:
            self.grasp_pub.publish(res.grasp)
            res.message += "; sent to the arm controller"
        self.get_logger().info(res.message)
        return res


def main(args: list[str] | None = None) -> int:
    return spin_node(GraspPlannerNode, threads=3, args=args)


if __name__ == "__main__":
    raise SystemExit(main())

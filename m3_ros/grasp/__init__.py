"""Grasp planning from local memory geometry (no ROS)."""
from m3_ros.grasp.planner import GraspConfig, GraspPlan, plan_grasp

__all__ = ["GraspConfig", "GraspPlan", "plan_grasp"]

"""Evaluation suite: scenes, sensors, methods and metrics (no ROS)."""

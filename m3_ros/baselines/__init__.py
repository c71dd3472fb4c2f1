"""Baselines the memory is compared against (no ROS)."""

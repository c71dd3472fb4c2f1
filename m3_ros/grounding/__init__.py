"""Text -> 3D targets from an M3 memory (no ROS)."""
from m3_ros.grounding.ground import GroundingConfig, GroundingResult, ground, relevance_image, validate_query

__all__ = ["GroundingConfig", "GroundingResult", "ground", "relevance_image", "validate_query"]

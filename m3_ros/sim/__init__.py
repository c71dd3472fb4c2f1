"""m3_ros.sim: the embedded pybullet simulator (ROS-free core; the sim_node wraps it)."""
from m3_ros.sim.scene import SceneConfig, load_scene
from m3_ros.sim.world import GraspOutcome, ObjectState, OracleNoise, SimFrame, SimWorld

__all__ = ["SceneConfig", "load_scene", "SimWorld", "SimFrame", "ObjectState", "OracleNoise",
           "GraspOutcome"]

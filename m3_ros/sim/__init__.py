"""m3_ros.sim: the embedded pybullet simulator (ROS-free core; the sim_node wraps it).

The world (pybullet) loads on first use of its names, so the scene format, the object
library and the generator import without pybullet.
"""
from m3_ros.sim.scene import SceneConfig, load_scene, write_scene

__all__ = ["SceneConfig", "load_scene", "write_scene", "SimWorld", "SimFrame", "ObjectState",
           "OracleNoise", "GraspOutcome"]
_WORLD_NAMES = {"SimWorld", "SimFrame", "ObjectState", "OracleNoise", "GraspOutcome"}


def __getattr__(name: str) -> object:
    if name in _WORLD_NAMES:
        from m3_ros.sim import world
        return getattr(world, name)
    raise AttributeError(f"module 'm3_ros.sim' has no attribute {name!r}")

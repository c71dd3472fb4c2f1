"""Building a scene's static fixtures (tables, boxes, walls) in a pybullet client.

Kept apart from ``world.py`` so the world reads as the robot and its sensors; the
geometry of a fixture (top height, footprint) lives on ``FixtureConfig`` without pybullet.
"""
from __future__ import annotations

import pybullet as p
from scipy.spatial.transform import Rotation

from m3_ros.sim.scene import FixtureConfig, ObjectConfig

_GREY = (0.8, 0.8, 0.8, 1.0)


def yaw_quat(yaw: float) -> list[float]:
    """Quaternion (x, y, z, w) of a rotation about world z."""
    return Rotation.from_euler("z", yaw).as_quat().tolist()


def build_fixture(fx: FixtureConfig, client: int) -> int | None:
    """Create one fixture as a static body; returns its uid (None for a floor area, which has none)."""
    if fx.kind == "floor":
        return None
    if fx.kind == "table":
        uid = p.loadURDF(fx.urdf, list(fx.xyz), yaw_quat(fx.yaw), useFixedBase=True,
                         globalScaling=fx.scale, physicsClientId=client)
        if fx.colour is not None:
            p.changeVisualShape(uid, -1, rgbaColor=list(fx.colour), physicsClientId=client)
        return uid
    half = [0.5 * s for s in fx.size]
    col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=client)
    vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=list(fx.colour or _GREY),
                              physicsClientId=client)
    # xyz is the centre of the bottom face: the box stands on the floor at z = xyz[2].
    pos = [fx.xyz[0], fx.xyz[1], fx.xyz[2] + half[2]]
    return p.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=col, baseVisualShapeIndex=vis,
                             basePosition=pos, baseOrientation=yaw_quat(fx.yaw), physicsClientId=client)


def set_object_dynamics(uid: int, o: ObjectConfig, client: int) -> None:
    """Mass (when the scene gives one) and the contact parameters every object gets."""
    if o.mass is not None:
        p.changeDynamics(uid, -1, mass=float(o.mass), physicsClientId=client)
    p.changeDynamics(uid, -1, lateralFriction=1.0, rollingFriction=0.001,
                     spinningFriction=0.001, physicsClientId=client)

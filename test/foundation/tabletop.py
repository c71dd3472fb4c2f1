"""A small pybullet table-top scene rendered at the memory node's 320x240 (test + bench fixture).

Kept local to the foundation tests because the simulator package (m3_ros.sim) had not landed
when these tests were written; it mirrors its default scene (duck, mug, teddy, soccer ball,
lego, tray on a table) with oracle instances from the segmentation buffer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3_ros.types import Instance

# name: (urdf, position xyz, yaw, scale, description, paraphrase)
OBJECTS: dict[str, tuple[str, tuple[float, float, float], float, float, str, str]] = {
    "tray": ("tray/traybox.urdf", (0.15, 0.12, 0.63), 0.0, 0.45, "a flat grey plastic tray", "a shallow serving tray"),
    "duck": ("duck_vhacd.urdf", (0.18, 0.12, 0.66), 0.6, 1.0, "a yellow rubber duck toy", "a bath duck"),
    "mug": ("objects/mug.urdf", (-0.12, 0.15, 0.64), 0.3, 1.0, "a red ceramic coffee mug", "a cup to drink coffee from"),
    "teddy": ("teddy_vhacd.urdf", (-0.12, -0.05, 0.70), 2.0, 2.5, "a plush teddy bear", "a stuffed toy bear"),
    "soccerball": ("soccerball.urdf", (0.15, -0.15, 0.70), 0.0, 0.12, "a black and white soccer ball", "a football for kicking"),
    "lego": ("lego/lego.urdf", (0.02, -0.28, 0.66), 0.4, 2.0, "a yellow lego brick", "a small plastic toy brick"),
}


@dataclass
class TabletopFrame:
    """One rendered view with oracle instances (one per visible object, label = description)."""

    rgb: np.ndarray  # [H, W, 3] uint8
    instances: list[Instance]
    names: list[str]  # object name of each instance
    masks: dict[str, np.ndarray]  # name -> [H, W] bool


def render_tabletop(width: int = 320, height: int = 240, eye: tuple[float, float, float] = (0.55, 0.0, 1.15),
                    min_pixels: int = 40) -> TabletopFrame:
    """Render the scene once (pybullet DIRECT, Tiny renderer) and cut oracle instances from segmentation."""
    import pybullet as p
    import pybullet_data

    cid = p.connect(p.DIRECT)
    try:
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
        p.setGravity(0, 0, -9.81, physicsClientId=cid)
        p.loadURDF("plane.urdf", physicsClientId=cid)
        p.loadURDF("table/table.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=cid)
        ids: dict[int, str] = {}
        for name, (urdf, pos, yaw, scale, _d, _p) in OBJECTS.items():
            quat = p.getQuaternionFromEuler([0, 0, yaw])
            ids[p.loadURDF(urdf, pos, quat, globalScaling=scale, physicsClientId=cid)] = name
        for _ in range(240):  # let the objects settle on the table
            p.stepSimulation(physicsClientId=cid)
        view = p.computeViewMatrix(eye, [0.0, 0.0, 0.62], [0, 0, 1])
        proj = p.computeProjectionMatrixFOV(60.0, width / height, 0.05, 5.0)
        _, _, rgba, _, seg = p.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER,
                                              physicsClientId=cid)
    finally:
        p.disconnect(cid)
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()
    seg = np.asarray(seg).reshape(height, width)
    instances, names, masks = [], [], {}
    for body, name in ids.items():
        mask = seg == body
        if mask.sum() < min_pixels:
            continue
        masks[name] = mask
        names.append(name)
        instances.append(Instance(mask=mask, label=OBJECTS[name][4], score=1.0, id=body))
    return TabletopFrame(rgb=rgb, instances=instances, names=names, masks=masks)

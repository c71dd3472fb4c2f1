"""Scene description for the embedded simulator, loaded from ``config/scenes/<name>.yaml``.

No pybullet or ROS here: plain dataclasses that the world builds from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

SCENES_DIR = Path(__file__).resolve().parents[2] / "config" / "scenes"


@dataclass
class ObjectConfig:
    """One movable object on the table."""

    name: str
    """Scene name, e.g. ``duck``."""
    urdf: str
    """URDF path inside pybullet_data (or absolute)."""
    xyz: tuple[float, float, float]
    """Initial position of the base frame in the world (= odom) frame, metres."""
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Initial roll, pitch, yaw in radians."""
    scale: float = 1.0
    """pybullet global scaling of the URDF."""
    colour: tuple[float, float, float, float] | None = None
    """RGBA override of the visual colour; None keeps the URDF's (and its texture)."""
    description: str = ""
    """Short natural-language description, as a labeller would give it."""
    synonyms: list[str] = field(default_factory=list)
    """Other labels the noisy oracle may use instead of ``description``."""


@dataclass
class TableConfig:
    """The table the objects stand on (a fixture: static, but segmented and labelled)."""

    urdf: str = "table/table.urdf"
    """URDF path inside pybullet_data."""
    scale: float = 0.6
    """Global scaling; pybullet's table has its top at 0.625 m times this."""
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Position of the table's base frame in the world."""
    description: str = "a white table"
    """Label the oracle gives the table."""

    @property
    def top_height(self) -> float:
        """Height of the table top above the floor in metres (pybullet's table.urdf)."""
        return 0.625 * self.scale + self.xyz[2]


@dataclass
class RandomizeConfig:
    """Seeded randomisation of the object layout."""

    xy: float = 0.0
    """Uniform xy offset in [-xy, xy] metres added to each object."""
    yaw: float = 0.0
    """Uniform yaw offset in [-yaw, yaw] radians added to each object."""
    drop_prob: float = 0.0
    """Probability that each object listed in ``optional`` is left out."""
    optional: list[str] = field(default_factory=list)
    """Names of objects that may be left out."""


@dataclass
class RobotConfig:
    """The quadruped, its arm and where it starts."""

    quadruped: str = "a1/a1.urdf"
    """Quadruped URDF (moved kinematically; legs posed)."""
    arm: str = "franka_panda/panda.urdf"
    """Arm URDF mounted on the quadruped's back (the Panda: its TCP link exists in the URDF)."""
    arm_mount_xyz: tuple[float, float, float] = (-0.02, 0.0, 0.06)
    """Arm base position in base_link, metres."""
    start: tuple[float, float, float] = (0.0, -1.0, float(np.pi / 2))
    """Start pose of base_link: x, y, yaw (rad)."""


@dataclass
class CameraConfig:
    """Head RGB-D camera: pinhole intrinsics from the vertical field of view, and its mount."""

    width: int = 320
    """Image width in pixels."""
    height: int = 240
    """Image height in pixels."""
    fovy_deg: float = 60.0
    """Vertical field of view in degrees."""
    near: float = 0.1
    """Near clip plane in metres (tight near/far keeps the depth buffer precise)."""
    far: float = 4.0
    """Far clip plane in metres; farther surfaces read as no return (0)."""
    mount_xyz: tuple[float, float, float] = (0.24, 0.0, 0.24)
    """Optical-frame origin in base_link, metres."""
    pitch_down_deg: float = 25.0
    """How far the optical axis points below base_link's horizontal, degrees."""

    def K(self) -> np.ndarray:
        """Intrinsics [3, 3]; pixel centres at integer coordinates (see m3_ros.geometry)."""
        f = (self.height / 2.0) / np.tan(np.radians(self.fovy_deg) / 2.0)
        return np.array([[f, 0.0, (self.width - 1) / 2.0],
                         [0.0, f, (self.height - 1) / 2.0],
                         [0.0, 0.0, 1.0]])


@dataclass
class WalkConfig:
    """The walk path: an orbit around a centre sampled into waypoints, then a final pose."""

    center: tuple[float, float] = (0.0, 0.0)
    """Orbit centre (x, y); the robot faces it on the orbit."""
    radius: float = 1.0
    """Orbit radius of base_link, metres."""
    start_deg: float = -90.0
    """Polar angle of the first orbit waypoint, degrees."""
    end_deg: float = 270.0
    """Polar angle of the last orbit waypoint, degrees."""
    step_deg: float = 30.0
    """Angular spacing of the orbit waypoints, degrees."""
    final: tuple[float, float, float] | None = (0.0, -0.62, float(np.pi / 2))
    """Pose (x, y, yaw) where the walk ends; None ends on the orbit."""

    def waypoints(self) -> np.ndarray:
        """[M, 3] (x, y, yaw) with yaw unwrapped so interpolation turns the short way."""
        n = max(1, int(round(abs(self.end_deg - self.start_deg) / self.step_deg)))
        ang = np.radians(np.linspace(self.start_deg, self.end_deg, n + 1))
        cx, cy = self.center
        pts = np.stack([cx + self.radius * np.cos(ang), cy + self.radius * np.sin(ang),
                        ang + np.pi], axis=1)
        if self.final is not None:
            pts = np.vstack([pts, np.asarray(self.final, dtype=np.float64)[None]])
        pts[:, 2] = np.unwrap(pts[:, 2])
        return pts


@dataclass
class SceneConfig:
    """A whole scene: table, objects, randomisation, robot, camera, walk."""

    name: str = "default"
    """Scene name."""
    table: TableConfig = field(default_factory=TableConfig)
    """The table."""
    objects: list[ObjectConfig] = field(default_factory=list)
    """Objects on the table."""
    randomize: RandomizeConfig = field(default_factory=RandomizeConfig)
    """Seeded layout randomisation."""
    robot: RobotConfig = field(default_factory=RobotConfig)
    """Quadruped and arm."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """Head camera."""
    walk: WalkConfig = field(default_factory=WalkConfig)
    """Walk path."""


def _tuple(v: object, n: int, what: str) -> tuple[float, ...]:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be {n} finite numbers, got {v!r}")
    return tuple(float(x) for x in arr)


def load_scene(scene: str | Path) -> SceneConfig:
    """Load a scene by name (``config/scenes/<name>.yaml``) or by YAML path.

    Raises ValueError for an unknown scene or a malformed entry.
    """
    path = Path(scene)
    if path.suffix not in (".yaml", ".yml"):
        path = SCENES_DIR / f"{scene}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SCENES_DIR.glob("*.yaml"))
        raise ValueError(f"unknown scene {scene!r} (no {path}); known scenes: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    tab = raw.get("table", {})
    table = TableConfig(urdf=tab.get("urdf", TableConfig.urdf), scale=float(tab.get("scale", 0.6)),
                        xyz=_tuple(tab.get("xyz", (0, 0, 0)), 3, "table.xyz"),
                        description=str(tab.get("description", TableConfig.description)))
    objects = []
    names = set()
    for o in raw.get("objects", []):
        name = str(o["name"])
        if name in names or name == "table":
            raise ValueError(f"duplicate or reserved object name {name!r} in {path}")
        names.add(name)
        objects.append(ObjectConfig(
            name=name, urdf=str(o["urdf"]), xyz=_tuple(o["xyz"], 3, f"{name}.xyz"),
            rpy=_tuple(o.get("rpy", (0, 0, 0)), 3, f"{name}.rpy"),
            scale=float(o.get("scale", 1.0)),
            colour=_tuple(o["colour"], 4, f"{name}.colour") if o.get("colour") is not None else None,
            description=str(o.get("description", name)), synonyms=list(o.get("synonyms", []))))
    rnd = raw.get("randomize", {})
    randomize = RandomizeConfig(xy=float(rnd.get("xy", 0.0)), yaw=float(rnd.get("yaw", 0.0)),
                                drop_prob=float(rnd.get("drop_prob", 0.0)),
                                optional=list(rnd.get("optional", [])))
    for n in randomize.optional:
        if n not in names:
            raise ValueError(f"randomize.optional names unknown object {n!r}")
    rb = raw.get("robot", {})
    robot = RobotConfig(quadruped=rb.get("quadruped", RobotConfig.quadruped),
                        arm=rb.get("arm", RobotConfig.arm),
                        arm_mount_xyz=_tuple(rb.get("arm_mount_xyz", RobotConfig.arm_mount_xyz), 3,
                                             "robot.arm_mount_xyz"),
                        start=_tuple(rb.get("start", RobotConfig.start), 3, "robot.start"))
    cm = raw.get("camera", {})
    camera = CameraConfig(width=int(cm.get("width", 320)), height=int(cm.get("height", 240)),
                          fovy_deg=float(cm.get("fovy_deg", 60.0)), near=float(cm.get("near", 0.1)),
                          far=float(cm.get("far", 4.0)),
                          mount_xyz=_tuple(cm.get("mount_xyz", CameraConfig.mount_xyz), 3,
                                           "camera.mount_xyz"),
                          pitch_down_deg=float(cm.get("pitch_down_deg", 25.0)))
    wk = raw.get("walk", {})
    orb = wk.get("orbit", {})
    walk = WalkConfig(center=_tuple(orb.get("center", (0, 0)), 2, "walk.orbit.center"),
                      radius=float(orb.get("radius", 1.0)),
                      start_deg=float(orb.get("start_deg", -90.0)),
                      end_deg=float(orb.get("end_deg", 270.0)),
                      step_deg=float(orb.get("step_deg", 30.0)),
                      final=_tuple(wk["final"], 3, "walk.final") if wk.get("final") is not None else None)
    return SceneConfig(name=str(raw.get("name", path.stem)), table=table, objects=objects,
                       randomize=randomize, robot=robot, camera=camera, walk=walk)

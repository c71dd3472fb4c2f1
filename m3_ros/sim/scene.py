"""Scene description for the embedded simulator, loaded from ``config/scenes/<name>.yaml``.

No pybullet or ROS here: plain dataclasses that the world builds from.

The format of ``default.yaml``, plus optional keys (all absent there, so it reads as before):
``table.yaw``; ``fixtures:`` (name, kind table|box|wall|floor, xyz of the footprint
centre, yaw, scale for tables, size for the others, colour, description); per object
``mass``, ``category``, ``library``, ``fixture`` (the support it stands on, default
``table``), ``reachable`` and ``grasp_base: [x, y, yaw]``; ``walk.waypoints:`` (a list
of [x, y, yaw] that replaces the orbit). ``write_scene`` writes this format back and
``load_scene`` of its output is the same SceneConfig, field for field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

SCENES_DIR = Path(__file__).resolve().parents[2] / "config" / "scenes"


@dataclass
class ObjectConfig:
    """One movable object on the table, another fixture or the floor."""

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
    mass: float | None = None
    """Mass in kg replacing the URDF's; None keeps the URDF's."""
    category: str = ""
    """What a person calls it (``mug``); look-alikes share it. Empty when unknown."""
    library: str = ""
    """Key in the object library (config/objects.yaml), empty for hand-made objects."""
    fixture: str = "table"
    """Name of the support it stands on: ``table``, a fixture's name, or ``floor``."""
    reachable: bool = True
    """False when no base pose puts it in arm's reach (or it cannot be grasped at all)."""
    grasp_base: tuple[float, float, float] | None = None
    """Base pose (x, y, yaw) with this object in arm's reach; None: use the walk's end."""


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
    yaw: float = 0.0
    """Rotation about world z, radians."""

    @property
    def top_height(self) -> float:
        """Height of the table top above the floor in metres (pybullet's table.urdf)."""
        return 0.625 * self.scale + self.xyz[2]

    @property
    def kind(self) -> str:
        """Always ``table`` (the same attribute as FixtureConfig.kind)."""
        return "table"

    @property
    def top_half_extents(self) -> tuple[float, float]:
        """Half length and half width of the top in its own frame (table.urdf: 1.5 m x 1 m)."""
        return 0.75 * self.scale, 0.5 * self.scale


@dataclass
class FixtureConfig:
    """A static support or wall besides the main table (segmented and labelled like it)."""

    name: str
    """Unique name (also the ground-truth object name); ``floor`` is reserved for kind floor."""
    kind: Literal["table", "box", "wall", "floor"]
    """table: table.urdf at ``scale``; box: a solid block (low cabinet, crate); wall: a
    thin box; floor: an area of the ground objects may stand on (no body)."""
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Centre of the fixture's footprint on the floor (its bottom), world frame."""
    yaw: float = 0.0
    """Rotation about world z, radians."""
    scale: float = 0.6
    """Table only: globalScaling of ``urdf``."""
    size: tuple[float, float, float] = (0.5, 0.4, 0.3)
    """Box, wall, floor: full extent x, y, z in the fixture's frame, metres."""
    colour: tuple[float, float, float, float] | None = None
    """RGBA of box and wall; None: the URDF's (table) or light grey."""
    description: str = ""
    """Label the oracle gives it (empty: the name)."""
    urdf: str = "table/table.urdf"
    """Table only: URDF path inside pybullet_data."""

    @property
    def top_height(self) -> float:
        """Height of the top surface objects stand on, metres (floor: the ground)."""
        if self.kind == "table":
            return 0.625 * self.scale + self.xyz[2]
        if self.kind == "floor":
            return self.xyz[2]
        return self.xyz[2] + self.size[2]

    @property
    def top_half_extents(self) -> tuple[float, float]:
        """Half extents of the top (or footprint) in the fixture's own frame, metres."""
        if self.kind == "table":
            return 0.75 * self.scale, 0.5 * self.scale
        return 0.5 * self.size[0], 0.5 * self.size[1]


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
    """The walk path: explicit waypoints, or an orbit around a centre sampled into waypoints; then a final pose."""

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
    points: list[tuple[float, float, float]] | None = None
    """Explicit waypoints (x, y, yaw) (YAML ``walk.waypoints``); when given they replace the orbit."""

    def waypoints(self) -> np.ndarray:
        """[M, 3] (x, y, yaw) with yaw unwrapped so interpolation turns the short way."""
        if self.points:
            pts = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        else:
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
    """A whole scene: table, further fixtures, objects, randomisation, robot, camera, walk."""

    name: str = "default"
    """Scene name."""
    table: TableConfig = field(default_factory=TableConfig)
    """The table."""
    objects: list[ObjectConfig] = field(default_factory=list)
    """Objects on the table, the fixtures or the floor."""
    randomize: RandomizeConfig = field(default_factory=RandomizeConfig)
    """Seeded layout randomisation."""
    robot: RobotConfig = field(default_factory=RobotConfig)
    """Quadruped and arm."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """Head camera."""
    walk: WalkConfig = field(default_factory=WalkConfig)
    """Walk path."""
    fixtures: list[FixtureConfig] = field(default_factory=list)
    """Further supports and walls besides ``table`` (empty in the hand-made default scene)."""

    def support(self, name: str) -> "TableConfig | FixtureConfig":
        """The support an object's ``fixture`` names (``table`` or a fixture)."""
        if name == "table":
            return self.table
        for f in self.fixtures:
            if f.name == name:
                return f
        if name == "floor":  # the ground itself, without a named floor area
            return FixtureConfig(name="floor", kind="floor", size=(1e3, 1e3, 0.0))
        raise ValueError(f"scene {self.name!r} has no support {name!r}; "
                         f"fixtures: {['table'] + [f.name for f in self.fixtures]}")


def _tuple(v: object, n: int, what: str) -> tuple[float, ...]:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be {n} finite numbers, got {v!r}")
    return tuple(float(x) for x in arr)


def _opt_tuple(v: object, n: int, what: str) -> tuple[float, ...] | None:
    return None if v is None else _tuple(v, n, what)


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
    return scene_from_dict(raw, default_name=path.stem, where=str(path))


def scene_from_dict(raw: dict, default_name: str = "scene", where: str = "scene") -> SceneConfig:
    """Build a SceneConfig from the parsed YAML (the format of ``config/scenes/default.yaml``)."""
    tab = raw.get("table", {})
    table = TableConfig(urdf=tab.get("urdf", TableConfig.urdf), scale=float(tab.get("scale", 0.6)),
                        xyz=_tuple(tab.get("xyz", (0, 0, 0)), 3, "table.xyz"),
                        description=str(tab.get("description", TableConfig.description)),
                        yaw=float(tab.get("yaw", 0.0)))
    fixtures = []
    names = {"table"}
    for fx in raw.get("fixtures", []) or []:
        name = str(fx["name"])
        kind = str(fx.get("kind", "box"))
        if kind not in ("table", "box", "wall", "floor"):
            raise ValueError(f"fixture {name!r}: kind must be table, box, wall or floor, got {kind!r}")
        if name in names or (name == "floor") != (kind == "floor"):
            raise ValueError(f"duplicate or reserved fixture name {name!r} ({kind}) in {where}")
        names.add(name)
        fixtures.append(FixtureConfig(
            name=name, kind=kind, xyz=_tuple(fx.get("xyz", (0, 0, 0)), 3, f"{name}.xyz"),
            yaw=float(fx.get("yaw", 0.0)), scale=float(fx.get("scale", 0.6)),
            size=_tuple(fx.get("size", FixtureConfig.size), 3, f"{name}.size"),
            colour=_opt_tuple(fx.get("colour"), 4, f"{name}.colour"),
            description=str(fx.get("description", "")),
            urdf=str(fx.get("urdf", FixtureConfig.urdf))))
    objects = []
    supports = names | {"floor"}
    for o in raw.get("objects", []):
        name = str(o["name"])
        if name in names or name == "floor":
            raise ValueError(f"duplicate or reserved object name {name!r} in {where}")
        names.add(name)
        fixture = str(o.get("fixture", "table"))
        if fixture not in supports:
            raise ValueError(f"object {name!r} stands on unknown fixture {fixture!r}")
        objects.append(ObjectConfig(
            name=name, urdf=str(o["urdf"]), xyz=_tuple(o["xyz"], 3, f"{name}.xyz"),
            rpy=_tuple(o.get("rpy", (0, 0, 0)), 3, f"{name}.rpy"),
            scale=float(o.get("scale", 1.0)),
            colour=_opt_tuple(o.get("colour"), 4, f"{name}.colour"),
            description=str(o.get("description", name)), synonyms=list(o.get("synonyms", [])),
            mass=None if o.get("mass") is None else float(o["mass"]),
            category=str(o.get("category", "")), library=str(o.get("library", "")),
            fixture=fixture, reachable=bool(o.get("reachable", True)),
            grasp_base=_opt_tuple(o.get("grasp_base"), 3, f"{name}.grasp_base")))
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
    points = wk.get("waypoints")
    walk = WalkConfig(center=_tuple(orb.get("center", (0, 0)), 2, "walk.orbit.center"),
                      radius=float(orb.get("radius", 1.0)),
                      start_deg=float(orb.get("start_deg", -90.0)),
                      end_deg=float(orb.get("end_deg", 270.0)),
                      step_deg=float(orb.get("step_deg", 30.0)),
                      final=_tuple(wk["final"], 3, "walk.final") if wk.get("final") is not None else None,
                      points=None if points is None else
                      [_tuple(q, 3, f"walk.waypoints[{i}]") for i, q in enumerate(points)])
    if walk.points is not None and len(walk.points) < 1:
        raise ValueError("walk.waypoints must list at least one pose")
    return SceneConfig(name=str(raw.get("name", default_name)), table=table, objects=objects,
                       randomize=randomize, robot=robot, camera=camera, walk=walk, fixtures=fixtures)


class _FlowLists(yaml.SafeDumper):
    """Writes short lists of numbers inline (``xyz: [0.0, 0.1, 0.4]``), like the hand-made scenes."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(x, (int, float, str)) for x in data) and len(data) <= 8
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowLists.add_representer(list, _represent_list)


def _l(v: tuple | list | None) -> list | None:
    return None if v is None else [float(x) for x in v]


def scene_to_dict(scene: SceneConfig) -> dict:
    """The YAML mapping of a scene; ``scene_from_dict`` of it gives the scene back exactly."""
    sc = scene
    table = {"urdf": sc.table.urdf, "scale": float(sc.table.scale), "xyz": _l(sc.table.xyz),
             "description": sc.table.description}
    if sc.table.yaw != 0.0:
        table["yaw"] = float(sc.table.yaw)
    out: dict = {"name": sc.name, "table": table}
    if sc.fixtures:
        out["fixtures"] = []
        for f in sc.fixtures:
            d = {"name": f.name, "kind": f.kind, "xyz": _l(f.xyz), "yaw": float(f.yaw)}
            if f.kind == "table":
                d.update(urdf=f.urdf, scale=float(f.scale))
            else:
                d["size"] = _l(f.size)
            if f.colour is not None:
                d["colour"] = _l(f.colour)
            d["description"] = f.description
            out["fixtures"].append(d)
    out["objects"] = []
    for o in sc.objects:
        d = {"name": o.name, "urdf": o.urdf, "xyz": _l(o.xyz), "rpy": _l(o.rpy),
             "scale": float(o.scale)}
        if o.colour is not None:
            d["colour"] = _l(o.colour)
        d["description"] = o.description
        d["synonyms"] = list(o.synonyms)
        if o.mass is not None:
            d["mass"] = float(o.mass)
        for k in ("category", "library"):
            if getattr(o, k):
                d[k] = getattr(o, k)
        d["fixture"] = o.fixture
        d["reachable"] = bool(o.reachable)
        if o.grasp_base is not None:
            d["grasp_base"] = _l(o.grasp_base)
        out["objects"].append(d)
    rz = sc.randomize
    out["randomize"] = {"xy": float(rz.xy), "yaw": float(rz.yaw), "drop_prob": float(rz.drop_prob),
                        "optional": list(rz.optional)}
    rb = sc.robot
    out["robot"] = {"quadruped": rb.quadruped, "arm": rb.arm, "arm_mount_xyz": _l(rb.arm_mount_xyz),
                    "start": _l(rb.start)}
    cm = sc.camera
    out["camera"] = {"width": int(cm.width), "height": int(cm.height), "fovy_deg": float(cm.fovy_deg),
                     "near": float(cm.near), "far": float(cm.far), "mount_xyz": _l(cm.mount_xyz),
                     "pitch_down_deg": float(cm.pitch_down_deg)}
    wk = sc.walk
    walk: dict = {}
    default_orbit = WalkConfig()
    if wk.points is None or any(getattr(wk, k) != getattr(default_orbit, k) for k in
                                ("center", "radius", "start_deg", "end_deg", "step_deg")):
        walk["orbit"] = {"center": _l(wk.center), "radius": float(wk.radius),
                         "start_deg": float(wk.start_deg), "end_deg": float(wk.end_deg),
                         "step_deg": float(wk.step_deg)}
    if wk.points is not None:
        walk["waypoints"] = [_l(q) for q in wk.points]
    walk["final"] = _l(wk.final)
    out["walk"] = walk
    return out


def write_scene(scene: SceneConfig, path: str | Path, header: str = "") -> Path:
    """Write a scene as readable YAML (the hand-made format); ``load_scene(path)`` returns it exactly.

    ``header`` becomes comment lines at the top (e.g. which family and seed made it).
    """
    path = Path(path)
    text = yaml.dump(scene_to_dict(scene), Dumper=_FlowLists, sort_keys=False, width=100,
                     allow_unicode=True)
    lines = "".join(f"# {ln}\n" if ln else "#\n" for ln in header.splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lines + text)
    return path

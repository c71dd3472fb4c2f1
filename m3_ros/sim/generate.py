"""Seeded scene generator: a family name and a seed give a SceneConfig (write it with ``write_scene``).

Families:
    table       one table, 5-10 objects on it, one lap around it, ends facing it.
    two_tables  two tables 3-3.6 m apart carrying the same categories; three quarters of a
                lap around each (every side seen), joined by a straight transit.
    room        a 6 x 6 m walled room with a table, a second fixture (a low cabinet or a
                small table) and a floor area in three corners; laps around both
                fixtures and an arc in front of the floor area, >= 15 m in all.

Every object is a library object (config/objects.yaml) placed at any yaw without overlap
on a fixture's top (or the floor area), with look-alikes (same category, other colour)
as distractors. Each gets a ``grasp_base``: a base pose from which the arm reaches it
(``ArmReach``), or ``reachable: false`` when there is none. No pybullet here: the reach
model was measured with the world's IK and test/sim/test_generate.py checks it there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from m3_ros.sim.library import LibraryObject, load_library
from m3_ros.sim.scene import (FixtureConfig, ObjectConfig, RobotConfig, SceneConfig, TableConfig,
                              WalkConfig, load_scene)

FAMILIES = ("table", "two_tables", "room")


@dataclass(frozen=True)
class ArmReach:
    """Where the Panda on the A1 reaches a top-down grasp, in base_link (from the world's IK).

    Measured by solving the grasp, pre-grasp (+0.12 m) and approach (+0.22 m) poses of
    ``SimWorld.execute_grasp`` straight ahead of the base; the bands keep ~5 cm inside
    where the IK error stayed under 5 mm.
    """

    forward: tuple[float, float] = (0.35, 0.62)
    """Distance ahead of base_link for grasp points at table and cabinet height, metres."""
    floor_forward: tuple[float, float] = (0.55, 0.61)
    """The same for grasp points on the floor (the arm reaches down past its own base);
    there the hand must pick the better of a closing direction and its flip (see
    ``SimWorld.top_down_grasp_pose``), which the IK reaches in this band at any yaw."""
    floor_below: float = 0.15
    """Grasp points lower than this (m above the ground) use ``floor_forward``."""
    body_front: float = 0.30
    """How far the robot (head, front legs) reaches ahead of base_link, metres."""
    body_back: float = 0.35
    """How far it reaches behind base_link (rear legs, the folded arm), metres."""
    body_half_width: float = 0.20
    """Half its width, legs included, metres."""
    clearance: float = 0.03
    """Gap kept between the robot and any fixture, wall or floor object, metres."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the generator (one source of defaults)."""

    objects: tuple[int, int] = (5, 10)
    """Inclusive range of the number of objects in a scene."""
    edge_margin: float = 0.03
    """Gap between an object's footprint and the edge of its support, metres."""
    gap: float = 0.015
    """Gap between two objects' footprints, metres."""
    orbit_clearance: float = 0.45
    """Orbit radius minus a fixture's half diagonal, metres."""
    orbit_step_deg: float = 30.0
    """Angular spacing of orbit waypoints, degrees."""
    reach: ArmReach = field(default_factory=ArmReach)
    """The arm reach model for ``grasp_base``."""


# ---------------------------------------------------------------------- geometry
_DECIMALS = 4  # every generated number rounded to 0.1 mm / 0.1 mrad: short, readable YAML


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), _DECIMALS)


def _rt(v: np.ndarray | tuple | list) -> tuple[float, ...]:
    return tuple(round(float(x), _DECIMALS) for x in v)


def _rot2(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


@dataclass(frozen=True)
class _Rect:
    """An oriented rectangle on the floor plan: centre, yaw, half extents."""

    c: np.ndarray  # [2]
    yaw: float
    h: tuple[float, float]

    def corners(self) -> np.ndarray:
        hx, hy = self.h
        return self.c + np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]]) @ _rot2(self.yaw).T

    def to_local(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy) - self.c) @ _rot2(self.yaw)  # [.., 2] in the rectangle's frame

    def grown(self, d: float) -> "_Rect":
        return _Rect(self.c, self.yaw, (self.h[0] + d, self.h[1] + d))


def _rects_overlap(a: _Rect, b: _Rect) -> bool:
    """Separating-axis test of two oriented rectangles."""
    if np.hypot(*(a.c - b.c)) > np.hypot(*a.h) + np.hypot(*b.h):  # bounding circles apart: cheap exit
        return False
    ca, cb = a.corners(), b.corners()
    for yaw in (a.yaw, a.yaw + np.pi / 2, b.yaw, b.yaw + np.pi / 2):
        axis = np.array([np.cos(yaw), np.sin(yaw)])
        pa, pb = ca @ axis, cb @ axis
        if pa.max() < pb.min() or pb.max() < pa.min():
            return False
    return True


def _circle_in_rect(r: _Rect, xy: np.ndarray, radius: float) -> bool:
    """Whether a circle overlaps a rectangle."""
    loc = r.to_local(xy)
    nearest = np.clip(loc, [-r.h[0], -r.h[1]], [r.h[0], r.h[1]])
    return float(np.linalg.norm(loc - nearest)) < radius


def _support_rect(s: TableConfig | FixtureConfig) -> _Rect:
    return _Rect(np.asarray(s.xyz[:2], dtype=np.float64), float(s.yaw), s.top_half_extents)


def _robot_rect(pose: np.ndarray, reach: ArmReach) -> _Rect:
    """The robot's footprint at a base pose (x, y, yaw)."""
    mid = 0.5 * (reach.body_front - reach.body_back)
    c = np.asarray(pose[:2]) + mid * np.array([np.cos(pose[2]), np.sin(pose[2])])
    return _Rect(c, float(pose[2]), (0.5 * (reach.body_front + reach.body_back), reach.body_half_width))


# ---------------------------------------------------------------------- scene pieces
@dataclass
class _Placed:
    obj: ObjectConfig
    lib: LibraryObject
    centre: np.ndarray  # [2] footprint (AABB) centre in the world
    radius: float


def _obstacles(scene: SceneConfig) -> list[_Rect]:
    """Floor-plan rectangles of every body the robot must not walk into (not floor areas)."""
    rects = [_support_rect(scene.table)]
    for f in scene.fixtures:
        if f.kind == "table":
            rects.append(_support_rect(f))
        elif f.kind in ("box", "wall"):
            rects.append(_Rect(np.asarray(f.xyz[:2], dtype=np.float64), float(f.yaw),
                               (0.5 * f.size[0], 0.5 * f.size[1])))
    return rects


def robot_pose_clear(scene: SceneConfig, pose: np.ndarray, reach: ArmReach = ArmReach(),
                     floor_objects: list[tuple[np.ndarray, float]] | None = None) -> bool:
    """Whether the robot standing at ``pose`` (x, y, yaw) keeps clear of fixtures, walls and floor objects.

    ``floor_objects``: (centre [2], radius) of objects on the floor; default: the scene's.
    """
    rob = _robot_rect(np.asarray(pose, dtype=np.float64), reach).grown(reach.clearance)
    if any(_rects_overlap(rob, r) for r in _obstacles(scene)):
        return False
    if floor_objects is None:
        floor_objects = _floor_circles(scene)
    return not any(_circle_in_rect(rob, c, rad) for c, rad in floor_objects)


def footprint(o: ObjectConfig, lib: dict[str, LibraryObject] | None = None) -> tuple[np.ndarray, float]:
    """(centre [2], radius) of a circle on the floor plan holding a library object at its pose."""
    lo = (lib or load_library())[o.library]
    # The scene's rpy is yaw after the library's upright rpy: R = Rz(yaw) * R_upright.
    R_yaw = Rotation.from_euler("xyz", o.rpy) * Rotation.from_euler("xyz", lo.rpy).inv()
    yaw = float(R_yaw.as_euler("zyx")[0])
    return np.asarray(o.xyz[:2]) + _rot2(yaw) @ np.asarray(lo.offset[:2]), lo.footprint_radius


def _floor_circles(scene: SceneConfig) -> list[tuple[np.ndarray, float]]:
    lib = load_library()
    return [footprint(o, lib) if o.library in lib else (np.asarray(o.xyz[:2]), 0.1)
            for o in scene.objects if scene.support(o.fixture).kind == "floor"]


def walk_clear(scene: SceneConfig, reach: ArmReach = ArmReach(), step: float = 0.05) -> bool:
    """Whether every pose along the walk (sampled every ``step`` m) keeps the robot clear."""
    pts = scene.walk.waypoints()
    floor = _floor_circles(scene)
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b[:2] - a[:2]) / step)))
        for t in np.linspace(0.0, 1.0, n + 1):
            if not robot_pose_clear(scene, (1 - t) * a + t * b, reach, floor):
                return False
    return True


def _place(lib: LibraryObject, support: TableConfig | FixtureConfig, others: list[_Placed],
           rng: np.random.Generator, cfg: GeneratorConfig, name: str) -> _Placed | None:
    """Drop one library object at a random free spot and yaw on a support's top (None: no room)."""
    rect = _support_rect(support)
    r = lib.footprint_radius
    room = np.array(rect.h) - r - cfg.edge_margin
    if np.any(room <= 0):
        return None
    for _ in range(200):
        centre = rect.c + _rot2(rect.yaw) @ rng.uniform(-room, room)
        yaw = _u(rng, -np.pi, np.pi)
        if all(np.linalg.norm(centre - o.centre) >= r + o.radius + cfg.gap for o in others):
            break
    else:
        return None
    base_xy = np.asarray(_rt(centre - _rot2(yaw) @ np.asarray(lib.offset[:2])))
    centre = base_xy + _rot2(yaw) @ np.asarray(lib.offset[:2])  # what ``footprint`` will compute
    # 3 mm above the top: it drops onto it while the world settles (a static one stays put).
    z = round(support.top_height + lib.base_height + (0.0 if lib.static else 0.003), _DECIMALS) + 0.0
    R = Rotation.from_euler("z", yaw) * Rotation.from_euler("xyz", lib.rpy)
    fixture = "table" if isinstance(support, TableConfig) else support.name
    obj = ObjectConfig(
        name=name, urdf=lib.urdf, xyz=(float(base_xy[0]), float(base_xy[1]), float(z)),
        rpy=_rt(R.as_euler("xyz")), scale=lib.scale, colour=lib.rgba,
        description=lib.description, synonyms=list(lib.synonyms), mass=lib.mass,
        category=lib.category, library=lib.key, fixture=fixture)
    return _Placed(obj, lib, centre, r)


def grasp_base(scene: SceneConfig, obj: ObjectConfig, reach: ArmReach = ArmReach(),
               floor_objects: list[tuple[np.ndarray, float]] | None = None) -> tuple[float, float, float] | None:
    """A base pose (x, y, yaw) facing ``obj`` with it in arm's reach and the robot clear; None if none.

    Tries approach directions every 15 degrees and, along each, the closest stand-off
    first; keeps the closest feasible one (ties: the first direction).
    """
    lib = load_library()
    lo = lib[obj.library]
    support = scene.support(obj.fixture)
    grasp_z = support.top_height + 0.5 * lo.size[2]
    lo_f, hi_f = reach.floor_forward if grasp_z < reach.floor_below else reach.forward
    centre, _ = footprint(obj, lib)
    if floor_objects is None:
        floor_objects = _floor_circles(scene)
    others = [(c, r) for c, r in floor_objects if np.linalg.norm(c - centre) > 1e-6]
    best = None
    for a in np.radians(np.arange(0.0, 360.0, 15.0)):
        d = np.array([np.cos(a), np.sin(a)])
        for f in np.arange(lo_f, hi_f + 1e-9, 0.02):
            pose = np.array(_rt([*(centre - f * d), a]))
            if robot_pose_clear(scene, pose, reach, others):
                if best is None or f < best[0] - 1e-9:
                    best = (f, pose)
                break
    if best is None:
        return None
    x, y, yaw = best[1]
    return float(x), float(y), float(np.arctan2(np.sin(yaw), np.cos(yaw)))


def _orbit(centre: np.ndarray, radius: float, start: float, sweep: float, step_deg: float) -> list[np.ndarray]:
    """Waypoints on a circle, facing its centre, from angle ``start`` over ``sweep`` rad (CCW)."""
    n = max(1, int(round(abs(np.degrees(sweep)) / step_deg)))
    return [np.array(_rt([centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a), a + np.pi]))
            for a in start + np.linspace(0.0, sweep, n + 1)]


def _orbit_radius(s: TableConfig | FixtureConfig, cfg: GeneratorConfig) -> float:
    return float(np.hypot(*s.top_half_extents)) + cfg.orbit_clearance


def _standoff(scene: SceneConfig, s: TableConfig | FixtureConfig, angle: float, reach: ArmReach) -> np.ndarray:
    """The closest clear pose on the ray from a support's centre at ``angle``, facing the centre."""
    rect = _support_rect(s)
    d_loc = _rot2(rect.yaw).T @ np.array([np.cos(angle), np.sin(angle)])
    with np.errstate(divide="ignore"):
        t = float(np.min(np.array(rect.h) / np.abs(d_loc)))  # where the ray leaves the top
    for dist in t + reach.body_front + reach.clearance + np.arange(0.01, 1.0, 0.01):
        pose = np.array(_rt([rect.c[0] + dist * np.cos(angle), rect.c[1] + dist * np.sin(angle), angle + np.pi]))
        if robot_pose_clear(scene, pose, reach):
            return pose
    raise RuntimeError(f"no clear stand-off at angle {angle:.2f} rad from {s}")


def _finish(name: str, table: TableConfig, fixtures: list[FixtureConfig], placed: list[_Placed],
            points: list[np.ndarray], final: np.ndarray | None, cfg: GeneratorConfig) -> SceneConfig:
    pts = np.array(points)
    pts[:, 2] = np.unwrap(pts[:, 2])
    walk = WalkConfig(points=[_rt(q) for q in pts], final=None if final is None else _rt(final))
    start = pts[0]
    scene = SceneConfig(name=name, table=table, objects=[p.obj for p in placed],
                        robot=RobotConfig(start=(float(start[0]), float(start[1]), float(start[2]))),
                        walk=walk, fixtures=fixtures)
    floor = _floor_circles(scene)
    for o in scene.objects:
        base = grasp_base(scene, o, cfg.reach, floor) if load_library()[o.library].graspable else None
        o.grasp_base = base
        o.reachable = base is not None
    return scene


# ---------------------------------------------------------------------- object choice
def _pick_objects(rng: np.random.Generator, n: int, lib: dict[str, LibraryObject],
                  lookalike_groups: int) -> list[LibraryObject]:
    """n distinct library objects: ``lookalike_groups`` pairs of one category in two colours, then any."""
    by_cat: dict[str, list[str]] = {}
    for k, o in sorted(lib.items()):
        by_cat.setdefault(o.category, []).append(k)
    multi = sorted(c for c, ks in by_cat.items() if len(ks) >= 2)
    chosen: list[str] = []
    for c in rng.permutation(multi)[:lookalike_groups]:
        chosen += [str(k) for k in rng.permutation(by_cat[str(c)])[:2]]
    rest = [k for k in sorted(lib) if k not in chosen]
    chosen += [str(k) for k in rng.permutation(rest)[:max(0, n - len(chosen))]]
    return [lib[k] for k in chosen[:n]]


def _put_all(items: list[LibraryObject], supports: list, rng: np.random.Generator, cfg: GeneratorConfig,
             placed: list[_Placed], names: set[str]) -> None:
    """Place each item on its support (parallel list), skipping the ones that find no room."""
    for lo, s in zip(items, supports):
        name = lo.key
        k = 2
        while name in names:
            name, k = f"{lo.key}_{k}", k + 1
        same = [p for p in placed if p.obj.fixture == ("table" if isinstance(s, TableConfig) else s.name)]
        got = _place(lo, s, same, rng, cfg, name)
        if got is not None:
            placed.append(got)
            names.add(name)


# ---------------------------------------------------------------------- families
def _gen_table(rng: np.random.Generator, cfg: GeneratorConfig, name: str) -> SceneConfig:
    lib = load_library()
    table = TableConfig(scale=_u(rng, 0.55, 0.7), yaw=_u(rng, -np.pi, np.pi))
    n = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    items = _pick_objects(rng, n, lib, lookalike_groups=int(rng.integers(1, 3)))
    placed: list[_Placed] = []
    _put_all(items, [table] * len(items), rng, cfg, placed, set())
    # Start (and end) the lap square to one long side and finish facing it, like the
    # hand-made default scene: the near half of the table is then in arm's reach.
    start = round(table.yaw + (np.pi / 2 if rng.random() < 0.5 else -np.pi / 2), _DECIMALS)
    c = np.asarray(table.xyz[:2])
    points = _orbit(c, _orbit_radius(table, cfg), start, 2 * np.pi, cfg.orbit_step_deg)
    scene = _finish(name, table, [], placed, points, None, cfg)
    final = _standoff(scene, table, start, cfg.reach)
    final[2] = scene.walk.points[-1][2]  # the lap's last yaw: no extra turn
    scene.walk.final = _rt(final)
    return scene


def _gen_two_tables(rng: np.random.Generator, cfg: GeneratorConfig, name: str) -> SceneConfig:
    lib = load_library()
    table = TableConfig(scale=_u(rng, 0.55, 0.7), yaw=_u(rng, -np.pi, np.pi))
    theta = _u(rng, -np.pi, np.pi)
    dist = _u(rng, 3.0, 3.6)
    cb = np.array(_rt(dist * np.array([np.cos(theta), np.sin(theta)])))
    other = FixtureConfig(name="table_2", kind="table", xyz=(float(cb[0]), float(cb[1]), 0.0),
                          yaw=_u(rng, -np.pi, np.pi), scale=_u(rng, 0.55, 0.7),
                          description="a white table")
    # The same categories on both tables, each in a colour drawn per table (maybe the same).
    by_cat: dict[str, list[str]] = {}
    for k, o in sorted(lib.items()):
        by_cat.setdefault(o.category, []).append(k)
    cats = [str(c) for c in rng.permutation(sorted(by_cat))[:3]]
    n = int(rng.integers(max(cfg.objects[0], 2 * len(cats)), cfg.objects[1] + 1))
    items, sups = [], []
    for s in (table, other):
        for c in cats:
            items.append(lib[str(rng.choice(by_cat[c]))])
            sups.append(s)
    extra = [k for k in sorted(lib) if lib[k].category not in cats]
    for k in rng.permutation(extra)[:n - len(items)]:
        items.append(lib[str(k)])
        sups.append(table if rng.random() < 0.5 else other)
    placed: list[_Placed] = []
    _put_all(items, sups, rng, cfg, placed, set())
    ca, cbv = np.asarray(table.xyz[:2]), np.asarray(other.xyz[:2])
    # Three quarters of a lap around each (start, +90, +180, +270 degrees: every side),
    # leaving A on the side facing B and entering B's lap on the side facing A.
    ra, rb = _orbit_radius(table, cfg), _orbit_radius(other, cfg)
    lap = 1.5 * np.pi
    pts = _orbit(ca, ra, theta + np.pi / 4 - lap, lap, cfg.orbit_step_deg)
    pts += _orbit(cbv, rb, theta + np.pi - np.pi / 4, lap, cfg.orbit_step_deg)
    return _finish(name, table, [other], placed, pts, None, cfg)


_WALL_COLOURS = ((0.85, 0.8, 0.7, 1.0), (0.75, 0.82, 0.9, 1.0), (0.78, 0.86, 0.76, 1.0), (0.82, 0.82, 0.82, 1.0))


def _gen_room(rng: np.random.Generator, cfg: GeneratorConfig, name: str) -> SceneConfig:
    lib = load_library()
    half = 3.0  # inner half size of the 6 x 6 m room
    wall_t, wall_h = 0.05, 1.0
    colour = _WALL_COLOURS[int(rng.integers(len(_WALL_COLOURS)))]
    walls = []
    for k, (x, y, yaw) in enumerate([(0, half + wall_t / 2, 0), (0, -half - wall_t / 2, 0),
                                     (half + wall_t / 2, 0, np.pi / 2), (-half - wall_t / 2, 0, np.pi / 2)]):
        walls.append(FixtureConfig(name=f"wall_{'nsew'[k]}", kind="wall", xyz=(float(x), float(y), 0.0),
                                   yaw=float(yaw), size=(2 * half + 2 * wall_t, wall_t, wall_h),
                                   colour=colour, description="a painted wall"))
    # Three corners: table, second fixture, floor area; the layout turned by a multiple of
    # 90 deg (not mirrored: the walk below relies on the floor area lying to its left).
    turn = _rot2(float(rng.integers(4)) * np.pi / 2)
    jit = lambda: rng.uniform(-0.15, 0.15, size=2)  # noqa: E731
    c_table = np.array(_rt(turn @ (np.array([-1.3, 1.2]) + jit())))
    c_second = np.array(_rt(turn @ (np.array([1.35, -1.3]) + jit())))
    c_floor = np.array(_rt(turn @ (np.array([1.55, 1.55]) + jit())))
    table = TableConfig(xyz=(float(c_table[0]), float(c_table[1]), 0.0), scale=_u(rng, 0.55, 0.7),
                        yaw=_u(rng, -np.pi, np.pi))
    if rng.random() < 0.5:
        second = FixtureConfig(name="cabinet", kind="box", xyz=(float(c_second[0]), float(c_second[1]), 0.0),
                               yaw=_u(rng, -np.pi, np.pi), size=(0.6, 0.4, 0.3),
                               colour=(0.55, 0.38, 0.22, 1.0), description="a low wooden cabinet")
    else:
        second = FixtureConfig(name="side_table", kind="table", xyz=(float(c_second[0]), float(c_second[1]), 0.0),
                               yaw=_u(rng, -np.pi, np.pi), scale=0.5, description="a small white table")
    floor = FixtureConfig(name="floor", kind="floor", xyz=(float(c_floor[0]), float(c_floor[1]), 0.0),
                          size=(0.9, 0.9, 0.0), description="the floor")
    n = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    items = _pick_objects(rng, n, lib, lookalike_groups=int(rng.integers(1, 3)))
    items = [items[i] for i in rng.permutation(len(items))]  # look-alikes land anywhere
    n_floor = min(3, max(1, n // 3))
    n_second = min(3, max(1, (n - n_floor) // 3))
    sups = [floor] * n_floor + [second] * n_second + [table] * (n - n_floor - n_second)
    placed: list[_Placed] = []
    _put_all(items, sups, rng, cfg, placed, set())
    # Laps around the table and the second fixture, each joined on the side facing the
    # other, then an arc in front of the floor area, facing it.
    ct, cs, cf = (np.asarray(v, dtype=np.float64) for v in (c_table, c_second, c_floor))
    a_ts = float(np.arctan2(*(cs - ct)[::-1]))
    lap = 5 / 3 * np.pi
    pts = _orbit(ct, _orbit_radius(table, cfg), a_ts + (2 * np.pi - lap) / 2 - 2 * np.pi, lap, cfg.orbit_step_deg)
    pts += _orbit(cs, _orbit_radius(second, cfg), a_ts + np.pi + (2 * np.pi - lap) / 2, lap, cfg.orbit_step_deg)
    a_in = float(np.arctan2(*(-cf)[::-1]))  # from the floor area towards the room centre
    pts += _orbit(cf, 0.95, a_in - np.pi / 3, 2 * np.pi / 3, cfg.orbit_step_deg)
    return _finish(name, table, walls + [second, floor], placed, pts, None, cfg)


_GENERATORS = {"table": _gen_table, "two_tables": _gen_two_tables, "room": _gen_room}


def generate_scene(family: str, seed: int, cfg: GeneratorConfig | None = None) -> SceneConfig:
    """A scene of ``family`` drawn from ``seed`` (the same pair always gives the same scene).

    Raises ValueError for an unknown family; RuntimeError if no walk clear of the
    fixtures and floor objects was found (not seen for any family).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown scene family {family!r}; families: {FAMILIES}")
    cfg = cfg or GeneratorConfig()
    rng = np.random.default_rng([FAMILIES.index(family), int(seed)])
    for _ in range(20):
        scene = _GENERATORS[family](rng, cfg, f"{family}_{int(seed)}")
        if walk_clear(scene, cfg.reach) and len(scene.objects) >= cfg.objects[0]:
            return scene
    raise RuntimeError(f"no clear layout for family {family!r} seed {seed} in 20 draws")


def resolve_scene(scene: str | Path, seed: int = 0) -> SceneConfig:
    """A family name -> ``generate_scene(family, seed)``; otherwise ``load_scene(scene)`` (name or YAML)."""
    if isinstance(scene, str) and scene in FAMILIES:
        return generate_scene(scene, seed)
    return load_scene(scene)


def main(argv: list[str] | None = None) -> None:
    """``python -m m3_ros.sim.generate FAMILY SEED OUT.yaml``: write a generated scene to replay later."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("family", choices=FAMILIES)
    ap.add_argument("seed", type=int)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    from m3_ros.sim.scene import write_scene
    sc = generate_scene(args.family, args.seed)
    reach = sum(o.reachable for o in sc.objects)
    write_scene(sc, args.out, header=f"Generated by m3_ros.sim.generate: family {args.family}, seed {args.seed}.\n"
                f"{len(sc.objects)} objects ({reach} reachable); replay with SimWorld('{args.out}').")
    print(f"wrote {args.out}: {len(sc.objects)} objects, {reach} reachable")


if __name__ == "__main__":
    main()

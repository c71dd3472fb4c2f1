"""The embedded simulator: a pybullet world with a table-top scene (or any generated one:
more tables, a cabinet, walls, objects on the floor), an A1 carrying a Panda,
and an RGB-D camera on the A1's head. No ROS here (``m3_ros.nodes.sim_node`` wraps it).

Small lerobot-style interface::

    with SimWorld("default", seed=0) as world:
        while not world.walk_done:
            world.advance(0.2)
            frame = world.render()            # SimFrame: rgb, depth, segmentation, K, poses
            labels = world.oracle_instances(frame)
        outcome = world.execute_grasp(T_world_tcp)

Frames: the simulator's world frame is ``odom``; ``base_link`` is the A1 trunk;
the camera is a REP-103 optical frame. The base moves kinematically along the scene's
walk path (legs are posed with a trot-like swing, not controlled); the objects and the
arm are simulated with physics at ``physics_hz``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pybullet as p
import pybullet_data
from scipy import ndimage
from scipy.spatial.transform import Rotation

from m3_ros.geometry import R_LINK_OPTICAL, invert, matrix_to_pose
from m3_ros.sim.arm import ARM_HOME, ARM_JOINTS, FINGER_JOINTS, GraspAborted, GraspOutcome, PandaArm  # noqa: F401 (GraspOutcome: m3_ros.sim's name)
from m3_ros.sim.build import build_fixture, set_object_dynamics, yaw_quat
from m3_ros.sim.sensors import SensorConfig, SensorModel
from m3_ros.sim.scene import SceneConfig, load_scene
from m3_ros.types import Instance

log = logging.getLogger(__name__)

# A1 legs: (hip, upper, lower) joint indices of FR, FL, RR, RL; toe link of FR.
_LEGS = [(1, 3, 4), (6, 8, 9), (11, 13, 14), (16, 18, 19)]
_LEG_STAND = (0.0, 0.8, -1.5)
_FR_TOE = 5


@dataclass
class SimFrame:
    """One rendered camera frame with everything needed to use it as a keyframe."""

    rgb: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray  # [H, W] float32 metric z along the optical axis, 0 = no return
    segmentation: np.ndarray  # [H, W] int32 segmentation_id of each pixel, -1 = no object
    K: np.ndarray  # [3, 3] intrinsics
    T_world_cam: np.ndarray  # [4, 4] optical camera -> world (odom)
    T_world_base: np.ndarray  # [4, 4] base_link -> world (odom)
    stamp: float  # simulation time, seconds
    T_odom_cam: np.ndarray | None = None  # [4, 4] optical camera -> odom, as the drifting odometry says
    T_odom_base: np.ndarray | None = None  # [4, 4] base_link -> odom, as the drifting odometry says
    dropped: bool = False  # the sensor model lost this frame: a robot would never receive it


@dataclass
class ObjectState:
    """Ground truth of one scene object (evaluation only; the memory never reads it)."""

    name: str
    description: str
    segmentation_id: int
    T_world_obj: np.ndarray  # [4, 4] the object's base frame in the world
    aabb_center: np.ndarray  # [3] world axis-aligned bounding-box centre
    aabb_size: np.ndarray  # [3] extent of that box, metres


def _repeatable_mesa() -> None:
    """Turn Mesa's on-disk shader cache off (unless the user set MESA_SHADER_CACHE_DISABLE) before the
    EGL plugin loads llvmpipe.

    With the cache on, SimWorld processes started together rendered the same walk with 1-13 pixels
    one level apart in some frames (1 process in 4; room 6, 40 frames: 10 frames differed), and one
    keyframe's last bits moved a room's dev figure from 0.79 to 0.46 (bench/results/determinism.md).
    With it off, every process rendered every frame alike. Compiling llvmpipe's few shaders costs
    well under a second a process."""
    os.environ.setdefault("MESA_SHADER_CACHE_DISABLE", "true")


@dataclass
class OracleNoise:
    """Imperfections of the oracle detector, so tests can show the memory copes with them."""

    miss_rate: float = 0.0
    """Probability that each visible instance is left out of a frame."""
    erode_px: int = 0
    """Erode every mask by this many pixels (a detector's masks hug objects loosely)."""
    synonym_rate: float = 0.0
    """Probability that an instance is labelled with one of its synonyms instead of its description."""
    min_pixels: int = 20
    """Instances with fewer visible pixels (after erosion) are not reported."""

    def __post_init__(self) -> None:
        for name in ("miss_rate", "synonym_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"OracleNoise.{name} must be in [0, 1], got {v}")
        if self.erode_px < 0 or self.min_pixels < 0:
            raise ValueError(f"OracleNoise erode_px/min_pixels must be >= 0, got "
                             f"{self.erode_px}/{self.min_pixels}")


def _load_triton_first() -> None:
    """Import triton, where installed (torch's CUDA wheels bring it), before the EGL plugin loads Mesa.

    triton's library carries its own LLVM; imported after Mesa's llvmpipe has loaded the system's, it
    crashes the process (SIGSEGV). torch imports it lazily, through torch._dynamo: from any
    torch.optim optimiser's constructor and from the foundation models' load, so a memory built, or
    DINOv2 loaded, in a process that already made a SimWorld died that way (test_world.py runs the
    case in a fresh process; the benches load their models first for this reason)."""
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


@dataclass
class _Body:
    name: str
    description: str
    synonyms: list[str]
    uid: int
    seg_id: int


def _yaw_matrix(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw).as_matrix()
    T[:3, 3] = (x, y, z)
    return T


class SimWorld(PandaArm):
    """The simulated scene and robot. Use as a context manager (connect / disconnect).

    Args:
        scene: scene name under ``config/scenes`` or a YAML path, or a loaded SceneConfig.
        seed: seeds the layout randomisation and the oracle's noise (deterministic per seed).
        renderer: "auto" (EGL when its plugin loads, else Tiny), "egl" or "tiny".
        walk_speed: base speed along the walk path, m/s.
        sensors: "ideal", "realistic" or a SensorConfig (m3_ros.sim.sensors): depth noise,
            odometry drift (``T_odom_base``; the truth stays in ``T_world_base``), image noise,
            dropped frames (``SimFrame.dropped``) and the default detector noise.
        physics_hz: physics step rate.
    """

    def __init__(self, scene: str | Path | SceneConfig = "default", seed: int = 0,
                 renderer: Literal["auto", "egl", "tiny"] = "auto", walk_speed: float = 0.4,
                 physics_hz: float = 240.0, sensors: SensorConfig | str | None = "ideal"):
        self.scene = scene if isinstance(scene, SceneConfig) else load_scene(scene)
        if renderer not in ("auto", "egl", "tiny"):
            raise ValueError(f"renderer must be 'auto', 'egl' or 'tiny', got {renderer!r}")
        if walk_speed <= 0:
            raise ValueError(f"walk_speed must be > 0, got {walk_speed}")
        if physics_hz <= 0:
            raise ValueError(f"physics_hz must be > 0, got {physics_hz}")
        cam = self.scene.camera
        if cam.width <= 0 or cam.height <= 0 or not 0 < cam.near < cam.far:
            raise ValueError(f"bad camera: {cam.width}x{cam.height}, near {cam.near}, far {cam.far}")
        self.seed = int(seed)
        self.renderer_request = renderer
        self.renderer = "none"
        self.walk_speed = float(walk_speed)
        self.dt = 1.0 / physics_hz
        self.rng = np.random.default_rng(self.seed)
        # sensor noise draws from its own stream: switching it on leaves layout and detector draws alone
        self.sensors = SensorModel(SensorConfig.resolve(sensors), self.seed)
        self._T_odom_base: np.ndarray | None = None
        self._client: int | None = None
        self._steps = 0
        self._should_abort: Callable[[], bool] | None = None  # set only while a grasp executes
        self.bodies: list[_Body] = []
        self._waypoints = self.scene.walk.waypoints()  # [M, 3]
        seg = np.linalg.norm(np.diff(self._waypoints[:, :2], axis=0), axis=1)
        turn = np.abs(np.diff(self._waypoints[:, 2])) * 0.3  # a pure turn still takes time
        self._cum = np.concatenate([[0.0], np.cumsum(np.maximum(seg, turn))])  # [M]
        self._walk_s = 0.0  # distance travelled along the path
        self._base_height = 0.3  # replaced by the standing height at connect
        self._walk_pose = self._waypoints[0].copy()
        self._parked = False  # set by teleport_base: the base stays where it was put
        self.fixture_names: set[str] = {"table"}
        self._prev_pose = self._walk_pose.copy()
        self._prev_time = 0.0
        self.T_base_cam = self._camera_mount()
        self.K = cam.K()

    # ----------------------------------------------------------------- lifecycle
    def connect(self) -> "SimWorld":
        """Start pybullet (DIRECT, headless), pick the renderer, load and settle the scene."""
        if self._client is not None:
            return self
        c = p.connect(p.DIRECT)
        self._client = c
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setTimeStep(self.dt, physicsClientId=c)
        p.setPhysicsEngineParameter(deterministicOverlappingPairs=1, physicsClientId=c)
        self._pick_renderer()
        self._load()
        return self

    def disconnect(self) -> None:
        """Shut pybullet down (idempotent)."""
        if self._client is not None:
            p.disconnect(physicsClientId=self._client)
            self._client = None

    def __enter__(self) -> "SimWorld":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    @property
    def client(self) -> int:
        if self._client is None:
            raise RuntimeError("SimWorld is not connected; call connect() or use it as a context manager")
        return self._client

    def _pick_renderer(self) -> None:
        self._egl_plugin = -1
        if self.renderer_request in ("auto", "egl"):
            _load_triton_first()
            _repeatable_mesa()
            loader = pkgutil.get_loader("eglRenderer")
            if loader is not None:
                self._egl_plugin = p.loadPlugin(loader.get_filename(), "_eglRendererPlugin",
                                                physicsClientId=self.client)
            if self._egl_plugin < 0 and self.renderer_request == "egl":
                raise RuntimeError("renderer='egl' requested but the pybullet EGL plugin did not load")
        self.renderer = "egl" if self._egl_plugin >= 0 else "tiny"
        self.K = self.scene.camera.K()
        if self.renderer == "tiny":
            # Measured against exact ray casts: the Tiny renderer's raster sits half a pixel
            # right and up of EGL's (pixel-centre) one, so its principal point moves with it.
            self.K[0, 2] += 0.5
            self.K[1, 2] -= 0.5
        log.info("SimWorld renderer: %s (requested %s)", self.renderer, self.renderer_request)

    def _load(self) -> None:
        c = self.client
        sc = self.scene
        p.loadURDF("plane.urdf", physicsClientId=c)
        self.bodies = []
        table = p.loadURDF(sc.table.urdf, list(sc.table.xyz), yaw_quat(sc.table.yaw), useFixedBase=True,
                           globalScaling=sc.table.scale, physicsClientId=c)
        self.bodies.append(_Body("table", sc.table.description, [], table, 0))
        rz = sc.randomize
        for i, o in enumerate(sc.objects):
            # Draw for every object, present or not, so one object's absence does not shift the others.
            dxy = self.rng.uniform(-rz.xy, rz.xy, size=2) if rz.xy > 0 else np.zeros(2)
            dyaw = self.rng.uniform(-rz.yaw, rz.yaw) if rz.yaw > 0 else 0.0
            drop = self.rng.random() < rz.drop_prob and o.name in rz.optional
            if drop:
                continue
            xyz = np.asarray(o.xyz) + np.array([dxy[0], dxy[1], 0.0])
            R = Rotation.from_euler("z", dyaw) * Rotation.from_euler("xyz", o.rpy)
            uid = p.loadURDF(o.urdf, xyz.tolist(), R.as_quat().tolist(), globalScaling=o.scale,
                             physicsClientId=c)
            if o.colour is not None:
                p.changeVisualShape(uid, -1, rgbaColor=list(o.colour), physicsClientId=c)
            set_object_dynamics(uid, o, c)
            self.bodies.append(_Body(o.name, o.description, list(o.synonyms), uid, i + 1))
        # Fixtures after the objects, so a scene without them keeps its uids and segmentation ids.
        self.fixture_names = {"table"}
        for k, fx in enumerate(sc.fixtures):
            uid = build_fixture(fx, c)
            if uid is not None:
                self.bodies.append(_Body(fx.name, fx.description or fx.name, [], uid,
                                         len(sc.objects) + 1 + k))
                self.fixture_names.add(fx.name)
        self._seg_lut = np.full(max(b.uid for b in self.bodies) + 1, -1, dtype=np.int32)
        for b in self.bodies:
            self._seg_lut[b.uid] = b.seg_id
        # Robot: both bases fixed and moved kinematically; arm-body collisions off (the arm sits on it).
        self.a1 = p.loadURDF(sc.robot.quadruped, [0, 0, 1], useFixedBase=True, physicsClientId=c)
        self.arm = p.loadURDF(sc.robot.arm, [0, 0, 2], useFixedBase=True, physicsClientId=c)
        for la in range(-1, p.getNumJoints(self.a1, physicsClientId=c)):
            for lb in range(-1, p.getNumJoints(self.arm, physicsClientId=c)):
                p.setCollisionFilterPair(self.a1, self.arm, la, lb, 0, physicsClientId=c)
        self._pose_legs(0.0)
        self._base_height = self._standing_height()
        for j, q in zip(ARM_JOINTS, ARM_HOME):
            p.resetJointState(self.arm, j, q, physicsClientId=c)
        for j in FINGER_JOINTS:
            p.resetJointState(self.arm, j, 0.04, physicsClientId=c)
            p.changeDynamics(self.arm, j, lateralFriction=1.5, physicsClientId=c)
        self._hold_arm(ARM_HOME, 0.04)
        self._place_robot(self._walk_pose)
        # Let the objects settle on the table before the first frame (counts as sim time).
        for _ in range(int(round(0.5 / self.dt))):
            self._step()

    # ----------------------------------------------------------------- robot pose
    def _camera_mount(self) -> np.ndarray:
        cam = self.scene.camera
        T = np.eye(4)
        # Pitch the camera link down about base y (positive pitch tips +x towards -z).
        T[:3, :3] = Rotation.from_euler("y", np.radians(cam.pitch_down_deg)).as_matrix() @ R_LINK_OPTICAL
        T[:3, 3] = cam.mount_xyz
        return T

    def _pose_legs(self, phase: float, amplitude: float = 0.0) -> None:
        for k, (hip, upper, lower) in enumerate(_LEGS):
            # Trot: diagonal pairs (FR, RL) and (FL, RR) swing in antiphase.
            ph = phase + (0.0 if k in (0, 3) else np.pi)
            lift = max(0.0, np.sin(ph))
            p.resetJointState(self.a1, hip, _LEG_STAND[0], physicsClientId=self.client)
            p.resetJointState(self.a1, upper, _LEG_STAND[1] + amplitude * 0.3 * np.cos(ph),
                              physicsClientId=self.client)
            p.resetJointState(self.a1, lower, _LEG_STAND[2] - amplitude * 0.5 * lift,
                              physicsClientId=self.client)

    def _standing_height(self) -> float:
        p.resetBasePositionAndOrientation(self.a1, [0, 0, 0], [0, 0, 0, 1], physicsClientId=self.client)
        toe = p.getLinkState(self.a1, _FR_TOE, computeForwardKinematics=True, physicsClientId=self.client)
        return 0.02 - float(toe[4][2])  # toe sphere radius 2 cm rests on the floor

    def _place_robot(self, pose: np.ndarray) -> None:
        T = self.T_world_base_of(pose)
        pos, quat = matrix_to_pose(T)
        p.resetBasePositionAndOrientation(self.a1, pos.tolist(), quat.tolist(), physicsClientId=self.client)
        Ta = T.copy()
        Ta[:3, 3] = T[:3, :3] @ np.asarray(self.scene.robot.arm_mount_xyz) + T[:3, 3]
        pos, quat = matrix_to_pose(Ta)
        p.resetBasePositionAndOrientation(self.arm, pos.tolist(), quat.tolist(), physicsClientId=self.client)

    def T_world_base_of(self, pose: np.ndarray) -> np.ndarray:
        """base_link -> world [4, 4] for a walk pose (x, y, yaw)."""
        return _yaw_matrix(float(pose[0]), float(pose[1]), self._base_height,
                           float(pose[2]))

    @property
    def T_world_base(self) -> np.ndarray:
        """Current base_link -> world (odom) [4, 4]."""
        return self.T_world_base_of(self._walk_pose)

    @property
    def T_odom_base(self) -> np.ndarray:
        """base_link -> odom [4, 4] as the robot's odometry reports it (the truth under ideal sensors)."""
        if self._T_odom_base is None:
            self._T_odom_base = self.sensors.drift.reset(self.T_world_base)
        return self._T_odom_base

    @property
    def T_world_cam(self) -> np.ndarray:
        """Current optical camera -> world [4, 4] (= T_world_base @ T_base_cam)."""
        return self.T_world_base @ self.T_base_cam

    @property
    def time(self) -> float:
        """Simulation time in seconds since connect."""
        return self._steps * self.dt

    @property
    def walk_length(self) -> float:
        """Effective length of the walk path in metres (turns count 0.3 m per radian)."""
        return float(self._cum[-1])

    @property
    def walk_duration(self) -> float:
        """Sim seconds the walk takes at ``walk_speed``."""
        return self.walk_length / self.walk_speed

    @property
    def walk_done(self) -> bool:
        """True once the base has reached the end of the walk path (stopped facing the table)."""
        return self._walk_s >= self.walk_length - 1e-9

    def base_velocity(self) -> tuple[np.ndarray, np.ndarray]:
        """(linear [3], angular [3]) velocity of base_link over the last advance, in base_link."""
        dtime = self.time - self._prev_time
        if dtime <= 0:
            return np.zeros(3), np.zeros(3)
        v_world = np.array([self._walk_pose[0] - self._prev_pose[0],
                            self._walk_pose[1] - self._prev_pose[1], 0.0]) / dtime
        R = self.T_world_base[:3, :3]
        w = np.array([0.0, 0.0, (self._walk_pose[2] - self._prev_pose[2]) / dtime])
        return R.T @ v_world, w

    def pose_along_walk(self, s: float) -> np.ndarray:
        """Base pose (x, y, yaw) ``s`` metres along the walk path (needs no connection)."""
        return self._interp(s)

    def _interp(self, s: float) -> np.ndarray:
        s = float(np.clip(s, 0.0, self._cum[-1]))
        i = int(np.searchsorted(self._cum, s, side="right") - 1)
        i = min(i, len(self._cum) - 2)
        seg = self._cum[i + 1] - self._cum[i]
        a = 0.0 if seg <= 0 else (s - self._cum[i]) / seg
        return (1 - a) * self._waypoints[i] + a * self._waypoints[i + 1]

    def teleport_base(self, pose: np.ndarray | tuple[float, float, float]) -> None:
        """Put base_link at ``pose`` (x, y, yaw) at once and end the walk there.

        The stand-in for navigation: a grasp starts from an object's ``grasp_base``.
        Later ``advance`` calls step the physics with the base standing still.
        """
        pose = np.asarray(pose, dtype=np.float64).reshape(-1)
        if pose.shape != (3,) or not np.all(np.isfinite(pose)):
            raise ValueError(f"teleport_base: pose must be 3 finite numbers (x, y, yaw), got {pose!r}")
        self._parked = True
        self._walk_s = self.walk_length
        self._walk_pose = pose.copy()
        self._prev_pose = pose.copy()
        self._prev_time = self.time
        self._pose_legs(0.0)
        self._place_robot(pose)
        self._T_odom_base = self.sensors.odometry(self.T_world_base)  # the walk there drifts odometry too

    # ----------------------------------------------------------------- stepping
    def save_state(self) -> int:
        """A snapshot of the physics (bodies, joints, velocities) for restore_state: a grasp trial
        that must leave the world as it found it. The base's walk pose is not in it (teleport_base)."""
        return p.saveState(physicsClientId=self.client)

    def restore_state(self, state: int, free: bool = True) -> None:
        """Put the physics back to a save_state snapshot (and free it, unless ``free`` is False: a
        snapshot restored again later), the arm's motors included.

        pybullet's restoreState sets joint positions and velocities but not the motors' targets: after
        a grasp the arm, restored to its folded pose, would swing back to that grasp's lift pose at the
        next physics step, through whatever stands there now (it knocked a ball 53 cm off a table, and
        stood in the camera's view, during the next trial's look in a dev grasp walk)."""
        p.restoreState(state, physicsClientId=self.client)
        if free:
            p.removeState(state, physicsClientId=self.client)
        finger = p.getJointState(self.arm, FINGER_JOINTS[0], physicsClientId=self.client)[0]
        self._hold_arm(self._arm_q(), finger)

    def _step(self) -> None:
        if self._should_abort is not None and self._should_abort():
            raise GraspAborted()
        p.stepSimulation(physicsClientId=self.client)
        self._steps += 1

    def advance(self, dt: float) -> None:
        """Walk on for ``dt`` sim seconds (base moves kinematically) and step the physics."""
        if dt < 0:
            raise ValueError(f"advance: dt must be >= 0, got {dt}")
        self.T_odom_base  # odometry starts from the pose before the first move
        self._prev_pose = self._walk_pose.copy()
        self._prev_time = self.time
        n = int(round(dt / self.dt))
        for _ in range(n):
            self._step()
        self._walk_s = min(self._walk_s + n * self.dt * self.walk_speed, self.walk_length)
        if not self._parked:
            self._walk_pose = self._interp(self._walk_s)
        moving = not self.walk_done
        self._pose_legs(2 * np.pi * 2.0 * self.time, amplitude=1.0 if moving else 0.0)
        self._place_robot(self._walk_pose)
        self._T_odom_base = self.sensors.odometry(self.T_world_base)

    # ----------------------------------------------------------------- sensing
    def render(self) -> SimFrame:
        """Render the head camera: RGB, metric depth, per-pixel segmentation id, and poses."""
        cam = self.scene.camera
        T_world_cam = self.T_world_cam
        # OpenGL camera axes are the optical ones with y and z flipped.
        T_world_gl = T_world_cam @ np.diag([1.0, -1.0, -1.0, 1.0])
        view = invert(T_world_gl).T.reshape(-1).tolist()  # column-major
        proj = p.computeProjectionMatrixFOV(cam.fovy_deg, cam.width / cam.height, cam.near, cam.far,
                                            physicsClientId=self.client)
        renderer = p.ER_BULLET_HARDWARE_OPENGL if self.renderer == "egl" else p.ER_TINY_RENDERER
        _, _, rgba, zbuf, seg = p.getCameraImage(cam.width, cam.height, view, proj, renderer=renderer,
                                                 shadow=0, physicsClientId=self.client)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(cam.height, cam.width, 4)[..., :3].copy()
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(cam.height, cam.width)
        depth = cam.far * cam.near / (cam.far - (cam.far - cam.near) * zbuf)  # [H, W] metric z
        depth[zbuf >= 1.0 - 1e-7] = 0.0  # beyond the far plane: no return
        seg = np.asarray(seg, dtype=np.int64).reshape(cam.height, cam.width)
        segmentation = np.full(seg.shape, -1, dtype=np.int32)
        ok = (seg >= 0) & (seg < len(self._seg_lut))
        segmentation[ok] = self._seg_lut[seg[ok]]
        rgb, depth, dropped = self.sensors.camera(rgb, depth.astype(np.float32))
        return SimFrame(rgb=rgb, depth=depth, segmentation=segmentation,
                        K=self.K.copy(), T_world_cam=T_world_cam, T_world_base=self.T_world_base,
                        stamp=self.time, T_odom_cam=self.T_odom_base @ self.T_base_cam,
                        T_odom_base=self.T_odom_base.copy(), dropped=dropped)

    def objects(self) -> list[ObjectState]:
        """Ground truth of the table, every fixture with a body (walls too) and every present object, world frame."""
        out = []
        for b in self.bodies:
            pos, quat = p.getBasePositionAndOrientation(b.uid, physicsClientId=self.client)
            T = np.eye(4)
            T[:3, :3] = Rotation.from_quat(quat).as_matrix()
            T[:3, 3] = pos
            lo, hi = (np.asarray(x) for x in p.getAABB(b.uid, -1, physicsClientId=self.client))
            out.append(ObjectState(b.name, b.description, b.seg_id, T, (lo + hi) / 2, hi - lo))
        return out

    def object_state(self, name: str) -> ObjectState:
        """Ground truth of one object by name (ValueError when it is not in the scene)."""
        for o in self.objects():
            if o.name == name:
                return o
        raise ValueError(f"no object {name!r} in the scene; present: {[b.name for b in self.bodies]}")

    def oracle_instances(self, frame: SimFrame, noise: OracleNoise | None = None,
                         rng: np.random.Generator | None = None) -> list[Instance]:
        """Oracle detector: one Instance per visible object from the ground-truth segmentation.

        Labels are the scene descriptions; ``noise`` drops instances, erodes masks and
        swaps labels for synonyms, drawing from ``rng`` (default: the world's seeded one).
        """
        if noise is None:  # the sensor model's detector (a perfect one under ideal sensors)
            d = self.sensors.cfg.detector
            noise = OracleNoise(miss_rate=d.miss_rate, erode_px=d.erode_px, synonym_rate=d.synonym_rate)
        rng = rng if rng is not None else self.rng
        out = []
        for b in self.bodies:
            mask = frame.segmentation == b.seg_id  # [H, W]
            if not mask.any():
                continue
            # Draw every random number for every visible object so noise knobs do not reorder the stream.
            miss, syn, pick = rng.random(), rng.random(), rng.integers(0, 1 << 30)
            if noise.erode_px > 0:
                mask = ndimage.binary_erosion(mask, iterations=noise.erode_px)
            if int(mask.sum()) < max(1, noise.min_pixels) or miss < noise.miss_rate:
                continue
            label = b.description
            if b.synonyms and syn < noise.synonym_rate:
                label = b.synonyms[int(pick) % len(b.synonyms)]
            out.append(Instance(mask=mask, label=label, score=1.0, id=b.seg_id))
        return out

"""The Panda on the A1's back: joint limits, IK, joint and Cartesian moves, and the grasp sequence.

A mixin of SimWorld (m3_ros.sim.world): it reads the world's pybullet client, the arm's body id
(``self.arm``), its objects and its physics stepping (``self._step``, which raises GraspAborted when
execute_grasp's should_abort says so). No ROS here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pybullet as p
from scipy.spatial.transform import Rotation

from m3_ros.geometry import matrix_to_pose

# Panda (pybullet_data/franka_panda/panda.urdf) joint and link indices.
ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
TCP_LINK = 11  # panda_grasptarget: z = approach, y = finger closing direction, 0.105 m past the hand
ARM_HOME = [0.0, -1.2, 0.0, -2.8, 0.0, 1.7, 0.785]  # folded over the back, out of the camera's view
ARM_LOWER = [-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671]
ARM_UPPER = [2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671]
ARM_FORCE = [87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0]


@dataclass
class GraspOutcome:
    """How a grasp went: success when the object rose >= 10 cm with contact on both fingers."""

    success: bool
    object: str  # name of the lifted / touched object, "" when none
    lift_height: float  # how far that object rose, metres
    message: str
    finger_contacts: tuple[bool, bool] = (False, False)
    ik_error: float = 0.0  # worst TCP position error at the grasp pose, metres


class GraspAborted(Exception):
    """Raised inside the physics loop when execute_grasp's should_abort says so."""


class PandaArm:
    """The arm's half of SimWorld (see the module docstring)."""

    def _hold_arm(self, q: list[float], finger: float, finger_force: float = 40.0) -> None:
        p.setJointMotorControlArray(self.arm, ARM_JOINTS, p.POSITION_CONTROL, targetPositions=list(q),
                                    forces=ARM_FORCE, physicsClientId=self.client)
        p.setJointMotorControlArray(self.arm, FINGER_JOINTS, p.POSITION_CONTROL,
                                    targetPositions=[finger, finger], forces=[finger_force] * 2,
                                    physicsClientId=self.client)

    def _arm_q(self) -> list[float]:
        return [p.getJointState(self.arm, j, physicsClientId=self.client)[0] for j in ARM_JOINTS]

    def tcp_pose(self) -> np.ndarray:
        """Current gripper TCP -> world [4, 4] (between the fingertips; z = approach)."""
        st = p.getLinkState(self.arm, TCP_LINK, computeForwardKinematics=True, physicsClientId=self.client)
        T = np.eye(4)
        T[:3, :3] = Rotation.from_quat(st[5]).as_matrix()
        T[:3, 3] = st[4]
        return T

    def _ik(self, T_world_tcp: np.ndarray, seed_q: list[float]) -> tuple[list[float], float]:
        """Joint angles reaching T_world_tcp, refined from seed_q; returns (q [7], position error m).

        pybullet's IK is one damped step from the current joint state, so iterate it on a
        scratch copy of the joints and put the real state back afterwards.
        """
        c = self.client
        saved = [p.getJointState(self.arm, j, physicsClientId=c)[:2] for j in ARM_JOINTS]
        pos, quat = matrix_to_pose(T_world_tcp)
        q = list(seed_q)
        err = np.inf
        for _ in range(30):
            for j, qj in zip(ARM_JOINTS, q):
                p.resetJointState(self.arm, j, qj, physicsClientId=c)
            sol = p.calculateInverseKinematics(
                self.arm, TCP_LINK, pos.tolist(), quat.tolist(), lowerLimits=ARM_LOWER,
                upperLimits=ARM_UPPER, jointRanges=[u - l for l, u in zip(ARM_LOWER, ARM_UPPER)],
                restPoses=list(q), maxNumIterations=100, residualThreshold=1e-5, physicsClientId=c)
            q = [float(np.clip(a, l, u)) for a, l, u in zip(sol[:7], ARM_LOWER, ARM_UPPER)]
            for j, qj in zip(ARM_JOINTS, q):
                p.resetJointState(self.arm, j, qj, physicsClientId=c)
            err = float(np.linalg.norm(self.tcp_pose()[:3, 3] - pos))
            if err < 1e-3:
                break
        for j, (qj, vj) in zip(ARM_JOINTS, saved):
            p.resetJointState(self.arm, j, qj, vj, physicsClientId=c)
        return q, err

    def _move_joints(self, q_target: list[float], duration: float, finger: float) -> None:
        q0 = np.asarray(self._arm_q())
        q1 = np.asarray(q_target)
        n = max(1, int(round(duration / self.dt)))
        for k in range(1, n + 1):
            if k % 4 == 1 or k == n:
                self._hold_arm((q0 + (q1 - q0) * min(1.0, k / (0.8 * n))).tolist(), finger)
            self._step()

    def _move_line(self, T_from: np.ndarray, T_to: np.ndarray, duration: float, finger: float,
                   waypoints: int = 10) -> float:
        """Straight TCP line (same orientation) in ``waypoints`` IK steps; returns the worst IK error."""
        q = self._arm_q()
        worst = 0.0
        for k in range(1, waypoints + 1):
            T = T_to.copy()
            T[:3, 3] = T_from[:3, 3] + (T_to[:3, 3] - T_from[:3, 3]) * k / waypoints
            q, err = self._ik(T, q)
            worst = max(worst, err)
            self._move_joints(q, duration / waypoints, finger)
        return worst

    def execute_grasp(self, T_world_tcp: np.ndarray, pregrasp: float = 0.12, lift: float = 0.15,
                      on_stage: Callable[[str], None] | None = None,
                      should_abort: Callable[[], bool] | None = None) -> GraspOutcome:
        """Approach -> descend -> close -> lift with IK, then judge the grasp.

        on_stage: called with "approaching", "closing", "lifting" as each stage begins.
        should_abort: polled before every physics step of the grasp; when it returns True the
            arm stops and holds where it is, and the outcome says "aborted".
        """
        self._should_abort = should_abort
        try:
            return self._execute_grasp(T_world_tcp, pregrasp, lift, on_stage or (lambda stage: None))
        except GraspAborted:
            self._should_abort = None
            finger = p.getJointState(self.arm, FINGER_JOINTS[0], physicsClientId=self.client)[0]
            self._hold_arm(self._arm_q(), finger)
            tcp = self.tcp_pose()[:3, 3]
            return GraspOutcome(success=False, object="", lift_height=0.0,
                                message=f"aborted: the arm stopped and holds at ({tcp[0]:.3f}, {tcp[1]:.3f}, "
                                        f"{tcp[2]:.3f})")
        finally:
            self._should_abort = None

    def _execute_grasp(self, T_world_tcp: np.ndarray, pregrasp: float, lift: float,
                       on_stage: Callable[[str], None]) -> GraspOutcome:
        """execute_grasp's motion (Args as there).

        Args:
            T_world_tcp: [4, 4] gripper TCP pose at grasp in the world (odom) frame: origin
                between the fingertips, z = approach direction (down for top-down), y = the
                fingers' closing direction.
            pregrasp: distance back along -z where the approach starts, metres.
            lift: how far the TCP rises after closing, metres.
        Returns:
            GraspOutcome; success = an object rose >= 0.10 m with contact on both fingers.
        """
        T_world_tcp = np.asarray(T_world_tcp, dtype=np.float64)
        if T_world_tcp.shape != (4, 4) or not np.all(np.isfinite(T_world_tcp)):
            raise ValueError(f"execute_grasp: T_world_tcp must be a finite [4, 4], got shape {T_world_tcp.shape}")
        R = T_world_tcp[:3, :3]
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            raise ValueError("execute_grasp: T_world_tcp rotation is not a proper rotation matrix")
        movable = [b for b in self.bodies if b.name not in self.fixture_names]
        z0 = {b.name: p.getBasePositionAndOrientation(b.uid, physicsClientId=self.client)[0][2] for b in movable}
        T_pre = T_world_tcp.copy()
        T_pre[:3, 3] -= pregrasp * R[:, 2]
        # Approach: from high above the pre-grasp in joint space, so the swing clears the objects.
        T_high = T_pre.copy()
        T_high[:3, 3] += np.array([0.0, 0.0, 0.1])
        q_high, _ = self._ik(T_high, self._arm_q())
        on_stage("approaching")
        self._move_joints(q_high, 1.5, 0.04)
        self._move_line(self.tcp_pose(), T_pre, 0.5, 0.04, waypoints=5)
        err = self._move_line(T_pre, T_world_tcp, 1.0, 0.04, waypoints=10)
        for _ in range(int(round(0.2 / self.dt))):
            self._step()
        q = self._arm_q()
        on_stage("closing")
        self._hold_arm(q, 0.0)
        for _ in range(int(round(0.6 / self.dt))):
            self._step()
        T_up = T_world_tcp.copy()
        T_up[:3, 3] += np.array([0.0, 0.0, lift])
        # Keep squeezing while lifting.
        on_stage("lifting")
        qs = self._arm_q()
        for k in range(1, 11):
            T = T_world_tcp.copy()
            T[:3, 3] += np.array([0.0, 0.0, lift * k / 10])
            qs, _ = self._ik(T, qs)
            n = int(round(0.15 / self.dt))
            for i in range(n):
                if i % 4 == 0:
                    self._hold_arm(qs, 0.0)
                self._step()
        for _ in range(int(round(0.5 / self.dt))):
            self._step()
        best = None
        for b in movable:
            z = p.getBasePositionAndOrientation(b.uid, physicsClientId=self.client)[0][2]
            left = len(p.getContactPoints(self.arm, b.uid, FINGER_JOINTS[0], -1, physicsClientId=self.client)) > 0
            right = len(p.getContactPoints(self.arm, b.uid, FINGER_JOINTS[1], -1, physicsClientId=self.client)) > 0
            rise = float(z - z0[b.name])
            key = (left and right, left or right, rise)
            if best is None or key > best[0]:
                best = (key, b.name, rise, (left, right))
        assert best is not None
        (both, any_contact, rise), name, rise, contacts = best
        touched = any_contact or rise > 0.02
        name = name if touched else ""
        success = both and rise >= 0.10
        if success:
            msg = f"lifted {name} by {rise:.3f} m with both fingers in contact"
        elif touched:
            msg = f"failed: {name} rose {rise:.3f} m, finger contacts left={contacts[0]} right={contacts[1]}"
        else:
            msg = "failed: the gripper closed on nothing"
        return GraspOutcome(success=bool(success), object=name, lift_height=rise if touched else 0.0,
                            message=msg, finger_contacts=contacts if touched else (False, False), ik_error=err)

    def reach_error(self, T_world_tcp: np.ndarray, pregrasp: float = 0.12) -> float:
        """Worst IK position error (m) over the poses ``execute_grasp`` visits for this grasp.

        The grasp itself, the pre-grasp ``pregrasp`` back along its approach and the
        approach 0.1 m above that; the arm is left as it was. Under ~1 cm: in reach.
        """
        T = np.asarray(T_world_tcp, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"reach_error: T_world_tcp must be a finite [4, 4], got shape {T.shape}")
        T_pre = T.copy()
        T_pre[:3, 3] -= pregrasp * T[:3, 2]
        T_high = T_pre.copy()
        T_high[:3, 3] += np.array([0.0, 0.0, 0.1])
        return max(self._ik(X, list(ARM_HOME))[1] for X in (T_high, T_pre, T))

    def top_down_grasp_pose(self, name: str, yaw: float | None = None) -> np.ndarray:
        """A top-down TCP pose [4, 4] at an object's AABB centre (evaluation helper, uses ground truth).

        The fingers close along the box's shorter horizontal side unless ``yaw`` (the
        angle of the closing direction, TCP y, about world z) is given; without ``yaw``
        the hand turns by pi when only that orientation is in the arm's reach.
        """
        o = self.object_state(name)
        if yaw is not None:
            return self._top_down(o.aabb_center, yaw)
        yaw = 0.0 if o.aabb_size[0] <= o.aabb_size[1] else np.pi / 2
        T = self._top_down(o.aabb_center, yaw)
        # The fingers are symmetric but the wrist is not: low down (an object on the floor)
        # the IK may reach only one of the two hand orientations with the same closing line.
        if self.reach_error(T) > 0.01:
            T_flip = self._top_down(o.aabb_center, yaw + np.pi)
            if self.reach_error(T_flip) < self.reach_error(T):
                return T_flip
        return T

    @staticmethod
    def _top_down(center: np.ndarray, yaw: float) -> np.ndarray:
        y_dir = np.array([np.cos(yaw), np.sin(yaw), 0.0])  # finger closing direction
        z_dir = np.array([0.0, 0.0, -1.0])  # approach: straight down
        T = np.eye(4)
        T[:3, :3] = np.stack([np.cross(y_dir, z_dir), y_dir, z_dir], axis=1)
        T[:3, 3] = center
        return T

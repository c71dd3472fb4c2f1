"""Turning sensor streams into keyframes (no ROS): approximate time sync and keyframe choice."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


class ApproximateSync:
    """Match messages of several streams whose stamps lie within ``slop`` seconds.

    Each stream keeps a short queue. When every stream holds a message, the newest
    message of the pivot stream (the first one, the colour image) is matched with the
    closest message of each other stream; a match within ``slop`` is emitted once.
    """

    def __init__(self, names: list[str], slop: float, queue_size: int = 10):
        if slop < 0:
            raise ValueError(f"slop must be >= 0, got {slop}")
        self.names = list(names)
        self.slop = float(slop)
        self.queues: dict[str, deque] = {n: deque(maxlen=queue_size) for n in self.names}
        self._last_pivot = -np.inf

    def add(self, name: str, stamp: float, item: object) -> dict[str, object] | None:
        """Add one message; return a matched set {name: item} when one completes."""
        if name not in self.queues:
            raise ValueError(f"unknown stream '{name}' (known: {self.names})")
        if not np.isfinite(stamp):
            raise ValueError(f"stream '{name}': non-finite stamp {stamp}")
        self.queues[name].append((stamp, item))
        if any(len(q) == 0 for q in self.queues.values()):
            return None
        pivot = self.names[0]
        for t, it in reversed(self.queues[pivot]):
            if t <= self._last_pivot:
                break
            match = {pivot: it}
            for n in self.names[1:]:
                tn, itn = min(self.queues[n], key=lambda e: abs(e[0] - t))
                if abs(tn - t) > self.slop:
                    break
                match[n] = itn
            else:
                self._last_pivot = t
                return match
        return None


@dataclass
class KeyframeSelectorConfig:
    min_translation: float = 0.10
    """Metres the camera must move since the last keyframe."""
    min_rotation_deg: float = 10.0
    """Degrees the camera must turn since the last keyframe."""
    min_interval: float = 0.3
    """Seconds between keyframes at the least (stamps)."""
    max_interval: float = 5.0
    """A keyframe is taken after this many seconds even without motion."""


class KeyframeSelector:
    """Keyframe when the camera moved or turned enough, or when too long has passed."""

    def __init__(self, cfg: KeyframeSelectorConfig | None = None):
        self.cfg = cfg or KeyframeSelectorConfig()
        self._last_T: np.ndarray | None = None
        self._last_t = -np.inf

    def reset(self) -> None:
        self._last_T, self._last_t = None, -np.inf

    def consider(self, stamp: float, T_world_cam: np.ndarray) -> bool:
        """True if a frame at ``stamp`` with pose ``T_world_cam`` [4, 4] is a keyframe (and records it)."""
        if not np.all(np.isfinite(T_world_cam)):
            raise ValueError("camera pose has non-finite values")
        dt = stamp - self._last_t
        if self._last_T is None:
            take = True
        elif dt < self.cfg.min_interval:
            take = False
        else:
            moved = np.linalg.norm(T_world_cam[:3, 3] - self._last_T[:3, 3])
            R_rel = self._last_T[:3, :3].T @ T_world_cam[:3, :3]
            turned = np.degrees(np.linalg.norm(Rotation.from_matrix(R_rel).as_rotvec()))
            take = (moved >= self.cfg.min_translation or turned >= self.cfg.min_rotation_deg
                    or dt >= self.cfg.max_interval)
        if take:
            self._last_T, self._last_t = T_world_cam.copy(), stamp
        return take

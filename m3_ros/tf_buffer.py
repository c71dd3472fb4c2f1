"""A small transform buffer (no ROS): a tree of frames, each edge static or a time series.

What tf2's ``BufferCore`` does, for machines where ``tf2_ros`` cannot be installed:
``lookup(target, source, t)`` returns ``T_target_source`` [4, 4] (maps points in
``source`` into ``target``) at stamp ``t``, composing the chain of edges between them.
A dynamic edge is interpolated at ``t`` between the samples that bracket it (positions
linearly, rotations by scipy's ``Slerp``); a stamp outside a dynamic edge's samples is
an :class:`ExtrapolationError`, never a silent nearest neighbour. As in tf2, every frame
has at most one parent, and a static edge holds at every stamp.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


class TransformError(ValueError):
    """A lookup that cannot be answered (base class)."""


class ConnectivityError(TransformError):
    """The two frames are not in one tree (a transform is missing)."""


class GapError(TransformError):
    """The stamp falls between two samples of a dynamic edge farther apart than allowed: a pose
    interpolated across the gap would be invented (lost /tf on a loaded machine, a bag with holes)."""


class ExtrapolationError(TransformError):
    """The stamp lies outside the samples of a dynamic edge of the chain."""

    def __init__(self, message: str, future: bool):
        super().__init__(message)
        self.future = future
        """True when the stamp is newer than the newest sample (waiting may help)."""


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[float] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)  # each [3]
    quats: list[np.ndarray] = field(default_factory=list)  # each [4] x, y, z, w


class TransformBuffer:
    """Frames and the transforms between them, looked up at a stamp (seconds)."""

    def __init__(self, cache_time: float = 10.0, tolerance: float = 1e-6):
        """cache_time: seconds of samples kept per dynamic edge (behind its newest sample).
        tolerance: a stamp this close outside an edge's samples is taken as its end."""
        if cache_time <= 0:
            raise ValueError(f"cache_time must be > 0, got {cache_time}")
        self.cache_time = float(cache_time)
        self.tolerance = float(tolerance)
        self._edges: dict[str, _Edge] = {}  # keyed by child frame

    # ------------------------------------------------------------------ input
    def set_transform(self, parent: str, child: str, stamp: float, T_parent_child: np.ndarray,
                      static: bool = False) -> None:
        """Record T_parent_child [4, 4] at ``stamp``; a static edge keeps only its latest value."""
        if not parent or not child:
            raise ValueError(f"frame ids must be non-empty, got parent {parent!r} child {child!r}")
        if parent == child:
            raise ValueError(f"a transform from frame {parent!r} to itself")
        T = np.asarray(T_parent_child, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"transform {parent} -> {child} must be a finite [4, 4]")
        if not np.isfinite(stamp):
            raise ValueError(f"transform {parent} -> {child}: non-finite stamp {stamp}")
        if self._would_loop(parent, child):
            raise ValueError(f"transform {parent} -> {child} would close a loop in the frame tree")
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static:
            edge = self._edges[child] = _Edge(parent=parent, static=static)
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        if static:
            edge.stamps, edge.positions, edge.quats = [float(stamp)], [T[:3, 3].copy()], [q]
            return
        i = bisect.bisect_left(edge.stamps, stamp)
        if i < len(edge.stamps) and edge.stamps[i] == stamp:  # a repeated stamp replaces the sample
            edge.positions[i], edge.quats[i] = T[:3, 3].copy(), q
        else:
            edge.stamps.insert(i, float(stamp))
            edge.positions.insert(i, T[:3, 3].copy())
            edge.quats.insert(i, q)
        drop = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_time)
        if drop > 0:
            del edge.stamps[:drop], edge.positions[:drop], edge.quats[:drop]

    def clear(self) -> None:
        self._edges.clear()

    # ------------------------------------------------------------------ queries
    def frames(self) -> list[str]:
        names = set(self._edges)
        names.update(e.parent for e in self._edges.values())
        return sorted(names)

    def parent_of(self, frame: str) -> str | None:
        e = self._edges.get(frame)
        return None if e is None else e.parent

    def latest_stamp(self, child: str) -> float | None:
        """Newest sample stamp of the edge into ``child`` (None for an unknown or static one)."""
        e = self._edges.get(child)
        return None if e is None or e.static or not e.stamps else e.stamps[-1]

    def can_transform(self, target: str, source: str, stamp: float | None) -> bool:
        try:
            self.lookup(target, source, stamp)
        except TransformError:
            return False
        return True

    def lookup(self, target: str, source: str, stamp: float | None) -> np.ndarray:
        """T_target_source [4, 4] at ``stamp``: maps points in ``source`` into ``target``.

        ``stamp=None``: every edge at its newest sample (for "where is it now" questions).

        Raises ConnectivityError when no chain joins the frames and ExtrapolationError
        when the stamp lies outside a dynamic edge's samples.
        """
        if target == source:
            return np.eye(4)
        up_s = self._chain_to_root(source)
        up_t = self._chain_to_root(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            known = ", ".join(self.frames()) or "none"
            raise ConnectivityError(
                f"no transform chain between '{target}' and '{source}' (root of '{source}': "
                f"'{up_s[-1]}', root of '{target}': '{up_t[-1]}'; known frames: {known})")
        T_common_source = self._compose(up_s[:up_s.index(common) + 1], stamp)
        T_common_target = self._compose(up_t[:up_t.index(common) + 1], stamp)
        return np.linalg.inv(T_common_target) @ T_common_source

    # ------------------------------------------------------------------ internals
    def _chain_to_root(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _would_loop(self, parent: str, child: str) -> bool:
        return child in self._chain_to_root(parent)

    def _compose(self, chain: list[str], stamp: float | None) -> np.ndarray:
        """T_chain[-1]_chain[0] from the edges child -> parent along ``chain``."""
        T = np.eye(4)
        for child in chain[:-1]:
            T = self._edge_at(child, stamp) @ T
        return T

    def _edge_at(self, child: str, stamp: float | None) -> np.ndarray:
        e = self._edges[child]
        T = np.eye(4)
        if e.static or stamp is None:
            T[:3, :3] = Rotation.from_quat(e.quats[-1]).as_matrix()
            T[:3, 3] = e.positions[-1]
            return T
        t0, t1 = e.stamps[0], e.stamps[-1]
        if stamp < t0 - self.tolerance or stamp > t1 + self.tolerance:
            future = stamp > t1
            raise ExtrapolationError(
                f"lookup of {e.parent} -> {child} at t={stamp:.6f} would require extrapolation into the "
                f"{'future' if future else 'past'}: samples cover [{t0:.6f}, {t1:.6f}] "
                f"({len(e.stamps)} samples)", future=future)
        stamp = min(max(stamp, t0), t1)
        i = bisect.bisect_left(e.stamps, stamp)
        if e.stamps[i] == stamp:
            T[:3, :3] = Rotation.from_quat(e.quats[i]).as_matrix()
            T[:3, 3] = e.positions[i]
            return T
        ta, tb = e.stamps[i - 1], e.stamps[i]
        a = (stamp - ta) / (tb - ta)
        slerp = Slerp([ta, tb], Rotation.from_quat(np.stack([e.quats[i - 1], e.quats[i]])))
        T[:3, :3] = slerp([stamp]).as_matrix()[0]
        T[:3, 3] = (1 - a) * e.positions[i - 1] + a * e.positions[i]
        return T

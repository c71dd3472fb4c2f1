"""Conventions in one place: intrinsics, REP-103 optical frames, pose composition.

- Quaternions are ROS order ``(x, y, z, w)``; rotations go through scipy's ``Rotation``.
- ``T_a_b`` is a 4x4 homogeneous transform that maps points in frame ``b`` into frame ``a``;
  poses compose as ``T_odom_camera = T_odom_base @ T_base_camera``.
- Camera optical frame (REP-103): z forward, x right, y down. Pixel ``(u, v)`` has its
  centre at integer coordinates: ``u = fx * x / z + cx``.
- Depth images hold metric z (distance along the optical axis), 0 or NaN = no return.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# Rotation that maps optical-frame vectors into a body-style camera link (x fwd, y left, z up).
R_LINK_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole intrinsics ``K`` [3, 3]."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Intrinsics [3, 3] of the same camera with its image resized by sx in u and sy in v (sy = sx if None).

    Convention (this module's): pixel centres at integer coordinates, so the image spans
    [-0.5, W - 0.5]; resizing maps u to (u + 0.5) * sx - 0.5, hence ``cx' = (cx + 0.5) * sx - 0.5``
    (not ``cx * sx``, which would shift the image by half a source pixel minus half a new one).
    For a resize from W x H to w x h pass ``sx = w / W``, ``sy = h / H``.
    """
    if sy is None:
        sy = sx
    if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
        raise ValueError(f"scale_intrinsics: scales must be finite and positive, got sx={sx}, sy={sy}")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"scale_intrinsics: K must be [3, 3], got {K.shape}")
    Ks = K.copy()
    Ks[0, 0], Ks[0, 1] = K[0, 0] * sx, K[0, 1] * sx
    Ks[1, 1] = K[1, 1] * sy
    Ks[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    Ks[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return Ks


def pose_to_matrix(position: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    """Translation [3] + ROS quaternion [4] (x, y, z, w) -> T [4, 4].

    Raises ValueError for non-finite values or a zero quaternion.
    """
    position = np.asarray(position, dtype=np.float64).reshape(3)
    quat_xyzw = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
    if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quat_xyzw))):
        raise ValueError(f"pose has non-finite values: position={position}, quat={quat_xyzw}")
    if np.linalg.norm(quat_xyzw) < 1e-8:
        raise ValueError(f"pose quaternion is zero: {quat_xyzw}")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(quat_xyzw).as_matrix()
    T[:3, 3] = position
    return T


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T [4, 4] -> (translation [3], ROS quaternion [4] x, y, z, w)."""
    T = np.asarray(T, dtype=np.float64)
    return T[:3, 3].copy(), Rotation.from_matrix(T[:3, :3]).as_quat()


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform [4, 4]."""
    Ti = np.eye(4)
    R = T[:3, :3]
    Ti[:3, :3] = R.T
    Ti[:3, 3] = -R.T @ T[:3, 3]
    return Ti


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply T [4, 4] to points [N, 3]."""
    return points @ T[:3, :3].T + T[:3, 3]


def backproject(depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray | None = None,
                stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Lift valid depth pixels to 3D.

    Args:
        depth: [H, W] metric z; 0, negative or non-finite = invalid.
        K: [3, 3] intrinsics.
        T_world_cam: [4, 4] optical camera -> world; None keeps camera coordinates.
        stride: take every stride-th pixel in u and v.
    Returns:
        points: [N, 3] in the world (or camera) frame.
        pixels: [N, 2] integer (v, u) of each point.
    """
    H, W = depth.shape
    v, u = np.mgrid[0:H:stride, 0:W:stride]
    z = depth[v, u]
    ok = np.isfinite(z) & (z > 0)
    u, v, z = u[ok], v[ok], z[ok].astype(np.float64)
    pts = unproject(u, v, z, K)
    if T_world_cam is not None:
        pts = transform_points(T_world_cam, pts)
    return pts, np.stack([v, u], axis=-1)


def unproject(u: np.ndarray, v: np.ndarray, z: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points [N, 3] of pixels (u, v) [N] (column, row; pixel centres at integers) at depth z [N]."""
    z = np.asarray(z, dtype=np.float64)
    return np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=-1)


def project(points_world: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [N, 3] -> pixel coordinates [N, 2] (u, v) and depth z [N]."""
    pc = transform_points(invert(T_world_cam), points_world)
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * pc[:, 0] / z + K[0, 2]
        v = K[1, 1] * pc[:, 1] / z + K[1, 2]
    return np.stack([u, v], axis=-1), z


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """T_world_cam [4, 4] of an optical camera at ``eye`` looking at ``target`` (y down)."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:
        raise ValueError("look_at: view direction is parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T

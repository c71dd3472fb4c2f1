"""A floor with boxes on it, ray-cast into metric depth: real geometry for the ICP tests."""
import numpy as np

from m3_ros.geometry import intrinsics_matrix, look_at

K = intrinsics_matrix(208.0, 208.0, 159.5, 119.5)
W, H = 320, 240
# axis-aligned boxes (min corner, max corner) standing on the floor z = 0
BOXES = [((0.8, -0.4, 0.0), (1.2, 0.0, 0.5)), ((1.0, 0.5, 0.0), (1.3, 0.9, 0.3)), ((1.6, -0.1, 0.0), (1.9, 0.3, 0.7))]


def ray_cast(T_world_cam: np.ndarray, boxes=BOXES, floor: bool = True) -> np.ndarray:
    """Metric z depth [H, W] of the floor and the boxes seen from T_world_cam (0 = nothing)."""
    v, u = np.mgrid[0:H, 0:W]
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1).reshape(-1, 3)
    o = T_world_cam[:3, 3]
    d = d_cam @ T_world_cam[:3, :3].T  # world direction with unit camera z, so the ray parameter is depth z
    t = np.full(len(d), np.inf)
    if floor:
        with np.errstate(divide="ignore", invalid="ignore"):
            tf = -o[2] / d[:, 2]
        t = np.where((tf > 0) & np.isfinite(tf), tf, t)
    for lo, hi in boxes:
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (np.array(lo) - o) / d, (np.array(hi) - o) / d
        tn = np.nanmax(np.minimum(t1, t2), 1)
        tx = np.nanmin(np.maximum(t1, t2), 1)
        hit = (tn <= tx) & (tn > 0)
        t = np.where(hit & (tn < t), tn, t)
    t[t > 4.0] = 0.0
    return np.where(np.isfinite(t), t, 0.0).reshape(H, W)


def camera(eye, target=(1.3, 0.2, 0.2)) -> np.ndarray:
    return look_at(np.array(eye, float), np.array(target, float))

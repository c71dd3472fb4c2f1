"""Odometry drift correction by depth-to-map ICP (no ROS: numpy and scipy only).

The memory lives in ``map``. Odometry drifts, so each keyframe's pose is predicted as
``T_map_cam = T_map_odom @ T_odom_cam`` and then refined by aligning the keyframe's depth
with a reference cloud of what earlier keyframes saw; the correction updates ``T_map_odom``
(REP-105: ``map -> odom`` jumps, ``odom`` stays smooth).

The reference is an accumulated keyframe cloud (:class:`PointMap`), not the memory's
Gaussian means: it exists as soon as a keyframe is offered (the memory seeds only after
feature extraction, seconds later), its points sit where depth measured them (training moves
Gaussian means to fit colour and features, and the density budget prunes and merges them),
and the tracker does not depend on the memory's internals. Voxels keep their first point,
so the map stays anchored to the earliest (least drifted) observations.

ICP is point-to-plane (Chen & Medioni 1992; Gauss-Newton on ``n . (R p + t - q)``) with
map normals from local PCA, distance-capped correspondences and Huber weights. Depth noise is
modelled (stereo: sigma grows with the square of range): each point weighs by it, and the map
fits its planes over patches wide enough for the noise and puts each point on its patch's plane.
Without that, walls 2-4 m away (the only structure a whole room walk keeps seeing, and what holds
yaw) failed the planarity test and never joined the map: on the room dev walks 86 % of the map was
floor, which constrains none of yaw, x, y. A result is
refused (identity correction plus a reason) when too few points overlap the map, when the
6x6 normal matrix is ill-conditioned (a single plane leaves in-plane slides and the turn
about its normal free), when the correction exceeds the configured bounds, when fewer points
fit the map within their noise afterwards than before (new surfaces next to old ones pulled
exact poses off), or when it does not lower the capped residual.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from m3_ros.geometry import backproject, transform_points

# parameter order of the 6-vector: rotation (rad) about the cloud centroid, then translation (m)
_PLANAR_DOF = (2, 3, 4)  # yaw, x, y: what legged-robot odometry drifts in (the IMU holds tilt and height)


@dataclass
class IcpConfig:
    """Depth-to-map ICP for one keyframe."""

    max_points: int = 3000
    """Depth points of a keyframe used for alignment at most (random subsample, seeded)."""
    max_corr_m: float = 0.10
    """Correspondences farther apart than this are not used (and count as capped in the residual)."""
    fine_corr_m: float = 0.03
    """After ``coarse_iterations`` the cap tightens to this (edges and curved surfaces leave it)."""
    coarse_iterations: int = 5
    """Iterations at the wide cap ``max_corr_m``."""
    huber_m: float = 0.01
    """Huber threshold of the point-to-plane residual (about the depth noise at 1.5 m)."""
    iterations: int = 30
    """Gauss-Newton iterations at most."""
    converged_m: float = 1e-4
    """Stop when an update moves points less than this (m, rotation times the cloud radius)."""
    min_inliers: int = 300
    """Refuse with fewer correspondences than this."""
    min_overlap: float = 0.3
    """Refuse when fewer than this fraction of the keyframe's points have a correspondence."""
    min_conditioning: float = 0.003
    """Refuse when the normal matrix's smallest / largest eigenvalue falls below this (rotation
    columns scaled by the cloud radius, so the ratio is the share of points constraining the
    weakest direction). On the two_tables dev walks views of tables and objects score 0.01-0.06,
    views of mostly floor 0.0005-0.003, a bare floor ~0; the boxes of test_tracking score
    0.004-0.02. 0.01 gave 6.3 instead of 7.9 cm on dev seeds 1-3 but refuses those exact views."""
    max_std_m: float = 0.004
    """Refuse when the converged estimate's weakest direction has a standard deviation,
    ``residual rms / sqrt(smallest eigenvalue)``, above this (m; rotation at the cloud radius):
    weak geometry is refused where depth is noisy and kept where it is exact. A guard: on the
    two_tables dev walks (seeds 1-3) it stays within 0.27-1.0 mm and never binds."""
    max_correction_m: float = 0.30
    """Refuse a correction that moves the camera more than this."""
    max_correction_deg: float = 10.0
    """Refuse a correction that turns the camera more than this."""
    consensus_sigmas: float | None = 3.0
    """Refuse a correction after which fewer keyframe points lie within this many depth-noise sigmas
    (at least 1 mm) of their map plane, correspondences within
    ``fine_corr_m``, than at the guess (None: no test). The capped Huber cost alone let surfaces seen
    for the first time (a table's edge face, new sides of objects) pull toward the nearest old plane:
    on the default table with exact depth and odometry, keyframes 2.75 s apart (a loaded machine)
    moved 4.6 cm / 3.5 deg off while the overlap's median residual rose from 0.07 to 2.2 mm. Set on
    bench_drift's dev walks (room 1-5, two_tables 1-3): object cm 3.45 / 3.55 without the test,
    3.56 / 3.57 at 3 sigmas, 3.67 / 3.57 at 2."""
    dof: Literal["se3", "planar"] = "se3"
    """``se3``: all six degrees of freedom; ``planar``: yaw, x, y only."""
    seed: int = 0
    """Seed of the point subsample."""

    def __post_init__(self) -> None:
        if self.dof not in ("se3", "planar"):
            raise ValueError(f"IcpConfig.dof must be 'se3' or 'planar', got {self.dof!r}")
        for k in ("max_points", "max_corr_m", "huber_m", "iterations", "min_inliers"):
            if getattr(self, k) <= 0:
                raise ValueError(f"IcpConfig.{k} must be > 0, got {getattr(self, k)}")


@dataclass
class PointMapConfig:
    """The accumulated reference cloud."""

    voxel_m: float = 0.015
    """One point per voxel of this size (the first one seen); set on the two_tables dev walk (seed 1):
    3 cm voxels left 8 cm neighbourhoods that blur small objects' normals."""
    normal_radius_m: float = 0.04
    """Map normals come from PCA over the points within this radius in the keyframe's cloud."""
    min_planarity: float = 0.9
    """Points whose neighbourhood is not planar (``1 - 3 * smallest/sum`` eigenvalue share) are left out."""
    max_points: int = 400_000
    """The map stops growing past this (a 10 m two-table walk at 1.5 cm holds ~80k)."""
    normal_sigmas: float = 4.0
    """With depth noise known, a point's normal patch is at least this many noise sigmas wide."""
    normal_k: int = 32
    """Neighbours of a patch at most (noisy far points need more than near ones)."""


@dataclass
class OdometryPrior:
    """How far a keyframe's pose may be from its guess, the odometry pose through the (gain-smoothed)
    odometry correction: a Gaussian prior on the ICP correction, so that ICP weighs its geometry
    against the odometry per direction. Standard deviations; the drift ones grow with the distance the
    camera travelled since the last keyframe and add in quadrature to the floors."""

    trans_frac: float = 0.02
    """Horizontal translation drift per metre travelled (the odometry's specification)."""
    yaw_deg_per_sqrt_m: float = 1.0
    """Yaw random walk, degrees after one metre."""
    floor_m: float = 0.01
    """Horizontal error of the guess before this step's drift (ICP's own error, the smoothing's lag), m.
    The floors, height, tilt and weight were chosen a priori (sensor-scale values), not tuned; weight 30
    was the one alternative tried (bench_drift dev walks, see TrackerConfig.prior)."""
    floor_deg: float = 0.5
    """Yaw error of the guess before this step's drift, degrees."""
    height_m: float = 0.01
    """Camera height (legged odometry and its IMU hold height, roll and pitch)."""
    tilt_deg: float = 0.5
    """Roll and pitch."""
    weight: float = 1.0
    """Multiplies the prior's information against the ICP's: the ICP sums thousands of point residuals
    whose errors are not independent (one depth image, one map), so its information is overstated."""

    def information(self, distance_m: float) -> np.ndarray:
        """[6, 6] inverse covariance of (rotation vector, camera position) deviations in the map (z up)."""
        xy = np.hypot(self.trans_frac * distance_m, self.floor_m)
        yaw = np.radians(np.hypot(self.yaw_deg_per_sqrt_m * np.sqrt(distance_m), self.floor_deg))
        tilt = np.radians(self.tilt_deg)
        sig = np.array([tilt, tilt, yaw, xy, xy, self.height_m])
        return np.diag(self.weight / sig ** 2)


@dataclass
class TrackerConfig:
    """Drift correction: ICP plus the reference map."""

    icp: IcpConfig = field(default_factory=IcpConfig)
    """Alignment of one keyframe."""
    map: PointMapConfig = field(default_factory=PointMapConfig)
    """Reference cloud."""
    stride: int = 2
    """Depth pixels taken every ``stride`` in u and v before subsampling."""
    max_depth: float = 4.0
    """Depth beyond this (m) is not used. The pipeline hands over its depth uncut: in a room the walls
    2.5-4 m away (noise 2.5-6.4 cm, weighed by ``depth_sigma_per_m2``) hold yaw, the error that moves
    far answers most. bench_drift.py, keyframe camera error mean / final cm: room dev seeds 1-5, 6.3 /
    8.6 at 2.5 m without the noise model, 4.9 / 6.4 at 4 m with it (odometry 12.3 / 18.4); two_tables
    dev seeds 1-3 (no walls), 7.9 / 17.6 before, 8.5 / 18.2 now."""
    depth_sigma_per_m2: float | None = 0.004
    """Depth noise model of the camera, sigma(z) = depth_sigma_per_m2 * z**2 (m; stereo noise grows with
    the square of range; 0.004 is an Intel RealSense D435 at 640x480, 4 mm at 1 m); None = exact depth.
    ICP weighs each point by it and the map fits wider planes to noisy points."""
    gain: float = 0.5
    """Fraction of an accepted correction that goes into the odometry correction the next keyframe's ICP
    starts from (in the camera frame): below 1 averages ICP's own noise over keyframes while drift,
    which persists, is still taken out (0.5 set on the two_tables dev walk, seed 1: 1.0 followed ICP's
    noise on small curved objects; room dev seeds 1-5, object cm 4.0 at 0.5, 5.2 at 1.0). The
    keyframe itself is placed at ICP's full estimate: placing it at the smoothed pose put half of
    every measured residual into the map and the memory. bench_drift, dev seeds, object cm (where
    grounding after the walk sees each object) half-placed -> fully placed: room 1-5 5.0 -> 4.0,
    two_tables 1-3 8.5 -> 4.2 (seed 1 12.7 -> 3.7); keyframe camera error room 4.9 -> 4.5 cm.
    ``T_map_odom``, what the robot believes and publishes, agrees with the newest keyframe's placement
    instead: the smoothed correction lags the map, and every answer moved with the lag (object cm,
    room dev seeds 1-5 4.0 -> 3.5, 4 of 5 better; two_tables 1-3 4.2 -> 3.6, 2 of 3 better)."""
    prior: OdometryPrior | None = field(default_factory=OdometryPrior)
    """A Gaussian prior on each keyframe's ICP correction, centred on its guess (None: ICP alone).
    On by default, decided by a rule fixed before the walks (bench_scale --quick, dev rooms 1-5, pooled
    ground_5cm_drift_mean against the 0.561 without it): 0.71 / 0.63 / 0.53 / 0.56 / 0.76, pooled 0.638,
    against 0.71 / 0.52 / 0.57 / 0.22 / 0.79 (results/scale_dev_room*_s13prior.md; moved-object trials 9 of
    13 against 8 of 11). The memory node sets it from the odometry's specification (odom_drift_frac,
    odom_yaw_deg_per_sqrt_m).
    Variants on bench_drift's dev walks (object cm, room 1-5 / two_tables 1-3; none 3.56 / 3.57): centred
    on the guess, gain and the conditioning refusal kept, weight 1: 2.67 / 3.60; weight 30: 3.47 / 10.2;
    centred on the newest placement carried by odometry, no gain, degenerate views held by the prior
    instead of refused: 2.71 / 10.4 (weight 1), 3.28 / 7.81 (weight 30): orbiting a table, accepted
    weak views let yaw run (two_tables 3: 60 cm at the end)."""


@dataclass
class IcpResult:
    """One alignment: ``T_corr`` [4, 4] maps the guessed pose onto the refined one (map frame)."""

    T_corr: np.ndarray
    accepted: bool
    reason: str
    inliers: int = 0
    overlap: float = 0.0
    conditioning: float = 0.0
    cost_before: float = float("nan")
    cost_after: float = float("nan")
    iterations: int = 0

    @property
    def translation_m(self) -> float:
        return float(np.linalg.norm(self.T_corr[:3, 3]))

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(Rotation.from_matrix(self.T_corr[:3, :3]).magnitude()))


def _voxel_first(points: np.ndarray, voxel: float) -> np.ndarray:
    """Indices of the first point in each occupied voxel of size ``voxel``, in input order."""
    keys = np.floor(points / voxel).astype(np.int64) + (1 << 20)  # 21 bits an axis: +-15 km at 1.5 cm
    if len(keys) and (keys.min() < 0 or keys.max() >= 1 << 21):
        raise ValueError(f"points span more than 2**20 voxels of {voxel} m from the origin")
    # one int64 per voxel: a 1-D unique sorts ~10x faster than unique(axis=0) over rows (the map's
    # 200k rows made that the tracker's main cost)
    packed = (keys[:, 0] << 42) | (keys[:, 1] << 21) | keys[:, 2]
    _, first = np.unique(packed, return_index=True)
    return np.sort(first)


def pca_normals(points: np.ndarray, radius: float | np.ndarray, min_neighbours: int = 6,
                sigma: np.ndarray | None = None, k: int = 16,
                at: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normals [M, 3], planarity [M] and neighbourhood means [M, 3] of the points ``at`` indexes (all: M = N).

    Args:
        points: [N, 3], the neighbours.
        radius: neighbourhood radius, one for all or [M] per point.
        min_neighbours: points with fewer neighbours within their radius get planarity 0.
        sigma: [M] expected depth noise (m) of each point, or None for exact points.
        k: neighbours looked at, at most.
        at: [M] indices of the points to evaluate, None = all.
    Returns:
        normals [M, 3], planarity [M] and means [M, 3]. Planarity is ``1 - 3 * l0 / (l0 + l1 + l2)``
        with l0 the smallest eigenvalue less the expected noise variance ``sigma**2`` (a noisy flat
        wall is still flat): 1 on a plane, 0 for an isotropic blob.
    """
    N = len(points)
    q = points if at is None else points[at]
    M = len(q)
    if N == 0 or M == 0:
        return np.zeros((M, 3)), np.zeros(M), np.zeros((M, 3))
    tree = cKDTree(points)
    k = min(k, N)
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (M,))
    d, idx = tree.query(q, k=k, distance_upper_bound=float(r.max()))
    valid = np.isfinite(d) & (d <= r[:, None])  # missing neighbours come back as inf with index N
    idx = np.where(valid, idx, 0)
    nb = points[idx]  # [N, k, 3]
    cnt = valid.sum(1)
    w = valid[..., None].astype(np.float64)
    mean = (nb * w).sum(1) / np.maximum(cnt, 1)[:, None]
    dev = (nb - mean[:, None]) * w
    cov = np.einsum("nki,nkj->nij", dev, dev) / np.maximum(cnt, 1)[:, None, None]
    evals, evecs = np.linalg.eigh(cov)
    normals = evecs[:, :, 0]
    l0 = evals[:, 0] if sigma is None else np.maximum(evals[:, 0] - np.asarray(sigma) ** 2, 0.0)
    planarity = 1.0 - 3.0 * l0 / np.maximum(l0 + evals[:, 1] + evals[:, 2], 1e-12)
    planarity[cnt < min_neighbours] = 0.0
    return normals, planarity, mean


class PointMap:
    """Accumulated keyframe cloud in ``map`` with normals and a k-d tree (not thread-safe)."""

    def __init__(self, cfg: PointMapConfig | None = None) -> None:
        self.cfg = cfg or PointMapConfig()
        self.points = np.zeros((0, 3))
        self.normals = np.zeros((0, 3))
        self.tree: cKDTree | None = None

    def __len__(self) -> int:
        return len(self.points)

    def add(self, points_map: np.ndarray, sigma: np.ndarray | None = None) -> int:
        """Add one keyframe's points [N, 3] (map frame) with their depth noise ``sigma`` [N] (m, None =
        exact); returns how many voxels were new."""
        if len(points_map) == 0 or len(self.points) >= self.cfg.max_points:
            return 0
        sel = _voxel_first(points_map, self.cfg.voxel_m)
        if sigma is None:
            pts = points_map[sel]
            normals, planarity, _ = pca_normals(pts, self.cfg.normal_radius_m)
        else:
            # only voxels the map lacks need a normal (most of a keyframe overlaps the map)
            n_old = len(self.points)
            first = _voxel_first(np.concatenate([self.points, points_map[sel]]), self.cfg.voxel_m)
            sel = sel[first[first >= n_old] - n_old]
            sig = np.asarray(sigma, dtype=np.float64)[sel]
            # noisy points need a wider patch for a normal, and each point is put on its patch's
            # plane: a far wall's points scatter by sigma, the plane through k of them far less
            radius = np.maximum(self.cfg.normal_radius_m, self.cfg.normal_sigmas * sig)
            normals, planarity, mean = pca_normals(points_map, radius, sigma=sig, k=self.cfg.normal_k, at=sel)
            pts = points_map[sel]
            pts = pts - normals * np.einsum("ni,ni->n", pts - mean, normals)[:, None]
        keep = planarity >= self.cfg.min_planarity
        pts, normals = pts[keep], normals[keep]
        n_old = len(self.points)
        allp = np.concatenate([self.points, pts])
        first = _voxel_first(allp, self.cfg.voxel_m)  # old points come first, so they win their voxel
        new = first[first >= n_old]
        self.points = np.concatenate([self.points, allp[new]])
        self.normals = np.concatenate([self.normals, normals[new - n_old]])
        self.tree = cKDTree(self.points)
        return len(new)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _capped_cost(p: np.ndarray, ref: PointMap, cfg: IcpConfig, cap_m: float | None = None,
                 scale: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Mean Huber point-to-plane cost over all points, correspondences beyond the cap at the cap's cost.

    ``scale`` [N] (>= 1) shrinks each point's residual and widens its cap by that factor (noisy
    depth); residuals come back already divided by it. Returns (cost, inlier mask [N], matched map
    indices [N], signed scaled residuals [N]).
    """
    cap_m = cfg.max_corr_m if cap_m is None else cap_m
    cap_i = cap_m if scale is None else cap_m * scale
    d, j = ref.tree.query(p, distance_upper_bound=float(np.max(cap_i)) if len(p) else cap_m)
    inl = np.isfinite(d) & (d <= cap_i)
    j = np.where(inl, np.minimum(j, len(ref) - 1), 0)
    r = np.einsum("ni,ni->n", p - ref.points[j], ref.normals[j])
    if scale is not None:
        r = r / scale
    cap = _huber(np.array([cap_m]), cfg.huber_m)[0]
    cost = np.where(inl, np.minimum(_huber(r, cfg.huber_m), cap), cap)
    return float(cost.mean()), inl, j, r


def _consensus(p: np.ndarray, ref: PointMap, cfg: IcpConfig, sigma: np.ndarray | None) -> int:
    """How many points [N, 3] lie within consensus_sigmas noise sigmas of their map plane (correspondences
    within fine_corr_m)."""
    # a 1 mm floor: exact depth (sigma None) and near points still meet sensor and map-plane error
    tol = cfg.consensus_sigmas * np.maximum(1e-3 if sigma is None else np.asarray(sigma, dtype=np.float64), 1e-3)
    _, inl, _, r = _capped_cost(p, ref, cfg, cfg.fine_corr_m)
    return int((inl & (np.abs(r) <= tol)).sum())


def _increment(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Rigid transform [4, 4] of a rotation vector x[:3] about point c followed by translation x[3:]."""
    T = np.eye(4)
    R = Rotation.from_rotvec(x[:3]).as_matrix()
    T[:3, :3] = R
    T[:3, 3] = c - R @ c + x[3:]
    return T


def icp(points_cam: np.ndarray, T_map_cam: np.ndarray, ref: PointMap,
        cfg: IcpConfig | None = None, sigma: np.ndarray | None = None,
        prior_info: np.ndarray | None = None) -> IcpResult:
    """Align a keyframe's points with the map, starting from a guessed pose.

    Args:
        points_cam: [N, 3] depth points in the camera frame (subsampled to ``cfg.max_points``).
        T_map_cam: [4, 4] guessed camera pose in the map.
        ref: the reference cloud.
        cfg: ICP settings.
        sigma: [N] depth noise of each point (m), None = exact: a point's residual counts as
            ``huber_m / sqrt(huber_m**2 + sigma**2)`` of itself (weighted least squares), its caps widen.
        prior_info: [6, 6] information of a Gaussian prior centred on the guess, over the camera's
            (rotation vector, position) deviation in the map (OdometryPrior.information); residuals count
            in units of ``huber_m`` per noise sigma, so the prior enters scaled by ``huber_m**2``.
    Returns:
        IcpResult: refined pose = ``T_corr @ T_map_cam``; ``T_corr`` is the identity when refused.
    """
    cfg = cfg or IcpConfig()
    eye = np.eye(4)
    if ref.tree is None or len(ref) < cfg.min_inliers:
        return IcpResult(eye, False, f"map has {len(ref)} points (< {cfg.min_inliers})")
    if len(points_cam) > cfg.max_points:
        rng = np.random.default_rng(cfg.seed)
        pick = rng.choice(len(points_cam), cfg.max_points, replace=False)
        points_cam = points_cam[pick]
        sigma = None if sigma is None else np.asarray(sigma)[pick]
    scale = None if sigma is None else np.sqrt(1.0 + (np.asarray(sigma, dtype=np.float64) / cfg.huber_m) ** 2)
    if len(points_cam) < cfg.min_inliers:
        return IcpResult(eye, False, f"keyframe has {len(points_cam)} depth points (< {cfg.min_inliers})")
    p0 = transform_points(T_map_cam, points_cam)
    dof = list(range(6)) if cfg.dof == "se3" else list(_PLANAR_DOF)
    cost0, inl, _, _ = _capped_cost(p0, ref, cfg, scale=scale)
    T = eye.copy()
    cond, std, it = 0.0, 0.0, 0
    for it in range(1, cfg.iterations + 1):
        p = transform_points(T, p0)
        cap_m = cfg.max_corr_m if it <= cfg.coarse_iterations else cfg.fine_corr_m
        _, inl, j, r = _capped_cost(p, ref, cfg, cap_m, scale)
        n_inl = int(inl.sum())
        if n_inl < cfg.min_inliers:
            return IcpResult(eye, False, f"{n_inl} correspondences within {cap_m} m (< {cfg.min_inliers})",
                             inliers=n_inl, overlap=n_inl / len(p0), cost_before=cost0, iterations=it)
        pi, n, ri = p[inl], ref.normals[j[inl]], r[inl]
        c = pi.mean(0)
        radius = float(np.sqrt(((pi - c) ** 2).sum(1).mean()))
        J = np.concatenate([np.cross(pi - c, n), n], axis=1)[:, dof]  # d r / d (omega, t)
        if scale is not None:
            J = J / scale[inl][:, None]
        w = np.where(np.abs(ri) <= cfg.huber_m, 1.0, cfg.huber_m / np.maximum(np.abs(ri), 1e-12))
        H = J.T @ (J * w[:, None])
        g = J.T @ (w * ri)
        if prior_info is not None:  # pull toward the guess: ½ eᵀΛe over the camera's deviation e
            o = T_map_cam[:3, 3]
            o1 = T[:3, :3] @ o + T[:3, 3]
            e = np.concatenate([Rotation.from_matrix(T[:3, :3]).as_rotvec(), o1 - o])
            A = np.eye(6)  # d e / d (omega about c, t)
            v = o1 - c
            A[3:, :3] = np.array([[0.0, v[2], -v[1]], [-v[2], 0.0, v[0]], [v[1], -v[0], 0.0]])  # -[v]x
            L = cfg.huber_m ** 2 * prior_info
            H = H + (A.T @ L @ A)[np.ix_(dof, dof)]
            g = g + (A.T @ L @ e)[dof]
        # conditioning with rotation columns in metres at the cloud's radius, per point
        s = np.array([1.0 / radius if k < 3 else 1.0 for k in dof])
        ev = np.linalg.eigvalsh(H * s[:, None] * s[None, :])
        cond = float(ev[0] / max(ev[-1], 1e-12))
        # the weakest direction's standard deviation; judged once converged (early residuals are the offset)
        std = float(np.sqrt((w * ri * ri).sum() / w.sum() / max(ev[0], 1e-12)))
        if cond < cfg.min_conditioning:
            return IcpResult(eye, False, f"degenerate geometry (conditioning {cond:.2g} < {cfg.min_conditioning})",
                             inliers=n_inl, overlap=n_inl / len(p0), conditioning=cond, cost_before=cost0,
                             iterations=it)
        x = np.zeros(6)
        x[dof] = -np.linalg.solve(H, g)
        T = _increment(x, c) @ T
        if it > cfg.coarse_iterations and np.linalg.norm(x[3:]) + np.linalg.norm(x[:3]) * radius < cfg.converged_m:
            break
    p1 = transform_points(T, p0)
    cost1, inl, _, _ = _capped_cost(p1, ref, cfg, scale=scale)
    n_inl = int(inl.sum())
    res = IcpResult(T, True, "ok", inliers=n_inl, overlap=n_inl / len(p0), conditioning=cond,
                    cost_before=cost0, cost_after=cost1, iterations=it)
    # the camera's own displacement under the correction
    T_new = T @ T_map_cam
    moved = float(np.linalg.norm(T_new[:3, 3] - T_map_cam[:3, 3]))
    if std > cfg.max_std_m:
        res.reason = f"weak geometry: weakest direction std {1e3 * std:.2f} mm > {1e3 * cfg.max_std_m:.2f}"
    elif res.overlap < cfg.min_overlap:
        res.reason = f"overlap {res.overlap:.2f} < {cfg.min_overlap}"
    elif moved > cfg.max_correction_m or res.rotation_deg > cfg.max_correction_deg:
        res.reason = (f"correction {moved:.3f} m / {res.rotation_deg:.1f} deg exceeds "
                      f"{cfg.max_correction_m} m / {cfg.max_correction_deg} deg")
    elif cfg.consensus_sigmas is not None and (
            _consensus(p1, ref, cfg, sigma) < _consensus(p0, ref, cfg, sigma)):
        res.reason = "fewer points fit within their noise after the correction"
    elif not cost1 < cost0:
        res.reason = f"residual did not improve ({cost0:.3g} -> {cost1:.3g})"
    else:
        return res
    res.accepted, res.T_corr = False, eye
    return res


def _scaled_correction(T_corr: np.ndarray, T_map_cam: np.ndarray, gain: float) -> np.ndarray:
    """The correction [4, 4] that moves the camera ``gain`` of the way along ``T_corr`` (camera frame)."""
    D = np.linalg.inv(T_map_cam) @ T_corr @ T_map_cam  # the correction seen from the camera
    Dg = np.eye(4)
    Dg[:3, :3] = Rotation.from_rotvec(gain * Rotation.from_matrix(D[:3, :3]).as_rotvec()).as_matrix()
    Dg[:3, 3] = gain * D[:3, 3]
    return T_map_cam @ Dg @ np.linalg.inv(T_map_cam)


class DriftTracker:
    """Keeps ``T_map_odom`` and the reference map; refines each keyframe's pose by ICP.

    Thread-safe: ``track`` serialises on a lock; ``T_map_odom`` returns a copy.
    """

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Empty map, ``T_map_odom`` back to the identity."""
        with self._lock:
            self.map = PointMap(self.cfg.map)
            self._T_map_odom = np.eye(4)  # smoothed by the gain: the next keyframe's ICP starts from it
            self._T_belief = np.eye(4)  # the newest keyframe's placement · its odometry⁻¹ (published)
            self._last_odom: np.ndarray | None = None  # the newest keyframe's odometry pose (prior's distance)
            self.accepted = 0
            self.refused = 0
            self.last: IcpResult | None = None

    @property
    def T_map_odom(self) -> np.ndarray:
        """[4, 4] copy of the current map -> odom correction: where the newest keyframe was placed,
        carried by odometry since. Not behind the lock that ICP holds (up to a second on a loaded
        machine): ``_T_belief`` is replaced, never edited in place, so a read sees one whole value."""
        return self._T_belief.copy()

    def predict(self, T_odom_cam: np.ndarray) -> np.ndarray:
        """[4, 4] camera pose in the map: the odometry's pose through ``T_map_odom``."""
        return self.T_map_odom @ np.asarray(T_odom_cam, dtype=np.float64)

    def depth_sigma(self, points_cam: np.ndarray) -> np.ndarray | None:
        """[N] depth noise (m) of camera-frame points [N, 3], None for exact depth."""
        a = self.cfg.depth_sigma_per_m2
        return None if a is None else a * points_cam[:, 2] ** 2

    def keyframe_points(self, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
        """[N, 3] camera-frame points of a depth image, every ``stride`` pixels, within ``max_depth``."""
        d = np.where(np.isfinite(depth) & (depth <= self.cfg.max_depth), depth, 0.0)
        pts, _ = backproject(d, K, None, stride=self.cfg.stride)
        return pts

    def track(self, depth: np.ndarray, K: np.ndarray, T_odom_cam: np.ndarray) -> tuple[np.ndarray, IcpResult]:
        """Refine one keyframe and add it to the map.

        Args:
            depth: [H, W] metric z (0 / NaN = none).
            K: [3, 3] intrinsics.
            T_odom_cam: [4, 4] the odometry's camera pose.
        Returns:
            (T_map_cam [4, 4] refined pose, the ICP result). A refused result leaves the pose at
            ``T_map_odom @ T_odom_cam``; the keyframe joins the map either way (new ground is mapped).
        """
        T_odom_cam = np.asarray(T_odom_cam, dtype=np.float64)
        pts = self.keyframe_points(depth, K)
        prior = self.cfg.prior
        with self._lock:
            T_guess = self._T_map_odom @ T_odom_cam  # ICP's start, and the prior's centre
            if len(self.map) == 0:
                res = IcpResult(np.eye(4), False, "first keyframe: the map starts here")
            else:
                info = None
                if prior is not None:
                    moved = 0.0 if self._last_odom is None else float(
                        np.linalg.norm(T_odom_cam[:3, 3] - self._last_odom[:3, 3]))
                    info = prior.information(moved)
                res = icp(pts, T_guess, self.map, self.cfg.icp, self.depth_sigma(pts), info)
                self.refused += not res.accepted
            # the keyframe (its map points, the memory's Gaussians) goes where ICP put it; only the
            # odometry correction, which every later guess starts from, is smoothed by the gain
            T_map_cam = res.T_corr @ T_guess
            if res.accepted:
                step = res.T_corr if self.cfg.gain == 1.0 else _scaled_correction(res.T_corr, T_guess, self.cfg.gain)
                self._T_map_odom = step @ self._T_map_odom
                self.accepted += 1
            self.last = res
            self._T_belief = T_map_cam @ np.linalg.inv(T_odom_cam)
            self._last_odom = T_odom_cam
            self.map.add(transform_points(T_map_cam, pts), self.depth_sigma(pts))
            return T_map_cam, res

    def set_reference(self, views: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Rebuild the map from (depth [H, W], K [3, 3], T_map_cam [4, 4]) views, e.g. a loaded
        memory's keyframes; ``T_map_odom`` is kept."""
        with self._lock:
            self.map = PointMap(self.cfg.map)
            for depth, K, T_map_cam in views:
                pts = self.keyframe_points(depth, K)
                self.map.add(transform_points(np.asarray(T_map_cam, dtype=np.float64), pts), self.depth_sigma(pts))

    def stats(self) -> dict:
        """Counters for diagnostics, read without waiting for a running ICP (see ``T_map_odom``)."""
        last = self.last
        return {"accepted": self.accepted, "refused": self.refused, "map_points": len(self.map),
                "last_reason": last.reason if last else ""}

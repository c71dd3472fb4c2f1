"""Realistic sensor models for the simulator: RealSense-like depth, drifting odometry,
image noise, dropped frames and an imperfect detector. No pybullet and no ROS here: plain
functions and small stateful models over numpy arrays, so each can be tested on its own.

``SensorConfig.ideal()`` reproduces the perfect sensors the simulator had before;
``SensorConfig.realistic()`` is what the evaluation runs with. The parameters and where
their values come from:

- depth (Intel RealSense D435 stereo): sigma(z) = ``sigma_per_m2 * z**2`` (stereo error grows
  with the square of range: sigma = z^2 * subpixel / (f * baseline); 0.08 px subpixel, 50 mm
  baseline, f ~ 383 px at 640x480 gives ~4 mm at 1 m and ~17 mm at 2 m); holes where depth
  jumps between neighbouring pixels (occlusion shadows of a stereo pair), a little speckle,
  no return closer than the minimum range; millimetre quantisation as 16UC1 carries it.
- odometry (legged-robot dead reckoning): per-run scale and lateral-slip errors that random-walk
  with distance, so the end-point error is about ``trans_frac`` of the distance travelled, and
  a yaw random walk of about ``yaw_deg_per_m`` degrees per metre. The true pose stays with
  the evaluation; the memory sees only the drifted one.
- image: additive Gaussian noise and a per-frame exposure gain.
- frames: each camera frame is lost with probability ``drop_rate``.
- detector: the simulator's oracle with misses, eroded masks and synonym labels (never the
  query phrasings; see ``config/phrasings.yaml``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage


@dataclass
class DetectorNoise:
    """Imperfections of the oracle detector (the world's ``OracleNoise`` is built from this)."""

    miss_rate: float = 0.0
    """Probability that each visible instance is left out of a frame."""
    erode_px: int = 0
    """Erode every mask by this many pixels."""
    synonym_rate: float = 0.0
    """Probability that an instance is labelled with a synonym instead of its description."""


@dataclass
class DepthNoise:
    """Stereo depth noise like an Intel RealSense D435."""

    sigma_per_m2: float = 0.004
    """Noise standard deviation per squared metre of range: sigma(z) = sigma_per_m2 * z^2."""
    edge_jump_m: float = 0.05
    """A pixel is a depth edge when its 3x3 neighbourhood spans more than this (metres)."""
    edge_hole_prob: float = 0.6
    """Probability that an edge pixel (dilated by one pixel) returns no depth."""
    speckle_rate: float = 0.005
    """Probability that any valid pixel returns no depth."""
    min_range_m: float = 0.2
    """No return closer than this (the D435's minimum z at 640x480 is ~0.2-0.3 m)."""
    quantum_m: float = 0.001
    """Depth is quantised to this step (16UC1 in millimetres)."""


@dataclass
class OdometryNoise:
    """Dead-reckoning drift of the base pose, driven by distance travelled."""

    trans_frac: float = 0.02
    """RMS end-point translation error as a fraction of the distance travelled."""
    yaw_deg_per_m: float = 1.0
    """Standard deviation of the yaw random walk after one metre, degrees."""
    bias_walk_per_sqrt_m: float = 0.005
    """How fast the scale/slip biases themselves random-walk (fraction per sqrt(metre))."""


@dataclass
class SensorConfig:
    """Every sensor knob of the simulator; ``None`` for a model means a perfect sensor."""

    depth: DepthNoise | None = None
    """Depth noise model."""
    odometry: OdometryNoise | None = None
    """Odometry drift model."""
    image_sigma: float = 0.0
    """Additive RGB noise standard deviation, in 8-bit levels."""
    exposure_jitter: float = 0.0
    """Per-frame multiplicative gain drawn uniformly in [1 - j, 1 + j]."""
    drop_rate: float = 0.0
    """Probability that a camera frame is lost."""
    detector: DetectorNoise = field(default_factory=DetectorNoise)
    """Detector imperfections."""
    name: str = "custom"
    """Label used in reports."""

    def __post_init__(self) -> None:
        for k in ("drop_rate",):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SensorConfig.{k} must be in [0, 1], got {v}")
        if self.image_sigma < 0 or not 0 <= self.exposure_jitter < 1:
            raise ValueError(f"SensorConfig image_sigma must be >= 0 and exposure_jitter in [0, 1), got "
                             f"{self.image_sigma}, {self.exposure_jitter}")

    @classmethod
    def ideal(cls) -> "SensorConfig":
        """Perfect depth and odometry, clean images, no drops, a perfect detector."""
        return cls(name="ideal")

    @classmethod
    def realistic(cls) -> "SensorConfig":
        """The evaluation's default: D435-like depth, 2 % drift, noise, 5 % drops, noisy detector."""
        return cls(depth=DepthNoise(), odometry=OdometryNoise(), image_sigma=3.0, exposure_jitter=0.05,
                   drop_rate=0.05, detector=DetectorNoise(miss_rate=0.2, erode_px=2, synonym_rate=0.5),
                   name="realistic")

    @classmethod
    def realistic_no_drift(cls) -> "SensorConfig":
        """``realistic`` with an odometry that does not drift: a control that says how much of a
        realistic run's error drift causes. The drift model still draws its random numbers (at zero
        spread), so depth noise, drops and detector errors are the very draws ``realistic`` makes."""
        return dataclasses.replace(cls.realistic(), odometry=OdometryNoise(0.0, 0.0, 0.0), name="realistic_nodrift")

    @classmethod
    def resolve(cls, sensors: "SensorConfig | Literal['ideal', 'realistic', 'realistic_nodrift'] | str | None"
                ) -> "SensorConfig":
        """A SensorConfig from a name (``ideal`` / ``realistic`` / ``realistic_nodrift``) or itself."""
        if sensors is None or isinstance(sensors, SensorConfig):
            return sensors or cls.ideal()
        named = {"ideal": cls.ideal, "realistic": cls.realistic, "realistic_nodrift": cls.realistic_no_drift}
        if sensors in named:
            return named[sensors]()
        raise ValueError(f"unknown sensor model {sensors!r}; use one of {sorted(named)}")


def apply_depth_noise(depth: np.ndarray, cfg: DepthNoise, rng: np.random.Generator) -> np.ndarray:
    """Noisy depth like a stereo camera would return it.

    Args:
        depth: [H, W] float metric z, 0 = no return.
        cfg: the noise model.
        rng: random source.
    Returns:
        [H, W] float32 metric z quantised to ``cfg.quantum_m``, 0 = no return.
    """
    d = np.asarray(depth, dtype=np.float64)
    valid = d > 0
    # depth edges: where the 3x3 neighbourhood spans a jump (stereo occlusion shadows)
    hi = ndimage.maximum_filter(np.where(valid, d, 0.0), size=3)
    lo = ndimage.minimum_filter(np.where(valid, d, np.inf), size=3)
    edge = ndimage.binary_dilation(valid & (hi - lo > cfg.edge_jump_m)) & valid
    holes = edge & (rng.random(d.shape) < cfg.edge_hole_prob)
    holes |= valid & (rng.random(d.shape) < cfg.speckle_rate)
    holes |= valid & (d < cfg.min_range_m)
    out = d + rng.standard_normal(d.shape) * cfg.sigma_per_m2 * d * d
    out = np.round(out / cfg.quantum_m) * cfg.quantum_m
    out[holes | ~valid | (out <= 0)] = 0.0
    return out.astype(np.float32)


def apply_image_noise(rgb: np.ndarray, sigma: float, exposure_jitter: float,
                      rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] uint8 -> the same with a random exposure gain and additive Gaussian noise."""
    gain = 1.0 + rng.uniform(-exposure_jitter, exposure_jitter) if exposure_jitter > 0 else 1.0
    out = rgb.astype(np.float32) * gain
    if sigma > 0:
        out += rng.standard_normal(rgb.shape).astype(np.float32) * sigma
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _planar(T: np.ndarray) -> np.ndarray:
    """(x, y, yaw) of a [4, 4] pose (the base moves on the floor)."""
    return np.array([T[0, 3], T[1, 3], np.arctan2(T[1, 0], T[0, 0])])


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class OdometryDrift:
    """Integrates true base motion into a drifting odometry estimate.

    Each true planar increment (forward ds, lateral dl, turn dpsi in the base frame) is
    reported as ``(1 + s) ds``, ``dl + c ds`` and ``dpsi + yaw noise``, where the scale
    error s and slip c are drawn per run (each with sigma ``trans_frac / sqrt(2)``, so the
    RMS end-point error of a straight walk is ``trans_frac`` of its length) and random-walk
    slowly; the yaw noise is a random walk with ``yaw_deg_per_m`` degrees of sigma per
    sqrt(metre), i.e. 1 degree after 1 m, 4 degrees after 16 m. Height, roll and pitch
    are reported exactly (a legged robot's IMU holds them).
    """

    def __init__(self, cfg: OdometryNoise | None, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        sig = (cfg.trans_frac / np.sqrt(2.0)) if cfg else 0.0
        self.scale_err = float(rng.normal(0.0, sig)) if cfg else 0.0
        self.slip = float(rng.normal(0.0, sig)) if cfg else 0.0
        self._last_true: np.ndarray | None = None
        self._est = np.zeros(3)
        self.distance = 0.0

    def reset(self, T_world_base: np.ndarray) -> np.ndarray:
        """Start odometry at the true pose (odom coincides with the world at start-up)."""
        self._last_true = _planar(T_world_base)
        self._est = self._last_true.copy()
        self.distance = 0.0
        return self.estimate(T_world_base)

    def update(self, T_world_base: np.ndarray) -> np.ndarray:
        """Advance with the new true base pose [4, 4]; returns the odometry's T_odom_base [4, 4]."""
        if self._last_true is None:
            return self.reset(T_world_base)
        cur = _planar(T_world_base)
        prev = self._last_true
        c, s = np.cos(prev[2]), np.sin(prev[2])
        dx, dy = cur[0] - prev[0], cur[1] - prev[1]
        fwd, lat = c * dx + s * dy, -s * dx + c * dy  # the increment in the previous base frame
        dpsi = _wrap(cur[2] - prev[2])
        ds = float(np.hypot(fwd, lat))
        self._last_true = cur
        self.distance += ds
        if self.cfg is not None and ds > 0:
            k = self.cfg.bias_walk_per_sqrt_m * np.sqrt(ds)
            self.scale_err += float(self.rng.normal(0.0, k))
            self.slip += float(self.rng.normal(0.0, k))
            fwd, lat = fwd * (1.0 + self.scale_err) - lat * self.slip, lat * (1.0 + self.scale_err) + fwd * self.slip
            dpsi += float(self.rng.normal(0.0, np.radians(self.cfg.yaw_deg_per_m) * np.sqrt(ds)))
        ce, se = np.cos(self._est[2]), np.sin(self._est[2])
        self._est = np.array([self._est[0] + ce * fwd - se * lat, self._est[1] + se * fwd + ce * lat,
                              _wrap(self._est[2] + dpsi)])
        return self.estimate(T_world_base)

    def estimate(self, T_world_base: np.ndarray) -> np.ndarray:
        """The odometry's T_odom_base [4, 4]: the drifted planar pose with the true height and tilt."""
        true = _planar(T_world_base)
        # rotate the true attitude by the yaw error about z, move to the estimated xy
        dyaw = self._est[2] - true[2]
        Rz = np.array([[np.cos(dyaw), -np.sin(dyaw), 0.0], [np.sin(dyaw), np.cos(dyaw), 0.0], [0.0, 0.0, 1.0]])
        T = np.eye(4)
        T[:3, :3] = Rz @ T_world_base[:3, :3]
        T[:3, 3] = [self._est[0], self._est[1], T_world_base[2, 3]]
        return T


class SensorModel:
    """The sensors of one simulated run: a seeded random stream, the drift state, and the knobs."""

    def __init__(self, cfg: SensorConfig, seed: int) -> None:
        self.cfg = cfg
        # a stream of its own, so turning sensor noise on does not change the layout or detector draws
        self.rng = np.random.default_rng([int(seed), 0x5E45])
        self.drift = OdometryDrift(cfg.odometry, self.rng)

    def odometry(self, T_world_base: np.ndarray) -> np.ndarray:
        """Advance the odometry with the true base pose [4, 4]; returns T_odom_base [4, 4]."""
        return self.drift.update(T_world_base)

    def camera(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Corrupt one camera frame: (rgb [H, W, 3] uint8, depth [H, W] float32, dropped)."""
        dropped = bool(self.rng.random() < self.cfg.drop_rate)
        if self.cfg.image_sigma > 0 or self.cfg.exposure_jitter > 0:
            rgb = apply_image_noise(rgb, self.cfg.image_sigma, self.cfg.exposure_jitter, self.rng)
        if self.cfg.depth is not None:
            depth = apply_depth_noise(depth, self.cfg.depth, self.rng)
        return rgb, depth, dropped

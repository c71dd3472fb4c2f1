"""Each sensor model's statistics match its parameters (no simulator needed)."""
import numpy as np
import pytest

from m3_ros.sim.sensors import (DepthNoise, OdometryDrift, OdometryNoise, SensorConfig, SensorModel,
                                apply_depth_noise, apply_image_noise)


def _pose(x: float, y: float, yaw: float, z: float = 0.3) -> np.ndarray:
    T = np.eye(4)
    T[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    T[:3, 3] = [x, y, z]
    return T


@pytest.mark.parametrize("z", [0.8, 1.5, 2.5])
def test_depth_sigma_grows_with_z_squared(z):
    cfg = DepthNoise(speckle_rate=0.0)
    rng = np.random.default_rng(0)
    noisy = apply_depth_noise(np.full((200, 200), z, np.float32), cfg, rng)
    ok = noisy > 0
    assert ok.mean() > 0.99  # a flat wall has no edges: no holes beyond the border
    sigma = float(np.std(noisy[ok] - z))
    assert sigma == pytest.approx(cfg.sigma_per_m2 * z * z, rel=0.1)
    # 16UC1: whole millimetres
    mm = noisy[ok] * 1000.0
    np.testing.assert_allclose(mm, np.round(mm), atol=1e-3)


def test_depth_holes_at_edges_speckle_and_min_range():
    cfg = DepthNoise()
    d = np.full((120, 160), 2.0, np.float32)
    d[:, 80:] = 1.0  # a step edge at column 80
    d[:10, :10] = 0.1  # closer than the minimum range
    d[100:, :20] = 0.0  # no return stays no return
    noisy = apply_depth_noise(d, cfg, np.random.default_rng(1))
    edge = noisy[20:100, 78:82]  # the edge pixels, dilated by one
    hole_rate = float((edge == 0).mean())
    assert hole_rate == pytest.approx(cfg.edge_hole_prob, abs=0.08)
    flat = noisy[20:100, 10:60]
    assert float((flat == 0).mean()) == pytest.approx(cfg.speckle_rate, abs=0.005)
    assert (noisy[:10, :10] == 0).all() and (noisy[100:, :20] == 0).all()


def test_image_noise_sigma_and_gain():
    rng = np.random.default_rng(2)
    img = np.full((100, 100, 3), 128, np.uint8)
    out = apply_image_noise(img, 3.0, 0.0, rng).astype(np.float64)
    assert np.std(out - 128) == pytest.approx(3.0, rel=0.05)
    gains = [apply_image_noise(img, 0.0, 0.05, rng).mean() / 128 for _ in range(200)]
    assert min(gains) >= 0.95 - 1e-2 and max(gains) <= 1.05 + 1e-2 and np.std(gains) > 0.02


@pytest.mark.parametrize("part", ["translation", "yaw"])
def test_odometry_drift_statistics_on_a_straight_walk(part):
    # each part on its own: a yaw error also bends the path (lateral error ~ L^1.5), which is
    # the yaw model's consequence, not the translation model's parameter
    cfg = OdometryNoise(yaw_deg_per_m=0.0) if part == "translation" else OdometryNoise(trans_frac=0.0,
                                                                                        bias_walk_per_sqrt_m=0.0)
    L, errs, yaw_err = 10.0, [], []
    for seed in range(300):
        d = OdometryDrift(cfg, np.random.default_rng(seed))
        d.reset(_pose(0, 0, 0))
        for x in np.linspace(0, L, 201)[1:]:
            T = d.update(_pose(x, 0, 0))
        errs.append(np.hypot(T[0, 3] - L, T[1, 3]))
        yaw_err.append(np.degrees(np.arctan2(T[1, 0], T[0, 0])))
        assert T[2, 3] == pytest.approx(0.3)  # height is not drifted
        assert d.distance == pytest.approx(L)
    if part == "translation":
        rms = float(np.sqrt(np.mean(np.square(errs))))
        # end-point error ~ trans_frac of the distance (the slow bias walk adds a little)
        assert 0.85 * cfg.trans_frac * L <= rms <= 1.25 * cfg.trans_frac * L
        assert np.abs(yaw_err).max() < 1e-9
    else:
        assert float(np.std(yaw_err)) == pytest.approx(np.sqrt(L), rel=0.15)  # 1 deg per sqrt(m)
        # the heading error bends the path: lateral sigma = sigma_yaw * sqrt(L^3 / 3)
        assert float(np.std(errs)) > 0.5 * np.radians(1.0) * np.sqrt(L ** 3 / 3) * 0.6


def test_no_drift_model_reports_the_truth_and_drops_match_rate():
    d = OdometryDrift(None, np.random.default_rng(0))
    d.reset(_pose(0, 0, 0))
    for t in np.linspace(0, 1, 50):
        T_true = _pose(2 * t, np.sin(3 * t), 1.5 * t)
        np.testing.assert_allclose(d.update(T_true), T_true, atol=1e-9)
    sm = SensorModel(SensorConfig(drop_rate=0.05), seed=3)
    img, dep = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.float32)
    drops = [sm.camera(img, dep)[2] for _ in range(4000)]
    assert np.mean(drops) == pytest.approx(0.05, abs=0.012)


def test_resolve_names_and_errors():
    assert SensorConfig.resolve("ideal").depth is None
    r = SensorConfig.resolve("realistic")
    assert r.depth is not None and r.odometry is not None and r.drop_rate == 0.05
    assert r.detector.miss_rate > 0 and r.detector.synonym_rate > 0
    with pytest.raises(ValueError, match="unknown sensor model"):
        SensorConfig.resolve("perfect")
    with pytest.raises(ValueError, match="drop_rate"):
        SensorConfig(drop_rate=1.5)


def test_realistic_no_drift_keeps_realistic_draws_and_reports_the_true_pose():
    real, ctrl = SensorModel(SensorConfig.resolve("realistic"), seed=5), \
        SensorModel(SensorConfig.resolve("realistic_nodrift"), seed=5)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    dep = rng.uniform(0.5, 3.0, (24, 32)).astype(np.float32)
    drifted = False
    for t in np.linspace(0, 3, 40):
        T_true = _pose(2 * t, np.sin(3 * t), 1.5 * t)
        T_real, T_ctrl = real.odometry(T_true), ctrl.odometry(T_true)
        np.testing.assert_allclose(T_ctrl, T_true, atol=1e-9)
        drifted |= bool(np.abs(T_real[:3, 3] - T_true[:3, 3]).max() > 1e-3)
        a, b = real.camera(img, dep), ctrl.camera(img, dep)
        np.testing.assert_array_equal(a[0], b[0])  # the same noise draws: a paired control
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2] == b[2]
    assert drifted  # and realistic itself does drift on this walk

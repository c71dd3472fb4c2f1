"""The one intrinsics-scaling helper (m3_ros.geometry.scale_intrinsics) and the memory's use of it."""
import numpy as np
import pytest

from m3_ros.geometry import intrinsics_matrix, project, scale_intrinsics
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from synthetic_scene import render_view


def test_a_point_keeps_its_place_in_the_resized_image():
    rng = np.random.default_rng(0)
    K = intrinsics_matrix(300.0, 280.0, 159.5, 119.5)
    pts = np.c_[rng.uniform(-1, 1, (50, 2)), rng.uniform(1, 3, 50)]
    uv, _ = project(pts, K, np.eye(4))
    for sx, sy in [(0.5, 0.5), (0.25, 0.3), (2.0, 1.5)]:
        uv_s, _ = project(pts, scale_intrinsics(K, sx, sy), np.eye(4))
        # integer pixel centres: the image spans [-0.5, W - 0.5] and scales about that edge
        np.testing.assert_allclose(uv_s + 0.5, (uv + 0.5) * [sx, sy], rtol=1e-12, atol=1e-9)
    # the centre of a W x H image stays the centre of the w x h one
    Ks = scale_intrinsics(K, 160 / 320)
    assert Ks[0, 2] == pytest.approx((160 - 1) / 2) and Ks[1, 2] == pytest.approx((120 - 1) / 2)
    np.testing.assert_allclose(scale_intrinsics(scale_intrinsics(K, 0.5), 0.5), scale_intrinsics(K, 0.25))
    np.testing.assert_array_equal(scale_intrinsics(K, 1.0), K)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="scales"):
            scale_intrinsics(K, bad)
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        scale_intrinsics(np.eye(4), 0.5)


def test_train_views_render_where_the_keyframe_sees():
    kf, _ = render_view(0.0, W=40, H=30)
    mem = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9)}, voxel_size=0.02,
                                seed_stride=1, train_scale=0.5, backend="torch"))
    mem.add_keyframe(kf)
    v = mem._views[0]
    np.testing.assert_allclose(v.K.numpy(), scale_intrinsics(kf.K, 0.5), rtol=1e-6)
    mem.train(30)  # fit colours, so the render is a sharp copy of the keyframe
    # Rendered at train scale through the helper's K, the memory lines up with the keyframe
    # downsampled by area better than through the naive K (cx * s), which is shifted by 1/4 px.
    naive = kf.K.astype(np.float64).copy()
    naive[:2] *= 0.5

    def rgb_error(K):
        out = mem.render(kf.T_world_cam, K, 20, 15)
        return float(np.abs(out["rgb"] - v.rgb.numpy()).mean())
    assert rgb_error(scale_intrinsics(kf.K, 0.5)) < 0.9 * rgb_error(naive)  # measured 0.0095 vs 0.0118

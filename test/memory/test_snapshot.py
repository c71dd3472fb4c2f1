"""Snapshots and the per-Gaussian attention cache: read-only copies, cached relevance = fresh decoding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3_ros.memory.gaussians import query_key
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.views import cell_median_depth, label_depth_consistent
from synthetic_scene import region_features, render_view


def _memory(**kw) -> M3Memory:
    base = dict(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02, seed_stride=1,
                train_scale=1.0, feature_points=200, backend="torch", seed=0)
    base.update(kw)
    mem = M3Memory(MemoryConfig(**base))
    for i, tx in enumerate([-0.3, 0.0, 0.3]):
        mem.add_keyframe(render_view(tx, index=i)[0])
    return mem


def _fresh(mem: M3Memory, text: torch.Tensor) -> torch.Tensor:
    """Full decoding of every Gaussian's query, then cosine: the oracle for the cache."""
    dec = mem.decode("dino", mem.params[query_key("dino")].detach())
    return F.cosine_similarity(dec, F.normalize(text, dim=0)[None], dim=-1)


def test_cached_relevance_equals_fresh_decoding_after_train_steps():
    mem = _memory()
    text = region_features()[1] + 0.3 * torch.randn(32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mem.snapshot().gaussian_relevance("dino", text), _fresh(mem, text), atol=1e-5, rtol=0)
    cache = mem._caches["dino"]
    before = (cache.full_refreshes, cache.rows_refreshed)
    worst = 0.0
    for _ in range(4):
        mem.train(3)
        cached = mem.snapshot().gaussian_relevance("dino", text)
        worst = max(worst, float((cached - _fresh(mem, text)).abs().max()))
    assert (cache.full_refreshes, cache.rows_refreshed) != before, "training moved queries: the cache must refresh"
    assert worst < 0.02, worst


def test_cache_follows_hand_edited_queries():
    mem = _memory()
    text = region_features()[2]
    mem.gaussian_relevance("dino", text)
    with torch.no_grad():
        mem.params[query_key("dino")][:50] = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mem.gaussian_relevance("dino", text), _fresh(mem, text), atol=1e-5, rtol=0)


def test_truncated_cache_is_close_on_a_larger_bank():
    # 3 bank rows, 2 kept per Gaussian: the numerator misses the third row's (small) weight
    mem = _memory(cache_top_rows=2)
    text = region_features()[0]
    err = (mem.snapshot().gaussian_relevance("dino", text) - _fresh(mem, text)).abs().max()
    assert float(err) < 0.02


def test_several_texts_at_once_decode_like_each_alone():
    """Texts [k, d] (grounding's colour swaps) give [N, k], each column the fresh decoding's cosine; with the
    whole bank cached and with the truncated cache's gather."""
    texts = region_features() + 0.3 * torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    for mem, tol in ((_memory(), 1e-5), (_memory(cache_top_rows=2), 0.02)):
        got = mem.snapshot().gaussian_relevance("dino", texts)
        assert got.shape == (mem.n_gaussians, 3)
        for j in range(3):
            assert float((got[:, j] - _fresh(mem, texts[j])).abs().max()) < tol
        rows = torch.tensor([5, 0, 17])
        torch.testing.assert_close(mem.snapshot().gaussian_relevance("dino", texts, rows), got[rows])
    with pytest.raises(ValueError, match=r"\[k, 32\]"):
        mem.snapshot().gaussian_relevance("dino", torch.zeros(2, 3, 32))


def test_snapshot_is_a_copy_that_training_does_not_touch():
    mem = _memory()
    snap = mem.snapshot()
    means, q = snap.means.clone(), snap.queries["dino"].clone()
    mem.train(3)
    assert torch.equal(snap.means, means) and torch.equal(snap.queries["dino"], q)
    new = mem.snapshot()
    assert new.version > snap.version and new.iteration == snap.iteration + 3
    assert not torch.equal(new.queries["dino"], q)
    # a snapshot renders what the memory rendered when it was taken
    kf = mem.keyframes[0]
    a = snap.render(kf.T_world_cam, kf.K, 40, 30)["depth"]
    assert a.shape == (30, 40) and (a > 0).mean() > 0.9


def test_label_cells_do_not_cross_depth_edges():
    # one 4x4 cell: 10 pixels on an object at 0.7 m, 6 on the floor 2 m behind
    depth = np.full((4, 4), 0.7)
    depth.flat[10:] = 2.7
    cd = cell_median_depth(depth, (1, 1))
    assert cd.shape == (1, 1) and abs(cd[0, 0] - 0.7) < 1e-9
    v, u = np.mgrid[0:4, 0:4]
    ok = label_depth_consistent(depth.ravel(), u.ravel(), v.ravel(), cd, (4, 4), 0.1)
    assert ok[:10].all() and not ok[10:].any()


def test_seeding_keeps_region_labels_off_the_surface_behind():
    # region-map model: features on a coarse grid (8x8-pixel cells), sampled nearest
    from m3_ros.types import FeatureMap
    kf, region = render_view(0.0, W=80, H=60)
    feats = region_features()
    grid = torch.zeros(8, 10, 32)
    for i in range(8):
        for j in range(10):
            r = np.bincount(region[i * 60 // 8:(i + 1) * 60 // 8, j * 8:(j + 1) * 8].ravel(), minlength=3)
            if r[1:].max() * 2 > r.sum():  # a cell is labelled where most of it is a box face
                grid[i, j] = feats[1 + int(np.argmax(r[1:]))]
    kf.features = {"labels": FeatureMap("labels", grid, (60, 80))}
    slot = ModelSlot(channels=8, theta=1.0, max_rows=10, sample_mode="nearest")
    counts = {}
    for rel in (0.0, 0.1):
        mem = M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.02, seed_stride=1, backend="torch",
                                    label_depth_rel=rel, inherit_radius=0.0))
        mem.add_keyframe(kf)
        g = mem.gaussian_relevance("labels", feats[1]).numpy()
        on_wall = np.abs(mem.means[:, 2].numpy() - 2.0) < 0.01
        counts[rel] = int((g[on_wall] > 0.9).sum())
    assert counts[0.0] > 0, counts  # without the check, wall Gaussians next to the red face take its label
    assert counts[0.1] == 0, counts


def test_culled_render_equals_rendering_every_gaussian():
    # render_raw rasterizes only the Gaussians that can touch the view; a window shows part of the scene
    from m3_ros import geometry
    from m3_ros.memory.rasterize import rasterize
    from m3_ros.memory.sh import camera_centre, sh_to_rgb
    mem = _memory()
    snap = mem.snapshot()
    kf = mem.keyframes[1]
    K = kf.K.copy()
    K[0, 2] -= 20  # a 30 x 20 window of the keyframe's view
    K[1, 2] -= 15
    W, H = 30, 20
    vis = snap._visible(torch.tensor(geometry.invert(kf.T_world_cam), dtype=torch.float32),
                        torch.tensor(K, dtype=torch.float32), W, H)
    assert vis is not None and 0 < len(vis) < snap.n_gaussians, "the window must cull some Gaussians"
    out = snap.render_raw(kf.T_world_cam, K, W, H)
    viewmat = torch.tensor(geometry.invert(kf.T_world_cam), dtype=torch.float32)
    chans = torch.cat([sh_to_rgb(snap.colors, snap.means, camera_centre(viewmat), snap.cfg.sh_degree),
                       snap.queries["dino"]], -1)
    img, alpha, _ = rasterize(snap.means, snap.quats, snap.scales, snap.opacities, chans, viewmat[None],
                              torch.tensor(K, dtype=torch.float32)[None], W, H, near_plane=snap.cfg.near_plane,
                              far_plane=snap.cfg.far_plane, render_mode="RGB+ED", backend=snap.cfg.backend)
    assert (alpha[0, ..., 0] > 0.5).float().mean() > 0.5
    torch.testing.assert_close(torch.from_numpy(out["alpha"]), alpha[0, ..., 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["queries"]["dino"], img[0, ..., 3:-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(out["depth_raw"]), img[0, ..., -1], atol=1e-5, rtol=0)
    # a camera looking away sees nothing, and says so with empty images
    away = kf.T_world_cam @ np.diag([-1.0, 1.0, -1.0, 1.0])
    empty = snap.render_raw(away, kf.K, 40, 30)
    assert empty["alpha"].shape == (30, 40) and not empty["alpha"].any()


def test_memoised_snapshot_values_equal_fresh_ones():
    mem = _memory()
    snap = mem.snapshot()
    zero = torch.zeros(1, 8)
    from m3_ros.memory.attention import decode_chunked
    b = snap.banks["dino"]
    fresh = decode_chunked(zero, snap.W["dino"], b.rows, b.unit_rows, snap.cfg.tau)
    first = snap.decode("dino", zero)
    first += 1.0  # a caller editing its copy does not edit the memo
    torch.testing.assert_close(snap.decode("dino", zero), fresh)
    torch.testing.assert_close(snap.query_norms("dino"), snap.queries["dino"].norm(dim=1))
    mem.train(2)  # a new snapshot: its own values
    new = mem.snapshot()
    torch.testing.assert_close(new.query_norms("dino"), mem.params[query_key("dino")].detach().norm(dim=1))

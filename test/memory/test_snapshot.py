"""Snapshots and the per-Gaussian attention cache: read-only copies, cached relevance = fresh decoding."""
import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.memory.gaussians import query_key
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot, cell_median_depth, label_depth_consistent
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

"""The dev cache (bench/_devcache.py): a cached query snapshot answers as the memory it was taken from.

bench/dev_ground.py compares grounding variants on cached memories; that comparison is only worth
something if the cache gives the live memory's answers, verification renders included.
"""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test" / "memory"))
from synthetic_scene import labelled_view, region_features  # noqa: E402

from bench._devcache import load_snapshot, save_snapshot  # noqa: E402
from m3_ros.eval.metrics import Box  # noqa: E402
from m3_ros.grounding import GroundingConfig, ground  # noqa: E402
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot  # noqa: E402


def test_a_cached_snapshot_answers_as_the_memory_did(tmp_path):
    slot = ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")
    mem = M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.04, object_voxel_size=0.02, seed_stride=1,
                                train_scale=1.0, feature_points=200, backend="torch", seed=0))
    for i, tx in enumerate((0.0, 0.1, -0.1)):
        mem.add_keyframe(labelled_view(tx, i, bleed_px=4 if i == 0 else 0)[0])
    mem.train(5)
    T = np.eye(4)
    T[:3, 3] = [1.0, -2.0, 0.5]
    boxes = [Box("red", np.array([-0.15, 0.0, 1.55]), np.array([0.4, 0.4, 0.1]))]
    save_snapshot(mem.snapshot(), tmp_path / "m.pt", T, boxes, {"family": "synthetic", "seed": 1})
    snap, T_back, boxes_back, meta = load_snapshot(tmp_path / "m.pt")

    assert meta == {"family": "synthetic", "seed": 1} and np.array_equal(T_back, T)
    assert boxes_back[0].name == "red" and np.array_equal(boxes_back[0].centre, boxes[0].centre)
    assert snap.n_gaussians == mem.n_gaussians and len(snap.keyframes) == 3
    for a, b in zip(snap.keyframes, mem.keyframes):
        assert a.size == b.size and np.array_equal(a.depth, b.depth) and np.array_equal(a.T_world_cam, b.T_world_cam)
    text = region_features(32)[1] + 0.3 * torch.randn(32, generator=torch.Generator().manual_seed(2))
    # verification renders from the keyframes whatever the ranking, and view mode without a camera
    # answers from the newest keyframe's camera and depth: the cache's keyframes take part
    base = GroundingConfig(cluster_radius=0.05)
    for cfg in (base, replace(base, verify_dominance=1e9), replace(base, support_prior=1.0),
                replace(base, mode="view", view_scale=1.0)):
        live, cached = ground(mem, text, "labels", cfg, top_k=3), ground(snap, text, "labels", cfg, top_k=3)
        np.testing.assert_allclose(cached.points, live.points, atol=1e-6)
        np.testing.assert_allclose(cached.scores, live.scores, atol=1e-6)

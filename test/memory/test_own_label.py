"""The own-label loss (training.own_label_targets): Gaussians on a view's surface, decoded one by one."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.memory.attention import memory_attention
from m3_ros.memory.gaussians import query_key
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.training import own_label_targets, view_losses
from synthetic_scene import labelled_view, region_features

KEY = query_key("labels")


def _memory(weight: float = 1.0) -> M3Memory:
    slot = ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")
    mem = M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.04, object_voxel_size=0.02, seed_stride=1,
                                train_scale=1.0, feature_points=5000, backend="torch", seed=0,
                                own_label_weight=weight))
    mem.add_keyframe(labelled_view(0.0, 0)[0])
    return mem


def _point_at(v, u: float, px_v: float, z: float) -> list[float]:
    """World point at depth z on the ray of pixel (u, v) of the first view (its camera is the world)."""
    K = v.kf.K
    return [(u - K[0, 2]) / K[0, 0] * z, (px_v - K[1, 2]) / K[1, 1] * z, z]


def test_only_gaussians_on_the_surface_are_picked_with_the_label_at_their_pixel():
    mem = _memory()
    v = mem._views[0]
    fm = v.kf.features["labels"]
    # pixel (30, 30) sees the red box face at z = 1.5; pixel (70, 30) the unlabelled wall at z = 2.0
    means = torch.tensor([
        _point_at(v, 30, 30, 1.5),  # on the red box face
        _point_at(v, 30, 30, 1.2),  # floating 30 cm in front of it
        _point_at(v, 30, 30, 2.0),  # behind it (the wall there is hidden)
        _point_at(v, 70, 30, 2.0),  # on the wall: on the surface, but no region labels it
        [5.0, 0.0, 1.5],  # outside the image
        [0.0, 0.0, -1.0],  # behind the camera
    ], dtype=torch.float32)
    sel, pv, pu, gt = own_label_targets(mem.cfg, v, "labels", fm, means, torch.Generator().manual_seed(0))
    assert sel.tolist() == [0, 3]
    assert pu.tolist() == [30, 70] and pv.tolist() == [30, 30]  # the pixel whose centre the Gaussian is on
    red = region_features(32)[1]
    assert float(F.cosine_similarity(gt[0], red, dim=0)) > 0.999
    assert float(gt[1].abs().sum()) == 0.0  # unlabelled: feature_loss ignores it


def test_the_loss_pulls_a_surface_gaussians_own_query_back_to_its_label():
    """Red-box Gaussians given the green box's query (a blend the render loss alone can keep right)
    decode red again after a few steps on the own-label term; without the weight there is no term."""
    mem = _memory()
    v = mem._views[0]
    b, W = mem.banks["labels"], mem.W["labels"]
    red, green = region_features(32)[1], region_features(32)[2]
    q = mem.params[KEY].detach().clone()
    dec = memory_attention(q, W, b.rows, b.unit_rows, mem.cfg.tau, 0)
    on_red = torch.nonzero((F.cosine_similarity(dec, red[None], dim=1) > 0.99)
                           & (mem.means[:, 2] - 1.5).abs().lt(0.01)).flatten()
    on_green = torch.nonzero(F.cosine_similarity(dec, green[None], dim=1) > 0.99).flatten()
    assert len(on_red) >= 20 and len(on_green) >= 1
    bad = on_red[: len(on_red) // 2]
    q[bad] = q[on_green[0]].clone()
    q.requires_grad_(True)
    h, w = v.rgb.shape[:2]
    img = torch.rand(h, w, 3 + 8 + 1, generator=torch.Generator().manual_seed(0))  # a render without gradients
    opt = torch.optim.Adam([q], lr=0.05)

    def red_share() -> float:
        d = memory_attention(q.detach()[bad], W, b.rows, b.unit_rows, mem.cfg.tau, 0)
        return float((F.cosine_similarity(d, red[None], dim=1) > F.cosine_similarity(d, green[None], dim=1)).float().mean())

    assert red_share() == 0.0
    for i in range(30):
        opt.zero_grad()
        loss, terms = view_losses(mem.cfg, v, img, ["labels"], mem.W, mem.banks, torch.Generator().manual_seed(i),
                                  {"means": mem.means, KEY: q})
        assert "own_labels" in terms
        terms["own_labels"].backward()
        opt.step()
    assert red_share() == 1.0
    mem.cfg.own_label_weight = 0.0
    _, terms = view_losses(mem.cfg, v, img, ["labels"], mem.W, mem.banks, torch.Generator().manual_seed(0),
                           {"means": mem.means, KEY: q})
    assert "own_labels" not in terms


def test_training_with_the_own_label_loss_runs_and_reports_it():
    mem = _memory()
    out = mem.train(3)
    assert np.isfinite(out["loss"]) and "own_labels" in out and np.isfinite(out["own_labels"])

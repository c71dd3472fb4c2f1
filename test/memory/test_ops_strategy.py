"""Tensor surgery keeps Adam state aligned; the densify policy clones, splits and prunes under the cap."""
import torch

from m3_ros.memory.gaussians import empty_params, voxel_downsample
from m3_ros.memory.ops import append_gaussians, make_optimizer, remove_gaussians
from m3_ros.memory.strategy import DensifyConfig, DensifyStrategy


def _scene(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = empty_params({"clip": 4})
    opt = make_optimizer(p, {k: 0.01 for k in p.keys()})
    append_gaussians(p, opt, {"means": torch.randn(n, 3, generator=g), "log_scales": torch.full((n, 3), -3.0),
                              "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), "opacity_logits": torch.zeros(n),
                              "colors": torch.rand(n, 3, generator=g), "q_clip": torch.randn(n, 4, generator=g)})
    return p, opt


def _step(p, opt):
    loss = sum((v ** 2).sum() for v in p.values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_surgery_moves_adam_state_with_rows():
    p, opt = _scene()
    _step(p, opt)
    avg = opt.state[p["means"]]["exp_avg"].clone()
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4]] = True
    remove_gaussians(p, opt, mask)
    assert p["means"].shape == (8, 3)
    assert torch.equal(opt.state[p["means"]]["exp_avg"], avg[~mask])
    assert next(g for g in opt.param_groups if g["name"] == "means")["params"][0] is p["means"]
    append_gaussians(p, opt, {k: torch.ones(2, *v.shape[1:]) for k, v in p.items()})
    assert p["q_clip"].shape == (10, 4)
    assert torch.equal(opt.state[p["means"]]["exp_avg"][8:], torch.zeros(2, 3))
    _step(p, opt)  # the optimiser still steps the new tensors


def test_densify_clones_splits_prunes_under_cap():
    p, opt = _scene(10)
    with torch.no_grad():
        p["log_scales"][5:] = -0.5  # big ones split, small ones clone (extent 1, grow_scale 0.1)
        p["opacity_logits"][0] = -10.0  # pruned
    strat = DensifyStrategy(DensifyConfig(refine_start=1, refine_every=1, grad_threshold=0.1, grow_scale=0.1,
                                          prune_scale=10.0), max_gaussians=16)
    state = strat.initial_state()
    means2d = torch.zeros(1, 10, 2, requires_grad=True)
    hot = torch.zeros(1, 10, 2)
    hot[0, [2, 3, 6, 7, 8, 9], 0] = 1.0  # pixel gradients of 1 -> 20 in NDC at width 40
    means2d.grad = hot
    meta = {"means2d": means2d, "radii": torch.ones(1, 10), "width": 40, "height": 30}
    out = strat.step_post_backward(p, opt, state, 1, meta, extent=1.0)
    assert out["cloned"] + out["split"] == 6 and out["pruned"] == 1
    assert p["means"].shape[0] == 15 <= 16
    # Split parents shrank by 1.6.
    assert torch.allclose(p["log_scales"][5:9].exp().max(), torch.tensor(0.5).exp() ** -1 / 1.6)
    # Cap: a second round with room for one grows by at most one.
    means2d = torch.zeros(1, 15, 2, requires_grad=True)
    means2d.grad = torch.ones(1, 15, 2)
    meta = {"means2d": means2d, "radii": torch.ones(1, 15), "width": 40, "height": 30}
    strat.step_post_backward(p, opt, state, 2, meta, extent=1.0)
    assert p["means"].shape[0] <= 16


def _split_once(generator, global_seed):
    p, opt = _scene(10)
    with torch.no_grad():
        p["log_scales"][:] = -0.5  # every Gaussian is big: all hot ones split
    strat = DensifyStrategy(DensifyConfig(refine_start=1, refine_every=1, grad_threshold=0.1, grow_scale=0.1,
                                          prune_scale=10.0), max_gaussians=100)
    means2d = torch.zeros(1, 10, 2, requires_grad=True)
    means2d.grad = torch.ones(1, 10, 2)
    torch.manual_seed(global_seed)  # whatever else the process drew from the global generator
    strat.step_post_backward(p, opt, strat.initial_state(), 1, {"means2d": means2d, "radii": torch.ones(1, 10),
                                                                "width": 40, "height": 30}, 1.0, generator)
    return p["means"].detach().clone()


def test_split_offsets_come_from_the_given_generator():
    a = _split_once(torch.Generator().manual_seed(7), global_seed=1)
    b = _split_once(torch.Generator().manual_seed(7), global_seed=2)
    c = _split_once(torch.Generator().manual_seed(8), global_seed=1)
    assert a.shape[0] == 20  # ten splits happened
    assert torch.equal(a, b)  # the global generator's state does not matter
    assert not torch.equal(a, c)  # the given one does


def test_voxel_downsample():
    import numpy as np
    pts = np.array([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.5, 0.5, 0.5]])
    assert voxel_downsample(pts, 0.1).tolist() == [0, 2]

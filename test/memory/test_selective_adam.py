"""Selective (visible-row) Adam: rows in view step exactly as torch Adam, rows out of view keep their
values and moments bit-for-bit; surgery, densify statistics and checkpoints keep working with it."""
import pytest
import torch
from torch import nn

from m3_ros.memory.gaussians import empty_params
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.seeding import BIRTH_KEY, EXPOSURE_KEY
from m3_ros.memory.ops import append_gaussians, make_optimizer, remove_gaussians
from m3_ros.memory.optim import catch_up_rows, selective_adam_step
from m3_ros.memory.strategy import DensifyConfig, DensifyStrategy
from m3_ros.memory.training import frustum_index
from synthetic_scene import render_view


def _scene(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = empty_params({"clip": 4})
    opt = make_optimizer(p, {k: 0.01 * (i + 1) for i, k in enumerate(p.keys())})
    append_gaussians(p, opt, {"means": torch.randn(n, 3, generator=g), "log_scales": torch.randn(n, 3, generator=g),
                              "quats": torch.randn(n, 4, generator=g), "opacity_logits": torch.randn(n, generator=g),
                              "colors": torch.rand(n, 3, generator=g), "q_clip": torch.randn(n, 4, generator=g)})
    return p, opt


def _grads(p, rows, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(rows, *v.shape[1:], generator=g) for k, v in p.items()}


def _state(opt, p, name):
    st = opt.state[p[name]]
    return st["exp_avg"].clone(), st["exp_avg_sq"].clone(), st["step"].clone()


def test_visible_rows_step_as_torch_adam_and_the_rest_stay_bit_for_bit():
    p, opt = _scene()
    # one dense step first, so every row has non-zero moments that dense Adam would decay
    for k, v in p.items():
        v.grad = _grads(p, 12, 0)[k]
    opt.step()
    idx = torch.tensor([1, 4, 5, 9])
    out = torch.ones(12, dtype=torch.bool)
    out[idx] = False
    before = {k: (v.detach().clone(), *_state(opt, p, k)) for k, v in p.items()}
    # reference: torch Adam on a tensor holding only the visible rows, with their moments and step
    ref = {k: nn.Parameter(v.detach()[idx].clone()) for k, v in p.items()}
    ref_opt = torch.optim.Adam([{"params": [ref[g["name"]]], "lr": g["lr"]} for g in opt.param_groups], eps=1e-15)
    for k, q in ref.items():
        m, v2, s = before[k][1:]
        ref_opt.state[q] = {"step": s.clone(), "exp_avg": m[idx].clone(), "exp_avg_sq": v2[idx].clone()}
    for it in range(3):
        grads = _grads(p, len(idx), 10 + it)
        selective_adam_step(opt, grads, idx)
        for k, q in ref.items():
            q.grad = grads[k]
        ref_opt.step()
    for k, v in p.items():
        m, v2, s = _state(opt, p, k)
        torch.testing.assert_close(v.detach()[idx], ref[k].detach(), rtol=0, atol=0)
        torch.testing.assert_close(m[idx], ref_opt.state[ref[k]]["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(v2[idx], ref_opt.state[ref[k]]["exp_avg_sq"], rtol=0, atol=0)
        assert float(s) == float(before[k][3]) + 3
        # out of view: values and both moments exactly as before (dense Adam would have moved them)
        assert torch.equal(v.detach()[out], before[k][0][out])
        assert torch.equal(m[out], before[k][1][out]) and torch.equal(v2[out], before[k][2][out])
        assert (before[k][1][out] != 0).any()  # there was momentum to decay


def test_all_rows_is_dense_torch_adam_and_state_is_torchs():
    p, opt = _scene()
    q, ref_opt = _scene()
    for it in range(3):
        grads = _grads(p, 12, it)
        selective_adam_step(opt, grads, None)  # lazy state, created as torch creates it
        for k, v in q.items():
            v.grad = grads[k]
        ref_opt.step()
    for k in p.keys():
        assert torch.equal(p[k].detach(), q[k].detach())
        for s in ("exp_avg", "exp_avg_sq", "step"):
            a, b = opt.state[p[k]][s], ref_opt.state[q[k]][s]
            assert torch.equal(a, b) and a.dtype == b.dtype
    # and torch Adam takes over the same state
    for k, v in p.items():
        v.grad = torch.ones_like(v)
    opt.step()
    assert float(opt.state[p["means"]]["step"]) == 4


def test_catch_up_follows_dense_adam_with_zero_gradients_out_of_view():
    """Rows in and out of view over 60 steps: with catch-up, selective Adam ends where dense Adam (zero
    gradient out of view) does, to the closed form's approximation (it takes the bias correction once
    per gap: ~2 % of the displacement in the first 60 steps, under 1 % after 100); frozen rows end elsewhere."""
    p, opt = _scene(40)
    q, ref_opt = _scene(40)
    f, frozen_opt = _scene(40)
    for it in range(100):  # every row in view at first
        grads = _grads(p, 40, 1000 + it)
        for o in (opt, frozen_opt):
            selective_adam_step(o, grads, None, catch_up=o is opt)
        for k, v in q.items():
            v.grad = grads[k]
        ref_opt.step()
    start = {k: v.detach().clone() for k, v in q.items()}
    g = torch.Generator().manual_seed(3)
    for it in range(60):
        idx = torch.nonzero(torch.rand(40, generator=g) < 0.3).flatten()  # each row in view ~30 % of steps
        grads = _grads(p, len(idx), 100 + it)
        catch_up_rows(opt, idx)
        selective_adam_step(opt, grads, idx, catch_up=True)
        selective_adam_step(frozen_opt, grads, idx)
        for k, v in q.items():
            v.grad = torch.zeros_like(v).index_copy_(0, idx, grads[k])
        ref_opt.step()
    catch_up_rows(opt, None)
    for k in p.keys():
        moved = (q[k].detach() - start[k]).abs().mean()
        err = (p[k].detach() - q[k].detach()).abs().mean()
        frozen_err = (f[k].detach() - q[k].detach()).abs().mean()
        assert err < 0.01 * moved, (k, float(err), float(moved))
        assert frozen_err > 10 * err, k
        torch.testing.assert_close(opt.state[p[k]]["exp_avg"], ref_opt.state[q[k]]["exp_avg"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(opt.state[p[k]]["exp_avg_sq"], ref_opt.state[q[k]]["exp_avg_sq"], rtol=1e-4, atol=1e-7)


def test_catch_up_state_follows_surgery():
    p, opt = _scene()
    selective_adam_step(opt, _grads(p, 3, 0), torch.tensor([0, 3, 7]), catch_up=True)
    selective_adam_step(opt, _grads(p, 2, 1), torch.tensor([3, 9]), catch_up=True)
    last = opt.state[p["means"]]["last_step"]
    assert last.tolist() == [1, 0, 0, 2, 0, 0, 0, 1, 0, 2, 0, 0]
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[1, 3]] = True
    remove_gaussians(p, opt, mask)
    append_gaussians(p, opt, {k: torch.ones(1, *v.shape[1:]) for k, v in p.items()})
    assert opt.state[p["means"]]["last_step"].tolist() == [1, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0]
    before = p["means"].detach().clone()
    catch_up_rows(opt, torch.tensor([0, 10]))  # row 0 owes a step, the new row 10 has no momentum
    assert not torch.equal(p["means"].detach()[0], before[0])
    assert torch.equal(p["means"].detach()[1:], before[1:])
    assert opt.state[p["means"]]["last_step"][[0, 10]].tolist() == [2, 2]


def test_bad_gradient_shape_and_weight_decay_are_refused():
    p, opt = _scene()
    with pytest.raises(ValueError, match="means"):
        selective_adam_step(opt, {"means": torch.zeros(3, 3)}, torch.tensor([0, 1]))
    opt.param_groups[0]["weight_decay"] = 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        selective_adam_step(opt, {opt.param_groups[0]["name"]: torch.zeros(2, 3)}, torch.tensor([0, 1]))


def test_surgery_after_selective_steps_keeps_state_aligned():
    p, opt = _scene()
    idx = torch.tensor([0, 3, 7])
    selective_adam_step(opt, _grads(p, 3, 0), idx)
    avg = opt.state[p["q_clip"]]["exp_avg"].clone()
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[3, 5]] = True
    remove_gaussians(p, opt, mask)
    assert torch.equal(opt.state[p["q_clip"]]["exp_avg"], avg[~mask])
    append_gaussians(p, opt, {k: torch.ones(2, *v.shape[1:]) for k, v in p.items()})
    assert p["means"].shape == (12, 3) and opt.state[p["means"]]["exp_avg"].shape == (12, 3)
    assert torch.equal(opt.state[p["q_clip"]]["exp_avg"][10:], torch.zeros(2, 4))
    keep = opt.state[p["q_clip"]]["exp_avg"].clone()
    selective_adam_step(opt, _grads(p, 2, 1), torch.tensor([10, 11]))  # the new rows step, the rest do not
    st = opt.state[p["q_clip"]]["exp_avg"]
    assert torch.equal(st[:10], keep[:10]) and (st[10:] != 0).all()


def test_densify_statistics_from_a_culled_render_land_on_their_rows():
    p, opt = _scene(10)
    strat = DensifyStrategy(DensifyConfig(refine_start=100), max_gaussians=100)
    dense, culled = strat.initial_state(), strat.initial_state()
    index = torch.tensor([2, 5, 6, 8])
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [1.0, 1.0]])
    radii = torch.tensor([[3, 0, 2, 1]])
    m2d = torch.zeros(1, 4, 2, requires_grad=True)
    m2d.grad = g[None]
    strat.step_post_backward(p, opt, culled, 1, {"means2d": m2d, "radii": radii, "width": 40, "height": 30,
                                                 "index": index}, 1.0)
    full = torch.zeros(1, 10, 2, requires_grad=True)
    full.grad = torch.zeros(1, 10, 2).index_copy_(1, index, g[None])
    strat.step_post_backward(p, opt, dense, 1, {"means2d": full, "width": 40, "height": 30,
                                                "radii": torch.zeros(1, 10, dtype=radii.dtype).index_copy_(1, index, radii)}, 1.0)
    torch.testing.assert_close(culled["grad2d"], dense["grad2d"])
    torch.testing.assert_close(culled["count"], dense["count"])
    assert culled["count"].tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 1, 0]


def _cfg(**kw) -> MemoryConfig:
    base = dict(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02, seed_stride=1,
                train_scale=1.0, feature_points=200, backend="torch", seed=0, selective_adam=True,
                densify=DensifyConfig(refine_start=10_000))
    base.update(kw)
    return MemoryConfig(**base)


def _two_places(**kw) -> M3Memory:
    mem = M3Memory(_cfg(**kw))
    mem.add_keyframe(render_view(0.0)[0])
    mem.add_keyframe(render_view(1.5, index=1)[0])
    return mem


def _step_on(mem: M3Memory, view) -> None:
    views = mem._views
    mem._views = [view]  # every step draws this view
    mem.train_step()
    mem._views = views


def test_train_step_leaves_rows_out_of_view_untouched():
    sel, dense = _two_places(), _two_places(selective_adam=False)
    a, b = sel._views
    # the second view first: afterwards its Gaussians have momentum, and some are out of the first view
    for mem in (sel, dense):
        _step_on(mem, b)
    vis = frustum_index(sel.means, sel.scales, a.viewmat, a.K, 40, 30, 0.01, 100.0)
    assert vis is not None and 0 < len(vis) < sel.n_gaussians
    out = torch.ones(sel.n_gaussians, dtype=torch.bool)
    out[vis] = False
    trained = {k: v for k, v in sel.params.items() if v.requires_grad}  # not the label vote counts
    before = {k: (v.detach().clone(), sel.optimizer.state[v]["exp_avg"].clone()) for k, v in trained.items()}
    dense_before = {k: v.detach().clone() for k, v in dense.params.items()}
    for mem in (sel, dense):
        _step_on(mem, a)
    moved_in = moved_out_dense = False
    for k in trained:
        v = sel.params[k]
        assert torch.equal(v.detach()[out], before[k][0][out]), k
        assert torch.equal(sel.optimizer.state[v]["exp_avg"][out], before[k][1][out]), k
        moved_in |= not torch.equal(v.detach()[vis], before[k][0][vis])
        moved_out_dense |= not torch.equal(dense.params[k].detach()[out], dense_before[k][out])
    assert moved_in  # the visible rows did train
    assert moved_out_dense  # and dense Adam would have moved the others (the dynamics differ)


def test_first_step_matches_dense_adam():
    """From fresh moments a step moves no row without a gradient, so selective and dense agree."""
    sel, dense = _two_places(), _two_places(selective_adam=False)
    la, lb = sel.train_step(), dense.train_step()
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) <= 1e-6 * max(1.0, abs(lb[k])) for k in la)
    for k in sel.params:
        torch.testing.assert_close(sel.params[k], dense.params[k], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sel._strategy_state["grad2d"], dense._strategy_state["grad2d"], rtol=1e-5, atol=1e-9)


def test_checkpoint_round_trip_then_selective_training(tmp_path):
    mem = _two_places()
    mem.train(3)
    mem.save(tmp_path / "m")
    loaded = M3Memory.load(tmp_path / "m")
    assert loaded.cfg.selective_adam
    for k in mem.params:
        if k not in (BIRTH_KEY, EXPOSURE_KEY):  # ages and exposures are not saved (test_checkpoint checks what loads)
            assert torch.equal(mem.params[k].detach(), loaded.params[k].detach())
    loaded._views = list(mem._views)
    out = loaded.train_step()  # fresh moments (checkpoints do not store them), selective step
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert loaded.optimizer.state[loaded.params["means"]]["exp_avg"].shape == loaded.params["means"].shape


def _frustum_reference(means, scales, viewmat, K, width, height, near, far):
    """The culling test as written in its docstring: project, divide by depth, compare with the image."""
    pc = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    ok = (z > near) & (z < far)
    zc = z.clamp_min(near)
    u = K[0, 0] * pc[:, 0] / zc + K[0, 2]
    v = K[1, 1] * pc[:, 1] / zc + K[1, 2]
    r = 3.0 * scales.max(-1).values * torch.maximum(K[0, 0], K[1, 1]) / zc + 2.0
    ok &= (u + r >= -0.5) & (u - r <= width - 0.5) & (v + r >= -0.5) & (v - r <= height - 0.5)
    return torch.nonzero(ok).flatten()


@pytest.mark.parametrize("seed", range(4))
def test_frustum_index_matches_the_projected_test(seed):
    g = torch.Generator().manual_seed(seed)
    n = 20_000
    means = torch.randn(n, 3, generator=g) * 2
    scales = torch.rand(n, 3, generator=g) * 0.1 * (seed + 1)
    a = 0.4 * seed
    viewmat = torch.eye(4)
    viewmat[:3, :3] = torch.tensor([[torch.cos(torch.tensor(a)), 0, torch.sin(torch.tensor(a))], [0, 1, 0],
                                    [-torch.sin(torch.tensor(a)), 0, torch.cos(torch.tensor(a))]])
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 1.0 - 0.6 * seed])
    K = torch.tensor([[90.0 + 7 * seed, 0, 79.5], [0, 85.0, 61.0], [0, 0, 1]])
    got = frustum_index(means, scales, viewmat, K, 160, 120, 0.01, 100.0)
    want = _frustum_reference(means, scales, viewmat, K, 160, 120, 0.01, 100.0)
    assert got is not None and 0 < len(want) < n
    assert torch.equal(got, want)


def test_memory_with_catch_up_trains_like_dense_adam():
    """Steps drawn over two views: after catching every row up, the selective memory holds what the
    dense one does (to the closed form's approximation); frozen rows do not."""
    runs = {name: _two_places(selective_adam=sel, selective_adam_catch_up=cu)
            for name, sel, cu in (("catch_up", True, True), ("frozen", True, False), ("dense", False, False))}
    start = {k: v.detach().clone() for k, v in runs["dense"].params.items()}
    for mem in runs.values():
        mem.train(8)
    runs["catch_up"]._catch_up_all()
    dense = runs["dense"].params
    for k in (k for k in dense if dense[k].requires_grad):  # not the label vote counts
        moved = (dense[k].detach() - start[k]).abs().mean()
        err = {n: (runs[n].params[k].detach() - dense[k].detach()).abs().mean() for n in ("catch_up", "frozen")}
        assert err["catch_up"] < 0.05 * moved, (k, float(err["catch_up"]), float(moved))
        assert err["frozen"] > 3 * err["catch_up"], (k, {n: float(e) for n, e in err.items()})

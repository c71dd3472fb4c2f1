"""View-dependent colour: SH basis, seeding, gradients, fitting a view-dependent target, surgery, config."""
import math

import numpy as np
import pytest
import torch

from m3_ros import geometry
from m3_ros.memory.gaussians import empty_params
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.ops import append_gaussians, make_optimizer, remove_gaussians, select_gaussians
from m3_ros.memory.rasterize import rasterize
from m3_ros.memory.sh import camera_centre, sh_basis, sh_to_rgb
from synthetic_scene import render_view


def _fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = (1 - z * z).sqrt()
    phi = math.pi * (1 + 5 ** 0.5) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)  # [n, 3]


def test_basis_is_orthonormal_real_sh():
    d = _fibonacci_sphere(20000)
    Y = sh_basis(d, 3)
    assert Y.shape == (20000, 16) and torch.equal(Y[:, 0], torch.ones(20000, dtype=torch.float64))
    gram = 4 * math.pi * (Y[:, 1:].T @ Y[:, 1:]) / d.shape[0]  # ∫ Y_i Y_j dΩ for bands 1..3
    torch.testing.assert_close(gram, torch.eye(15, dtype=torch.float64), atol=1e-4, rtol=0)
    # Band 1 with the Condon-Shortley phase: sqrt(3 / 4pi) * (-y, z, -x).
    c1 = math.sqrt(3 / (4 * math.pi))
    torch.testing.assert_close(Y[:, 1:4], c1 * torch.stack([-d[:, 1], d[:, 2], -d[:, 0]], -1))
    assert sh_basis(d, 1).shape == (20000, 4) and sh_basis(d, 2).shape == (20000, 9)


def _cfg(**kw) -> MemoryConfig:
    base = dict(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02, seed_stride=1,
                train_scale=1.0, feature_points=200, backend="torch", seed=0)
    base.update(kw)
    return MemoryConfig(**base)


@pytest.mark.parametrize("bad", [-1, 4, 1.0, True, "2"])
def test_bad_degree_is_rejected(bad):
    with pytest.raises(ValueError, match=f"sh_degree must be an int in 0..3, got {bad!r}"):
        _cfg(sh_degree=bad)


def test_seeded_memory_renders_the_seeded_colour_at_every_degree():
    kf, _ = render_view(0.0)
    side = kf.T_world_cam.copy()
    side[0, 3] = 0.3  # another viewpoint: higher orders at 0 must leave the colour view-independent
    ref = M3Memory(_cfg())
    ref.add_keyframe(kf)
    want = [ref.render(T, kf.K, 40, 30)["rgb"] for T in (kf.T_world_cam, side)]
    for degree in (1, 2, 3):
        mem = M3Memory(_cfg(sh_degree=degree))
        mem.add_keyframe(kf)
        c = mem.params["colors"]
        assert c.shape == (ref.n_gaussians, (degree + 1) ** 2, 3)
        assert torch.equal(c[:, 0], ref.params["colors"]) and not c[:, 1:].any()
        for T, w in zip((kf.T_world_cam, side), want):
            np.testing.assert_allclose(mem.render(T, kf.K, 40, 30)["rgb"], w, atol=1e-6, rtol=0)


def test_training_reaches_higher_order_coefficients():
    mem = M3Memory(_cfg(sh_degree=2, max_gaussians=300, voxel_size=0.05))
    kf, _ = render_view(0.0, W=24, H=18)
    mem.add_keyframe(kf)
    with torch.no_grad():
        mem.params["colors"][:, 0] += 0.5  # off the seeded colour, so the RGB loss has a gradient
    mem.train_step()
    # the step's gradient, as Adam saw it (selective_adam leaves params' .grad unset)
    g = mem.optimizer.state[mem.params["colors"]]["exp_avg"]
    assert g[:, 1:].abs().sum() > 0
    assert mem.params["colors"][:, 1:].abs().max() > 0  # Adam moved them off zero


def _fit_view_dependent(degree: int, steps: int = 120) -> float:
    """Fit the colours of a few fixed Gaussians to a red-from-the-left / blue-from-the-right target; final L1."""
    g = torch.Generator().manual_seed(0)
    xy = torch.stack(torch.meshgrid(torch.linspace(-0.2, 0.2, 3), torch.linspace(-0.2, 0.2, 3), indexing="ij"), -1)
    means = torch.cat([xy.reshape(-1, 2), torch.zeros(9, 1)], -1)  # [9, 3] on the plane z = 0
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(9, 1)
    scales = torch.full((9, 3), 0.15)
    opac = torch.full((9,), 0.9)
    K = torch.tensor(geometry.intrinsics_matrix(10.0, 10.0, 4.5, 4.5), dtype=torch.float32)
    views = []
    for x, rgb in ((-1.5, (0.9, 0.1, 0.1)), (1.5, (0.1, 0.1, 0.9))):
        T = geometry.look_at(np.array([x, 0.0, -2.0]), np.zeros(3), up=np.array([0.0, -1.0, 0.0]))
        views.append((torch.tensor(geometry.invert(T), dtype=torch.float32), torch.tensor(rgb)))
    p = empty_params({}, degree)
    colors = torch.nn.Parameter(torch.zeros(9, *p["colors"].shape[1:]) + 0.01 * torch.randn(
        9, *p["colors"].shape[1:], generator=g))
    opt = torch.optim.Adam([colors], lr=0.1)
    for _ in range(steps):
        loss = 0.0
        for vm, target in views:
            rgb = sh_to_rgb(colors, means, camera_centre(vm), degree)
            img, alpha, _ = rasterize(means, quats, scales, opac, rgb, vm[None], K[None], 10, 10, backend="torch")
            # L1 per unit of coverage, so the figure reads as a colour error
            loss = loss + (img[0] - alpha[0] * target).abs().sum() / (3 * alpha[0].sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach()) / len(views)


def test_view_dependent_target_needs_degree_one():
    l0, l1 = _fit_view_dependent(0), _fit_view_dependent(1)
    # Degree 0 can only average red and blue; degree 1 separates the two viewing directions.
    assert l0 > 0.1
    assert l1 < 0.02
    assert l1 < 0.2 * l0


def test_surgery_handles_sh_coefficients():
    p = empty_params({"clip": 4}, sh_degree=2)
    opt = make_optimizer(p, {k: 0.01 for k in p.keys()})
    n = 6
    g = torch.Generator().manual_seed(0)
    new = {k: torch.randn(n, *v.shape[1:], generator=g) for k, v in p.items()}
    append_gaussians(p, opt, new)
    assert p["colors"].shape == (6, 9, 3)
    loss = sum((v ** 2).sum() for v in p.values())
    loss.backward()
    opt.step()
    avg = opt.state[p["colors"]]["exp_avg"].clone()
    select_gaussians(p, opt, torch.tensor([5, 0, 0]))
    assert torch.equal(opt.state[p["colors"]]["exp_avg"], avg[[5, 0, 0]])
    remove_gaussians(p, opt, torch.tensor([False, True, False]))
    assert p["colors"].shape == (2, 9, 3) and torch.equal(opt.state[p["colors"]]["exp_avg"], avg[[5, 0]])

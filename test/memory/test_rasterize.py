"""Rasterizer: reference vs brute force, gradients vs finite differences, input validation, culling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from m3_ros.memory.rasterize import rasterize


def make_scene(n: int = 60, d: int = 4, seed: int = 0, dtype=torch.float64, spread: float = 0.6):
    """Random Gaussians in front of one (or two) slightly rotated cameras, tiny non-square image."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread + torch.tensor([0.0, 0.0, 3.0], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.25 + 0.05
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.15
    colors = torch.rand(n, d, generator=g, dtype=dtype)
    ang = 0.1
    R = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype).repeat(2, 1, 1)
    viewmats[1, :3, :3] = R
    viewmats[1, :3, 3] = torch.tensor([0.1, -0.05, 0.2], dtype=dtype)
    W, H = 12, 10
    Ks = torch.tensor([[[9.0, 0, 5.7], [0, 8.5, 4.4], [0, 0, 1]]], dtype=dtype).repeat(2, 1, 1)
    bg = torch.rand(2, d, generator=g, dtype=dtype)
    return means, quats, scales, opacities, colors, viewmats, Ks, W, H, bg


def brute_force(means, quats, scales, opacities, colors, viewmat, K, W, H, bg, near=0.01, eps2d=0.3):
    """Per-pixel loop over depth-sorted Gaussians, no tiles, numpy float64, independent projection."""
    means, quats, scales = (np.asarray(x, dtype=np.float64) for x in (means, quats, scales))
    opacities, colors = np.asarray(opacities, np.float64), np.asarray(colors, np.float64)
    V, K, bg = np.asarray(viewmat, np.float64), np.asarray(K, np.float64), np.asarray(bg, np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    proj = []
    for i in range(len(means)):
        p = V[:3, :3] @ means[i] + V[:3, 3]
        if p[2] <= near:
            continue
        w, x, y, z = quats[i] / np.linalg.norm(quats[i])
        Rq = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                       [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                       [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        cov = V[:3, :3] @ Rq @ np.diag(scales[i] ** 2) @ Rq.T @ V[:3, :3].T
        tx = p[2] * np.clip(p[0] / p[2], -(cx / fx + 0.3 * 0.5 * W / fx), (W - cx) / fx + 0.3 * 0.5 * W / fx)
        ty = p[2] * np.clip(p[1] / p[2], -(cy / fy + 0.3 * 0.5 * H / fy), (H - cy) / fy + 0.3 * 0.5 * H / fy)
        J = np.array([[fx / p[2], 0, -fx * tx / p[2] ** 2], [0, fy / p[2], -fy * ty / p[2] ** 2]])
        cov2 = J @ cov @ J.T + eps2d * np.eye(2)
        uv = np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
        proj.append((p[2], i, uv, np.linalg.inv(cov2)))
    proj.sort(key=lambda e: (e[0], e[1]))
    D = colors.shape[1]
    out = np.zeros((H, W, D + 1))
    alpha_img = np.zeros((H, W, 1))
    for v in range(H):
        for u in range(W):
            T, acc, dep = 1.0, np.zeros(D), 0.0
            for z, i, uv, inv in proj:
                d = np.array([u, v], dtype=np.float64) - uv
                maha = d @ inv @ d
                if maha > 9.0:
                    continue
                a = min(0.99, opacities[i] * math.exp(-0.5 * maha))
                if a < 1 / 255:
                    continue
                if T * (1 - a) < 1e-4:
                    break
                acc += a * T * colors[i]
                dep += a * T * z
                T *= 1 - a
            out[v, u, :D] = acc + T * bg
            out[v, u, D] = dep / max(1 - T, 1e-10)
            alpha_img[v, u, 0] = 1 - T
    return out, alpha_img


def test_reference_matches_brute_force():
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = make_scene(n=80, d=4, seed=1)
    render, alphas, meta = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, render_mode="RGB+ED",
                                     backgrounds=bg, backend="torch", tile_size=4)
    assert render.shape == (2, H, W, 5) and alphas.shape == (2, H, W, 1)
    assert meta["backend"] == "torch" and meta["means2d"].shape == (2, 80, 2) and meta["radii"].dtype == torch.int32
    for c in range(2):
        ref, ref_a = brute_force(means, quats, scales, opac, colors, vm[c], Ks[c], W, H, bg[c])
        np.testing.assert_allclose(render[c].numpy(), ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(alphas[c].numpy(), ref_a, rtol=1e-9, atol=1e-9)
    # The scene is dense enough that some pixels saturate and others see the background.
    assert alphas.max() > 0.99 and alphas.min() < 0.9


def test_image_does_not_depend_on_tile_size():
    args = make_scene(n=50, d=3, seed=2, dtype=torch.float32)
    a = rasterize(*args[:9], render_mode="RGB+ED", backgrounds=args[9], backend="torch", tile_size=16)[0]
    b = rasterize(*args[:9], render_mode="RGB+ED", backgrounds=args[9], backend="torch", tile_size=3)[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["means", "quats", "scales", "opacities", "colors", "backgrounds"])
def test_reference_gradients_match_finite_differences(name):
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = make_scene(n=12, d=2, seed=3, spread=0.3)
    params = {"means": means, "quats": quats, "scales": scales, "opacities": opac, "colors": colors, "backgrounds": bg}
    weight = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    weight_a = torch.rand(2, H, W, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        p = dict(params, **{name: x})
        r, a, _ = rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], vm, Ks, W, H,
                            render_mode="RGB+ED", backgrounds=p["backgrounds"], backend="torch")
        return (r * weight).sum() + (a * weight_a).sum()

    x = params[name].clone().requires_grad_(True)
    loss(x).backward()
    analytic = x.grad
    # Central differences on a few entries (the loss is piecewise smooth: step well inside the pieces).
    h = 1e-6
    flat = x.detach().reshape(-1)
    idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(9))[:12]
    for k in idx.tolist():
        xp, xm = flat.clone(), flat.clone()
        xp[k] += h
        xm[k] -= h
        num = (loss(xp.reshape(x.shape)) - loss(xm.reshape(x.shape))).item() / (2 * h)
        assert abs(num - analytic.reshape(-1)[k].item()) <= 1e-4 * max(1.0, abs(num)), (name, k, num, analytic.reshape(-1)[k])
    assert analytic.abs().sum() > 0


def test_means2d_grad_is_view_space_gradient():
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = make_scene(n=20, d=3, seed=4, spread=0.3)
    means = means.clone().requires_grad_(True)
    r, a, meta = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, backend="torch")
    r.sum().backward()
    g2 = meta["means2d"].grad
    assert g2 is not None and g2.shape == (2, 20, 2)
    assert g2[meta["radii"] > 0].abs().sum() > 0
    assert torch.all(g2[meta["radii"] == 0] == 0)


def test_culling_behind_camera_and_near_plane():
    dt = torch.float32
    means = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.05], [0.0, 0.0, 2.0], [50.0, 0.0, 2.0]], dtype=dt)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=dt)
    scales = torch.full((4, 3), 0.3, dtype=dt)
    opac = torch.full((4,), 0.9, dtype=dt)
    colors = torch.eye(4, dtype=dt)
    vm = torch.eye(4, dtype=dt)[None]
    Ks = torch.tensor([[[10.0, 0, 6.0], [0, 10.0, 5.0], [0, 0, 1]]], dtype=dt)
    r, a, meta = rasterize(means, quats, scales, opac, colors, vm, Ks, 12, 10, near_plane=0.1, backend="torch")
    radii = meta["radii"][0]
    assert radii[0] == 0 and radii[1] == 0 and radii[2] > 0 and radii[3] == 0  # behind, too near, seen, off-image
    assert r[..., 0].abs().max() == 0 and r[..., 1].abs().max() == 0 and r[..., 3].abs().max() == 0
    assert r[..., 2].max() > 0.5
    # With the near plane pulled in, the second Gaussian is drawn and it is in front.
    r2, _, meta2 = rasterize(means, quats, scales, opac, colors, vm, Ks, 12, 10, near_plane=0.01, backend="torch")
    assert meta2["radii"][0, 1] > 0 and r2[0, 5, 6, 1] > r2[0, 5, 6, 2]


def _good_args():
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = make_scene(n=5, d=3, dtype=torch.float32)
    return dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, viewmats=vm, Ks=Ks,
                width=W, height=H)


@pytest.mark.parametrize(
    "change, word",
    [
        (dict(means=torch.zeros(5, 2)), "means"),
        (dict(quats=torch.zeros(4, 4)), "quats"),
        (dict(scales=torch.zeros(5, 3, 1)), "scales"),
        (dict(opacities=torch.zeros(5, 1)), "opacities"),
        (dict(colors=torch.zeros(6, 3)), "colors"),
        (dict(viewmats=torch.zeros(2, 3, 4)), "viewmats"),
        (dict(Ks=torch.zeros(1, 3, 3)), "Ks"),
        (dict(width=0), "width"),
        (dict(height=-3), "height"),
        (dict(backend="metal"), "backend"),
        (dict(render_mode="RGB+D"), "render_mode"),
        (dict(backgrounds=torch.zeros(2, 4)), "backgrounds"),
        (dict(near_plane=2.0, far_plane=1.0), "near_plane"),
        (dict(tile_size=0), "tile_size"),
    ],
)
def test_bad_input_raises_value_error(change, word):
    args = dict(_good_args(), **change)
    with pytest.raises(ValueError, match=word):
        rasterize(**args)


def test_culled_gaussians_get_no_gradient():
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = make_scene(n=10, d=2, seed=5)
    means = means.clone()
    means[0, 2] = -3.0  # behind both cameras
    means.requires_grad_(True)
    r, a, meta = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, render_mode="RGB+ED", backend="torch")
    (r.sum() + a.sum()).backward()
    assert torch.all(meta["radii"][:, 0] == 0)
    assert torch.all(means.grad[0] == 0) and torch.isfinite(means.grad).all()


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_no_gaussians_renders_background(backend):
    means = torch.zeros(0, 3, requires_grad=True)
    colors = torch.zeros(0, 3, requires_grad=True)
    vm = torch.eye(4)[None]
    Ks = torch.tensor([[[10.0, 0, 5], [0, 10, 4], [0, 0, 1]]])
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    r, a, meta = rasterize(means, torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), colors, vm, Ks, 11, 9,
                           render_mode="RGB+ED", backgrounds=bg, backend=backend)
    (r.sum() + a.sum()).backward()
    assert r.shape == (1, 9, 11, 4) and torch.all(a == 0) and torch.all(r[..., 3] == 0)
    torch.testing.assert_close(r[..., :3], bg[:, None, None, :].expand(1, 9, 11, 3))
    assert means.grad.shape == (0, 3) and meta["radii"].shape == (1, 0)


def test_auto_falls_back_to_torch_with_one_warning(monkeypatch, caplog):
    from m3_ros.memory import rasterize as rz

    monkeypatch.setattr(rz, "_cpu_kernel_available", lambda: False)
    monkeypatch.setattr(rz, "_warned_fallback", False)
    args = _good_args()
    with caplog.at_level("WARNING", logger=rz.__name__):
        _, _, meta = rasterize(**args)
        _, _, meta2 = rasterize(**args)
    assert meta["backend"] == "torch" and meta2["backend"] == "torch"
    warnings = [r for r in caplog.records if "scripts/setup.sh" in r.getMessage()]
    assert len(warnings) == 1

"""Compiled CPU kernel against the brute-force oracle and the PyTorch reference (images and all gradients)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from m3_ros.memory import _raster_cpu, build_ext
from m3_ros.memory.rasterize import rasterize

from test_rasterize import brute_force, make_scene


@pytest.fixture(scope="session")
def cpu_kernel():
    """The cached kernel; builds it once (~1-2 min) only if setup has not."""
    if not _raster_cpu.available():
        build_ext.build()
        importlib.reload(_raster_cpu)
    assert _raster_cpu.available(), _raster_cpu.load_error()
    return _raster_cpu


def random_scene(seed: int, n: int = 300, d: int = 6, width: int = 37, height: int = 29):
    """Random Gaussians seen by two cameras at a larger, odd-sized resolution (several tiles)."""
    means, quats, scales, opac, colors, vm, Ks, _, _, bg = make_scene(n=n, d=d, seed=seed, dtype=torch.float32)
    Ks = Ks.clone()
    Ks[:, 0, 0] *= 3
    Ks[:, 1, 1] *= 3
    Ks[:, 0, 2] = width / 2 - 0.3
    Ks[:, 1, 2] = height / 2 + 0.4
    return means, quats, scales, opac, colors, vm, Ks, width, height, bg


def test_cpu_matches_brute_force(cpu_kernel):
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = make_scene(n=80, d=4, seed=1, dtype=torch.float32)
    render, alphas, meta = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, render_mode="RGB+ED",
                                     backgrounds=bg, backend="cpu", tile_size=4)
    assert meta["backend"] == "cpu" and render.shape == (2, H, W, 5)
    for c in range(2):
        ref, ref_a = brute_force(means.double(), quats.double(), scales.double(), opac.double(), colors.double(),
                                 vm[c].double(), Ks[c].double(), W, H, bg[c].double())
        np.testing.assert_allclose(render[c].numpy(), ref, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(alphas[c].numpy(), ref_a, rtol=1e-4, atol=2e-5)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = 2e-5) -> None:
    # Float32 sums over many pixels: tolerance scaled by the gradient's magnitude.
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=rel * scale + 1e-6, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("seed, render_mode, with_bg, tile_size, opaque", [
    (0, "RGB+ED", True, 16, False), (1, "RGB+ED", False, 8, False), (2, "RGB", True, 16, False),
    (3, "RGB", False, 5, False), (4, "RGB+ED", False, 8, True), (5, "RGB", True, 16, True),
])
def test_cpu_matches_reference_images_and_gradients(cpu_kernel, seed, render_mode, with_bg, tile_size, opaque):
    """opaque: 1200 nearly opaque Gaussians, so that whole rows of a tile saturate while later Gaussians
    still cover them (the kernel skips such rows, forward and backward)."""
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = random_scene(seed, n=1200 if opaque else 300)
    if opaque:
        opac, scales = torch.full_like(opac, 0.995), 2 * scales
    g = torch.Generator().manual_seed(seed + 100)
    D = colors.shape[1] + (render_mode == "RGB+ED")
    w_render = torch.rand(2, H, W, D, generator=g)
    w_alpha = torch.rand(2, H, W, 1, generator=g)
    out = {}
    for backend in ("torch", "cpu"):
        leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors, bg)]
        render, alphas, meta = rasterize(*leaves[:5], vm, Ks, W, H, render_mode=render_mode,
                                         backgrounds=leaves[5] if with_bg else None, backend=backend,
                                         tile_size=tile_size)
        ((render * w_render).sum() + (alphas * w_alpha).sum()).backward()
        out[backend] = dict(render=render.detach(), alphas=alphas.detach(), meta=meta,
                            grads=[t.grad for t in leaves], means2d_grad=meta["means2d"].grad)
    ref, fast = out["torch"], out["cpu"]
    assert torch.equal(ref["meta"]["radii"], fast["meta"]["radii"])
    vis = ref["meta"]["radii"] > 0
    assert vis.sum() > 100
    _close(fast["meta"]["means2d"][vis], ref["meta"]["means2d"][vis].detach(), "means2d")
    _close(fast["meta"]["conics"][vis], ref["meta"]["conics"][vis].detach(), "conics")
    _close(fast["meta"]["depths"], ref["meta"]["depths"].detach(), "depths")
    torch.testing.assert_close(fast["render"], ref["render"], rtol=1e-4, atol=5e-5)
    torch.testing.assert_close(fast["alphas"], ref["alphas"], rtol=1e-4, atol=5e-5)
    if render_mode == "RGB+ED":
        assert fast["render"][..., -1].max() > 1.0  # expected depth is really there (scene at z ~ 3)
    if opaque:  # nearly saturated pixels (transmittance under 1e-3; the kernel stops at 1e-4) fill tile rows
        sat = ref["alphas"][..., 0] > 1 - 1e-3  # [C, H, W]
        full = sat[..., : W // tile_size * tile_size].unflatten(-1, (-1, tile_size)).all(-1)
        assert full.sum() >= 5, int(full.sum())
    _close(fast["means2d_grad"], ref["means2d_grad"], "means2d.grad")
    names = ["means", "quats", "scales", "opacities", "colors", "backgrounds"]
    for name, g_fast, g_ref in zip(names, fast["grads"], ref["grads"]):
        if name == "backgrounds" and not with_bg:
            assert g_fast is None and g_ref is None
            continue
        assert g_ref.abs().sum() > 0, name
        _close(g_fast, g_ref, name)


def test_cpu_gradients_are_the_same_bits_every_run_on_two_threads(cpu_kernel):
    """Which thread sums which tile must not depend on timing: otherwise the gradients' last bits
    change from call to call and training (chaotic over hundreds of steps) never repeats."""
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = random_scene(7, n=3000, d=20, width=160, height=120)
    scales = scales * 4  # large footprints: each Gaussian reaches many tiles, summed by both threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(12):
            leaves = [x.clone().requires_grad_(True) for x in (means, quats, scales, opac, colors)]
            render, alphas, _ = rasterize(*leaves, vm, Ks, W, H, render_mode="RGB+ED", backend="cpu", tile_size=8)
            (render.sum() + alphas.sum()).backward()
            grads.append([x.grad for x in leaves])
    finally:
        torch.set_num_threads(threads)
    for g in grads[1:]:
        for a, b in zip(grads[0], g):
            assert torch.equal(a, b)


def test_cpu_culls_and_gives_culled_gaussians_no_gradient(cpu_kernel):
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = random_scene(4, n=50)
    means = means.clone()
    means[0, 2] = -3.0  # behind both cameras
    means[1, :] = torch.tensor([0.0, 0.0, 0.005])  # inside camera 0's near plane
    means.requires_grad_(True)
    render, alphas, meta = rasterize(means, quats, scales, opac, colors, vm[:1], Ks[:1], W, H, near_plane=0.01,
                                     render_mode="RGB+ED", backend="cpu")
    (render.sum() + alphas.sum()).backward()
    assert torch.all(meta["radii"][:, :2] == 0) and meta["radii"][0, 2:].sum() > 0
    assert torch.all(means.grad[:2] == 0) and torch.isfinite(means.grad).all()


def test_cpu_float64_inputs_and_auto_backend(cpu_kernel):
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = random_scene(5, n=60)
    r32, a32, meta = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, backend="auto")
    assert meta["backend"] == "cpu"
    r64, a64, _ = rasterize(means.double(), quats.double(), scales.double(), opac.double(), colors.double(),
                            vm.double(), Ks.double(), W, H, backend="cpu")
    assert r64.dtype == torch.float64
    torch.testing.assert_close(r64.float(), r32, rtol=0, atol=0)


def test_empty_view_renders_background(cpu_kernel):
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = random_scene(6, n=20)
    means = means.clone()
    means[:, 2] = -5.0  # everything behind the cameras
    for backend in ("cpu", "torch"):
        render, alphas, meta = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, backgrounds=bg,
                                         render_mode="RGB+ED", backend=backend)
        assert torch.all(alphas == 0) and torch.all(render[..., -1] == 0)
        torch.testing.assert_close(render[..., :-1], bg[:, None, None, :].expand(2, H, W, -1))


def _gsplat_on_cuda() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _gsplat_on_cuda(), reason="gsplat's rasterization() runs only on CUDA; the CPU tests above "
                    "check the same math (reference vs brute force, kernel vs reference)")
def test_cuda_backend_agrees_with_reference():
    means, quats, scales, opac, colors, vm, Ks, W, H, bg = random_scene(7)
    ref, ref_a, _ = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, render_mode="RGB+ED",
                              backgrounds=bg, backend="torch")
    cuda = [t.cuda() for t in (means, quats, scales, opac, colors, vm, Ks)]
    out, out_a, meta = rasterize(*cuda, W, H, render_mode="RGB+ED", backgrounds=bg.cuda(), backend="auto")
    assert meta["backend"] == "cuda" and meta["radii"].shape == (2, means.shape[0])
    # gsplat also draws a Gaussian's tail outside its 3-sigma ellipse inside touched tiles: small differences.
    assert (out.cpu()[..., :-1] - ref[..., :-1]).abs().mean() < 5e-3
    assert (out_a.cpu() - ref_a).abs().mean() < 5e-3


def test_build_stamp_depends_on_cpu_features(monkeypatch):
    # The kernel is compiled with -march=native: a venv moved to another CPU must see a stale cache.
    here = build_ext.source_hash()
    monkeypatch.setattr(build_ext, "_cpu_flags", lambda: "sse2")
    assert build_ext.source_hash() != here

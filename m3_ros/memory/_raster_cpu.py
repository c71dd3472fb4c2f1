"""Autograd wrappers around the compiled CPU rasterizer (``csrc/raster_cpu.cpp``).

The library is loaded from the cache that ``python -m m3_ros.memory.build_ext`` fills (run by
``scripts/setup.sh``); this module never compiles. Two autograd Functions, projection and
compositing, so that ``means2d`` is a real intermediate tensor whose ``.grad`` (kept with
``retain_grad``) is the view-space positional gradient densification needs.

Threads: the kernel uses OpenMP, i.e. torch's own intra-op pool (``torch.set_num_threads``).
On a 2-core machine shared with other busy processes, libgomp's default spin-waiting made a
train step ~3x slower; ``OMP_WAIT_POLICY=PASSIVE`` in the environment (set before torch is
imported) avoided most of that (measured: 45 ms vs 105-116 ms at load ~3.7). Plain std::threads
inside the kernel were tried and were worse with the default policy, because torch's OpenMP
workers keep spinning on the same cores.
"""
from __future__ import annotations

import importlib.util
import logging
from types import ModuleType

import torch
from torch import Tensor

from m3_ros.memory import build_ext

log = logging.getLogger(__name__)
_lib: ModuleType | None = None
_load_error: str | None = None


def load_library() -> ModuleType | None:
    """The compiled module from the cache, or None (reason in ``load_error()``) if missing or stale."""
    global _lib, _load_error
    if _lib is not None or _load_error is not None:
        return _lib
    path, stamp = build_ext.library_path(), build_ext.stamp_path()
    if not path.exists() or not stamp.exists():
        _load_error = f"{path} not built (run scripts/setup.sh)"
    elif stamp.read_text().strip() != build_ext.source_hash():
        _load_error = f"{path} is stale: csrc changed since the build (run scripts/setup.sh)"
    else:
        spec = importlib.util.spec_from_file_location(build_ext.EXT_NAME, path)
        if spec is None or spec.loader is None:
            _load_error = f"cannot load {path}"
        else:
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except ImportError as err:  # e.g. built against another torch
                _load_error = f"cannot import {path}: {err} (run scripts/setup.sh)"
            else:
                _lib = module
    if _load_error is not None:
        log.info("CPU rasterizer unavailable: %s", _load_error)
    return _lib


def available() -> bool:
    """True when the cached kernel loads."""
    return load_library() is not None


def load_error() -> str | None:
    """Why the kernel is unavailable (None when it loaded)."""
    load_library()
    return _load_error


class _Project(torch.autograd.Function):
    """EWA projection: means, quats, scales -> means2d, conics, depths (+ radii, no gradient)."""

    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, width, height, near, far, eps2d):  # type: ignore[override]
        lib = load_library()
        means2d, conics, depths, radii = lib.project_fwd(means, quats, scales, viewmats, Ks, width, height,
                                                         near, far, eps2d)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii, conics)
        ctx.args = (width, height, near, far, eps2d)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii):  # type: ignore[override]
        means, quats, scales, viewmats, Ks, radii, conics = ctx.saved_tensors
        width, height, near, far, eps2d = ctx.args

        def dense(g: Tensor | None, like: Tensor) -> Tensor:
            return torch.zeros_like(like) if g is None else g.contiguous()

        g_means, g_quats, g_scales = load_library().project_bwd(
            means, quats, scales, viewmats, Ks, width, height, near, far, eps2d, radii, conics,
            dense(g_means2d, conics[..., :2]), dense(g_conics, conics), dense(g_depths, conics[..., 0]))
        return g_means, g_quats, g_scales, None, None, None, None, None, None, None


class _Composite(torch.autograd.Function):
    """Tile compositing: 2D Gaussians + opacities + colours (+ background) -> image, alpha."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, radii, backgrounds, width, height, tile_size,
                with_depth):  # type: ignore[override]
        lib = load_library()
        render, alphas, last, offsets, ids, order = lib.composite_fwd(
            means2d, conics, opacities, colors, depths, radii, backgrounds, width, height, tile_size, with_depth)
        ctx.save_for_backward(means2d, conics, opacities, colors, depths, radii, backgrounds, render, alphas,
                              last, offsets, ids, order)
        ctx.args = (width, height, tile_size, with_depth)
        return render, alphas

    @staticmethod
    def backward(ctx, g_render, g_alphas):  # type: ignore[override]
        (means2d, conics, opacities, colors, depths, radii, backgrounds, render, alphas, last, offsets,
         ids, order) = ctx.saved_tensors
        width, height, tile_size, with_depth = ctx.args
        g_render = torch.zeros_like(render) if g_render is None else g_render.contiguous()
        g_alphas = torch.zeros_like(alphas) if g_alphas is None else g_alphas.contiguous()
        g_m2, g_con, g_op, g_col, g_dep, g_bg = load_library().composite_bwd(
            means2d, conics, opacities, colors, depths, radii, backgrounds, width, height, tile_size, with_depth,
            render, alphas, last, offsets, ids, order, g_render, g_alphas)
        g_bg_out = g_bg if backgrounds.numel() > 0 else None
        return g_m2, g_con, g_op, g_col, g_dep, None, g_bg_out, None, None, None, None


def rasterize_cpu(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    with_depth: bool,
    backgrounds: Tensor | None,  # [C, D]
    eps2d: float,
    tile_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Compiled-kernel path (float32; other float dtypes are computed in float32 and cast back).

    Returns render [C, H, W, D(+1)], alphas [C, H, W, 1], means2d [C, N, 2], conics [C, N, 3],
    depths [C, N], radii [C, N] int32.
    """
    dtype = means.dtype

    def f32(t: Tensor) -> Tensor:
        return t.to(torch.float32).contiguous()

    bg = f32(backgrounds) if backgrounds is not None else torch.empty(0, dtype=torch.float32)
    means2d, conics, depths, radii = _Project.apply(
        f32(means), f32(quats), f32(scales), f32(viewmats).detach(), f32(Ks).detach(), width, height,
        float(near_plane), float(far_plane), float(eps2d))
    if means2d.requires_grad:
        means2d.retain_grad()  # densification reads means2d.grad
    render, alphas = _Composite.apply(means2d, conics, f32(opacities), f32(colors), depths, radii, bg, width,
                                      height, tile_size, with_depth)
    if dtype != torch.float32:
        render, alphas = render.to(dtype), alphas.to(dtype)
    return render, alphas, means2d, conics, depths, radii

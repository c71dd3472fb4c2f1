"""One gsplat-shaped rasterizer with three backends: PyTorch reference, compiled CPU kernel, gsplat CUDA.

``rasterize`` mirrors the core of ``gsplat.rasterization()`` (same argument names and
return layout) with only the options m3_ros uses. Math and conventions: see
``m3_ros.memory._raster_torch``.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

from m3_ros.memory import _raster_torch

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "cpu", "cuda"]
RenderMode = Literal["RGB", "RGB+ED"]
_BACKENDS = ("auto", "torch", "cpu", "cuda")
_RENDER_MODES = ("RGB", "RGB+ED")
_warned_fallback = False


def _check_inputs(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, near_plane: float, far_plane: float,
    render_mode: str, backgrounds: Tensor | None, eps2d: float, tile_size: int, backend: str,
) -> None:
    """Raise ValueError naming the first bad argument."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if render_mode not in _RENDER_MODES:
        raise ValueError(f"render_mode must be one of {_RENDER_MODES}, got {render_mode!r}")
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive ints, got width={width!r}, height={height!r}")
    if not isinstance(tile_size, int) or tile_size <= 0:
        raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
    if not (0 < near_plane < far_plane):
        raise ValueError(f"need 0 < near_plane < far_plane, got near_plane={near_plane}, far_plane={far_plane}")
    if eps2d < 0:
        raise ValueError(f"eps2d must be >= 0, got {eps2d}")
    if means.ndim != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    for name, t, shape in (("quats", quats, (N, 4)), ("scales", scales, (N, 3)), ("opacities", opacities, (N,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} for N={N}, got {tuple(t.shape)}")
    if colors.ndim != 2 or colors.shape[0] != N or colors.shape[1] < 1:
        raise ValueError(f"colors must be [N, D] with N={N}, D>=1, got {tuple(colors.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    if C < 1:
        raise ValueError(f"need at least one camera, got viewmats {tuple(viewmats.shape)}")
    if tuple(Ks.shape) != (C, 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3] with C={C}, got {tuple(Ks.shape)}")
    if backgrounds is not None and tuple(backgrounds.shape) != (C, colors.shape[1]):
        raise ValueError(f"backgrounds must be [C, D] = {[C, colors.shape[1]]}, got {tuple(backgrounds.shape)}")
    tensors = [means, quats, scales, opacities, colors, viewmats, Ks] + ([backgrounds] if backgrounds is not None else [])
    if any(not t.is_floating_point() for t in tensors):
        raise ValueError(f"all inputs must be floating point, got dtypes {[str(t.dtype) for t in tensors]}")
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted({str(t.device) for t in tensors})}")


def _cpu_kernel_available() -> bool:
    """True when the compiled CPU kernel is built and loads from its cache (never builds)."""
    try:
        from m3_ros.memory import _raster_cpu
    except ImportError:
        return False
    return _raster_cpu.available()


def _cuda_available(means: Tensor) -> bool:
    if not means.is_cuda:
        return False
    try:
        import gsplat  # noqa: F401  (imported only when tensors are on CUDA)
    except ImportError:
        return False
    return True


def _choose_backend(backend: str, means: Tensor) -> str:
    global _warned_fallback
    if backend != "auto":
        return backend
    if _cuda_available(means):
        return "cuda"
    if means.device.type == "cpu" and _cpu_kernel_available():
        return "cpu"
    if not _warned_fallback:
        _warned_fallback = True
        log.warning(
            "rasterize: compiled CPU kernel not built (run scripts/setup.sh, or "
            "python -m m3_ros.memory.build_ext); using the slow PyTorch reference"
        )
    return "torch"


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    render_mode: RenderMode = "RGB",
    backgrounds: Tensor | None = None,  # [C, D]
    eps2d: float = 0.3,
    tile_size: int = 16,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render N Gaussians into C pinhole cameras (differentiable).

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] rotations (w, x, y, z) as gsplat; need not be normalised.
        scales: [N, 3] activated scales (exp of log-scales).
        opacities: [N] activated opacities in [0, 1].
        colors: [N, D] any channel count (RGB, principal queries, ...).
        viewmats: [C, 4, 4] world -> camera (inverse of T_world_cam), REP-103 optical axes.
        Ks: [C, 3, 3] intrinsics; pixel centres at integer coordinates (``m3_ros.geometry``).
        width, height: image size in pixels.
        near_plane, far_plane: Gaussians whose view z is outside (near, far) are culled.
        render_mode: "RGB" renders the D given channels; "RGB+ED" appends the expected depth
            sum(w z) / sum(w) (0 where nothing is hit) as channel D.
        backgrounds: [C, D] colour behind the Gaussians (not applied to the depth channel).
        eps2d: added to the 2D covariance's diagonal (low-pass filter, pixels^2).
        tile_size: tile edge in pixels (performance only: the image does not depend on it).
        backend: "auto" = gsplat on CUDA tensors when it imports, else the compiled CPU kernel
            when built, else the PyTorch reference (with one warning).
    Returns:
        colors: [C, H, W, D] or [C, H, W, D + 1] with "RGB+ED".
        alphas: [C, H, W, 1] accumulated opacity.
        meta: dict with "means2d" [C, N, 2] (its ``.grad`` after backward is the view-space
            positional gradient used by densification), "radii" [C, N] int32 (0 = culled),
            "depths" [C, N] view z, "conics" [C, N, 3], "backend", "width", "height",
            "n_cameras", "tile_size".
    Raises:
        ValueError: naming the bad argument (shapes, sizes, backend, render_mode, ...).
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                  far_plane, render_mode, backgrounds, eps2d, tile_size, backend)
    chosen = _choose_backend(backend, means)
    if chosen == "cpu" and means.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got device {means.device}")
    if chosen == "cuda" and not means.is_cuda:
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got device {means.device}")
    with_depth = render_mode == "RGB+ED"

    if chosen == "cuda":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                 near_plane, far_plane, render_mode, backgrounds, eps2d, tile_size)
    if chosen == "cpu":
        from m3_ros.memory import _raster_cpu

        if not _raster_cpu.available():
            raise ValueError("backend 'cpu' requested but the kernel is not built: run scripts/setup.sh")
        render, alphas, means2d, conics, depths, radii = _raster_cpu.rasterize_cpu(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
            with_depth, backgrounds, eps2d, tile_size)
    else:
        render, alphas, means2d, conics, depths, radii = _rasterize_torch(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
            with_depth, backgrounds, eps2d, tile_size)
    meta = {
        "means2d": means2d, "radii": radii, "depths": depths, "conics": conics, "backend": chosen,
        "width": width, "height": height, "n_cameras": viewmats.shape[0], "tile_size": tile_size,
    }
    return render, alphas, meta


def _rasterize_torch(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmats: Tensor,
    Ks: Tensor, width: int, height: int, near_plane: float, far_plane: float, with_depth: bool,
    backgrounds: Tensor | None, eps2d: float, tile_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reference path: projection and compositing in PyTorch autograd."""
    means2d, conics, depths, radii = _raster_torch.project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    if means2d.requires_grad:
        means2d.retain_grad()  # densification reads means2d.grad
    renders, alphas = [], []
    for c in range(viewmats.shape[0]):
        feats = torch.cat([colors, depths[c, :, None]], dim=-1) if with_depth else colors  # [N, D(+1)]
        accum, alpha = _raster_torch.composite_torch(
            means2d[c], conics[c], opacities, feats, depths[c], radii[c], width, height, tile_size)
        out = accum[..., : colors.shape[1]]
        if backgrounds is not None:
            out = out + (1 - alpha) * backgrounds[c]
        if with_depth:
            out = torch.cat([out, accum[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
        renders.append(out)
        alphas.append(alpha)
    return torch.stack(renders), torch.stack(alphas), means2d, conics, depths, radii


def _rasterize_gsplat(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmats: Tensor,
    Ks: Tensor, width: int, height: int, near_plane: float, far_plane: float, render_mode: str,
    backgrounds: Tensor | None, eps2d: float, tile_size: int,
) -> tuple[Tensor, Tensor, dict]:
    """gsplat's CUDA rasterization(); only imported here, on CUDA tensors."""
    from gsplat import rasterization

    # gsplat puts pixel centres at (i + 0.5); ours are at integers: shift the principal point.
    Ks_g = Ks.clone()
    Ks_g[:, 0, 2] += 0.5
    Ks_g[:, 1, 2] += 0.5
    render, alphas, info = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks_g, width, height,
        near_plane=near_plane, far_plane=far_plane, render_mode=render_mode, backgrounds=backgrounds,
        eps2d=eps2d, tile_size=tile_size, packed=False, sh_degree=None, absgrad=False,
        rasterize_mode="classic",
    )
    means2d = info["means2d"]  # gsplat's pixel frame: ours + 0.5 (same gradient)
    radii = info["radii"]
    if radii.dim() == means2d.dim():  # gsplat >= 1.5 gives per-axis radii [C, N, 2]
        radii = radii.max(dim=-1).values
    meta = {
        "means2d": means2d, "radii": radii.to(torch.int32), "depths": info["depths"],
        "conics": info.get("conics"), "backend": "cuda", "width": width, "height": height,
        "n_cameras": viewmats.shape[0], "tile_size": tile_size,
    }
    if means2d.requires_grad:
        means2d.retain_grad()
    return render, alphas, meta

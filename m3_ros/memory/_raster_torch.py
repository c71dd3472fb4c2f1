"""Readable, vectorised, differentiable PyTorch rasterizer: the test oracle and the "reference" timing.

Same math as 3D Gaussian splatting (Kerbl et al. 2023):
1. EWA projection: view-space covariance ``W R S Sᵀ Rᵀ Wᵀ`` pushed through the Jacobian of
   the pinhole projection (view x/z, y/z clamped to a guard band of 1.3x the half-FOV, as
   3DGS does), plus ``eps2d`` on the diagonal; radius = ceil(3 sqrt(largest eigenvalue)).
2. Depth sort (by view-space z, ties by index) and tile binning.
3. Front-to-back compositing per pixel: ``alpha = min(0.99, o exp(-d^T Sigma^-1 d / 2))``,
   alphas below 1/255 are skipped, a pixel stops before the Gaussian that would push its
   transmittance below 1e-4.

Conventions (see ``m3_ros.geometry``): pixel (u, v) has its centre at integer coordinates,
``u = fx x / z + cx``. Deliberate deviation from 3DGS: a Gaussian only touches pixels inside
its 3-sigma ellipse (Mahalanobis distance^2 <= 9). Its tile rectangle always covers that
ellipse, so the image does not depend on ``tile_size`` and a tile-free brute force is an
exact oracle.
"""
from __future__ import annotations

import torch
from torch import Tensor

# 3DGS constants; the compiled kernel uses the same values.
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
SIGMA_CUTOFF = 9.0  # Mahalanobis distance^2 of the 3-sigma ellipse
GUARD_BAND = 0.3  # clamp x/z to the image half-extent plus 0.3 x half-FOV (1.3x for a centred camera)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Quaternions (w, x, y, z) [N, 4], any norm -> rotation matrices [N, 3, 3]."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of N Gaussians into C cameras.

    Returns:
        means2d: [C, N, 2] pixel coordinates (u, v).
        conics: [C, N, 3] upper triangle (a, b, c) of the inverse 2D covariance.
        depths: [C, N] view-space z.
        radii: [C, N] int32 pixel radius; 0 = culled (near/far, degenerate or off-image).
    """
    R_view = viewmats[:, :3, :3]  # [C, 3, 3]
    t_view = viewmats[:, :3, 3]  # [C, 3]
    p_view = torch.einsum("cij,nj->cni", R_view, means) + t_view[:, None, :]  # [C, N, 3]
    x, y, z = p_view.unbind(-1)  # [C, N] each
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    in_depth = (z > near_plane) & (z < far_plane)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite

    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # [C, N, 2]

    # Jacobian of the projection, with x/z and y/z clamped to a guard band (3DGS).
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + GUARD_BAND * tan_x, cx / fx + GUARD_BAND * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + GUARD_BAND * tan_y, cy / fy + GUARD_BAND * tan_y
    tx = z_safe * torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z_safe)
    J = torch.stack(
        [fx / z_safe, zero, -fx * tx / z_safe**2, zero, fy / z_safe, -fy * ty / z_safe**2], dim=-1
    ).reshape(z.shape + (2, 3))  # [C, N, 2, 3]

    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R S
    cov3d = M @ M.transpose(-1, -2)  # [N, 3, 3]
    cov_view = R_view[:, None] @ cov3d[None] @ R_view[:, None].transpose(-1, -2)  # [C, N, 3, 3]
    cov2d = J @ cov_view @ J.transpose(-1, -2)  # [C, N, 2, 2]
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        u, v = means2d[..., 0], means2d[..., 1]
        on_image = (u + radius >= 0) & (u - radius <= width - 1) & (v + radius >= 0) & (v - radius <= height - 1)
        radii = torch.where(ok & on_image, radius, torch.zeros_like(radius)).to(torch.int32)
    return means2d, conics, z, radii


def _tile_lists(
    means2d: Tensor, depths: Tensor, radii: Tensor, tiles_x: int, tiles_y: int, tile_size: int
) -> tuple[Tensor, Tensor]:
    """Depth-sorted Gaussian lists per tile for one camera.

    Args: means2d [N, 2], depths [N], radii [N] (0 = culled).
    Returns:
        lists: [T, K] Gaussian index per tile, front to back, padded with -1 (T = tiles_x * tiles_y).
        counts: [T] number of valid entries per tile.
    """
    n_tiles = tiles_x * tiles_y
    dev = means2d.device
    idx = torch.nonzero(radii > 0).squeeze(1)  # [M]
    if idx.numel() == 0:
        return torch.full((n_tiles, 1), -1, dtype=torch.long, device=dev), torch.zeros(n_tiles, dtype=torch.long, device=dev)
    r = radii[idx].to(means2d.dtype)
    m = means2d[idx]
    # Tile rectangle covering [u - r, u + r] x [v - r, v + r], clipped to the image's tiles.
    tx0 = torch.clamp(torch.floor((m[:, 0] - r) / tile_size), 0, tiles_x - 1).long()
    tx1 = torch.clamp(torch.floor((m[:, 0] + r) / tile_size), 0, tiles_x - 1).long()
    ty0 = torch.clamp(torch.floor((m[:, 1] - r) / tile_size), 0, tiles_y - 1).long()
    ty1 = torch.clamp(torch.floor((m[:, 1] + r) / tile_size), 0, tiles_y - 1).long()
    nx, ny = tx1 - tx0 + 1, ty1 - ty0 + 1
    n_hit = nx * ny  # [M]
    owner = torch.repeat_interleave(torch.arange(idx.numel(), device=dev), n_hit)  # [I]
    start = torch.cumsum(n_hit, 0) - n_hit
    local = torch.arange(owner.numel(), device=dev) - start[owner]
    tile = (ty0[owner] + local // nx[owner]) * tiles_x + tx0[owner] + local % nx[owner]  # [I]
    # Sort by (tile, depth, index): first by depth with a stable sort, then stably by tile.
    order_d = torch.sort(depths[idx].detach(), stable=True).indices  # [M] front to back
    rank = torch.empty_like(order_d)
    rank[order_d] = torch.arange(order_d.numel(), device=dev)
    key = tile * idx.numel() + rank[owner]
    order = torch.sort(key).indices
    tile_s, gauss_s = tile[order], idx[owner[order]]
    counts = torch.bincount(tile_s, minlength=n_tiles)  # [T]
    K = int(counts.max())
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(tile_s.numel(), device=dev) - first[tile_s]
    lists = torch.full((n_tiles, K), -1, dtype=torch.long, device=dev)
    lists[tile_s, slot] = gauss_s
    return lists, counts


def composite_torch(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D]
    depths: Tensor,  # [N]
    radii: Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int,
    max_chunk_elems: int = 1 << 23,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of one camera, tile by tile, differentiable.

    Returns:
        accum: [H, W, D] sum_i w_i c_i (no background).
        alpha: [H, W, 1] sum_i w_i = 1 - final transmittance.
    """
    D = colors.shape[-1]
    if means2d.shape[0] == 0:
        # Nothing to draw; stay connected to the inputs' graph so backward still runs.
        zero = (means2d.sum() + conics.sum() + opacities.sum() + colors.sum()) * 0
        return zero.expand(height, width, D), zero.expand(height, width, 1)
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    lists, counts = _tile_lists(means2d, depths, radii, tiles_x, tiles_y, tile_size)  # [T, K], [T]
    n_tiles = lists.shape[0]
    P = tile_size * tile_size
    dev, dt = means2d.device, means2d.dtype
    # Pixel centres (integer coordinates) of every tile: [T, P, 2].
    py, px = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
    ty, tx = torch.div(torch.arange(n_tiles, device=dev), tiles_x, rounding_mode="floor"), torch.arange(n_tiles, device=dev) % tiles_x
    pix = torch.stack(
        [tx[:, None] * tile_size + px.reshape(1, P), ty[:, None] * tile_size + py.reshape(1, P)], dim=-1
    ).to(dt)

    # Process tiles in order of list length, each chunk padded only to its own longest list.
    by_len = torch.argsort(counts, descending=True)  # [T]
    counts_sorted = counts[by_len].tolist()
    accum_chunks, alpha_chunks = [], []
    t0 = 0
    while t0 < n_tiles:
        K = max(1, counts_sorted[t0])
        chunk = max(1, max_chunk_elems // (P * K))
        sel = by_len[t0:t0 + chunk]  # [t]
        t0 += chunk
        lst = lists[sel, :K]  # [t, K]
        valid = lst >= 0
        g = lst.clamp(min=0)
        d = pix[sel][:, :, None, :] - means2d[g][:, None, :, :]  # [t, P, K, 2]
        con = conics[g][:, None, :, :]  # [t, 1, K, 3]
        maha = con[..., 0] * d[..., 0] ** 2 + 2 * con[..., 1] * d[..., 0] * d[..., 1] + con[..., 2] * d[..., 1] ** 2
        alpha = torch.clamp(opacities[g][:, None, :] * torch.exp(-0.5 * maha), max=ALPHA_MAX)  # [t, P, K]
        keep = valid[:, None, :] & (maha <= SIGMA_CUTOFF) & (alpha >= ALPHA_MIN)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        T_after = torch.cumprod(1 - alpha, dim=-1)  # [t, P, K]
        T_before = torch.cat([torch.ones_like(T_after[..., :1]), T_after[..., :-1]], dim=-1)
        # A pixel stops before the Gaussian that would take T below T_MIN; T is monotone, so
        # the kept set is a prefix.
        w = alpha * T_before * (T_after.detach() >= T_MIN)  # [t, P, K]
        accum_chunks.append(torch.einsum("tpk,tkd->tpd", w, colors[g]))
        alpha_chunks.append(w.sum(-1, keepdim=True))
    back = torch.argsort(by_len)  # chunk order -> tile order
    accum = torch.cat(accum_chunks)[back]  # [T, P, D]
    alpha_img = torch.cat(alpha_chunks)[back]  # [T, P, 1]

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(tiles_y, tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * tile_size, tiles_x * tile_size, -1)[:height, :width]

    return untile(accum), untile(alpha_img)

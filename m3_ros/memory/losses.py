"""The method's losses: 0.8·L1 + 0.2·(1−SSIM) on RGB, cosine + MSE on feature points, L1 depth."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gauss_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()  # [size]


_G1 = _gauss_1d()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 11x11 Gaussian blur of x [1, C, H, W] with zero padding (same as the 2D window)."""
    C, k = x.shape[1], _G1.shape[0]
    g = _G1.to(x.dtype)
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(C, 1, k, 1), padding=(k // 2, 0), groups=C)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(C, 1, 1, k), padding=(0, k // 2), groups=C)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of images a, b [H, W, C] in 0..1 (11×11 Gaussian window, as 3DGS)."""
    C = a.shape[-1]
    x = a.permute(2, 0, 1).unsqueeze(0)  # [1, C, H, W]
    y = b.permute(2, 0, 1).unsqueeze(0)
    # One blur over the five stacked maps: mu_x, mu_y, E[x²], E[y²], E[xy].
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], 1))
    mu_x, mu_y, exx, eyy, exy = stats.split(C, 1)
    sxx = exx - mu_x ** 2
    syy = eyy - mu_y ** 2
    sxy = exy - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return m.mean()


def rgb_loss(pred: torch.Tensor, gt: torch.Tensor, lambda_ssim: float = 0.2) -> torch.Tensor:
    """(1−λ)·L1 + λ·(1−SSIM) for images [H, W, 3]."""
    return (1 - lambda_ssim) * (pred - gt).abs().mean() + lambda_ssim * (1 - ssim(pred, gt))


def feature_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """mean(1−cos) + MSE between decoded pred [M, d] and ground truth gt [M, d]; all-zero gt rows ignored."""
    valid = gt.abs().sum(-1) > 0
    if not bool(valid.any()):
        return pred.sum() * 0.0
    p, g = pred[valid], gt[valid]
    return (1 - F.cosine_similarity(p, g, dim=-1)).mean() + F.mse_loss(p, g)


def depth_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L1 between rendered expected depth pred [H, W] and sensor depth gt [H, W] where gt > 0."""
    valid = gt > 0
    if not bool(valid.any()):
        return pred.sum() * 0.0
    return (pred[valid] - gt[valid]).abs().mean()

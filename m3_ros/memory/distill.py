"""Feature-distillation baseline (Feature 3DGS style) on the same Gaussians and rasterizer as M3.

Each Gaussian carries a low-dimensional feature f_i (as many channels as the M3 query slice),
alpha-composited like colour; a small decoder (linear l -> d, Feature 3DGS's 1x1 convolution)
lifts the rendered map to the model's d dims. Geometry is taken from an M3Memory and frozen, so
the comparison isolates "distilled feature + decoder" against "principal query + memory bank".
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3_ros import geometry
from m3_ros.memory.losses import feature_loss
from m3_ros.memory.rasterize import rasterize


class DistillBaseline(nn.Module):
    """Per-Gaussian features [N, l] + linear decoder l -> d, trained with M3's feature loss."""

    def __init__(self, mem, model: str, lr: float = 5e-3, seed: int = 0) -> None:
        super().__init__()
        if model not in mem.cfg.models or model not in mem.banks:
            raise ValueError(f"model {model!r} has no memory in the given M3Memory")
        g = torch.Generator().manual_seed(seed)
        self.mem, self.model = mem, model
        l, d = mem.cfg.models[model].channels, mem.banks[model].dim
        self.features = nn.Parameter(0.1 * torch.randn(mem.n_gaussians, l, generator=g))
        self.decoder = nn.Linear(l, d)
        with torch.no_grad():  # nn.Linear's own init draws from torch's global RNG: whatever ran before moves it
            bound = 1.0 / float(np.sqrt(l))
            self.decoder.weight.uniform_(-bound, bound, generator=g)
            self.decoder.bias.uniform_(-bound, bound, generator=g)
        self.opt = torch.optim.Adam(self.parameters(), lr=lr)
        self._gen = g

    def n_params(self) -> int:
        """Parameters spent on features (per-Gaussian features + decoder)."""
        return sum(p.numel() for p in self.parameters())

    def _render(self, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mem
        if self.features.shape[0] != m.n_gaussians:
            raise ValueError(f"the memory now has {m.n_gaussians} Gaussians, the baseline {self.features.shape[0]}")
        p = m.params
        img, alpha, _ = rasterize(p["means"].detach(), p["quats"].detach(), p["log_scales"].detach().exp(),
                                  torch.sigmoid(p["opacity_logits"].detach()), self.features, viewmat[None], K[None],
                                  width, height, near_plane=m.cfg.near_plane, far_plane=m.cfg.far_plane,
                                  backend=m.cfg.backend)
        return img[0], alpha[0, ..., 0]  # [H, W, l], [H, W]

    def train_step(self) -> float:
        """One step on a keyframe sampled like M3's trainer; returns the feature loss."""
        v = self.mem._sample_view()
        fm = v.kf.features.get(self.model)
        if fm is None:
            return float("nan")
        h, w = v.rgb.shape[:2]
        img, _ = self._render(v.viewmat, v.K, w, h)
        n = min(self.mem.cfg.feature_points, h * w)
        flat = torch.randperm(h * w, generator=self._gen)[:n]
        pv, pu = flat // w, flat % w
        uv = torch.stack([(pu.float() + 0.5) / v.scale - 0.5, (pv.float() + 0.5) / v.scale - 0.5], -1)
        gt = fm.sample(uv, mode=self.mem.cfg.models[self.model].sample_mode)
        loss = feature_loss(self.decoder(img[pv, pu]), gt)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def render_features(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> torch.Tensor:
        """Decoded features [H, W, d] of a view."""
        viewmat = torch.tensor(geometry.invert(np.asarray(T_world_cam, dtype=np.float64)), dtype=torch.float32)
        img, _ = self._render(viewmat, torch.tensor(K, dtype=torch.float32), width, height)
        return self.decoder(img)


def feature_distance(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Cosine distance (1 - cos) and MSE between pred [M, d] and gt [M, d] over rows with gt != 0."""
    valid = gt.abs().sum(-1) > 0
    p, g = pred[valid], gt[valid]
    return {"cos_dist": float((1 - F.cosine_similarity(p, g, dim=-1)).mean()), "mse": float(F.mse_loss(p, g))}

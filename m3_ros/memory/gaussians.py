"""Gaussian scene parameters and their seeding from back-projected RGB-D.

Parameters sit in one ParameterDict: means [N, 3], log_scales [N, 3], quats [N, 4] (w, x, y, z,
gsplat order), opacity_logits [N], colors ([N, 3] logits of RGB at SH degree 0, [N, (D+1)^2, 3] SH
coefficients at degree D > 0; see sh.py) and one
principal-query slice per foundation model, "q_<model>" [N, l_model].
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from m3_ros.memory.sh import colors_shape


def query_key(model: str) -> str:
    """ParameterDict key of a model's principal-query slice."""
    return f"q_{model}"


def empty_params(channels: dict[str, int], sh_degree: int = 0) -> nn.ParameterDict:
    """A scene with no Gaussians, the given query channels per model and colour SH degree."""
    p = {"means": torch.zeros(0, 3), "log_scales": torch.zeros(0, 3), "quats": torch.zeros(0, 4),
         "opacity_logits": torch.zeros(0), "colors": torch.zeros(colors_shape(0, sh_degree))}
    for m, l in channels.items():
        p[query_key(m)] = torch.zeros(0, l)
    return nn.ParameterDict({k: nn.Parameter(v) for k, v in p.items()})


def voxel_downsample(points: np.ndarray, voxel: float) -> np.ndarray:
    """Index [M] of the first point in each occupied voxel of points [N, 3]."""
    if voxel <= 0:
        raise ValueError(f"voxel size must be positive, got {voxel}")
    keys = np.floor(points / voxel).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first)


def nn_log_scales(new_points: np.ndarray, old_points: np.ndarray, k: int = 3,
                  floor: float = 1e-3) -> np.ndarray:
    """Isotropic log-scale [M, 3] from the mean distance to the k nearest other points (3DGS init)."""
    allp = np.concatenate([old_points, new_points], 0) if len(old_points) else new_points
    kk = min(k + 1, len(allp))
    if kk < 2:
        return np.full((len(new_points), 3), np.log(0.01))
    d, _ = cKDTree(allp).query(new_points, k=kk)
    mean = np.maximum(d[:, 1:].mean(-1), floor)
    return np.repeat(np.log(mean)[:, None], 3, axis=1)


def logit(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))

"""Densify / prune policy (3DGS's adaptive density control), kept apart from rendering.

The policy is a dataclass of hyperparameters plus an explicit state dict handed back in; the
tensor surgery it triggers lives in `ops.py`. Under a hard cap on the Gaussian count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from m3_ros.memory.ops import append_gaussians, remove_gaussians


@dataclass
class DensifyConfig:
    """Adaptive density control hyperparameters."""

    enabled: bool = True
    """Run densify/prune at all."""
    refine_start: int = 300
    """First iteration at which Gaussians are refined."""
    refine_every: int = 100
    """Refine every this many iterations."""
    grad_threshold: float = 2e-4
    """Mean view-space (NDC) gradient norm above which a Gaussian is cloned or split."""
    grow_scale: float = 0.01
    """Clone if max scale <= grow_scale · extent, otherwise split in two."""
    prune_opacity: float = 0.005
    """Prune Gaussians whose opacity falls below this."""
    prune_scale: float = 0.1
    """Prune Gaussians whose max scale exceeds prune_scale · extent."""


class DensifyStrategy:
    """Accumulates view-space gradients and clones / splits / prunes every `refine_every` steps."""

    def __init__(self, cfg: DensifyConfig, max_gaussians: int) -> None:
        self.cfg = cfg
        self.max_gaussians = max_gaussians

    def initial_state(self) -> dict:
        return {"grad2d": None, "count": None}

    def refine_due(self, step: int) -> bool:
        """Whether step_post_backward at this step clones, splits and prunes."""
        return self.cfg.enabled and step >= self.cfg.refine_start and step % self.cfg.refine_every == 0

    @torch.no_grad()
    def step_post_backward(self, params: nn.ParameterDict, optimizer: torch.optim.Optimizer, state: dict,
                           step: int, meta: dict, extent: float,
                           generator: torch.Generator | None = None) -> dict[str, int]:
        """Update gradient statistics from meta (rasterize's) and refine when due; returns counts.

        generator draws split offsets (the memory's own: torch's global one is shared with anything
        else in the process, so a run would not reproduce).

        meta: "means2d" [1, M, 2] (with .grad after backward), "radii" [1, M], "width", "height", and
        "index" [M], the rows of the M rendered Gaussians among params' N (None or absent: M = N, all).
        """
        if not self.cfg.enabled:
            return {}
        n = params["means"].shape[0]
        if state["grad2d"] is None or state["grad2d"].shape[0] != n:
            state["grad2d"], state["count"] = torch.zeros(n), torch.zeros(n)
        m2d = meta["means2d"]
        if m2d.grad is not None:
            g = m2d.grad[0].clone()  # [M, 2] pixels -> NDC units, as 3DGS
            g[:, 0] *= meta.get("width", 1) / 2.0
            g[:, 1] *= meta.get("height", 1) / 2.0
            seen = meta["radii"][0] > 0
            rows = torch.nonzero(seen).flatten()
            norms = g[rows].norm(dim=-1)
            index = meta.get("index")
            if index is not None:  # a culled render: only its rows are touched (O(M), not O(N))
                rows = index[rows]
            state["grad2d"].index_add_(0, rows, norms)
            state["count"].index_add_(0, rows, torch.ones_like(norms))
        if not self.refine_due(step):
            return {}
        out = self._refine(params, optimizer, state, extent, generator)
        state["grad2d"], state["count"] = None, None
        return out

    @torch.no_grad()
    def _refine(self, params: nn.ParameterDict, optimizer: torch.optim.Optimizer, state: dict,
                extent: float, generator: torch.Generator | None = None) -> dict[str, int]:
        n = params["means"].shape[0]
        avg = state["grad2d"] / state["count"].clamp_min(1)
        scales = params["log_scales"].exp()  # [N, 3]
        big = scales.max(-1).values > self.cfg.grow_scale * extent
        hot = avg > self.cfg.grad_threshold
        room = max(self.max_gaussians - n, 0)
        # Under the cap, the hottest Gaussians grow first.
        cand = torch.nonzero(hot).squeeze(-1)
        if cand.numel() > room:
            cand = cand[torch.argsort(avg[cand], descending=True)[:room]]
        clone, split = cand[~big[cand]], cand[big[cand]]
        new: dict[str, torch.Tensor] = {k: v[torch.cat([clone, split])].clone() for k, v in params.items()}
        if split.numel():
            # Split: sample the new centre inside the parent, shrink both by 1.6 (3DGS).
            s = scales[split]
            q = nn.functional.normalize(params["quats"][split], dim=-1)
            R = _quat_to_rot(q)  # [S, 3, 3]
            off = (R @ (torch.randn(s.shape, generator=generator) * s).unsqueeze(-1)).squeeze(-1)
            k = clone.numel()
            new["means"][k:] += off
            new["log_scales"][k:] -= torch.log(torch.tensor(1.6))
            params["log_scales"].data[split] -= torch.log(torch.tensor(1.6))
        if clone.numel() + split.numel():
            append_gaussians(params, optimizer, new)
        opa = torch.sigmoid(params["opacity_logits"])
        prune = (opa < self.cfg.prune_opacity) | (params["log_scales"].exp().max(-1).values > self.cfg.prune_scale * extent)
        if prune.any():
            remove_gaussians(params, optimizer, prune)
        return {"cloned": int(clone.numel()), "split": int(split.numel()), "pruned": int(prune.sum())}


def _quat_to_rot(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions q [N, 4] (w, x, y, z) -> rotation matrices [N, 3, 3]."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)

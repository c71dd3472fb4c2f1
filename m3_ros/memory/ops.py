"""Tensor surgery on Gaussian parameters that keeps each Adam state in step with its parameter.

Every parameter lives in one ParameterDict and has its own Adam param group named like it, so
adding or removing Gaussians edits the parameter and its exp_avg / exp_avg_sq together.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def make_optimizer(params: nn.ParameterDict, lrs: dict[str, float]) -> torch.optim.Adam:
    """One Adam with a param group per parameter name (eps 1e-15 as 3DGS)."""
    groups = [{"params": [p], "lr": lrs[name], "name": name} for name, p in params.items()]
    return torch.optim.Adam(groups, eps=1e-15)


@torch.no_grad()
def _update(params: nn.ParameterDict, optimizer: torch.optim.Optimizer,
            param_fn: Callable[[str, torch.Tensor], torch.Tensor],
            state_fn: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    for group in optimizer.param_groups:
        name = group["name"]
        old = group["params"][0]
        new = nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
        st = optimizer.state.pop(old, None)
        if st is not None:
            for k, v in st.items():
                # per-row state: the moments [N, ...] and optim.py's "last_step" [N]
                if k != "step" and torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == old.shape[0]:
                    st[k] = state_fn(name, v)
            optimizer.state[new] = st
        group["params"][0] = new
        params[name] = new


@torch.no_grad()
def append_gaussians(params: nn.ParameterDict, optimizer: torch.optim.Optimizer, new: dict[str, torch.Tensor]) -> None:
    """Append rows new[name] [M, ...] to every parameter; their Adam moments start at zero."""
    m = {int(v.shape[0]) for v in new.values()}
    if len(m) != 1 or set(new) != set(params.keys()):
        raise ValueError(f"append_gaussians needs one row count for every parameter {sorted(params.keys())}, "
                         f"got {({k: tuple(v.shape) for k, v in new.items()})}")
    _update(params, optimizer,
            lambda n, p: torch.cat([p, new[n].to(p.dtype)], 0),
            lambda n, v: torch.cat([v, v.new_zeros((new[n].shape[0], *v.shape[1:]))], 0))


@torch.no_grad()
def select_gaussians(params: nn.ParameterDict, optimizer: torch.optim.Optimizer, index: torch.Tensor) -> None:
    """Keep (and reorder/duplicate) rows by index [K] in every parameter and its Adam state."""
    _update(params, optimizer, lambda n, p: p[index].contiguous(), lambda n, v: v[index].contiguous())


@torch.no_grad()
def remove_gaussians(params: nn.ParameterDict, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> None:
    """Drop rows where mask [N] is True."""
    select_gaussians(params, optimizer, torch.nonzero(~mask).squeeze(-1))


@torch.no_grad()
def replace_values(params: nn.ParameterDict, optimizer: torch.optim.Optimizer, name: str, value: torch.Tensor) -> None:
    """Give parameter ``name`` new values of the same shape (a change of basis); its Adam moments,
    kept in the old basis, restart at zero."""
    if value.shape != params[name].shape:
        raise ValueError(f"{name}: new values have shape {tuple(value.shape)}, expected {tuple(params[name].shape)}")
    _update(params, optimizer, lambda n, p: value.clone() if n == name else p,
            lambda n, v: torch.zeros_like(v) if n == name else v)

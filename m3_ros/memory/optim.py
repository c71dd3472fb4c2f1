"""Selective (visible-row) Adam: one Adam step on the rows of the Gaussians a view can see.

gsplat's ``SelectiveAdam`` and Taming-3DGS's sparse Adam: the rows of Gaussians out of view keep
their values and both moments untouched (dense Adam would decay the moments and keep moving the
values along the old momentum), so a train step's optimiser cost follows the visible set, not N.

The state is torch Adam's own (per parameter: "step", "exp_avg", "exp_avg_sq", created lazily the
way torch creates it), so the optimiser stays a plain ``torch.optim.Adam``: ops.py's tensor surgery
keeps working, and a dense ``optimizer.step()`` can follow a selective one. The step count and the
bias correction are per parameter, shared by all rows (as gsplat), so on the rows of ``index`` the
update is torch's single-tensor Adam to the last rounding.
"""
from __future__ import annotations

import torch


def _check_group(group: dict) -> None:
    for key in ("weight_decay", "amsgrad", "maximize"):
        if group.get(key):
            raise ValueError(f"selective_adam_step supports plain Adam only; param group {group.get('name')!r} "
                             f"has {key}={group[key]!r}")


@torch.no_grad()
def selective_adam_step(optimizer: torch.optim.Adam, grads: dict[str, torch.Tensor],
                        index: torch.Tensor | None) -> None:
    """One Adam step on the rows ``index`` of each named parameter.

    Args:
        optimizer: torch Adam with one param group per parameter, named by ``group["name"]``
            (ops.make_optimizer's layout); a parameter p is [N, ...].
        grads: name -> gradient of those rows [M, ...] (M = len(index), or N when index is None);
            a name missing or None is skipped, as dense Adam skips a parameter without gradient.
        index: [M] distinct row indices (long), or None for all N rows (then the step is dense Adam's).
    """
    for group in optimizer.param_groups:
        g = grads.get(group["name"])
        if g is None:
            continue
        _check_group(group)
        p = group["params"][0]
        if g.shape[1:] != p.shape[1:] or g.shape[0] != (p.shape[0] if index is None else index.shape[0]):
            raise ValueError(f"{group['name']}: gradient of shape {tuple(g.shape)} for {p.shape[0]} rows of "
                             f"{tuple(p.shape[1:])} at {'all rows' if index is None else f'{index.shape[0]} rows'}")
        st = optimizer.state[p]
        if len(st) == 0:  # torch Adam's lazy init, so a dense step can take over the same state
            st["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["step"] += 1
        step = float(st["step"])
        b1, b2 = group["betas"]
        if index is None:  # in place on the whole tensors
            m, v, x = st["exp_avg"], st["exp_avg_sq"], p.data
        else:  # gathered copies of the visible rows, written back below
            m, v, x = st["exp_avg"][index], st["exp_avg_sq"][index], p.data[index]
        # torch's _single_tensor_adam, operation for operation
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / (1 - b2 ** step) ** 0.5).add_(group["eps"])
        x.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** step))
        if index is not None:
            st["exp_avg"].index_copy_(0, index, m)
            st["exp_avg_sq"].index_copy_(0, index, v)
            p.data.index_copy_(0, index, x)

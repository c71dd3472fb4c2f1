"""Selective (visible-row) Adam: one Adam step on the rows of the Gaussians a view can see.

gsplat's ``SelectiveAdam`` and Taming-3DGS's sparse Adam: the rows of Gaussians out of view keep
their values and both moments untouched (dense Adam would decay the moments and keep moving the
values along the old momentum), so a train step's optimiser cost follows the visible set, not N.

The state is torch Adam's own (per parameter: "step", "exp_avg", "exp_avg_sq", created lazily the
way torch creates it), so the optimiser stays a plain ``torch.optim.Adam``: ops.py's tensor surgery
keeps working, and a dense ``optimizer.step()`` can follow a selective one. The step count and the
bias correction are per parameter, shared by all rows (as gsplat), so on the rows of ``index`` the
update is torch's single-tensor Adam to the last rounding.

Catch-up (``catch_up=True``): frozen rows lose the momentum dense Adam keeps applying after a
gradient (about 1 / (1 - beta1 / sqrt(beta2)) ~ 10 steps' worth at beta 0.9 / 0.999); on a room
walk, where a Gaussian is in few views, that cost 0.3-0.4 dB of held-out PSNR at a fixed step
budget. With catch-up each row remembers the step it was last updated at ("last_step" [N]), and
``catch_up_rows`` applies the k zero-gradient steps it missed in closed form when it comes back
into view (values += what k decaying-momentum steps would have added, moments *= beta^k), so the
dynamics are dense Adam's while the cost stays per visible row. Rows out of view still keep their
stored values and moments bit-for-bit until then.
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
                        index: torch.Tensor | None, catch_up: bool = False) -> None:
    """One Adam step on the rows ``index`` of each named parameter.

    Args:
        optimizer: torch Adam with one param group per parameter, named by ``group["name"]``
            (ops.make_optimizer's layout); a parameter p is [N, ...].
        grads: name -> gradient of those rows [M, ...] (M = len(index), or N when index is None);
            a name missing or None is skipped, as dense Adam skips a parameter without gradient.
        index: [M] distinct row indices (long), or None for all N rows (then the step is dense Adam's).
        catch_up: record the step each row was updated at ("last_step" [N]) for ``catch_up_rows``;
            call that on the same rows before their forward pass.
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
        else:  # gathered copies of the visible rows, written back below (index_select: ~3x faster than [index] on CPU)
            m, v, x = (t.index_select(0, index) for t in (st["exp_avg"], st["exp_avg_sq"], p.data))
        # torch's _single_tensor_adam, operation for operation
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / (1 - b2 ** step) ** 0.5).add_(group["eps"])
        x.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** step))
        if index is not None:
            st["exp_avg"].index_copy_(0, index, m)
            st["exp_avg_sq"].index_copy_(0, index, v)
            p.data.index_copy_(0, index, x)
        if catch_up:
            if "last_step" not in st:
                st["last_step"] = torch.zeros(p.shape[0])
            if index is None:
                st["last_step"].fill_(step)
            else:
                st["last_step"].index_fill_(0, index, step)


@torch.no_grad()
def catch_up_rows(optimizer: torch.optim.Adam, index: torch.Tensor | None) -> None:
    """Bring the rows ``index`` [M] (all N when None) to where dense Adam would have them: the k
    zero-gradient steps each missed since its "last_step" (selective_adam_step with catch_up).

    Step t of those: m_t = beta1^j m, v_t = beta2^j v, value -= lr c(t) m_t / sqrt(v_t) with
    c(t) = sqrt(1 - beta2^t) / (1 - beta1^t), j = t - last. Summed: lr m / sqrt(v) sum_j rho^j c(t)
    with rho = beta1 / sqrt(beta2); c varies slowly next to rho^j, so it is taken once, at
    last + min(k, 10) (the weights' mean offset), leaving a geometric series. eps (1e-15) only
    guards m = v = 0.
    """
    for group in optimizer.param_groups:
        p = group["params"][0]
        st = optimizer.state.get(p)
        if not st or "last_step" not in st:
            continue
        _check_group(group)
        step = float(st["step"])
        last = st["last_step"] if index is None else st["last_step"].index_select(0, index)
        pend = torch.nonzero(last < step).flatten()  # rows with missed steps
        if len(pend) == 0:
            continue
        rows = pend if index is None else index[pend]
        last = last[pend]
        k = step - last  # [P]
        b1, b2 = group["betas"]
        rho = b1 / b2 ** 0.5
        t = last + k.clamp(max=10.0)
        c = (1 - b2 ** t).sqrt() / (1 - b1 ** t)
        series = rho * (1 - rho ** k) / (1 - rho) * c  # [P]
        m, v = st["exp_avg"].index_select(0, rows), st["exp_avg_sq"].index_select(0, rows)
        shape = (-1,) + (1,) * (m.dim() - 1)
        delta = m / (v.sqrt() + group["eps"]) * (group["lr"] * series).view(shape)
        p.data.index_copy_(0, rows, p.data.index_select(0, rows) - delta)
        st["exp_avg"].index_copy_(0, rows, m * (b1 ** k).view(shape))
        st["exp_avg_sq"].index_copy_(0, rows, v * (b2 ** k).view(shape))
        st["last_step"].index_fill_(0, rows, step)

"""bench_scale's train-step and query cost against map size: a walked memory cut down to the Gaussians one
keyframe view sees (20k) and padded with copies out of that view (200k), stepped in turn."""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import torch

from m3_ros.memory.memory import M3Memory
from m3_ros.memory.strategy import DensifyConfig
from m3_ros.memory.training import frustum_index
from m3_ros.pipeline import MemoryPipeline


def map_of(mem: M3Memory, view, n_visible: int, n_total: int, gen: torch.Generator) -> M3Memory:
    """A memory with n_visible Gaussians of mem that view can see plus (n_total - n_visible) copies of
    map Gaussians mirrored behind view's camera and jittered (out of view), view as its only keyframe."""
    st = mem.state_dict()
    P = st["params"]
    h, w = view.rgb.shape[:2]
    cfg = mem.cfg
    vis = frustum_index(mem.means, mem.scales, view.viewmat, view.K, w, h, cfg.near_plane, cfg.far_plane)
    vis = torch.arange(mem.n_gaussians) if vis is None else vis
    keep = vis[torch.randperm(len(vis), generator=gen)[:n_visible]]
    extra = n_total - len(keep)
    src = torch.randint(0, mem.n_gaussians, (extra,), generator=gen)
    parts = {k: [v[keep]] for k, v in P.items()}
    if extra > 0:
        R, t = view.viewmat[:3, :3], view.viewmat[:3, 3]
        pc = P["means"][src] @ R.T + t  # camera frame
        pc[:, 2] = -pc[:, 2].abs() - 0.3  # behind the camera
        pc += 0.01 * torch.randn(pc.shape, generator=gen)
        for k, v in P.items():
            parts[k].append(v[src].clone() if k != "means" else (pc - t) @ R)
    st["params"] = {k: torch.cat(v) for k, v in parts.items()}
    c = dataclasses.replace(cfg, max_gaussians=max(n_total, cfg.max_gaussians), densify=DensifyConfig(enabled=False))
    out = M3Memory.from_state(st, c)
    out._views = [view]  # one keyframe: every step draws the same view
    return out


def _adam(cfg, flip: bool = False) -> str:
    """The optimiser a train step uses under cfg (flip: the other one)."""
    if cfg.selective_adam != flip:
        return "selective Adam" + (", catch-up" if cfg.selective_adam_catch_up else ", frozen rows")
    return "dense Adam"


def _step_times(mem: M3Memory, steps: int) -> list[float]:
    """Wall time (ms) of each of `steps` train steps."""
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        mem.train_step()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def _rendered_count(mem: M3Memory) -> int:
    """Gaussians a train step on mem's first keyframe renders after culling."""
    v = mem._views[0]
    h, w = v.rgb.shape[:2]
    idx = frustum_index(mem.means, mem.scales, v.viewmat, v.K, w, h, mem.cfg.near_plane, mem.cfg.far_plane)
    return mem.n_gaussians if idx is None else int(len(idx))


def step_ms(mem: M3Memory, steps: int) -> float:
    """Median train-step wall time (ms)."""
    mem.train_step()  # warm-up
    return float(np.median(_step_times(mem, steps)))


def paired_step_ms(a: M3Memory, b: M3Memory, steps: int) -> tuple[float, float, float]:
    """Median step ms of a and of b, and the median of b / a over pairs, the two maps stepped in turn
    (a, b then b, a) so that a change of machine load between two blocks of steps does not land on one
    map only: two runs of the same code with a block per map gave ratios 1.03 and 1.31."""
    a.train_step(), b.train_step()  # warm-up
    ta, tb = [], []
    for i in range(steps):
        t = {id(m): _step_times(m, 1)[0] for m in ((a, b) if i % 2 == 0 else (b, a))}
        ta.append(t[id(a)])
        tb.append(t[id(b)])
    return float(np.median(ta)), float(np.median(tb)), float(np.median(np.array(tb) / np.array(ta)))


def costs(pipe: MemoryPipeline, dev_texts: list[str], n_steps: int) -> dict:
    """Train-step and query cost against map size, on the walked memory's last keyframe view."""
    gen = torch.Generator().manual_seed(0)
    view = pipe.memory._views[-1]
    m20 = map_of(pipe.memory, view, 20_000, 20_000, gen)
    m200 = map_of(pipe.memory, view, 20_000, 200_000, gen)
    load_steps = os.getloadavg()[0]
    s20, s200, pair_ratio = paired_step_ms(m20, m200, n_steps)
    vis20, vis200 = _rendered_count(m20), _rendered_count(m200)
    # the same map with the other optimiser (selective_adam flipped), then without culling
    m200.cfg.selective_adam = not m200.cfg.selective_adam
    m200._build_optimizers()
    s200_other = step_ms(m200, n_steps)
    m200.cfg.selective_adam = not m200.cfg.selective_adam
    m200._build_optimizers()
    m200.cfg.frustum_cull = False
    s200_all = step_ms(m200, max(2, n_steps // 3))
    m200.cfg.frustum_cull = True
    load_steps = f"{load_steps:.1f} -> {os.getloadavg()[0]:.1f}"
    walked = pipe.memory
    pipe.memory = m200
    pipe.ground(dev_texts[0])  # warm-up: the attention cache decodes every Gaussian once
    qt = []
    for t in dev_texts:
        t0 = time.perf_counter()
        try:
            pipe.ground(t)
        except ValueError:
            pass
        qt.append((time.perf_counter() - t0) * 1e3)
    pipe.memory = walked
    return {"s20": s20, "s200": s200, "pair_ratio": pair_ratio, "steps": n_steps, "qt": qt, "load_steps": load_steps,
            "default_adam": "selective" if m20.cfg.selective_adam else "dense",
            "rows": [["20k", m20.n_gaussians, vis20, _adam(m20.cfg), s20],
                     ["200k", m200.n_gaussians, vis200, _adam(m200.cfg), s200],
                     ["200k", m200.n_gaussians, vis200, _adam(m200.cfg, flip=True), s200_other],
                     ["200k, culling off", m200.n_gaussians, m200.n_gaussians, _adam(m200.cfg), s200_all]]}

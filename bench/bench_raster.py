"""Rasterizer benchmark: forward and forward+backward ms per backend x resolution x Gaussian count.

Scene: Gaussians seeded from a back-projected synthetic RGB-D view (floor, two walls, two
spheres), scale = nearest-neighbour distance, opacities 0.5-0.9, rendered from a nearby
camera with RGB + 16 query channels + expected depth ("RGB+ED", 20 output channels).

    .venv/bin/python bench/bench_raster.py [--quick]   # writes bench/results/raster.md
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, table, time_ms, write_report  # noqa: E402

from m3_ros.geometry import backproject, intrinsics_matrix  # noqa: E402
from m3_ros.memory import _raster_cpu  # noqa: E402
from m3_ros.memory.rasterize import rasterize  # noqa: E402

N_QUERY = 16
FOVY_DEG = 60.0


def intrinsics(width: int, height: int) -> np.ndarray:
    """Pinhole K [3, 3] for a 60-degree vertical field of view."""
    f = (height / 2) / math.tan(math.radians(FOVY_DEG) / 2)
    return intrinsics_matrix(f, f, width / 2, height / 2)


def synthetic_rgbd(width: int = 320, height: int = 240) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast a small room in the optical frame -> depth [H, W], rgb [H, W, 3], K [3, 3]."""
    K = intrinsics(width, height)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # [H, W, 3], d_z = 1
    t = np.full((height, width), np.inf)
    rgb = np.zeros((height, width, 3))

    def hit(tc: np.ndarray, color_fn) -> None:
        closer = (tc > 0.05) & (tc < t)
        t[closer] = tc[closer]
        p = d[closer] * tc[closer, None]
        rgb[closer] = color_fn(p)

    with np.errstate(divide="ignore", invalid="ignore"):
        hit(0.8 / d[..., 1], lambda p: 0.4 + 0.3 * ((np.floor(p[:, 0] * 2) + np.floor(p[:, 2] * 2)) % 2)[:, None])
        hit(np.full_like(t, 4.0), lambda p: np.stack([0.8 + 0 * p[:, 0], 0.6 + 0.2 * np.sin(p[:, 0] * 3), 0.5 + 0 * p[:, 0]], -1))
        hit(-1.5 / d[..., 0], lambda p: np.stack([0.3 + 0 * p[:, 0], 0.5 + 0.2 * np.cos(p[:, 2] * 2), 0.7 + 0 * p[:, 0]], -1))
        for centre, radius, col in (((0.3, 0.3, 2.5), 0.4, (0.9, 0.8, 0.1)), ((-0.6, 0.5, 3.0), 0.3, (0.2, 0.7, 0.3))):
            c = np.array(centre)
            b = d @ c
            dd = (d * d).sum(-1)
            disc = b * b - dd * (c @ c - radius**2)
            tc = np.where(disc > 0, (b - np.sqrt(np.maximum(disc, 0))) / dd, np.inf)
            hit(tc, lambda p, col=col: np.tile(np.array(col), (len(p), 1)))
    depth = np.where(np.isfinite(t), t, 0.0)
    return depth, rgb, K


def seed_gaussians(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n Gaussians on the back-projected surfaces (camera 0 = world), scales from NN distance."""
    depth, rgb, K = synthetic_rgbd()
    points, pixels = backproject(depth, K)  # [M, 3], [M, 2] (v, u)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(points), size=n, replace=len(points) < n)
    pts = points[pick] + rng.normal(scale=1e-3, size=(n, 3))
    dist, _ = cKDTree(pts).query(pts, k=2)
    nn = np.clip(dist[:, 1], 1e-3, 0.2)
    colors = np.concatenate([rgb[pixels[pick, 0], pixels[pick, 1]], rng.normal(size=(n, N_QUERY)) * 0.5], 1)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {
        "means": f(pts),
        "quats": f(rng.normal(size=(n, 4))),
        "scales": f(np.repeat(nn[:, None], 3, 1) * rng.uniform(0.7, 1.3, size=(n, 3))),
        "opacities": f(rng.uniform(0.5, 0.9, size=n)),
        "colors": f(colors),
    }


def camera(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A view near the seeding one: viewmats [1, 4, 4], Ks [1, 3, 3]."""
    T_world_cam = np.eye(4)
    T_world_cam[:3, :3] = Rotation.from_euler("xyz", [2.0, -4.0, 1.0], degrees=True).as_matrix()
    T_world_cam[:3, 3] = [0.1, -0.05, -0.1]
    viewmat = np.linalg.inv(T_world_cam)
    return torch.tensor(viewmat, dtype=torch.float32)[None], torch.tensor(intrinsics(width, height), dtype=torch.float32)[None]


def measure(backend: str, scene: dict[str, torch.Tensor], width: int, height: int,
            repeats: int) -> tuple[float, float, float]:
    """(forward ms, forward+backward ms, forward+backward CPU ms over all threads), medians.

    The loss is sum(w * colours) + sum(alphas). CPU ms is reported beside wall ms because a shared
    2-core machine under load stretches wall time (threads wait for each other), CPU time much less.
    """
    viewmats, Ks = camera(width, height)
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    weight = torch.rand(1, height, width, N_QUERY + 4, generator=torch.Generator().manual_seed(0))

    def forward() -> tuple[torch.Tensor, torch.Tensor, dict]:
        return rasterize(params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
                         viewmats, Ks, width, height, render_mode="RGB+ED", backend=backend)

    def fwd_only() -> None:
        with torch.no_grad():
            forward()

    def fwd_bwd() -> None:
        for p in params.values():
            p.grad = None
        render, alphas, meta = forward()
        ((render * weight).sum() + alphas.sum()).backward()

    fwd_ms = time_ms(fwd_only, repeats=repeats)
    fwd_bwd()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fwd_bwd()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return fwd_ms, sorted(wall)[len(wall) // 2], sorted(cpu)[len(cpu) // 2]


def run(quick: bool) -> tuple[list[str], dict[str, float]]:
    """Markdown lines (machine header + table) and the RESULT dict (fwd+bwd ms)."""
    if not _raster_cpu.available():
        raise RuntimeError(f"compiled CPU rasterizer unavailable: {_raster_cpu.load_error()}")
    load_before = os.getloadavg()[0]
    counts = [5000, 20000, 50000]
    resolutions = [(160, 120), (320, 240)]
    scenes = {n: seed_gaussians(n) for n in counts}
    rows, res = [], {}
    for backend in ("cpu", "torch"):
        for width, height in resolutions:
            for n in counts:
                if backend == "torch" and quick and (n == 50000 or (width, height) == (320, 240) and n != 20000):
                    continue
                reps = (9 if not quick else 5) if backend == "cpu" else (3 if not quick else 1)
                fwd, fb, fb_cpu = measure(backend, scenes[n], width, height, reps)
                rows.append([backend, f"{width}x{height}", n, fwd, fb, fb_cpu])
                res[f"{backend}_{width}x{height}_{n}"] = fb
    speedup = res["torch_160x120_20000"] / res["cpu_160x120_20000"]
    lines = ["## Rasterizer: forward / forward+backward, RGB + 16 query channels + expected depth", ""]
    lines += machine_header({"m3_ros_raster_cpu": "cached build"})
    lines += [f"- load average (1 min) at start / end: {load_before:.2f} / {os.getloadavg()[0]:.2f}"
              " (other processes on the 2 cores stretch the wall-clock columns)", ""]
    lines += table(["backend", "resolution", "N", "forward ms", "fwd+bwd ms", "fwd+bwd CPU ms (all threads)"], rows)
    lines += ["", f"- speed-up of the compiled kernel over the PyTorch reference, 160x120, 20k: {speedup:.1f}x",
              "- loss: sum(w * colours) + sum(alphas); times are medians; 'cpu' = compiled C++/OpenMP kernel,"
              " 'torch' = vectorised PyTorch reference"]
    result = {
        "raster_ms_160x120_20k": res["cpu_160x120_20000"],
        "reference_ms_160x120_20k": res["torch_160x120_20000"],
        "raster_ms_320x240_20k": res["cpu_320x240_20000"],
    }
    return lines, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats; reference only at 20k (and 5k at 160x120)")
    args = parser.parse_args()
    lines, result = run(args.quick)
    write_report("raster", "Rasterizer benchmark", lines, result)


if __name__ == "__main__":
    main()

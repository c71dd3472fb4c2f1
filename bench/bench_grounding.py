"""Grounding from the memory: rendered relevance (with / without the all-around refinement)
vs per-Gaussian decoding, on the sim walk.

Drives the same ``MemoryPipeline`` as the memory node, fed by ``SimWorld`` frames
(no ROS), then asks each object's query in both modes and measures 3D error and time.

    .venv/bin/python bench/bench_grounding.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, table, write_report  # noqa: E402

from m3_ros.grounding import GroundingConfig  # noqa: E402
from m3_ros.pipeline import MemoryPipeline, PipelineConfig  # noqa: E402
from m3_ros.sim.world import OracleNoise, SimWorld  # noqa: E402

QUERIES = {"duck": "yellow bath duck", "mug": "red coffee cup", "teddy": "teddy bear",
           "soccerball": "soccer ball", "lego": "blue toy brick", "tray": "serving tray"}


def walk_and_train(pipe: MemoryPipeline, world: SimWorld, frame_dt: float, train_s_per_frame: float,
                   noise: OracleNoise | None = None) -> dict:
    """Walk the whole path, offering every frame; train between frames; returns timings."""
    t0 = time.monotonic()
    n_frames = 0
    while not world.walk_done:
        world.advance(frame_dt)
        f = world.render()
        inst = world.oracle_instances(f, noise)
        taken = pipe.offer_frame(f.stamp, f.rgb, f.depth, f.K, f.T_world_cam, inst)
        pipe.train_for(train_s_per_frame)
        # wait for each keyframe's features: the memory then holds the same keyframes on every
        # run and machine (the node instead drops frames while extraction lags)
        while taken and not pipe.idle():
            pipe.train_for(0.05)
        n_frames += 1
    while not pipe.idle():  # let the worker finish and ingest what it extracted
        pipe.train_for(0.05)
    return {"frames": n_frames, "walk_wall_s": time.monotonic() - t0}


def run_seed(seed: int, extra_train_s: float, modes: dict, rows: list, errs: dict, times: dict,
             noise: OracleNoise | None = None) -> str:
    """Walk one scene layout, train, ground every object in every mode; returns a summary line."""
    # models first (the other order crashed until SimWorld imported triton before EGL, 2026-12-07)
    pipe = MemoryPipeline(PipelineConfig(models=["dinov2_s", "minilm_labels"]))
    pipe.load()
    with SimWorld("default", seed=seed) as world:
        walk = walk_and_train(pipe, world, frame_dt=0.2, train_s_per_frame=0.15, noise=noise)
        pipe.train_for(extra_train_s, max_steps=100000)
        truth = {o.name: o.aabb_center for o in world.objects()}
    st = pipe.stats()
    for mode, gcfg in modes.items():
        pipe.cfg.grounding = gcfg
        for name, q in QUERIES.items():
            if name not in truth:
                continue
            t0 = time.perf_counter()
            res = pipe.ground(q, top_k=1)
            ms = (time.perf_counter() - t0) * 1e3
            err = 100 * float(np.linalg.norm(res.points[0] - truth[name]))
            errs[mode].append(err)
            times[mode].append(ms)
            rows.append([seed, mode, name, q, f"{err:.1f}", f"{ms:.0f}", "yes" if err <= 5 else "no"])
    pipe.close()
    return (f"- seed {seed}: {walk['frames']} frames in {walk['walk_wall_s']:.1f} s wall, then {extra_train_s:.0f} s "
            f"more training; memory {st['keyframes']} keyframes, {st['gaussians']} Gaussians, "
            f"bank rows {st['bank_rows']}, {st['iteration']} train steps")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="scene seeds (layouts)")
    ap.add_argument("--noisy", action="store_true", help="imperfect detector: 30 %% misses, 2 px erosion, 30 %% synonyms")
    a = ap.parse_args()
    extra_train_s = 5.0 if a.quick else 20.0
    seeds = a.seeds or ([0, 1] if a.quick else [0, 1, 2])
    modes = {"render": GroundingConfig(mode="render"),
             "render_coarse": GroundingConfig(mode="render", refine_views=0),
             "gaussians": GroundingConfig(mode="gaussians"),
             "gaussians_unverified": GroundingConfig(mode="gaussians", verify_views=0)}
    rows, errs, times = [], {m: [] for m in modes}, {m: [] for m in modes}
    noise = OracleNoise(miss_rate=0.3, erode_px=2, synonym_rate=0.3) if a.noisy else None
    walks = [f"- detector: {'noisy oracle (30 % misses, 2 px erosion, 30 % synonyms)' if a.noisy else 'oracle'}"]
    for seed in seeds:
        walks.append(run_seed(seed, extra_train_s, modes, rows, errs, times, noise))
    summary = [[m, f"{np.median(errs[m]):.1f}", f"{np.mean(np.array(errs[m]) <= 5):.2f}", f"{np.median(times[m]):.0f}"]
               for m in errs]
    better = min(errs, key=lambda m: (-np.mean(np.array(errs[m]) <= 5), np.median(errs[m])))
    lines = machine_header() + [
        "", *walks, "",
        "Error = distance from the grounded point to the centre of the object's axis-aligned bounding box.", "",
        *table(["seed", "mode", "object", "query", "error cm", "ms", "within 5 cm"], rows), "",
        *table(["mode", "median error cm", "fraction within 5 cm", "median ms"], summary), "",
        f"better mode on this run: **{better}**",
    ]
    write_report("grounding_noisy" if a.noisy else "grounding", "Grounding: rendered relevance vs per-Gaussian decoding", lines, {
        **{f"{m}_median_cm": float(np.median(errs[m])) for m in modes},
        **{f"{m}_within5": float(np.mean(np.array(errs[m]) <= 5)) for m in modes},
        **{f"{m}_ms": float(np.median(times[m])) for m in modes},
        "better": better,
    })


if __name__ == "__main__":
    main()

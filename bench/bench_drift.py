"""Odometry drift with and without depth-to-map ICP (m3_ros.tracking), no foundation models.

Walks a generated dev scene with realistic sensors (2 % drift, 1 deg/sqrt(m) yaw walk, D435
depth noise, dropped frames), picks keyframes as the pipeline does (its KeyframeSelector and
max_depth), and compares each keyframe's camera position with the truth: ``off`` takes the
odometry pose, ``on`` the pose DriftTracker refines against the keyframes before it. Odometry
starts at the truth, so ``T_world_map`` is the identity.

    .venv/bin/python bench/bench_drift.py [--family two_tables] [--seeds 1]

Dev seeds only (< 100): the test seeds stay untouched for the evaluation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import machine_header, table, write_report  # noqa: E402
from m3_ros.pipeline import PipelineConfig  # noqa: E402
from m3_ros.sim.generate import resolve_scene  # noqa: E402
from m3_ros.sim.sensors import SensorConfig  # noqa: E402
from m3_ros.sim.world import SimWorld  # noqa: E402
from m3_ros.stream import KeyframeSelector  # noqa: E402
from m3_ros.tracking import DriftTracker  # noqa: E402


# what the table cannot say; the numbers come from the dev walks of seeds 1-3
NOTES = ["", (
    "Notes: frame-to-model ICP without a pose graph. Each keyframe aligns with the accumulated cloud, and "
    "ground seen for the first time enters that cloud at the keyframe's (drifted) pose, so a correction comes "
    "only where a keyframe sees older map (a table from another side). Where the odometry's increment between "
    "keyframes is below ICP's own noise on small curved objects, the tracker can follow or add drift (seed 3). "
    "Tried on these dev walks and not kept (mean cm): the full correction (gain 1: 16.2 on seed 1), planar ICP "
    "(yaw, x, y; gain 1, 3 cm voxels: 30.5 on seed 1), matching only points older than N keyframes "
    "(conditioning threshold 0.003; N = 5: 13.9 / 18.7 on seeds 1 / 3; over seeds 1-3, N = 9: 13.4, "
    "12: 6.4, 15: 7.0, 20: 14.3; no plateau, so no N is trusted), 6000 instead of 3000 ICP points "
    "(6.6 at 0.003, 6.3 at 0.01: the same, slower). A conditioning threshold of 0.01 instead of 0.003 "
    "gave 4.4 / 0.8 / 13.8 (6.3) but refuses exact box-on-floor views (test_tracking).")]


def walk(family: str, seed: int, dt: float = 0.25) -> dict:
    """Keyframe camera errors (cm, deg) of one walk, refinement off and on."""
    pcfg = PipelineConfig()
    tracker = DriftTracker(pcfg.tracking)
    sel = {"off": KeyframeSelector(pcfg.keyframes), "on": KeyframeSelector(pcfg.keyframes)}
    err = {"off": [], "on": []}
    rot = {"off": [], "on": []}
    icp_s: list[float] = []
    with SimWorld(resolve_scene(family, seed), seed=seed, sensors=SensorConfig.realistic()) as world:
        length = world.walk_length
        while not world.walk_done:
            world.advance(dt)
            f = world.render()
            if f.dropped:
                continue
            T_true = world.T_world_cam
            depth = np.where(np.isfinite(f.depth) & (f.depth <= pcfg.max_depth), f.depth, 0.0)
            for mode in ("off", "on"):
                T_guess = f.T_odom_cam if mode == "off" else tracker.predict(f.T_odom_cam)
                if not sel[mode].consider(f.stamp, T_guess):
                    continue
                T = T_guess
                if mode == "on":
                    t0 = time.perf_counter()
                    T, _ = tracker.track(depth, f.K, f.T_odom_cam)
                    icp_s.append(time.perf_counter() - t0)
                err[mode].append(100 * np.linalg.norm(T[:3, 3] - T_true[:3, 3]))
                rot[mode].append(np.degrees(Rotation.from_matrix(T[:3, :3].T @ T_true[:3, :3]).magnitude()))
    return {"length": length, "err": err, "rot": rot, "icp_ms": 1e3 * float(np.median(icp_s)), **tracker.stats()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="two_tables")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = ap.parse_args(argv)
    if any(s >= 100 for s in args.seeds):
        ap.error("dev seeds only (< 100): seeds >= 100 are the evaluation's test scenes")
    rows, all_err = [], {"off": [], "on": []}
    for seed in args.seeds:
        r = walk(args.family, seed)
        for mode in ("off", "on"):
            e, a = np.array(r["err"][mode]), np.array(r["rot"][mode])
            all_err[mode] += list(e)
            rows.append([f"{args.family} {seed}", f"{r['length']:.1f}", mode, len(e), float(np.mean(e)),
                         float(np.percentile(e, 90)), float(e.max()), float(e[-1]), float(np.mean(a)), float(a.max()),
                         f"{r['accepted']}/{r['accepted'] + r['refused']}" if mode == "on" else "-",
                         f"{r['icp_ms']:.0f}" if mode == "on" else "-"])
    sections = machine_header() + [
        "", f"Keyframe camera pose against the truth, realistic sensors, dev seeds {args.seeds}; "
        "`off`: odometry, `on`: DriftTracker (depth-to-map ICP, defaults of PipelineConfig.tracking).", "",
        *table(["scene seed", "walk m", "refine", "keyframes", "mean cm", "p90 cm", "max cm", "final cm",
                "mean deg", "max deg", "ICP accepted", "ms / keyframe"], rows),
        *NOTES]
    off, on = float(np.mean(all_err["off"])), float(np.mean(all_err["on"]))
    write_report("drift", "Odometry drift: depth-to-map ICP", sections,
                 {"cam_err_cm_off": off, "cam_err_cm_on": on})
    return 0


if __name__ == "__main__":
    sys.exit(main())

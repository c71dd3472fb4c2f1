"""Offline tools and load: m3-ros record-sim / build / query / info wall times, and how far the
memory node's training rate drops while 20 concurrent `ground` clients ask (real processes over DDS).

    .venv/bin/python bench/bench_offline.py [--quick]

--quick: a 10-frame 160x120 bag and 5 s of client load; default: a 40-frame 320x240 bag and 15 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, table, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
M3 = Path(sys.executable).parent / "m3-ros"


def timed(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([str(M3), *args], capture_output=True, text=True, timeout=1800,
                         env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    if out.returncode != 0:
        raise SystemExit(f"m3-ros {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, out.stdout


def cli_timings(d: Path, frames: int, width: int, height: int) -> tuple[list[list[object]], dict]:
    bag, mem = d / "bag", d / "memory"
    rows, res = [], {}
    t, _ = timed("record-sim", "--scene", "default", "--seed", "0", "--out", str(bag), "--width", str(width),
                 "--height", str(height), "--max-frames", str(frames))
    rows.append(["record-sim", f"{frames} frames {width}x{height}", t])
    t, out = timed("build", "--bag", str(bag), "--out", str(mem), "--quiet")
    rows.append(["build", out.strip()[len(f"built {mem}: "):], t])
    res["build_s"] = t
    t, out = timed("query", str(mem), "yellow bath duck", "--json")
    q = json.loads(out)
    truth = json.loads((bag / "ground_truth.json").read_text())
    duck = next(o["centre"] for o in truth["objects"] if o["name"] == "duck")
    err = sum((a - b) ** 2 for a, b in zip(q["points"][0], duck)) ** 0.5
    rows.append(["query (models load + ground)", f"duck error {100 * err:.1f} cm ({q['model']})", t])
    res["query_s"], res["duck_error_cm"] = t, 100 * err
    t, _ = timed("info", str(mem))
    rows.append(["info", "", t])
    t, _ = timed("render", str(mem), "--pose", "0", "-1.2", "0.6", "-0.70710678", "0", "0", "0.70710678",
                 "--out", str(d / "view.png"))
    rows.append(["render", "", t])
    return rows, res


def load(d: Path, load_s: float) -> tuple[list[list[object]], dict]:
    from m3_ros.procs import CONFIG_DIR, NodeProcess, ros_test_env, wait_for
    env = ros_test_env()
    mem_params = {"models": "[minilm_labels]", "channels": "[16]", "thetas": "[1.0]", "use_sim_time": True}
    with NodeProcess("memory_node", env, d / "logs", params_file=CONFIG_DIR / "m3.yaml", params=mem_params) as mem, \
            NodeProcess("sim_node", env, d / "logs", params_file=CONFIG_DIR / "sim.yaml",
                        params={"camera_width": 160, "camera_height": 120}):
        wait_for(lambda: "grounding text model" in mem.log_text(), 240, what="models")
        helper = ROOT / "test" / "nodes" / "many_clients.py"
        cmd = [sys.executable, str(helper), "--baseline-s", "6", "--rounds", "1", "--load-s", str(load_s)]
        res = {}
        for _ in range(60):  # until the memory answers (the first keyframes have been learnt)
            out = subprocess.run(cmd[:2] + ["--clients", "1", "--baseline-s", "0"], capture_output=True, text=True,
                                 timeout=300, env=env)
            if json.loads(out.stdout.strip().splitlines()[-1]).get("succeeded"):
                break
            time.sleep(1.0)
        out = subprocess.run(cmd + ["--clients", "20"], capture_output=True, text=True, timeout=900, env=env)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        alive = mem.alive()
    base, under = res["baseline_rate_hz"] or 0.0, res["load_rate_hz"] or 0.0
    drop = 100.0 * (1.0 - under / base) if base > 0 else float("nan")
    rows = [[f"20 clients, rounds back to back for {load_s:g} s", res["sent"], res["answered"], res["succeeded"],
             base, under, f"{drop:.0f} %", max(res["round_s"]), alive]]
    return rows, {"answered": f"{res['answered']}/{res['sent']}", "train_hz_alone": base, "train_hz_20_clients": under,
                  "train_rate_drop_pct": drop}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    frames, w, h, load_s = (10, 160, 120, 5.0) if a.quick else (40, 320, 240, 15.0)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cli_rows, cli_res = cli_timings(d, frames, w, h)
        load_rows, load_res = load(d, load_s)
    sections = ["## Machine", *machine_header(), "",
                "## m3-ros wall times (each a fresh process: interpreter, torch and models load included)",
                *table(["command", "what", "wall s"], cli_rows), "",
                "## memory_node training rate with 20 concurrent ground clients (sim_node walking, label model)",
                *table(["load", "calls", "answered", "succeeded", "train Hz alone", "train Hz under load",
                        "drop", "slowest round s", "node alive"], load_rows), "",
                "Queries read the memory's published snapshot and never wait for a train step; training yields "
                "the CPU to them by design (its thread runs at a lower OS priority, PipelineConfig.train_nice, and "
                "starts no new step while a query runs, queries_first), so back-to-back rounds of 20 calls leave "
                "it a few steps; a step that has waited PipelineConfig.train_max_wait_s (1 s) runs at the "
                "process's priority, and the node's GIL switch interval is 0.5 ms (at Python's 5 ms each of a "
                "step's torch ops waited for the executor's thread: 0.21 Hz under load on 2026-12-04); every call "
                "is answered. The rates are the published memory/status rate, which "
                "before 2026-12-04 counted wrongly (a shared counter lost its resets: 8.8 / 1.5 Hz reported on "
                "2026-12-03 were inflated)."]
    write_report("offline", "Offline tools and load", sections, {**cli_res, **load_res})


if __name__ == "__main__":
    main()

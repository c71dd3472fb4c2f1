"""The full robot loop in the simulator, as real processes over loopback DDS.

Two scenes: the default table with ideal sensors and the oracle detector, and a generated
table (dev seed 1) with realistic sensors: depth noise, odometry drift, dropped frames and
the noisy detector (misses, eroded masks, synonyms), asked with a dev phrasing of the target.

sim_node + memory_node + grasp_planner_node with config/sim.yaml and config/m3.yaml
(the same entry points and parameter files as launch/sim_demo.launch.py), a walk
around the table, then "yellow bath duck": the answer must lie within 5 cm of the
duck's true centre, the grasp action must lift the duck, and the nodes run on the
simulator's /clock (use_sim_time), as the launch file runs them.
"""
import json

import pytest

from m3_ros.nodes.demo import run

# The generated scene's truth is published in odom through the odometry error, so the 5 cm is
# judged where the robot thinks things are, as a user of the memory sees it.
SCENES = {"default_ideal": {}, "table_seed1_realistic": {"scene": "table", "seed": 1, "sensors": "realistic"}}


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_full_loop_grounds_and_grasps_the_target(tmp_path, scene):
    out = tmp_path / "demo"
    report = run(out, sim_params=SCENES[scene], settle_s=2.0)
    assert report["keyframes"] > 0 and report["gaussians"] > 0
    assert report["error_cm"] <= 5.0, report
    assert report["grasp"] == "success", report
    assert report["grasped_object"] == report["target"]
    assert report["go_to"] == (scene != "default_ideal")
    if report["go_to"]:  # standing at the grasp base, the planner found the answer again in view (ground_in_view)
        assert report["grasp_in_view"] and report["grasp_on_depth"], report
    # the planner's plan-only service answered the same query before the action ran
    assert report["plan_grasp"]["success"] and "planned on" in report["plan_grasp"]["message"], report
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

"""sim_node as a real process, read by a real subscriber process (test/sim/probe_sub.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from m3_ros.geometry import backproject, pose_to_matrix
from m3_ros.procs import CONFIG_DIR, NodeProcess, ros_test_env

PROBE = Path(__file__).resolve().parent / "probe_sub.py"
TABLE_TOP = 0.375


def test_sim_node_topics_are_consistent_and_grasp_over_ros(tmp_path):
    env = ros_test_env()
    out = tmp_path / "probe.npz"
    with NodeProcess("sim_node", env, tmp_path, params_file=CONFIG_DIR / "sim.yaml",
                     params={"real_time_factor": 0.0, "camera_rate_hz": 4.0}) as sim:
        probe = subprocess.run([sys.executable, str(PROBE), str(out), "4", "duck"], env=env,
                               capture_output=True, text=True, timeout=150)
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert sim.alive(), sim.log_text()[-2000:]
        log = sim.log_text()
    assert "renderer" in log  # the choice (egl / tiny) is logged
    d = dict(np.load(out))
    assert "rgb3" in d, f"fewer than 4 complete frames; node log:\n{log[-2000:]}"
    assert list(d["mount_frames"]) == ["base_link", "camera_color_optical_frame"]
    assert list(d["walk"])[-1] == "done" and "walking" in list(d["walk"])
    T_base_cam = pose_to_matrix(d["mount"][:3], d["mount"][3:])
    for i in range(4):
        rgb, depth, seg, K = d[f"rgb{i}"], d[f"depth{i}"], d[f"seg{i}"], d[f"K{i}"]
        assert rgb.shape == (240, 320, 3) and depth.shape == (240, 320) == seg.shape
        assert list(d[f"encodings{i}"]) == ["rgb8", "32FC1", "32SC1", "camera_color_optical_frame",
                                            "odom", "base_link"]
        assert rgb.std() > 10 and np.isfinite(depth).all() and (depth > 0).mean() > 0.5
        objects = dict(s.split(":") for s in d[f"objects{i}"])
        assert {"duck", "mug", "teddy", "soccerball", "lego", "tray", "table"} <= set(objects)
        labels = {int(s.split(":", 1)[0]) for s in d[f"labels{i}"]}
        assert labels and labels <= set(np.unique(seg).tolist())
        # The table top back-projects to its true height through odom @ mount @ K.
        T_odom_cam = pose_to_matrix(d[f"odom{i}"][:3], d[f"odom{i}"][3:]) @ T_base_cam
        H, W = depth.shape
        P = np.zeros((H, W, 3))
        pts, vu = backproject(depth, K, T_odom_cam)
        P[vu[:, 0], vu[:, 1]] = pts  # [H, W, 3] odom points
        normal = np.cross(np.diff(P, axis=1)[:-1], np.diff(P, axis=0)[:, :-1])  # [H-1, W-1, 3]
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
        table = ndimage.binary_erosion(seg == int(objects["table"]), iterations=2)[:-1, :-1]
        # The table's upward faces: its top, not the slab's edge band or the legs.
        top = table & (np.abs(normal[..., 2]) > 0.95) & (depth[:-1, :-1] > 0)
        assert top.sum() > 300
        err = np.abs(P[:-1, :-1][top][:, 2] - TABLE_TOP)
        assert np.median(err) < 0.003 and np.mean(err <= 0.01) > 0.99, (i, np.median(err), np.mean(err <= 0.01))
    assert bool(d["grasp_success"]) and str(d["grasp_object"]) == "duck", str(d["grasp_message"])
    assert float(d["grasp_lift"]) >= 0.10

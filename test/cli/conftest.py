"""One small simulator bag and one memory built from it, shared by the CLI tests (real sim, real models)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
M3 = Path(sys.executable).parent / "m3-ros"
# A Go2 + RealSense-like naming: the bag is recorded with these names and built with the same remap.
REMAP = ["color=/camera/camera/color/image_raw", "depth=/camera/camera/aligned_depth_to_color/image_raw",
         "camera_info=/camera/camera/color/camera_info", "odom=/utlidar/robot_odom"]


def m3(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed .venv/bin/m3-ros (what a user runs after scripts/setup.sh)."""
    assert M3.is_file(), f"{M3} is missing: scripts/setup.sh installs it"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([str(M3), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check:
        assert out.returncode == 0, f"m3-ros {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def sim_bag(tmp_path_factory) -> Path:
    bag = tmp_path_factory.mktemp("cli") / "bag"
    m3("record-sim", "--scene", str(ROOT / "config/scenes/default.yaml"), "--seed", "1", "--out", str(bag),
       "--width", "160", "--height", "120", "--max-frames", "10", "--topics", *REMAP)
    return bag


@pytest.fixture(scope="session")
def built_memory(sim_bag, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "memory"
    m3("build", "--bag", str(sim_bag), "--out", str(out), "--topics", *REMAP, "--models", "dinov2_s", "minilm_labels",
       "--steps-per-keyframe", "10",
       "--final-steps", "30", "--quiet")
    return out


def ground_truth(bag: Path) -> dict:
    return json.loads((bag / "ground_truth.json").read_text())

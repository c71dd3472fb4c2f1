"""Real processes over DDS on loopback: a GroundQuery call and an Image + Odometry stream."""
import json
import subprocess
import sys
from pathlib import Path

from m3_ros.procs import CONFIG_DIR, NodeProcess

HERE = Path(__file__).resolve().parent


def run_json(args: list[str], timeout: float = 90) -> dict:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from {args}: rc={out.returncode}\n{out.stdout}\n{out.stderr[-2000:]}"
    return json.loads(lines[-1])


def test_ground_query_crosses_processes(tmp_path):
    """A memory_node process answers GroundQuery calls from another process with clear errors."""
    import os
    with NodeProcess("memory_node", dict(os.environ), tmp_path, params_file=CONFIG_DIR / "m3.yaml") as node:
        empty = run_json([str(HERE / "ground_client.py"), "--query", "   "])
        assert empty["success"] is False
        assert "empty" in empty["message"]
        long_q = run_json([str(HERE / "ground_client.py"), "--query", "duck " * 100])
        assert long_q["success"] is False and "at most 200" in long_q["message"]
        duck = run_json([str(HERE / "ground_client.py"), "--query", "yellow bath duck"])
        assert duck["success"] is False
        # no keyframe has arrived: either the models are still loading or the memory is empty
        assert "not ready" in duck["message"] or "memory is empty" in duck["message"]
        bad_frame = run_json([str(HERE / "ground_client.py"), "--query", "duck", "--frame", "moon"])
        assert bad_frame["success"] is False and "unknown frame 'moon'" in bad_frame["message"]
        assert node.alive(), node.log_text()


def test_image_and_odometry_cross_processes():
    """A publisher process sends 20 images + 20 odometry messages; a subscriber process gets all, intact."""
    sub = subprocess.Popen([sys.executable, str(HERE / "image_odom_peer.py"), "sub", "--n", "20"],
                           stdout=subprocess.PIPE, text=True)
    pub = run_json([str(HERE / "image_odom_peer.py"), "pub", "--n", "20"])
    out, _ = sub.communicate(timeout=60)
    got = json.loads(out.strip().splitlines()[-1])
    assert pub == {"published": 20}
    assert got["images"] == 20 and got["odom"] == 20
    assert got["bad"] == 0
    assert sorted(got["stamps"]) == list(range(20))

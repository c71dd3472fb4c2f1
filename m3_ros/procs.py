"""Start package nodes as separate processes (what `ros2 launch` does on a ROS machine).

`launch`/`launch_ros` cannot be installed here, so the demo and the integration tests
start the same node entry points with the same parameter files through this module.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PACKAGE_ROOT / "config"


def ros_test_env(domain_id: int | None = None) -> dict[str, str]:
    """Environment for an isolated run: its own ROS_DOMAIN_ID, discovery on loopback only."""
    env = dict(os.environ)
    if domain_id is None:
        domain_id = random.SystemRandom().randint(1, 200)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Several node processes share 2 cores: spinning OpenMP workers would steal them from each other.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def node_command(node: str, params_file: str | Path | None = None,
                 params: dict[str, object] | None = None,
                 remaps: dict[str, str] | None = None) -> list[str]:
    """Command line for one node entry point (``m3_ros.nodes.<node>:main``) with ROS args."""
    cmd = [sys.executable, "-m", f"m3_ros.nodes.{node}", "--ros-args"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for k, v in (params or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        cmd += ["-p", f"{k}:={v}"]
    for a, b in (remaps or {}).items():
        cmd += ["-r", f"{a}:={b}"]
    return cmd


class NodeProcess:
    """One node process; output goes to a log file. Use as a context manager."""

    def __init__(self, node: str, env: dict[str, str], log_dir: str | Path,
                 params_file: str | Path | None = None, params: dict[str, object] | None = None,
                 remaps: dict[str, str] | None = None, name: str | None = None):
        self.name = name or node
        self.log_path = Path(log_dir) / f"{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            node_command(node, params_file, params, remaps), env=env, cwd=PACKAGE_ROOT,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (clean rclpy shutdown), then SIGKILL of the whole process group."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll ``predicate()`` until true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")

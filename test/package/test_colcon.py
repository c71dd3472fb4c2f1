"""What a ROS 2 user does: colcon build the package in a workspace, source it, run a node."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
PACKAGE_FILES = ["package.xml", "CMakeLists.txt", "setup.py", "resource", "m3_ros", "msg", "srv", "action", "launch",
                 "config"]


def test_colcon_build_and_run_installed_node(tmp_path):
    src = tmp_path / "ws" / "src" / "m3_ros"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, src / name)
    ws = tmp_path / "ws"
    env = dict(os.environ)
    env.update(AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}:{env['PATH']}")
    build = subprocess.run(
        [str(VENV / "bin" / "colcon"), "build", "--cmake-args", f"-DPython3_EXECUTABLE={VENV / 'bin' / 'python'}",
         "-DBUILD_TESTING=OFF"], cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    exe = ws / "install" / "m3_ros" / "lib" / "m3_ros" / "memory_node"
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert (ws / "install" / "m3_ros" / "share" / "m3_ros" / "launch" / "m3.launch.py").is_file()

    sourced = f"source {ws / 'install' / 'setup.bash'} && "
    # in the sourced environment the package resolves to the install space, not the checkout
    where = subprocess.run(["bash", "-c", sourced + "cd / && python -c 'import m3_ros.nodes.memory_node as m, m3_ros.srv as s; print(m.__file__); print(s.__file__)'"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr[-2000:]
    assert str(ws / "install") in where.stdout.splitlines()[0], where.stdout

    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(["bash", "-c", sourced + f"exec {exe} --ros-args -p models:=[dinov2_s] -p channels:=[8] -p thetas:=[0.75]"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
    try:
        out = subprocess.run(["bash", "-c", sourced + f"cd / && python {ROOT / 'test' / 'nodes' / 'ground_client.py'} --query 'yellow bath duck'"],
                             env=env, capture_output=True, text=True, timeout=120)
        res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
        assert res.get("success") is False, res
        assert "not ready" in res["message"] or "memory is empty" in res["message"] or "no text model" in res["message"], res
        assert node.poll() is None, (tmp_path / "node.log").read_text()
    finally:
        os.killpg(node.pid, 2)
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, 9)
            node.wait()
        log.close()

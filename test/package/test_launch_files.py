"""Launch files checked as source (launch/launch_ros cannot be installed here).

Every Node(...) a launch file starts must be a real entry point of this package (CMake
executable, setup.py console script, and a module with main()), and every parameter
file it names must exist, parse, and hold only parameters the node declares.
"""
import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def cmake_nodes() -> set[str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"set\(M3_ROS_NODES ([^)]*)\)", text)
    return set(m.group(1).split())


def setup_nodes() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NODES":
            return {elt.value for elt in node.value.elts}
    raise AssertionError("setup.py has no NODES list")


def launched_nodes(path: Path) -> list[dict]:
    """Keyword arguments of each Node(...) call, literal strings only."""
    out = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Node":
            kw = {k.arg: k.value for k in call.keywords}
            out.append({"package": ast.literal_eval(kw["package"]),
                        "executable": ast.literal_eval(kw["executable"]),
                        "name": ast.literal_eval(kw["name"]) if "name" in kw else None})
    return out


def param_files(path: Path, suffix: str = ".yaml") -> list[Path]:
    """Files named as os.path.join(<share>, "config", "<file><suffix>")."""
    files = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "join":
            parts = [a.value for a in call.args if isinstance(a, ast.Constant)]
            if parts and str(parts[-1]).endswith(suffix):
                files.append(ROOT.joinpath(*parts))
    return files


def test_rviz_is_started_with_an_existing_config():
    for path in LAUNCH_FILES:
        if any(n["package"] == "rviz2" for n in launched_nodes(path)):
            configs = param_files(path, ".rviz")
            assert configs and all(c.is_file() for c in configs), path.name
            for c in configs:
                displays = yaml.safe_load(c.read_text())["Visualization Manager"]["Displays"]
                topics = {d["Topic"]["Value"] for d in displays if "Topic" in d}
                assert {"/memory/gaussians", "/memory/relevance_image", "/memory/grounded_markers",
                        "/grasp/marker"} <= topics
                assert any(d["Class"].endswith("/TF") for d in displays)


def test_there_are_launch_files():
    names = {p.name for p in LAUNCH_FILES}
    assert {"m3.launch.py", "sim_demo.launch.py"} <= names


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_nodes_are_entry_points(path):
    nodes = [n for n in launched_nodes(path) if n["package"] != "rviz2"]
    assert nodes, f"{path.name} starts no node"
    for n in nodes:
        assert n["package"] == "m3_ros"
        assert n["executable"] in cmake_nodes(), f"{n['executable']} is not installed by CMakeLists.txt"
        assert n["executable"] in setup_nodes(), f"{n['executable']} is not a console script in setup.py"
        mod = importlib.import_module(f"m3_ros.nodes.{n['executable']}")
        assert callable(getattr(mod, "main", None))


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_parameter_files_parse_and_match_nodes(path):
    files = param_files(path)
    assert files, f"{path.name} names no parameter file"
    nodes = [n for n in launched_nodes(path) if n["package"] != "rviz2"]
    for f in files:
        assert f.is_file(), f"{path.name} names {f}, which does not exist"
        data = yaml.safe_load(f.read_text())
        assert isinstance(data, dict) and data
        for node_name, section in data.items():
            assert "ros__parameters" in section, f"{f.name}:{node_name} lacks ros__parameters"
        for n in nodes:
            if n["name"] not in data:
                continue
            declared = importlib.import_module(f"m3_ros.nodes.{n['executable']}").PARAMS
            unknown = set(data[n["name"]]["ros__parameters"]) - set(declared) - {"use_sim_time"}
            assert not unknown, f"{f.name}:{n['name']} sets undeclared parameters {sorted(unknown)}"
    # every node started with a parameter file finds its own section in one of them
    sections = set().union(*(yaml.safe_load(f.read_text()).keys() for f in files))
    assert {n["name"] for n in nodes} <= sections


def test_launch_files_are_valid_python_with_generate_function():
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text())
        fns = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in fns, path.name


def test_memory_node_sets_icp_prior_from_the_odometry_spec():
    from m3_ros.nodes.memory_params import PARAMS, odometry_prior

    prior = odometry_prior(PARAMS)
    assert prior is not None and prior.trans_frac == PARAMS["odom_drift_frac"]
    assert prior.yaw_deg_per_sqrt_m == PARAMS["odom_yaw_deg_per_sqrt_m"]
    assert odometry_prior({**PARAMS, "odom_drift_frac": 0.0}) is None
    wider = odometry_prior({**PARAMS, "odom_drift_frac": 0.05}).information(2.0)
    assert wider[3, 3] < prior.information(2.0)[3, 3]  # a worse odometry pulls ICP less in x

"""m3-ros end to end: record a simulator bag, build a memory from it, query, render and inspect it."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import M3, REMAP, ground_truth, m3


def test_record_sim_writes_a_rosbag2_with_every_stream(sim_bag):
    from rosbags.rosbag2 import Reader
    truth = ground_truth(sim_bag)
    assert set(truth) == {"frame_id", "objects"} and truth["frame_id"] == "odom"
    assert all(set(o) == {"name", "description", "centre"} and len(o["centre"]) == 3 for o in truth["objects"])
    assert "duck" in {o["name"] for o in truth["objects"]}
    with Reader(sim_bag) as r:
        types = {c.topic: c.msgtype for c in r.connections}
        counts = {c.topic: c.msgcount for c in r.connections}
    assert types["/tf"] == types["/tf_static"] == "tf2_msgs/msg/TFMessage"
    assert types["/camera/instances"] == "m3_ros/msg/LabeledInstanceArray"
    assert types["/utlidar/robot_odom"] == "nav_msgs/msg/Odometry"
    assert types["/clock"] == "rosgraph_msgs/msg/Clock"
    assert types["/camera/mount"] == "geometry_msgs/msg/TransformStamped"
    for topic in ("/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw",
                  "/camera/camera/color/camera_info", "/camera/instances"):
        assert counts[topic] == 10, (topic, counts)
    assert counts["/tf"] == counts["/utlidar/robot_odom"] > 10 and counts["/tf_static"] == 1


def test_build_then_query_json_finds_the_duck(sim_bag, built_memory, tmp_path):
    png = tmp_path / "rel.png"
    out = m3("query", str(built_memory), "yellow bath duck", "--json", "--top-k", "2", "--png", str(png))
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # one JSON object on stdout, logs on stderr
    res = json.loads(lines[0])
    assert set(res) == {"frame_id", "points", "scores", "model"}
    assert res["frame_id"] == "odom" and res["model"] == "minilm_labels"
    assert 1 <= len(res["points"]) <= 2 and len(res["scores"]) == len(res["points"])
    assert res["scores"] == sorted(res["scores"], reverse=True)
    duck = next(o for o in ground_truth(sim_bag)["objects"] if o["name"] == "duck")
    err = np.linalg.norm(np.array(res["points"][0]) - duck["centre"])
    assert err < 0.08, (res, duck)
    assert Image.open(png).size == (320, 120)  # rendered view | relevance, side by side


def test_render_and_info(built_memory, tmp_path):
    info = json.loads(m3("info", str(built_memory), "--json").stdout)
    assert info["format_version"] == 3 and info["frames"] >= 3 and info["gaussians"] > 1000
    assert info["models"]["minilm_labels"]["rows"] > 0 and info["models"]["dinov2_s"]["rows"] > 0
    assert info["complete"] is True and info["size_bytes"] > 0
    # A camera 1.2 m in front of the table looking along +y (optical z = world +y, y = down).
    q = [-0.70710678, 0.0, 0.0, 0.70710678]
    render = tmp_path / "view.png"
    m3("render", str(built_memory), "--pose", "0.0", "-1.2", "0.6", *map(str, q), "--out", str(render))
    img = np.asarray(Image.open(render))
    assert img.shape == (120, 160, 3) and img.std() > 5  # the scene, not a blank image


def test_build_resumes_after_being_killed(sim_bag, tmp_path):
    out = tmp_path / "memory"
    cmd = [str(M3), "build", "--bag", str(sim_bag), "--out", str(out), "--topics", *REMAP,
           "--models", "minilm_labels", "--steps-per-keyframe", "5", "--final-steps", "5", "--checkpoint-every", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    try:
        import time
        deadline = time.monotonic() + 240
        while not (out / "meta.json").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no chance to save: only the periodic checkpoint survives
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["extra"]["build"]["complete"] is False and meta["extra"]["build"]["next_frame"] >= 1
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"from frame {meta['extra']['build']['next_frame']}/10" in res.stderr
    done = json.loads((out / "meta.json").read_text())["extra"]["build"]
    assert done["complete"] is True and done["next_frame"] == 10
    assert done["keyframes"] > meta["extra"]["build"]["keyframes"]


def test_build_names_a_missing_topic(sim_bag, tmp_path):
    res = m3("build", "--bag", str(sim_bag), "--out", str(tmp_path / "m"), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no color topic '/camera/color/image_raw'" in res.stderr and "--topics color=" in res.stderr


NO_ROS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'rclpy', 'sensor_msgs', 'geometry_msgs', 'nav_msgs', 'std_msgs',
                                  'builtin_interfaces', 'tf2_msgs', 'rosbag2_py'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from m3_ros.cli.bag import BagReader, parse_topics
from m3_ros.nodes import convert
r = BagReader(sys.argv[1], parse_topics(sys.argv[2:]))
odom, infos, static, mount = r.side_streams()
K = convert.intrinsics_from_camera_info(infos[0])
n = 0
for f in r.frames():
    rgb, d = convert.rgb_from_image(f.color), convert.depth_from_image(f.depth)
    assert rgb.shape == (120, 160, 3) and d.shape == (120, 160) and len(f.instances.instances) > 0
    n += 1
T = convert.transform_msg_to_matrix(mount.transform)
print(n, len(odom), round(float(K[0, 0]), 3), static.lookup("base_link", "camera_color_optical_frame").round(6).tolist() == T.round(6).tolist())
"""


def test_bags_read_without_ros(sim_bag):
    """The offline reader needs rosbags only: every ROS Python package is blocked from importing."""
    out = subprocess.run([sys.executable, "-c", NO_ROS, str(sim_bag), *REMAP], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    n, n_odom, fx, mount_matches_tf_static = out.stdout.split()
    assert int(n) == 10 and int(n_odom) > 10 and float(fx) > 0 and mount_matches_tf_static == "True"

"""The vendored tf2_msgs/TFMessage has ROS's own type hash; the Grasp action is importable."""
import json
from pathlib import Path

import tf2_msgs

# ros2/geometry2 (jazzy), rosidl's golden hash for tf2_msgs/msg/TFMessage.
TF_MESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"


def _share(pkg_module) -> Path:
    # <prefix>/lib/python3.X/site-packages/<pkg> -> <prefix>/share/<pkg>
    return Path(pkg_module.__file__).resolve().parents[4] / "share" / pkg_module.__name__


def test_tf_message_type_hash_matches_ros():
    desc = json.loads((_share(tf2_msgs) / "msg" / "TFMessage.json").read_text())
    hashes = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}
    assert hashes["tf2_msgs/msg/TFMessage"] == TF_MESSAGE_HASH


def test_grasp_action_fields():
    from m3_ros.action import Grasp
    goal, result, fb = Grasp.Goal(), Grasp.Result(), Grasp.Feedback()
    assert hasattr(goal, "query") and hasattr(goal, "target")
    assert {"success", "object", "message", "grasp", "lift_height"} <= set(result.get_fields_and_field_types())
    assert {"stage", "message"} <= set(fb.get_fields_and_field_types())

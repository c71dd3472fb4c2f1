"""The labelled voxel map: majority votes per voxel, text queries through the real MiniLM encoder."""
import numpy as np
import pytest

from m3_ros.baselines.voxel_labels import VoxelLabelConfig, VoxelLabelMap
from m3_ros.foundation.config import FoundationConfig
from m3_ros.foundation.labels import load_label_model
from m3_ros.geometry import look_at
from m3_ros.types import Instance

W, H = 80, 60
K = np.array([[60.0, 0, (W - 1) / 2], [0, 60.0, (H - 1) / 2], [0, 0, 1]])
# two boxes on the floor (z = 0): the duck around (0.3, 0), the mug around (-0.3, 0.1)
BOXES = {"duck": (np.array([0.3, 0.0]), 0.06), "mug": (np.array([-0.3, 0.1]), 0.05)}


@pytest.fixture(scope="module")
def label_model():
    return load_label_model(FoundationConfig())


def _frame(eye: np.ndarray, labels: dict[str, str]):
    """Ray-cast the floor from a camera looking at the origin: depth and one mask per box."""
    T = look_at(eye, np.zeros(3))
    v, u = np.mgrid[0:H, 0:W]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    d_world = rays @ T[:3, :3].T
    t = -T[2, 3] / d_world[..., 2]  # hit z = 0
    hit = T[:3, 3] + t[..., None] * d_world
    depth = (t * 1.0).astype(np.float32)  # rays have z = 1 in the camera frame: t is the depth
    inst = []
    for i, (name, (c, half)) in enumerate(BOXES.items()):
        m = (np.abs(hit[..., 0] - c[0]) < half) & (np.abs(hit[..., 1] - c[1]) < half)
        inst.append(Instance(mask=m, label=labels[name], id=i + 1))
    return depth, T, inst


def test_majority_vote_and_text_query(label_model):
    vmap = VoxelLabelMap(VoxelLabelConfig(voxel=0.02, stride=1))
    eyes = [np.array([1.2 * np.cos(a), 1.2 * np.sin(a), 1.0]) for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    for i, eye in enumerate(eyes):
        # one frame in six the detector swaps the labels: the majority must still hold
        labels = {"duck": "a yellow rubber duck toy", "mug": "a red coffee mug"}
        if i == 2:
            labels = {"duck": "a red coffee mug", "mug": "a yellow rubber duck toy"}
        depth, T, inst = _frame(eye, labels)
        vmap.integrate(depth, K, T, inst)
    assert vmap.frames == len(eyes)
    for query, name in [("the bath duckie", "duck"), ("something to drink coffee from", "mug")]:
        emb = label_model.encode_text([query])[0]
        ans = vmap.ground(emb, label_model.encode_labels, top_k=2)
        err = np.linalg.norm(ans.points[0][:2] - BOXES[name][0])
        assert err < 0.02, (query, ans)
        assert abs(ans.points[0][2]) < 0.02
        assert ans.scores[0] >= ans.scores[-1]


def test_empty_map_is_a_clear_error(label_model):
    vmap = VoxelLabelMap()
    with pytest.raises(ValueError, match="no labelled voxel"):
        vmap.ground(label_model.encode_text(["duck"])[0], label_model.encode_labels)
    depth, T, inst = _frame(np.array([1.0, 0.0, 1.0]), {"duck": "", "mug": ""})
    vmap.integrate(depth, K, T, inst)  # unlabelled regions vote "no label" only
    with pytest.raises(ValueError, match="no labelled voxel"):
        vmap.ground(label_model.encode_text(["duck"])[0], label_model.encode_labels)
    with pytest.raises(ValueError, match="voxel must be"):
        VoxelLabelMap(VoxelLabelConfig(voxel=0.0))

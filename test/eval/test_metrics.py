"""Judging answers, relevance IoU, and which scene objects a phrasing can mean."""
import numpy as np
import pytest

from m3_ros.eval.metrics import Box, judge, judge_local, local_alignments, otsu_iou
from m3_ros.geometry import transform_points
from m3_ros.eval.phrasings import absent_queries, scene_queries
from m3_ros.sim.scene import ObjectConfig, SceneConfig

BOXES = [Box("duck", np.array([0.0, 0.0, 0.45]), np.array([0.09, 0.07, 0.09])),
         Box("mug", np.array([0.3, 0.0, 0.42]), np.array([0.07, 0.1, 0.08]))]


def test_judge_success_wrong_object_and_miss():
    ok = judge(np.array([0.01, 0.02, 0.46]), ["duck"], BOXES)
    assert ok.success and not ok.wrong_object and ok.hit == "duck"
    wrong = judge(np.array([0.31, 0.0, 0.43]), ["duck"], BOXES)
    assert not wrong.success and wrong.wrong_object and wrong.hit == "mug"
    assert wrong.error_m == pytest.approx(np.linalg.norm([0.31, 0.0, -0.02]))
    # off every object: a miss, but not a wrong object
    miss = judge(np.array([0.0, 0.5, 0.4]), ["duck"], BOXES)
    assert not miss.success and not miss.wrong_object and miss.hit == ""
    # the phrasing could mean either: an answer on the mug counts
    assert judge(np.array([0.3, 0.0, 0.42]), ["duck", "mug"], BOXES).success
    none = judge(None, ["duck"], BOXES)
    assert not none.success and none.error_m == float("inf")


def test_otsu_iou_of_a_clear_blob_and_of_nothing():
    rel = np.full((40, 40), 0.1)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    rel[mask] = 0.9
    rel[0, :] = np.nan  # not rendered
    assert otsu_iou(rel, mask) == pytest.approx(1.0)
    shifted = np.roll(mask, 5, axis=1)
    assert otsu_iou(rel, shifted) == pytest.approx(50 / 150)
    assert otsu_iou(np.full((4, 4), np.nan), mask[:4, :4]) == 0.0


def test_scene_queries_list_every_referent():
    objs = [ObjectConfig(name="m1", urdf="objects/mug.urdf", xyz=(0, 0, 0.4), library="mug_red", category="mug"),
            ObjectConfig(name="m2", urdf="objects/mug.urdf", xyz=(0.2, 0, 0.4), library="mug_blue", category="mug"),
            ObjectConfig(name="d", urdf="duck_vhacd.urdf", xyz=(0.4, 0, 0.4), library="duck",
                         category="duck"),
            ObjectConfig(name="x", urdf="cube_small.urdf", xyz=(0.6, 0, 0.4))]  # hand-made: never asked for
    qs = scene_queries(SceneConfig(objects=objs), "test")
    assert {q.targets[0] for q in qs} == {"m1", "m2", "d"}
    assert all(len([q for q in qs if q.targets[0] == n]) >= 4 for n in ("m1", "m2", "d"))
    by = {(q.targets[0], q.kind): q for q in qs}
    assert set(by[("m1", "category")].targets) == {"m1", "m2"}  # "the mug" could be either
    assert by[("m1", "attribute")].targets == ["m1"]  # the colour separates them
    assert by[("d", "category")].targets == ["d"]
    dev = {q.text for q in scene_queries(SceneConfig(objects=objs), "dev")}
    assert dev.isdisjoint({q.text for q in qs})


def test_absent_queries_fit_no_scene_object():
    objs = [ObjectConfig(name="m1", urdf="objects/mug.urdf", xyz=(0, 0, 0.4), library="mug_red", category="mug"),
            ObjectConfig(name="d", urdf="duck_vhacd.urdf", xyz=(0.4, 0, 0.4), library="duck", category="duck")]
    scene = SceneConfig(objects=objs)
    absent = absent_queries(scene, "test")
    texts = {q.text for q in absent}
    present = {q.text for q in scene_queries(scene, "test")}
    assert absent and all(q.absent and not q.ambiguous for q in absent)
    assert texts.isdisjoint(present)  # no phrasing of the red mug or the duck
    # "the mug" written for the blue mug would mean the red one here: not absent; its colour phrasing is
    blue_mug = ObjectConfig(name="b", urdf="objects/mug.urdf", xyz=(0, 0, 0.4), library="mug_blue", category="mug")
    blue_qs = scene_queries(SceneConfig(objects=[blue_mug]), "test")
    blue = {q.text for q in blue_qs}
    blue_category = {q.text for q in blue_qs if q.kind == "category"}
    assert blue_category and blue_category.isdisjoint(texts)
    assert (blue - blue_category) & texts
    assert not any(q.absent for q in scene_queries(scene, "test"))


def test_an_answers_offset_is_taken_from_the_nearest_target_and_absent_without_an_answer():
    from m3_ros.eval.suite import _offset
    boxes = [Box("mug", np.array([0.0, 0.0, 0.5]), np.array([0.08, 0.08, 0.1])),
             Box("mug2", np.array([1.0, 0.0, 0.5]), np.array([0.1, 0.1, 0.12])),
             Box("table", np.array([0.5, 0.0, 0.2]), np.array([1.5, 0.8, 0.4]))]
    got = _offset(np.array([0.93, 0.02, 0.56]), ["mug", "mug2"], boxes)
    assert got["offset_cm"] == [-7.0, 2.0, 6.0] and got["target_size_cm"] == [10.0, 10.0, 12.0]
    assert _offset(None, ["mug"], boxes) == {} and _offset(np.array([np.nan, 0, 0]), ["mug"], boxes) == {}


def test_absent_queries_limit_spreads_over_the_library():
    objs = [ObjectConfig(name="d", urdf="duck_vhacd.urdf", xyz=(0.4, 0, 0.4), library="duck", category="duck")]
    scene = SceneConfig(objects=objs)
    every = [q.text for q in absent_queries(scene, "dev")]
    five = [q.text for q in absent_queries(scene, "dev", 5)]
    assert len(every) > 10 and len(five) == 5
    step = -(-len(every) // 5)
    assert five == every[::step][:5] and five[-1] != every[4]  # spread, not the first five
    assert absent_queries(scene, "dev", 0) == []


def _translation(x: float) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = x
    return T


def test_local_alignment_judges_each_target_where_the_robot_last_saw_it() -> None:
    """Two views: the map was built right at the first and 6 cm off at the second (drift on the way). An answer
    where the map holds the second object is 6 cm off through the first view's alignment and right through its
    own; an object no view held falls back to the end-of-walk alignment; the later of two views wins."""
    K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])
    near = Box("near", np.array([0.0, 0.0, 1.0]), np.full(3, 0.05))
    far = Box("far", np.array([3.0, 0.0, 1.0]), np.full(3, 0.05))
    unseen = Box("unseen", np.array([0.0, 0.0, 4.0]), np.full(3, 0.05))  # beyond max_range
    boxes = [near, far, unseen]
    views = [(np.eye(4), np.eye(4), K, (100, 100)),  # (T_map_cam, true T_world_cam, K, (H, W))
             (_translation(3.06), _translation(3.0), K, (100, 100))]
    local = local_alignments(views, boxes, max_range=2.5)
    assert set(local) == {"near", "far"}
    np.testing.assert_allclose(local["near"], np.eye(4))
    np.testing.assert_allclose(local["far"], _translation(-0.06), atol=1e-12)
    T_end = np.eye(4)  # the end of the walk aligned like the first view
    at_far_in_map = np.array([3.06, 0.0, 1.0])
    assert not judge(transform_points(T_end, at_far_in_map[None])[0], ["far"], boxes).success
    assert judge_local(at_far_in_map, ["far"], boxes, local, T_end)
    assert not judge_local(at_far_in_map, ["near"], boxes, local, T_end)
    assert judge_local(at_far_in_map, ["near", "far"], boxes, local, T_end)  # either target counts
    assert judge_local(np.array([0.0, 0.0, 4.0]), ["unseen"], boxes, local, T_end)  # through T_end
    assert not judge_local(None, ["far"], boxes, local, T_end)
    # a view seeing both objects after the others decides for both
    both = views + [(_translation(1.52), _translation(1.5), K, (100, 100))]
    wide = np.array([[10.0, 0.0, 50.0], [0.0, 10.0, 50.0], [0.0, 0.0, 1.0]])  # a 10 px focal length sees +-5 m at 1 m
    local2 = local_alignments([(T, Tt, wide, s) for T, Tt, _, s in both], boxes, max_range=2.5)
    np.testing.assert_allclose(local2["near"], _translation(-0.02), atol=1e-12)
    np.testing.assert_allclose(local2["far"], _translation(-0.02), atol=1e-12)

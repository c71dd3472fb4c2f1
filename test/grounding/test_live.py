"""The last metre (m3_ros/grounding/live.py): the memory's answer found again in the current view.

A synthetic depth frame (a table top 1 m below a downward camera with boxes standing on it) and
detector regions over the boxes; labels go through the real MiniLM text model, so which labels name
the memory's object is the deployed model's judgement, not the test's. The memory's feature at its
answer is, as for the label model, a blend of the labels its views gave the object.
"""
import numpy as np
import pytest
import torch

from m3_ros.geometry import transform_points
from m3_ros.grounding.live import LiveConfig, LiveView, refine_in_view, still_views
from m3_ros.types import Instance

H, W = 120, 160
K = np.array([[100.0, 0.0, 80.0], [0.0, 100.0, 60.0], [0.0, 0.0, 1.0]])
T_MAP_CAM = np.array([[1.0, 0, 0, 0.5], [0, -1.0, 0, 0.2], [0, 0, -1.0, 1.0], [0, 0, 0, 1]])  # looks down from z=1


def _view(boxes: list[tuple[str, tuple[int, int, int, int]]], depth_ok: bool = True) -> LiveView:
    """Boxes 5 cm tall on a table top (z = 0 in map), each with a detector region (label, (v0, v1, u0, u1))."""
    depth = np.full((H, W), 1.0, np.float32)
    inst = []
    for i, (label, (v0, v1, u0, u1)) in enumerate(boxes):
        depth[v0:v1, u0:u1] = 0.95 if depth_ok else 0.0
        mask = np.zeros((H, W), bool)
        mask[v0 + 1:v1 - 1, u0 + 1:u1 - 1] = True
        inst.append(Instance(mask=mask, label=label, id=i + 1))
    return LiveView(depth=depth, K=K, T_map_cam=T_MAP_CAM, instances=inst)


def _centre(box: tuple[int, int, int, int]) -> np.ndarray:
    """The map point at a box's top centre."""
    v0, v1, u0, u1 = box
    u, v = (u0 + u1 - 1) / 2, (v0 + v1 - 1) / 2
    cam = np.array([(u - K[0, 2]) * 0.95 / K[0, 0], (v - K[1, 2]) * 0.95 / K[1, 1], 0.95])
    return transform_points(T_MAP_CAM, cam[None])[0]


def _embed(model):
    return lambda labels: model.encode_text(list(labels))


def _memory(model, *labels: str):
    """What the label model's memory holds at an object its views called these labels: their blend."""
    return model.encode_text(list(labels)).mean(0)


DUCK, MUG, DUCK2 = (50, 60, 40, 50), (50, 60, 100, 110), (50, 60, 60, 70)


def test_a_misplaced_answer_moves_to_the_region_that_means_the_query(text_model):
    view = _view([("yellow rubber duck", DUCK), ("red coffee mug", MUG)])
    truth = _centre(DUCK)
    answer = truth + np.array([0.12, -0.08, 0.0])  # where a 14 cm map -> odom error puts the memory's answer
    got, why = refine_in_view(answer, _memory(text_model, "a yellow rubber duck toy", "a rubber duck"), [view],
                              _embed(text_model))
    assert got is not None, why
    assert got.label == "yellow rubber duck"
    assert np.linalg.norm(got.point - truth) < 0.01
    assert got.moved_m == pytest.approx(np.linalg.norm(got.point - answer))
    # the planning cloud is the view's depth around the target: the duck and the table top around it
    cloud = got.cloud()
    assert np.all(np.linalg.norm(cloud[:, :2] - got.point[:2], axis=1) <= LiveConfig().cloud_m + 1e-9)
    assert np.any(cloud[:, 2] > 0.04) and np.any(np.abs(cloud[:, 2]) < 0.005)


def test_the_memory_admits_the_region_the_query_words_miss(text_model):
    """A dev room's case: "my blue cube"; the detector calls the blue cube "a blue square block", whose
    MiniLM cosine with the query is under the threshold, and a yellow cube 19 cm away "a small yellow
    cube", over it. Regions are admitted by the memory's labels of its object; the nearest is taken."""
    view = _view([("a small yellow cube", DUCK2), ("a blue square block", DUCK)])
    answer = _centre(DUCK) + np.array([0.03, 0.0, 0.0])  # the memory answered at the blue cube
    q = torch.nn.functional.normalize(text_model.encode_text(["my blue cube"])[0], dim=0)
    sims = torch.nn.functional.normalize(text_model.encode_text(["a small yellow cube", "a blue square block"]),
                                         dim=-1) @ q
    assert sims[1] < LiveConfig().min_similarity <= sims[0]  # why the query's words cannot choose
    memory = _memory(text_model, "a small blue cube", "a blue square block", "a blue box-shaped block")
    got, why = refine_in_view(answer, memory, [view], _embed(text_model))
    assert got is not None and got.label == "a blue square block", why
    got, why = refine_in_view(answer, q, [view], _embed(text_model))  # the query in place of the memory
    assert got is not None and got.label == "a small yellow cube", why


def test_a_region_the_newest_frame_missed_is_taken_from_an_earlier_one(text_model):
    """The detector missed the duck in the newest frame; a look-alike beside it must not win for that:
    the frame before (same standpoint) still has the duck."""
    answer = _centre(DUCK)
    emb = _memory(text_model, "a yellow rubber ball", "a bouncy yellow ball")
    older = _view([("yellow toy ball", DUCK), ("bouncy green ball", DUCK2)])
    newest = _view([("bouncy green ball", DUCK2)])
    newest.depth = older.depth  # the same scene; only the detector differs
    got, why = refine_in_view(answer, emb, [newest], _embed(text_model))
    assert got is not None and got.label == "bouncy green ball"  # one view: the look-alike is all it has
    got, why = refine_in_view(answer, emb, [older, newest], _embed(text_model))
    assert got is not None and got.label == "yellow toy ball", why


def test_a_look_alike_in_view_does_not_stand_in_for_an_object_out_of_view(text_model):
    """The memory's answer lies just left of the image (the camera does not see its object); a cube
    of another colour at the image's edge, 25 cm away, means "my blue cube" to MiniLM, but is not taken."""
    emb = _memory(text_model, "a small blue cube", "a blue square block")
    edge = (50, 60, 0, 10)
    view = _view([("a small yellow cube", edge)])
    answer = _centre(edge) + np.array([-0.25, 0.0, 0.0])
    got, why = refine_in_view(answer, emb, [view], _embed(text_model))
    assert got is None and "outside the current view" in why
    inside = _centre(edge) + np.array([0.25, 0.0, 0.0])  # the same distance, inside the image: taken
    got, why = refine_in_view(inside, emb, [view], _embed(text_model))
    assert got is not None and got.label == "a small yellow cube", why


def test_still_views_keeps_the_frames_taken_where_the_robot_stands_now():
    def pose(x: float, yaw_deg: float = 0.0) -> np.ndarray:
        from scipy.spatial.transform import Rotation
        T = np.eye(4)
        T[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
        T[0, 3] = x
        return T
    cfg = LiveConfig()
    poses = [pose(-1.0), pose(0.0, cfg.still_deg + 2), pose(0.0), pose(cfg.still_m / 2), pose(0.0)]
    assert still_views(poses, cfg) == [2, 3, 4]  # walked there, then turned, then stood (odometry jitter)
    assert still_views([], cfg) == []


def test_nothing_that_means_the_query_leaves_the_memory_answer(text_model):
    view = _view([("red coffee mug", MUG)])
    got, why = refine_in_view(_centre(MUG), _memory(text_model, "a yellow rubber duck"), [view], _embed(text_model))
    assert got is None and "names its object" in why


def test_a_region_beyond_the_search_radius_or_without_depth_is_not_taken(text_model):
    emb = _memory(text_model, "a yellow rubber duck")
    far = _centre(DUCK) + np.array([0.0, 0.0, LiveConfig().search_m + 0.05])
    got, _ = refine_in_view(far, emb, [_view([("yellow rubber duck", DUCK)])], _embed(text_model))
    assert got is None
    got, _ = refine_in_view(_centre(DUCK), emb, [_view([("yellow rubber duck", DUCK)], depth_ok=False)],
                            _embed(text_model))
    assert got is None  # the region has no depth: nothing to place it with


def test_bad_input_gives_a_reason_not_a_crash(text_model):
    emb = _memory(text_model, "a yellow rubber duck")
    view = _view([("yellow rubber duck", DUCK)])
    got, why = refine_in_view(np.array([np.nan, 0.0, 0.0]), emb, [view], _embed(text_model))
    assert got is None and "not finite" in why
    empty = LiveView(depth=view.depth, K=K, T_map_cam=T_MAP_CAM, instances=[])
    got, why = refine_in_view(_centre(DUCK), emb, [empty], _embed(text_model))
    assert got is None and "no detector region" in why
    bad_pose = LiveView(depth=view.depth, K=K, T_map_cam=np.full((4, 4), np.nan), instances=view.instances)
    got, why = refine_in_view(_centre(DUCK), emb, [bad_pose], _embed(text_model))
    assert got is None and "no detector region" in why
    got, why = refine_in_view(_centre(DUCK), emb, [], _embed(text_model))
    assert got is None and "no detector region" in why


def test_the_pipeline_places_the_view_through_the_current_map_to_odom(text_model):
    """MemoryPipeline.refine_in_view maps the latest frame with map -> odom as it is when asked, the
    transform the grasp will execute through (not the one at the frame's arrival), and checks each
    region against the memory's own answer to its label."""
    from m3_ros.pipeline import MemoryPipeline, PipelineConfig
    pipe = MemoryPipeline(PipelineConfig(models=["minilm_labels"], refine_poses=False),
                          models={"minilm_labels": text_model})
    pipe.load()
    try:
        view = _view([("yellow rubber duck", DUCK), ("red coffee mug", MUG)])
        rgb = np.full((H, W, 3), 128, np.uint8)
        with pytest.raises(ValueError):
            pipe.refine_in_view(_centre(DUCK))  # empty memory: the same error as ground()
        assert pipe.offer_frame(0.0, rgb, view.depth, K, T_MAP_CAM.copy(), view.instances)
        while not pipe.idle():
            pipe.train_for(0.0, max_steps=0)
        pipe.train_for(3600.0, max_steps=20)
        answer = pipe.ground("the yellow duck").points[0]
        assert np.linalg.norm(answer - _centre(DUCK)) < 0.03
        got, why = pipe.refine_in_view(answer)
        assert got is not None and got.label == "yellow rubber duck", why
        assert np.linalg.norm(got.point - _centre(DUCK)) < 0.01
        shift = np.eye(4)
        shift[:3, 3] = [0.1, 0.0, 0.0]
        pipe.tracker._T_belief = shift  # as an accepted ICP correction leaves it (T_map_odom reads it)
        got2, why = pipe.refine_in_view(answer)  # the memory's answer stays in map
        assert got2 is not None, why
        assert np.allclose(got2.point, transform_points(shift, got.point[None])[0], atol=1e-6)
        assert got2.moved_m == pytest.approx(np.linalg.norm(got2.point - answer))
        mug = pipe.ground("the red mug").points[0]
        got3, why = pipe.refine_in_view(mug)  # another answer: the region of what the memory holds there
        assert got3 is not None and got3.label == "red coffee mug", why
    finally:
        pipe.close()

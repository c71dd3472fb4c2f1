"""Grounding on a real M3Memory built from an analytic RGB-D scene (two box faces and a wall)."""
import sys
from pathlib import Path

from dataclasses import replace

import numpy as np
import pytest
import torch

from m3_ros.grounding import GroundingConfig, ground, validate_query
from m3_ros.grounding.ground import otsu_threshold, select_regions
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "memory"))
from synthetic_scene import region_features, render_view  # noqa: E402

RED_CENTRE = np.array([-0.15, 0.0, 1.5])    # face x in [-0.35, 0.05], y in [-0.2, 0.2] at z = 1.5
GREEN_CENTRE = np.array([0.325, 0.1, 1.7])  # face x in [0.15, 0.5], y in [-0.1, 0.3] at z = 1.7


@pytest.fixture(scope="module")
def memory():
    mem = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02,
                                seed_stride=1, train_scale=1.0, feature_points=200, backend="torch", seed=0))
    for i, tx in enumerate([-0.3, 0.0, 0.3]):
        mem.add_keyframe(render_view(tx, index=i)[0])
    return mem


@pytest.mark.parametrize("mode", ["render", "gaussians"])
@pytest.mark.parametrize("region,centre", [(1, RED_CENTRE), (2, GREEN_CENTRE)])
def test_ground_finds_the_matching_face(memory, mode, region, centre):
    text = region_features()[region]  # stands in for a text embedding in the model's space
    # the 40x30 test views put ~5 cm between neighbouring pixels at 1.7 m: cluster at that scale
    res = ground(memory, text, "dino", GroundingConfig(mode=mode, cluster_radius=0.08, view_scale=1.0), top_k=2)
    assert res.mode == mode
    if mode == "render":
        assert res.views, "render mode renders views"
    # a face is seen from the front only: its centre is found in x, y and on its plane in z
    assert np.linalg.norm(res.points[0] - centre) < 0.06, res.points
    assert res.scores[0] > 0.9
    assert res.points.shape[1] == 3 and len(res.points) == len(res.scores) <= 2


def test_render_mode_refines_from_views_around_the_target(memory):
    text = region_features()[1]
    kw = dict(mode="render", n_views=1, cluster_radius=0.08, view_scale=1.0)
    coarse = ground(memory, text, "dino", GroundingConfig(refine_views=0, **kw))
    fine = ground(memory, text, "dino", GroundingConfig(refine_views=3, **kw))
    assert len(fine.views) > len(coarse.views)
    assert np.linalg.norm(fine.points[0] - RED_CENTRE) < 0.06


def test_verification_renders_only_contested_regions(memory):
    text = region_features()[2]
    kw = dict(mode="gaussians", cluster_radius=0.08, view_scale=1.0)
    plain = ground(memory, text, "dino", GroundingConfig(verify_views=0, **kw), top_k=3)
    checked = ground(memory, text, "dino", GroundingConfig(verify_views=2, verify_dominance=1e9, **kw), top_k=3)
    # one region matches: there is no runner-up to reorder, so nothing is rendered
    assert len(plain.points) == 1 and plain.views == [] and checked.views == []
    assert np.linalg.norm(checked.points[0] - GREEN_CENTRE) < 0.06


def test_ground_errors(memory):
    empty = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8)}, backend="torch"))
    with pytest.raises(ValueError, match="memory is empty"):
        ground(empty, region_features()[1], "dino")
    with pytest.raises(ValueError, match="no bank for model 'clip'"):
        ground(memory, region_features()[1], "clip")
    with pytest.raises(ValueError, match="unknown grounding mode"):
        ground(memory, region_features()[1], "dino", GroundingConfig(mode="psychic"))


def test_a_query_that_matches_nothing_is_refused(memory):
    # orthogonal to every region feature: no surface beats the zero-query baseline
    feats = region_features()
    q = torch.randn(feats.shape[1], generator=torch.Generator().manual_seed(3))
    q = q - feats.T @ torch.linalg.lstsq(feats.T, q).solution
    with pytest.raises(ValueError, match="better than an unlabelled surface"):
        ground(memory, q, "dino")


def test_fallback_points_decides_whether_a_weak_match_answers(memory):
    """With no region large enough to count (min_region_points above any face's Gaussians), the best
    small region answers by default and the query is refused when fallback_points asks for as many."""
    text = region_features()[1]
    cfg = GroundingConfig(mode="gaussians", verify_views=0, cluster_radius=0.08)  # ~5 cm between test pixels
    normal = ground(memory, text, "dino", cfg)
    big = len(normal.region_points[0]) + 1  # the face's region falls short of it
    weak = ground(memory, text, "dino", replace(cfg, min_region_points=big))
    assert np.linalg.norm(weak.points[0] - RED_CENTRE) < 0.1
    assert len(weak.region_points[0]) < big and weak.weak and not normal.weak
    with pytest.raises(ValueError, match=f"no region of {big} or more Gaussians that the memory holds"):
        ground(memory, text, "dino", replace(cfg, min_region_points=big, fallback_points=big))


def test_validate_query():
    assert validate_query("  yellow   bath duck ") == "yellow bath duck"
    for bad, msg in [("", "empty"), ("   ", "empty"), ("x" * 201, "at most 200"), ("1234 !!", "no words")]:
        with pytest.raises(ValueError, match=msg):
            validate_query(bad)


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.7, 0.03, 50)])
    thr = otsu_threshold(v)
    assert (v[:500] < thr).mean() > 0.99 and (v[500:] >= thr).all()


def test_regions_rank_by_relevance_above_threshold():
    rng = np.random.default_rng(0)
    obj = rng.normal([0, 0, 0], 0.01, (200, 3))       # many points, score 0.72
    stray = rng.normal([1, 0, 0], 0.01, (6, 3))       # a few stray points, same score
    pts = np.concatenate([obj, stray])
    sc = np.full(len(pts), 0.72)
    regions = select_regions(pts, sc, radius=0.03, min_points=5, threshold=0.6)
    assert len(regions) == 2
    assert np.linalg.norm(regions[0][0]) < 0.01


def test_gaussians_behind_a_surface_that_decode_the_query_are_vetoed():
    """Gaussians just behind the red face carry the green query; rendering shows red there."""
    from m3_ros.memory.gaussians import query_key

    mem = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02,
                                seed_stride=1, train_scale=1.0, feature_points=200, backend="torch", seed=0))
    mem.add_keyframe(render_view(0.0, index=0)[0])
    green = mem.gaussian_relevance("dino", region_features()[2]) > 0.9
    # move wall Gaussians into a blob 2 cm behind the red face and give them the green face's
    # query: more of them than the green face has
    wall = torch.nonzero((mem.means[:, 2] - 2.0).abs() < 0.01).flatten()[: 2 * int(green.sum())]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mem.params["means"][wall] = torch.tensor([-0.15, 0.0, 1.52]) + torch.tensor([0.08, 0.08, 0.005]) * torch.randn(len(wall), 3, generator=g)
        q = mem.params[query_key("dino")]
        q[wall] = q[green][0]
    # ~5 cm between pixels at this distance in the 40x30 views: look a little wider around a centre
    cfg = dict(mode="gaussians", cluster_radius=0.08, view_scale=1.0, verify_radius=0.12)
    plain = ground(mem, region_features()[2], "dino", GroundingConfig(verify_views=0, **cfg))
    checked = ground(mem, region_features()[2], "dino", GroundingConfig(verify_views=2, **cfg))
    assert np.linalg.norm(plain.points[0] - [-0.15, 0.0, 1.52]) < 0.06  # fooled by the blob
    assert checked.views, "the blob ranks within verify_dominance of the face: both are rendered"
    assert np.linalg.norm(checked.points[0] - GREEN_CENTRE) < 0.06


@pytest.mark.parametrize("region,centre", [(1, RED_CENTRE), (2, GREEN_CENTRE)])
def test_view_mode_grounds_what_the_current_camera_sees(memory, region, centre):
    kf = memory.keyframes[1]
    camera = (kf.T_world_cam, kf.K, kf.size[1], kf.size[0])
    cfg = GroundingConfig(mode="view", cluster_radius=0.08, view_scale=1.0)
    res = ground(memory.snapshot(), region_features()[region], "dino", cfg, camera=camera)
    assert res.mode == "view" and len(res.relevance_maps) >= 1
    assert res.relevance_maps[0].shape == (30, 40)  # the current camera's view comes first
    assert np.linalg.norm(res.points[0] - centre) < 0.06, res.points
    # without a camera, view mode uses the newest keyframe's
    res2 = ground(memory, region_features()[region], "dino", cfg)
    assert np.linalg.norm(res2.points[0] - centre) < 0.06


@pytest.mark.parametrize("region,centre", [(1, RED_CENTRE), (2, GREEN_CENTRE)])
def test_view_mode_reads_visibility_from_the_measured_depth(memory, region, centre):
    kf = memory.keyframes[1]
    cfg = GroundingConfig(mode="view", cluster_radius=0.08, view_scale=1.0)
    # the camera's own depth: the face it measures answers
    res = ground(memory.snapshot(), region_features()[region], "dino", cfg,
                 camera=(kf.T_world_cam, kf.K, 40, 30, kf.depth))
    assert np.linalg.norm(res.points[0] - centre) < 0.06, res.points
    # something 10 cm in front of the lens (a hand over the camera): the memory is not what it sees now
    blocked = np.full_like(np.asarray(kf.depth, dtype=np.float64), 0.1)
    with pytest.raises(ValueError, match="sees no remembered surface"):
        ground(memory.snapshot(), region_features()[region], "dino", cfg,
               camera=(kf.T_world_cam, kf.K, 40, 30, blocked))
    with pytest.raises(ValueError, match="depth image is"):
        ground(memory.snapshot(), region_features()[region], "dino", cfg,
               camera=(kf.T_world_cam, kf.K, 40, 30, np.ones((10, 10))))


def test_view_mode_errors(memory):
    T = np.diag([-1.0, 1.0, -1.0, 1.0])  # turned around: looking down -z, away from every surface
    kf = memory.keyframes[0]
    with pytest.raises(ValueError, match="sees no remembered surface"):
        ground(memory, region_features()[1], "dino", GroundingConfig(mode="view"), camera=(T, kf.K, 40, 30))
    loaded = M3Memory(memory.cfg)
    loaded.add_keyframe(render_view(0.0)[0])
    loaded._views.clear()  # a memory loaded from disk carries no keyframes
    loaded._publish()
    with pytest.raises(ValueError, match="needs the current camera"):
        ground(loaded.snapshot(), region_features()[1], "dino", GroundingConfig(mode="view"))


def test_row_mass_ignores_gaussians_that_blend_rows():
    """Wall Gaussians whose queries blend the red and green faces' rows decode close to 'red' by
    cosine, but put only part of their attention on the red row: row_mass keeps the red face."""
    from m3_ros.grounding.ground import row_mass, text_rows
    from m3_ros.grounding.rendered import baseline_score
    from m3_ros.memory.gaussians import query_key

    mem = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02,
                                seed_stride=1, train_scale=1.0, feature_points=200, backend="torch", seed=0))
    for i, tx in enumerate([-0.3, 0.0, 0.3]):
        mem.add_keyframe(render_view(tx, index=i)[0])
    red_text, green = region_features()[1], mem.gaussian_relevance("dino", region_features()[2]) > 0.9
    red = mem.gaussian_relevance("dino", red_text) > 0.9
    wall = torch.nonzero((mem.means[:, 2] - 2.0).abs() < 0.01).flatten()[: 3 * int(red.sum())]
    with torch.no_grad():  # a blob on the wall, 3x the red face's size, half red and half green
        q = mem.params[query_key("dino")]
        q[wall] = 0.5 * (q[red][0] + q[green][0])
    blend_cos = mem.gaussian_relevance("dino", red_text)[wall]
    # by cosine the blob is a candidate: well above what an unlabelled surface decodes to
    assert float(blend_cos.median()) > baseline_score(mem, "dino", red_text) + 0.1
    mass = row_mass(mem, "dino", text_rows(mem, "dino", red_text, row_margin=0.03)[0])
    # about half of the blob's attention is on the red row, nearly all of the face's
    assert np.median(mass[wall.numpy()]) < 0.6 and np.median(mass[red.numpy()]) > 0.95
    res = ground(mem, red_text, "dino", GroundingConfig(mode="gaussians", score="row_mass", cluster_radius=0.08,
                                                         verify_views=0))
    assert np.linalg.norm(res.points[0] - RED_CENTRE) < 0.06, res.points


@pytest.mark.parametrize("score", ["row_mass", "cosine"])
def test_relevance_image_lights_the_matching_face(memory, score):
    from m3_ros.grounding import relevance_image

    kf, region = render_view(0.0, index=9)
    img = relevance_image(memory, "dino", region_features()[1], (kf.T_world_cam, kf.K, 40, 30),
                          GroundingConfig(score=score))
    assert img.shape == (30, 40) and np.isfinite(img).mean() > 0.9
    red, rest = region == 1, (region != 1) & np.isfinite(img)
    # every red-face pixel outscores every other pixel, away from the face's silhouette
    from scipy import ndimage
    inner = ndimage.binary_erosion(red, iterations=2)
    outer = rest & ~ndimage.binary_dilation(red, iterations=2)
    assert np.nanmin(img[inner]) > np.nanmax(img[outer])
    if score == "row_mass":  # a fraction of attention: near 1 on the face, near 0 on the others
        assert np.nanmin(img[inner]) > 0.9 and np.nanmax(img[outer]) < 0.1


def test_label_support_keeps_a_label_that_bled_onto_the_wall_from_answering():
    """The first view's red-box mask spilled onto the wall; six later views see that wall outside
    every region. Without label support the wall strip answers "red" beside the box; with it, only
    the box does."""
    from synthetic_scene import labelled_view

    slot = ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")
    mem = M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.04, object_voxel_size=0.02, seed_stride=1,
                                train_scale=1.0, feature_points=200, backend="torch", seed=0))
    for i, tx in enumerate((0.0, 0.05, -0.05, 0.1, -0.1, 0.15, 0.02)):
        mem.add_keyframe(labelled_view(tx, i, bleed_px=6 if i == 0 else 0)[0])
    g = torch.Generator().manual_seed(5)
    text = region_features(32)[1] + 0.4 * torch.randn(32, generator=g)  # near the red label, not it

    def on_wall(cfg: GroundingConfig) -> int:
        res = ground(mem, text, "labels", cfg, top_k=5)
        assert np.linalg.norm(res.points[0] - [-0.15, 0.0, 1.5]) < 0.2  # the red face ranks first either way
        return sum(int((np.abs(p[:, 2] - 2.0) < 0.05).sum()) for p in res.region_points)

    base = GroundingConfig(verify_views=0, cluster_radius=0.05)  # the strip's seeds are ~3 cm apart at 2 m
    assert on_wall(replace(base, label_support=0.0)) >= 5
    assert on_wall(replace(base, label_support=0.5)) == 0


def test_support_prior_decides_how_much_a_few_outside_votes_count():
    """The wall strip carries the red label but its two votes both saw it outside every region (as a
    floor patch beside an object does, whose label came from training alone): at the prior's default
    it keeps most of its support and answers; with pseudo-votes of 0.1 it keeps almost none."""
    from synthetic_scene import labelled_view

    from m3_ros.memory.labelvotes import VOTES_KEY

    slot = ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")
    mem = M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.04, object_voxel_size=0.02, seed_stride=1,
                                train_scale=1.0, feature_points=200, backend="torch", seed=0))
    mem.add_keyframe(labelled_view(0.0, 0, bleed_px=6)[0])
    wall = (mem.means[:, 2] - 2.0).abs() < 0.05
    assert int(wall.sum()) >= 5
    with torch.no_grad():
        mem.params[VOTES_KEY][wall] = torch.tensor([0.0, 2.0])
    mem._publish()
    g = torch.Generator().manual_seed(5)
    text = region_features(32)[1] + 0.4 * torch.randn(32, generator=g)

    def on_wall(prior: float) -> int:
        cfg = GroundingConfig(verify_views=0, cluster_radius=0.05, support_prior=prior)
        res = ground(mem, text, "labels", cfg, top_k=5)
        return sum(int((np.abs(p[:, 2] - 2.0) < 0.05).sum()) for p in res.region_points)

    assert on_wall(1.0) >= 5
    assert on_wall(0.1) == 0


def test_a_region_partly_seen_with_something_else_there_has_left():
    """A moved object's old place: some of its Gaussians were seen inside regions of other labels since it
    was last confirmed (a standing contradiction), the rest were never in a covered window again. With
    left_share the region is dropped once that share reaches it; a region with fewer such members, and
    every region with the option off, still answers; when every matching region is dropped the query is
    refused with a message that says why."""
    from synthetic_scene import labelled_view

    from m3_ros.memory.labelvotes import RUN_KEY

    slot = ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")
    mem = M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.04, object_voxel_size=0.02, seed_stride=1,
                                train_scale=1.0, feature_points=200, backend="torch", seed=0))
    for i, tx in enumerate((0.0, 0.05, -0.05, 0.1)):
        mem.add_keyframe(labelled_view(tx, i)[0])
    g = torch.Generator().manual_seed(5)
    text = region_features(32)[1] + 0.4 * torch.randn(32, generator=g)  # near the red label, not it
    cfg = GroundingConfig(verify_views=0, cluster_radius=0.05, left_share=0.2)
    red = np.flatnonzero((np.abs(mem.means[:, 2].numpy() - 1.5) < 0.03) & (mem.means[:, 0].numpy() < 0.05))
    assert len(red) >= 20

    def contradict(share: float) -> None:
        with torch.no_grad():
            mem.params[RUN_KEY].zero_()
            mem.params[RUN_KEY][torch.from_numpy(red[::int(round(1 / share))])] = 1.0
        mem._publish()

    def on_red(c: GroundingConfig) -> bool:
        return bool(np.linalg.norm(ground(mem, text, "labels", c).points[0] - RED_CENTRE) < 0.1)

    assert on_red(cfg)  # nothing contradicted
    contradict(0.1)
    assert on_red(cfg)  # under the share
    contradict(0.5)
    assert on_red(replace(cfg, left_share=0.0))  # the option off
    with pytest.raises(ValueError, match="seen with something else there"):  # half the red face has left
        ground(mem, text, "labels", cfg)
    with torch.no_grad():
        mem.params[RUN_KEY].fill_(1.0)  # every place seen replaced
    mem._publish()
    with pytest.raises(ValueError, match="seen with something else there"):
        ground(mem, text, "labels", cfg)


def test_region_centre_is_the_middle_of_the_seen_surfaces_and_ignores_a_few_strays():
    """Gaussians of a 10 cm box seen from above and one side: many on the top face, fewer on the
    side. The median sits on the top face; the middle of the points' extent is nearer the box
    centre, and three stray points 2 cm outside the box do not pull it out of the box."""
    from m3_ros.grounding.ground import _ranked_regions
    g = np.random.default_rng(0)
    top = np.column_stack([g.uniform(-0.05, 0.05, 300), g.uniform(-0.05, 0.05, 300), np.full(300, 0.10)])
    side = np.column_stack([g.uniform(-0.05, 0.05, 60), np.full(60, -0.05), g.uniform(0.0, 0.10, 60)])
    stray = np.array([[0.07, 0.0, 0.05], [0.07, 0.01, 0.05], [0.07, 0.02, 0.05]])
    pts = np.concatenate([top, side, stray])
    scores = np.full(len(pts), 0.8)
    centre = np.array([0.0, 0.0, 0.05])
    mid = _ranked_regions(pts, scores, 0.03, 5, 0.5, centre="mid_range")[0][0]
    med = _ranked_regions(pts, scores, 0.03, 5, 0.5, centre="median")[0][0]
    assert np.linalg.norm(med - centre) > 0.045, med  # the top face's height
    assert np.linalg.norm(mid - centre) < np.linalg.norm(med - centre) - 0.01, (mid, med)
    assert np.all(np.abs(mid[:2]) < 0.02) and 0.0 < mid[2] < 0.10, mid


def test_above_support_keeps_a_label_spilled_onto_the_table_from_pulling_the_point_off_a_small_object():
    """A 3 cm cube's Gaussians, and its detector mask spilled 8 cm onto the table on one side (table
    Gaussians at the cube's bottom height). mid_range's horizontal middle leaves the cube; above_support
    takes x, y from what stands above the table and stays on it. A flat region (a mat: nothing above
    its plane) keeps mid_range."""
    from m3_ros.grounding.ground import _ranked_regions
    g = np.random.default_rng(1)
    cube = np.column_stack([g.uniform(-0.015, 0.015, 80), g.uniform(-0.015, 0.015, 80), g.uniform(0.005, 0.03, 80)])
    spill = np.column_stack([g.uniform(0.015, 0.095, 120), g.uniform(-0.03, 0.03, 120), g.normal(0.0, 0.002, 120)])
    pts = np.concatenate([cube, spill])
    scores = np.full(len(pts), 0.8)
    centre = np.array([0.0, 0.0, 0.015])
    mid = _ranked_regions(pts, scores, 0.03, 5, 0.5, centre="mid_range")[0][0]
    above = _ranked_regions(pts, scores, 0.03, 5, 0.5, centre="above_support", support_gap=0.01)[0][0]
    assert mid[0] > 0.03, mid  # pulled onto the spill, off the cube
    assert np.all(np.abs(above[:2]) < 0.01) and np.linalg.norm(above - centre) < 0.02, above
    mat = np.column_stack([g.uniform(-0.1, 0.1, 200), g.uniform(-0.1, 0.1, 200), g.normal(0.0, 0.002, 200)])
    flat_mid = _ranked_regions(mat, np.full(200, 0.8), 0.03, 5, 0.5, centre="mid_range")[0][0]
    flat_above = _ranked_regions(mat, np.full(200, 0.8), 0.03, 5, 0.5, centre="above_support")[0][0]
    np.testing.assert_allclose(flat_above, flat_mid)

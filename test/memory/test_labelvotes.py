"""Label votes: which Gaussians keyframes see inside a detector region, and what a memory keeps of it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3_ros.geometry import project
from m3_ros.memory.labelvotes import VOTES_KEY, support, surface_pixels, surface_votes
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from synthetic_scene import labelled_view, render_view


def test_only_centres_the_depth_sees_vote_and_the_region_mask_decides_which_way():
    kf, region = render_view(0.0, W=80, H=60)
    depth = kf.depth.copy()
    pts = np.array([
        [-0.15, 0.0, 1.5],  # on the red face (the detector's region): inside
        [-0.8, 0.0, 2.0],  # on the wall: outside
        [-0.8, 0.0, 1.7],  # 30 cm in front of the wall: the pixel sees past it, no vote
        [-0.15, 0.0, 1.9],  # behind the red face: hidden, no vote
        [5.0, 0.0, 2.0],  # out of the image
        [0.0, 0.0, -1.0],  # behind the camera
        [-0.8, 0.4, 2.0],  # on the wall, but its pixel has no depth return
    ])
    u, v = np.rint(64 * pts[6, :2] / 2.0 + np.array([39.5, 29.5])).astype(int)  # pixel centres at integers
    depth[v, u] = 0.0
    votes = surface_votes(pts, depth, kf.K, kf.T_world_cam, region == 1)
    assert votes.tolist() == [[1, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]]
    # the tolerance grows with range: 3 cm off at 2 m (noise 0.02 * 4 = 8 cm) still votes, 10 cm does not
    near = surface_votes(np.array([[-0.8, 0.0, 2.03], [-0.8, 0.0, 1.9]]), depth, kf.K, kf.T_world_cam, region == 1)
    assert near.tolist() == [[0, 1], [0, 0]]


def test_support_is_a_smoothed_share():
    s = support(torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [3.0, 1.0]]))
    torch.testing.assert_close(s, torch.tensor([0.5, 5 / 6, 1 / 6, 4 / 6]))


def test_a_smaller_prior_trusts_the_first_few_votes_more():
    """Seen outside every region the two times it was voted on: a third of its support at prior 1,
    a ninth at prior 0.25; unvoted stays at 0.5 whatever the prior."""
    votes = torch.tensor([[0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(support(votes), torch.tensor([1 / 4, 4 / 5, 0.5]))
    torch.testing.assert_close(support(votes, prior=0.25), torch.tensor([0.25 / 2.5, 3.25 / 3.5, 0.5]))
    with pytest.raises(ValueError, match="prior"):
        support(votes, prior=0.0)


def _memory() -> M3Memory:
    slot = ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")
    return M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.04, object_voxel_size=0.02, seed_stride=1,
                                 train_scale=1.0, feature_points=200, backend="torch", seed=0))


def test_a_label_that_bled_onto_the_wall_loses_support_as_other_views_see_the_wall():
    mem = _memory()
    kf0, bled = labelled_view(0.0, 0, bleed_px=6)
    mem.add_keyframe(kf0)
    means = mem.means.numpy()
    # the Gaussians seeded from the bled pixels (wall pixels inside the mask)
    uv, _ = project(means, kf0.K, kf0.T_world_cam)
    px = np.floor(uv).astype(int)
    strip = bled[px[:, 1].clip(0, 59), px[:, 0].clip(0, 79)] & (np.abs(means[:, 2] - 2.0) < 0.01)
    red = np.abs(means[:, 2] - 1.5) < 0.01
    assert strip.sum() >= 5 and red.sum() >= 20
    s0 = mem.label_support().numpy()
    assert (s0[strip] > 0.5).all()  # after the bad keyframe alone, they look labelled
    for i, tx in enumerate((0.05, -0.05, 0.1), start=1):
        mem.add_keyframe(labelled_view(tx, i)[0])
    s = mem.label_support().numpy()[: len(means)]  # the first keyframe's Gaussians keep their rows
    assert np.median(s[strip]) < 0.35
    assert np.median(s[red]) > 0.75
    # the counts are kept with the Gaussians: saved and loaded, and published to snapshots
    state = mem.state_dict()
    back = M3Memory.from_state(state)
    torch.testing.assert_close(back.label_support(), mem.label_support())
    torch.testing.assert_close(mem.snapshot().label_support(), mem.label_support())
    assert not back.params[VOTES_KEY].requires_grad


def test_a_memory_saved_before_label_votes_loads_unvoted_and_keeps_working(tmp_path):
    mem = _memory()
    mem.add_keyframe(labelled_view(0.0, 0)[0])
    mem.train(2)
    state = mem.state_dict()
    del state["params"][VOTES_KEY]
    old = M3Memory.from_state(state)
    assert torch.equal(old.label_support(), torch.full((old.n_gaussians,), 0.5))
    old.add_keyframe(labelled_view(0.05, 1)[0])
    old.train(2)  # the optimiser carries the new parameter's rows through seeding and steps
    assert old.params[VOTES_KEY].shape == (old.n_gaussians, 2) and old.params[VOTES_KEY].sum() > 0
    old.save(tmp_path / "m")
    loaded = M3Memory.load(tmp_path / "m")
    torch.testing.assert_close(loaded.params[VOTES_KEY], old.params[VOTES_KEY])


def test_keyframes_without_a_region_model_do_not_vote():
    mem = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=20)}, voxel_size=0.04,
                                seed_stride=1, train_scale=1.0, backend="torch", seed=0))
    mem.add_keyframe(render_view(0.0)[0])
    mem.add_keyframe(render_view(0.05, index=1)[0])
    assert mem.params[VOTES_KEY].sum() == 0


def test_a_centre_just_off_a_slanted_surface_votes_and_one_well_in_front_does_not():
    """Seen at a grazing angle, a Gaussian 1 cm off the surface lies 3 cm in front of its pixel's depth
    along the ray: it still votes (the tolerance holds across the surface); one 10 cm in front does not."""
    W, H = 80, 60
    K = np.array([[64.0, 0, 39.5], [0, 64.0, 29.5], [0, 0, 1.0]])
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rx = (u - K[0, 2]) / K[0, 0]
    depth = (1.0 / (1.0 - 3.0 * rx)).astype(np.float32)  # the plane z = 1 + 3x, steep to the camera
    depth[depth <= 0] = 0.0
    depth[depth > 8] = 0.0
    n = np.array([-3.0, 0.0, 1.0]) / np.sqrt(10.0)  # its unit normal, towards the camera side is -n
    on = np.array([0.0, 0.0, 1.0])  # on the plane, at the image centre
    ray = on / np.linalg.norm(on)
    cos = abs(float(n @ ray))
    off_1cm = on - 0.01 / cos * ray  # 1 cm from the plane (3.2 cm along the ray)
    front = on - 0.10 * ray  # 10 cm in front along the ray (3.2 cm from the plane)
    regions = np.zeros((H, W), dtype=bool)
    votes = surface_votes(np.stack([on, off_1cm, front]), depth, K, np.eye(4), regions)
    assert votes.tolist() == [[0, 1], [0, 1], [0, 0]]


def test_inside_another_labels_region_counts_as_outside():
    """Where the red box stood, later views see a region of another label (the object moved and the
    table's region covers the spot): the Gaussians still carrying the red label lose their support.
    Counted by region alone (vote_same_label off), every later view voted them inside."""
    from synthetic_scene import region_features

    def relabelled(tx: float, index: int):
        kf, _ = labelled_view(tx, index)
        f = kf.features["labels"].features
        red = f[..., 0] == region_features(32)[1][0]
        f[red] = region_features(32)[2]  # the same pixels now carry the green label
        return kf

    def support_of_red(same_label: bool) -> np.ndarray:
        mem = _memory()
        mem.cfg.vote_same_label = same_label
        mem.add_keyframe(labelled_view(0.0, 0)[0])
        red = np.abs(mem.means.numpy()[:, 2] - 1.5) < 0.01
        assert red.sum() >= 20
        for i, tx in enumerate((0.05, -0.05, 0.1), start=1):
            mem.add_keyframe(relabelled(tx, i))
        return mem.label_support().numpy()[: len(red)][red]

    assert np.median(support_of_red(True)) < 0.35
    assert np.median(support_of_red(False)) > 0.75


def test_a_centre_reads_the_pixel_whose_centre_is_nearest():
    """Pixel centres sit at integer coordinates (m3_ros.geometry): a centre projecting 0.6 px right of
    column 20's centre lies in column 21. At a depth step between the two columns, the centre on the far
    surface is seen there; reading column 20 (flooring) had compared it against the near surface."""
    W, H = 40, 30
    K = np.array([[50.0, 0, 19.5], [0, 50.0, 14.5], [0, 0, 1.0]])
    depth = np.full((H, W), 1.0, dtype=np.float32)
    depth[:, 21:] = 3.0  # a step between columns 20 and 21
    def at(u: float, z: float) -> np.ndarray:  # the camera-frame point projecting to (u, row 15) at depth z
        return np.array([(u - K[0, 2]) / K[0, 0] * z, (15.0 - K[1, 2]) / K[1, 1] * z, z])
    pts = np.stack([at(20.6, 3.0), at(20.4, 1.0), at(20.6, 1.0), at(20.4, 3.0)])
    idx, v, u = surface_pixels(pts, depth, K, np.eye(4))
    assert idx.tolist() == [0, 1] and u.tolist() == [21, 20] and v.tolist() == [15, 15]

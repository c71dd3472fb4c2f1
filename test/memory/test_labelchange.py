"""Label-change evidence: when a region map says a Gaussian's label is gone from its place."""
from __future__ import annotations

import numpy as np
import torch

from m3_ros.geometry import intrinsics_matrix
from m3_ros.memory.compact import index_feature_map
from m3_ros.memory.freespace import FreeSpaceConfig
from m3_ros.memory.gaussians import query_key
from m3_ros.memory.labelchange import CONFIRMED, CONTRADICTED, NO_EVIDENCE, label_verdict, top_labels
from m3_ros.memory.labelvotes import RUN_KEY
from m3_ros.memory.views import cell_index
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.types import FeatureMap, Keyframe

H, W, h, w = 48, 64, 12, 16  # image and a stride-4 feature grid
BAR, TABLE, ROD = (torch.tensor(v, dtype=torch.float32) for v in
                   ([1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.8, 0.0, 0.6, 0.0]))  # cos(BAR, ROD) = 0.8


def unsupported(*args, **kw) -> np.ndarray:
    """[S] the contradicted ones (label_verdict's arguments)."""
    return label_verdict(*args, **kw) == CONTRADICTED


def region_map(*cells) -> FeatureMap:
    """A [h, w] region map from (rows slice, cols slice, feature), later ones on top; the rest
    outside every region."""
    f = torch.zeros(h, w, 4)
    for rs, cs, feat in cells:
        f[rs, cs] = feat
    return FeatureMap("labels", f, (H, W))


def at(i: int, j: int) -> np.ndarray:
    """The pixel (v, u) at the centre of cell (i, j)."""
    return np.array([[int((i + 0.5) * H / h), int((j + 0.5) * W / w)]])


def test_pixels_map_to_the_cells_feature_maps_sample():
    pix = np.array([[0, 0], [3, 3], [4, 4], [47, 63], [24, 33]])
    assert np.stack(cell_index(pix[:, 1], pix[:, 0], (H, W), (h, w)), 1).tolist() == [[0, 0], [0, 0], [1, 1], [11, 15], [6, 8]]
    fm = region_map((slice(6, 7), slice(8, 9), BAR))
    uv = torch.tensor([[33.0, 24.0]])
    assert torch.equal(fm.sample(uv, mode="nearest")[0], BAR)  # the cell cell_index names holds the feature


def test_a_label_no_region_in_the_window_carries_is_unsupported():
    table_everywhere = region_map((slice(None), slice(None), TABLE))
    assert unsupported(BAR[None], at(6, 8), table_everywhere, radius_px=7, min_cos=0.5).tolist() == [True]
    # the table's own Gaussian there is carried by the table's region
    assert unsupported(TABLE[None], at(6, 8), table_everywhere, radius_px=7, min_cos=0.5).tolist() == [False]


def test_its_own_region_anywhere_in_the_window_supports_it():
    # the bar's region two cells (8 px) away: a misregistered object or the table at its base
    fm = region_map((slice(None), slice(None), TABLE), (slice(6, 7), slice(10, 11), BAR))
    assert unsupported(BAR[None], at(6, 8), fm, radius_px=7, min_cos=0.5).tolist() == [False]
    # three cells (12 px) away is outside a 7 px window (two cells)
    fm = region_map((slice(None), slice(None), TABLE), (slice(6, 7), slice(11, 12), BAR))
    assert unsupported(BAR[None], at(6, 8), fm, radius_px=7, min_cos=0.5).tolist() == [True]


def test_a_synonym_supports_and_min_cos_decides_what_is_one():
    fm = region_map((slice(None), slice(None), TABLE), (slice(5, 8), slice(7, 10), ROD))
    assert unsupported(BAR[None], at(6, 8), fm, radius_px=7, min_cos=0.5).tolist() == [False]
    assert unsupported(BAR[None], at(6, 8), fm, radius_px=7, min_cos=0.9).tolist() == [True]


def test_no_evidence_without_full_cover_a_label_or_the_whole_window_in_the_image():
    # a missed detection or an eroded mask: one uncovered cell in the window
    fm = region_map((slice(None), slice(None), TABLE))
    fm.features[7, 9] = 0.0
    assert unsupported(BAR[None], at(6, 8), fm, radius_px=7, min_cos=0.5).tolist() == [False]
    full = region_map((slice(None), slice(None), TABLE))
    # a Gaussian that never had a label; a window running off the image
    pix = np.concatenate([at(6, 8), at(0, 8), at(6, 15)])
    dec = torch.stack([torch.zeros(4), BAR, BAR])
    assert unsupported(dec, pix, full, radius_px=7, min_cos=0.5).tolist() == [False, False, False]
    # the dense and the compact (index + table) forms answer alike
    dec = torch.stack([BAR, TABLE, BAR])
    pix = np.concatenate([at(6, 8), at(6, 8), at(3, 3)])
    assert (unsupported(dec, pix, full, 7, 0.5).tolist() == unsupported(dec, pix, index_feature_map(full), 7, 0.5).tolist()
            == [True, False, True])


def test_a_verdict_confirms_where_its_own_region_is_near_even_if_the_window_is_not_covered():
    fm = region_map((slice(0, 12), slice(0, 9), TABLE), (slice(6, 7), slice(10, 11), BAR))  # cols 9+ uncovered
    dec = torch.stack([BAR, TABLE, BAR, torch.zeros(4), ROD])
    pix = np.concatenate([at(6, 8), at(6, 8), at(3, 3), at(3, 3), at(6, 11)])
    got = label_verdict(dec, pix, fm, radius_px=7, min_cos=0.5).tolist()
    # bar near its region: confirmed; table in its own region: confirmed; bar amid the table only:
    # contradicted; no label: nothing; a rod (a synonym of the bar) beside the bar's region, the
    # window off the covered part: confirmed
    assert got == [CONFIRMED, CONFIRMED, CONTRADICTED, NO_EVIDENCE, CONFIRMED]
    # without its region the bar beside the uncovered part gets no verdict at all
    assert label_verdict(BAR[None], at(6, 11), region_map((slice(0, 12), slice(0, 9), TABLE)), 7, 0.5).tolist() == [NO_EVIDENCE]


def test_nothing_to_judge():
    fm = region_map()
    assert unsupported(torch.zeros(0, 4), np.zeros((0, 2), np.int64), fm, 7, 0.5).tolist() == []
    assert unsupported(BAR[None], at(6, 8), fm, 7, 0.5).tolist() == [False]  # no region at all


# ---- in a memory: a flat mat on a wall (1 cm in front of it, far inside free space's margin)

MAT, WALL = (torch.randn(2, 32, generator=torch.Generator().manual_seed(3)) + 0.2).unbind(0)


def mat_view(tx: float, index: int, mat: bool) -> Keyframe:
    """A camera at (tx, 0, 0) looking down +z at a wall (z = 2) that a detector labels "wall"
    everywhere, and, if mat, a 40 x 40 cm mat 1 cm in front of it that it labels "mat"."""
    Wi, Hi = 80, 60
    K = intrinsics_matrix(0.8 * Wi, 0.8 * Wi, (Wi - 1) / 2, (Hi - 1) / 2)
    v, u = np.mgrid[0:Hi, 0:Wi].astype(np.float64)
    x, y = tx + (u - K[0, 2]) / K[0, 0] * 2.0, (v - K[1, 2]) / K[1, 1] * 2.0
    on = mat & (x > -0.3) & (x < 0.1) & (np.abs(y) < 0.2)
    depth = np.where(on, 1.99, 2.0).astype(np.float32)
    rgb = np.where(on[..., None], [200, 40, 40], [120, 120, 150]).astype(np.uint8)
    f = torch.where(torch.from_numpy(on)[..., None], MAT, WALL).float()
    T = np.eye(4)
    T[0, 3] = tx
    return Keyframe(index=index, stamp=float(index), rgb=rgb, depth=depth, K=K, T_world_cam=T,
                    features={"labels": FeatureMap("labels", f, (Hi, Wi))})


def _memory(label_change: bool = True) -> M3Memory:
    slot = ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")
    return M3Memory(MemoryConfig(models={"labels": slot}, voxel_size=0.04, object_voxel_size=0.02, seed_stride=1,
                                 train_scale=1.0, feature_points=200, backend="torch", seed=0,
                                 freespace=FreeSpaceConfig(label_change=label_change)))


def _mat_gaussians(mem: M3Memory) -> torch.Tensor:
    b = mem.banks["labels"]
    lab = top_labels(mem.params[query_key("labels")].detach(), mem.W["labels"], b.rows, b.unit_rows, mem.cfg.tau)
    return (torch.nn.functional.cosine_similarity(lab, MAT[None], dim=1) > 0.99) & (mem.opacities >= 0.2)


def test_a_mat_taken_away_is_removed_by_its_label_and_masked_in_the_views_that_showed_it():
    mem = _memory()
    mem.add_keyframe(mat_view(0.0, 0, mat=True))
    mem.add_keyframe(mat_view(0.1, 1, mat=True))
    mem.train(5)
    n_mat, n_all = int(_mat_gaussians(mem).sum()), mem.n_gaussians
    assert n_mat > 20
    # the same scene seen again: nothing changed, nothing removed, no view leaves
    mem.add_keyframe(mat_view(0.05, 2, mat=True))
    assert int(_mat_gaussians(mem).sum()) >= n_mat and mem.stats()["cleared"] == 0
    assert [v.kf.index for v in mem._views] == [0, 1, 2]
    # the mat is gone: the wall is 1 cm behind where it was, so free space sees nothing; the label does
    mem.add_keyframe(mat_view(0.0, 3, mat=False))
    mem.add_keyframe(mat_view(0.1, 4, mat=False))
    assert int(_mat_gaussians(mem).sum()) <= n_mat // 10
    assert mem.stats()["cleared"] >= n_mat // 2
    # those that showed the mat keep training on the rest, the mat's pixels masked
    assert [v.kf.index for v in mem._views] == [0, 1, 2, 3, 4]
    assert all(0.0 < v.stale_fraction <= mem.cfg.freespace.stale_max_fraction for v in mem._views[:3])
    assert mem._views[4].stale is None
    assert mem.n_gaussians >= n_all - n_mat  # the wall stays
    mem.train(3)


def test_without_label_change_the_mat_stays():
    mem = _memory(label_change=False)
    mem.add_keyframe(mat_view(0.0, 0, mat=True))
    mem.add_keyframe(mat_view(0.1, 1, mat=True))
    mem.train(5)
    n_mat = int(_mat_gaussians(mem).sum())
    mem.add_keyframe(mat_view(0.0, 2, mat=False))
    mem.add_keyframe(mat_view(0.1, 3, mat=False))
    assert int(_mat_gaussians(mem).sum()) == n_mat and mem.stats()["cleared"] == 0
    assert len(mem._views) == 4


def test_label_contradictions_count_in_a_row_reset_when_seen_again_and_only_grounding_reads_them():
    """Label change off: the mat's Gaussians stay and keep training, but two views without it in a
    row take its label support away when grounding asks for two contradictions; another view of the
    mat gives it back; the wall is never contradicted. Counts are saved with the memory."""
    mem = _memory(label_change=False)
    mem.add_keyframe(mat_view(0.0, 0, mat=True))
    mem.add_keyframe(mat_view(0.1, 1, mat=True))
    mem.train(5)
    mat = _mat_gaussians(mem)
    wall = ~mat & (mem.opacities >= 0.2)
    assert int(mat.sum()) > 20 and int(wall.sum()) > 20
    assert float(mem.params[RUN_KEY][mat].max()) == 0.0
    mem.add_keyframe(mat_view(0.0, 2, mat=False))
    run = mem.params[RUN_KEY].detach()[: len(mat)]
    assert float((run[mat] == 1).float().mean()) > 0.8 and float(run[wall].max()) == 0.0
    assert float(mem.label_support(2)[: len(mat)][mat].min()) > 0  # one view is not yet enough
    mem.add_keyframe(mat_view(0.1, 3, mat=False))
    sup2, sup0 = mem.label_support(2)[: len(mat)], mem.label_support()[: len(mat)]
    assert float((sup2[mat] == 0).float().mean()) > 0.8 and float(sup0[mat].min()) > 0
    torch.testing.assert_close(sup2[wall], sup0[wall])
    assert int(_mat_gaussians(mem).sum()) == int(mat.sum()) and mem.stats()["cleared"] == 0  # nothing removed
    back = M3Memory.from_state(mem.state_dict())
    torch.testing.assert_close(back.label_support(2), mem.label_support(2))
    torch.testing.assert_close(mem.snapshot().label_support(2), mem.label_support(2))
    assert not back.params[RUN_KEY].requires_grad
    # the mat is back: one view confirms it
    mem.add_keyframe(mat_view(0.05, 4, mat=True))
    assert float((mem.params[RUN_KEY].detach()[: len(mat)][mat] == 0).float().mean()) > 0.8
    mem.train(2)  # the optimiser carries the counts' rows through seeding and steps


def test_a_memory_saved_before_label_contradictions_loads_with_none(tmp_path):
    mem = _memory(label_change=False)
    mem.add_keyframe(mat_view(0.0, 0, mat=True))
    state = mem.state_dict()
    del state["params"][RUN_KEY]
    old = M3Memory.from_state(state)
    assert old.params[RUN_KEY].shape == (old.n_gaussians,) and float(old.params[RUN_KEY].sum()) == 0
    old.add_keyframe(mat_view(0.0, 1, mat=False))
    old.save(tmp_path / "m")
    loaded = M3Memory.load(tmp_path / "m")
    assert float(loaded.params[RUN_KEY].sum()) > 0
    torch.testing.assert_close(loaded.params[RUN_KEY], old.params[RUN_KEY])


def test_grounding_with_label_contradictions_stops_answering_where_the_mat_was():
    from dataclasses import replace

    import pytest

    from m3_ros.grounding import GroundingConfig, ground

    mem = _memory(label_change=False)
    mem.add_keyframe(mat_view(0.0, 0, mat=True))
    mem.add_keyframe(mat_view(0.1, 1, mat=True))
    mem.train(5)
    mem.add_keyframe(mat_view(0.0, 2, mat=False))
    mem.add_keyframe(mat_view(0.1, 3, mat=False))
    # another name for the mat: close to its label, not equal to it
    text = MAT + 0.5 * MAT.norm() / 32 ** 0.5 * torch.randn(32, generator=torch.Generator().manual_seed(7))
    assert 0.8 < float(torch.nn.functional.cosine_similarity(text, MAT, dim=0)) < 0.99
    # mat_view carries no detector instances, so every keyframe voted every Gaussian outside all
    # regions (votes 0 / 4): at the default support_prior (0.1) that alone takes the mat's support
    # away. Pseudo-votes of 1 keep a sixth of it, and the contradictions must do the rest.
    # left_share (a region mostly contradicted has left) off here: it is the third way to stop answering
    base = GroundingConfig(mode="gaussians", verify_views=0, support_prior=1.0, left_share=0.0)
    assert base.label_contradictions == 2 == GroundingConfig().label_contradictions  # the default
    p = ground(mem, text, "labels", replace(base, label_contradictions=0)).points[0]
    assert -0.3 < p[0] < 0.1 and abs(p[1]) < 0.2 and abs(p[2] - 1.99) < 0.03  # on the mat that is gone
    with pytest.raises(ValueError, match="better than an unlabelled surface"):
        ground(mem, text, "labels", base)
    with pytest.raises(ValueError, match="better than an unlabelled surface"):  # the votes alone, as said
        ground(mem, text, "labels", replace(base, support_prior=GroundingConfig().support_prior, label_contradictions=0))
    with pytest.raises(ValueError, match="seen with something else there"):  # left_share alone, at its default
        ground(mem, text, "labels", replace(base, label_contradictions=0, left_share=GroundingConfig().left_share))


def test_label_verdicts_by_bank_row_match_the_verdict_on_decoded_labels():
    from m3_ros.memory.freespace import SURFACE, classify, project_pixels
    from m3_ros.memory.labelchange import label_verdicts

    mem = _memory(label_change=False)
    mem.add_keyframe(mat_view(0.0, 0, mat=True))
    mem.add_keyframe(mat_view(0.1, 1, mat=True))
    mem.train(3)
    b, q = mem.banks["labels"], mem.params[query_key("labels")].detach()
    for kf in (mat_view(0.05, 2, mat=False), mat_view(0.05, 3, mat=True)):
        surf = torch.nonzero(classify(kf.depth, kf.K, kf.T_world_cam, mem.means, mem.scales, mem.cfg.freespace)
                             == SURFACE).flatten()
        fast = label_verdicts(kf, mem.means[surf], {"labels": q[surf]}, mem.W, {"labels": b}, mem.cfg.tau, 7, 0.5)
        lab = top_labels(q[surf], mem.W["labels"], b.rows, b.unit_rows, mem.cfg.tau)
        slow = label_verdict(lab, project_pixels(kf.K, kf.T_world_cam, mem.means[surf], kf.size), kf.features["labels"], 7, 0.5)
        assert fast.tolist() == slow.tolist()
        assert (fast == CONTRADICTED).sum() > 20 if not (kf.features["labels"].features == MAT).all(-1).any() else \
            (fast == CONFIRMED).sum() > 20

"""Growth without a wall: the global limit evicts the least useful Gaussians for new places, a
per-voxel density budget, and densify statistics that survive new keyframes."""
import numpy as np
import torch

from m3_ros.memory.gaussians import query_key
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.seeding import BIRTH_KEY, EXPOSURE_KEY, least_useful, over_budget
from m3_ros.types import Instance
from m3_ros.memory.strategy import DensifyConfig
from synthetic_scene import render_view


def _cfg(**kw) -> MemoryConfig:
    base = dict(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02, seed_stride=1,
                train_scale=1.0, feature_points=200, backend="torch", seed=0)
    base.update(kw)
    return MemoryConfig(**base)


def test_full_memory_still_maps_a_new_place_by_evicting_the_most_transparent():
    mem = M3Memory(_cfg(max_gaussians=600))
    mem.add_keyframe(render_view(0.0)[0])
    assert mem.n_gaussians == 600  # the first view alone fills the limit
    with torch.no_grad():  # mark some Gaussians as nearly transparent: they are the ones to go
        mem.params["opacity_logits"][:50] = -8.0
    far = mem.means[:, 0].max().item()
    mem.add_keyframe(render_view(1.5, index=1)[0])  # looks at x ~ 1.5 m: geometry not seen before
    assert mem.n_gaussians == 600
    new = mem.means[:, 0] > far + 0.05
    assert new.sum() > 20  # the new place got Gaussians, and queries for them
    assert (mem.params[query_key("dino")].detach()[new].norm(dim=1) > 0).all()
    # every marked (transparent) Gaussian was evicted first
    assert float(mem.opacities.min()) > 0.1


def test_density_budget_bounds_gaussians_per_voxel():
    pts = np.array([[0.001, 0.001, 0.001], [0.011, 0.001, 0.001], [0.05, 0.05, 0.05]])
    existing = np.array([[0.002, 0.003, 0.004], [0.009, 0.009, 0.009], [0.049, 0.041, 0.041]])
    assert over_budget(pts, existing, 0.02, 2).tolist() == [True, True, False]
    assert over_budget(pts, existing, 0.02, 0).tolist() == [False, False, False]
    # In the memory: views that do not explain themselves (depth moved 10 %) keep adding Gaussians,
    # but never more than max_per_voxel per voxel.
    mem = M3Memory(_cfg(max_per_voxel=2, voxel_size=0.04))
    for i in range(4):
        kf = render_view(0.0, index=i)[0]
        kf.depth = kf.depth * (1.0 + 0.1 * i)
        mem.add_keyframe(kf)
    _, counts = np.unique(np.floor(mem.means.numpy() / 0.04).astype(np.int64), axis=0, return_counts=True)
    assert counts.max() <= 2


def test_densify_statistics_survive_a_new_keyframe():
    mem = M3Memory(_cfg(densify=DensifyConfig(refine_start=10_000)))
    mem.add_keyframe(render_view(0.0)[0])
    mem.train(3)
    st = mem._strategy_state
    before = st["grad2d"].clone()
    assert (before > 0).any()
    n0 = mem.n_gaussians
    mem.add_keyframe(render_view(0.4, index=1)[0])
    assert mem.n_gaussians > n0
    torch.testing.assert_close(st["grad2d"][:n0], before)
    assert (st["grad2d"][n0:] == 0).all()


def test_frustum_culled_steps_match_full_renders():
    from m3_ros.memory.training import frustum_index

    def build(cull):
        # dense Adam in both: selective Adam would leave the culled rows still (test_selective_adam.py)
        mem = M3Memory(_cfg(frustum_cull=cull, selective_adam=False, densify=DensifyConfig(refine_start=10_000)))
        mem.add_keyframe(render_view(0.0)[0])
        mem.add_keyframe(render_view(1.5, index=1)[0])
        return mem
    a, b = build(True), build(False)
    v = a._views[0]
    idx = frustum_index(a.means, a.scales, v.viewmat, v.K, 40, 30, 0.01, 100.0)
    assert idx is not None and 0 < len(idx) < a.n_gaussians  # some of the map is out of this view
    for _ in range(4):
        la, lb = a.train_step(), b.train_step()
        assert la.keys() == lb.keys()
        for k in la:
            assert abs(la[k] - lb[k]) <= 1e-5 * max(1.0, abs(lb[k])), k
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a._strategy_state["grad2d"], b._strategy_state["grad2d"], rtol=1e-4, atol=1e-6)


def test_detected_objects_are_seeded_finer_than_the_background():
    """Pixels inside a detector region seed at object_voxel_size and stride 1; the rest as before."""
    from m3_ros.types import Instance

    kf, region = render_view(0.0, W=80, H=60)
    kf.instances = [Instance(mask=region == 1, label="red box")]  # the detector saw the red face only
    coarse = M3Memory(_cfg(voxel_size=0.08, seed_stride=2, object_voxel_size=0.0))
    fine = M3Memory(_cfg(voxel_size=0.08, seed_stride=2, object_voxel_size=0.02))
    coarse.add_keyframe(kf)
    fine.add_keyframe(kf)

    def on_red(mem):  # Gaussians on the red face (z = 1.5, x in [-0.35, 0.05], y in [-0.2, 0.2])
        m = mem.means.numpy()
        return ((np.abs(m[:, 2] - 1.5) < 1e-3) & (m[:, 0] > -0.36) & (m[:, 0] < 0.06)
                & (np.abs(m[:, 1]) < 0.21)).sum()

    # the 0.4 x 0.4 m face: ~25 voxels of 8 cm, ~400 of 2 cm (bounded by the pixels that see it)
    assert on_red(fine) >= 4 * on_red(coarse) > 0
    # the background (wall, green face) keeps the coarse budget
    assert coarse.n_gaussians - on_red(coarse) == fine.n_gaussians - on_red(fine)
    # the finer seeds are 2 cm apart, not closer
    red = fine.means.numpy()[np.abs(fine.means.numpy()[:, 2] - 1.5) < 1e-3]
    assert len(np.unique(np.floor(red / 0.02).astype(np.int64), axis=0)) == len(red)


def test_isolated_seed_starts_no_larger_than_its_sample_spacing():
    """A lone far sample must not start as a disc the size of the gap to its neighbours."""
    from m3_ros.memory.seeding import footprint_cap, seed_geometry

    kf, _ = render_view(0.0)
    cfg = _cfg()
    # two points 1 m apart on the wall (2 m away), no other Gaussian: nearest-neighbour spacing 1 m
    pts = np.array([[-0.5, 0.0, 2.0], [0.5, 0.0, 2.0]])
    pix = np.array([[15, 5], [15, 30]])
    scales = seed_geometry(kf, pts, pix, np.zeros((0, 3)), cfg)["log_scales"].exp()
    cap = footprint_cap(kf, pts, cfg)
    spacing = 2.0 * cfg.seed_stride / kf.K[0, 0]  # metres between seed_stride pixels at 2 m
    np.testing.assert_allclose(cap, 2.0 * max(spacing, cfg.voxel_size), rtol=1e-6)
    assert torch.all(scales <= torch.from_numpy(cap)[:, None].float() * (1 + 1e-5)) and float(scales.max()) < 0.5
    # densely seeded points keep their nearest-neighbour scale (smaller than the cap)
    dense = np.stack([np.linspace(-0.1, 0.1, 21), np.zeros(21), np.full(21, 2.0)], 1)
    s = seed_geometry(kf, dense, np.tile([[15, 20]], (21, 1)), np.zeros((0, 3)), cfg)["log_scales"].exp()
    assert float(s.max()) < float(footprint_cap(kf, dense, cfg).min())


def test_a_small_object_seen_coarsely_is_filled_in_by_a_later_view():
    """An object the memory already renders, but from few large Gaussians (seeded before any
    detector region covered it), gets Gaussians wherever its points lie over object_gap from every
    centre; a big region (the wall) does not: it is not small."""
    from m3_ros.memory.seeding import small_regions
    from m3_ros.types import Instance

    def on_red(mem):  # Gaussians on the red face (z = 1.5, x in [-0.35, 0.05], y in [-0.2, 0.2])
        m = mem.means.numpy()
        return int(((np.abs(m[:, 2] - 1.5) < 1e-3) & (m[:, 0] > -0.36) & (m[:, 0] < 0.06)
                    & (np.abs(m[:, 1]) < 0.21)).sum())

    def run(gap):
        mem = M3Memory(_cfg(voxel_size=0.1, seed_stride=2, object_voxel_size=0.02, object_gap=gap))
        kf0, _ = render_view(0.0, W=80, H=60)
        mem.add_keyframe(kf0)  # no detector output: the red face is seeded at 10 cm
        n_red, n_all = on_red(mem), mem.n_gaussians
        kf1, region = render_view(0.0, W=80, H=60, index=1)
        kf1.instances = [Instance(mask=region == 1, label="red box"), Instance(mask=region == 0, label="wall")]
        assert small_regions(kf1, 0.45).sum() == (region == 1).sum()  # the 0.4 m face is small, the wall not
        mem.add_keyframe(kf1)
        return mem, n_red, n_all

    off, n_red, n_all = run(0.0)
    on, n_red_on, n_all_on = run(0.02)
    assert (n_red, n_all) == (n_red_on, n_all_on) and 0 < n_red <= 25
    # without the gap rule the second view adds only what it does not render (alpha < 0.5 between
    # the untrained seeds); with it, the red face's holes too, and nothing more elsewhere
    assert on_red(on) - on_red(off) >= 100
    assert on.n_gaussians - on_red(on) == off.n_gaussians - on_red(off)
    # afterwards every red-face point of the view lies within ~object_gap of a Gaussian centre
    kf, region = render_view(0.0, W=80, H=60)
    from m3_ros.geometry import backproject
    pts, pix = backproject(kf.depth, kf.K, kf.T_world_cam)
    red = pts[region[pix[:, 0], pix[:, 1]] == 1]
    from scipy.spatial import cKDTree
    d, _ = cKDTree(on.means.numpy()).query(red)
    assert float(d.max()) <= 0.02 + 0.02 * np.sqrt(3) / 2  # the gap, plus half a fine voxel's diagonal


def _with_object(kf, v0: int, u0: int, size: int = 6):
    """kf with a detection of size x size pixels at (v0, u0) (0.375 m across at the wall: object-sized)."""
    mask = np.zeros(kf.size, dtype=bool)
    mask[v0:v0 + size, u0:u0 + size] = True
    kf.instances = [Instance(mask=mask, label="a poster")]
    return kf, mask


def test_object_seeds_of_the_newest_keyframes_go_after_every_older_gaussian():
    """At the limit, a keyframe's fresh seeds (init_opacity, untrained) of a detected object are not
    the next keyframe's eviction: opacity alone would take them first. Background seeds get no grace."""
    # views 0 and 1 fit (1200 + 698), view 2's 700 seeds do not; the newest keyframe's seeds are young
    mem = M3Memory(_cfg(max_gaussians=1900, recent=1))
    mem.add_keyframe(render_view(0.0)[0])
    with torch.no_grad():
        mem.params["opacity_logits"][:] = 2.2  # trained surfaces, opacity 0.9
    right = mem.means[:, 0].max().item()
    kf1, mask = _with_object(render_view(1.5, index=1)[0], 12, 30)  # on the wall x > 1.9 m: a new place
    mem.add_keyframe(kf1)
    young = mem.opacities < 0.6  # keyframe 1's seeds
    obj = young & (mem.params[BIRTH_KEY].detach() > 0)  # seeded inside the detection
    assert bool((mem.means[obj, 0] > right + 0.05).all())
    assert int(obj.sum()) >= 10 and int((young & ~obj).sum()) > 100  # object seeds, and background ones
    n_over = mem.n_gaussians + 700 - 1900
    assert 0 < n_over <= int(young.sum())
    # by opacity alone, keyframe 1's seeds would be the first to go
    assert bool(young[least_useful(mem.opacities, n_over)].all())
    seeds, background = mem.means[obj].clone(), mem.means[young & ~obj].clone()
    left = mem.means[:, 0].min().item()
    mem.add_keyframe(render_view(-1.5, index=2)[0])  # another new place, the memory now over its limit
    assert mem.n_gaussians == 1900
    assert int((mem.means[:, 0] < left - 0.05).sum()) > 20  # it was mapped
    assert float(torch.cdist(seeds, mem.means).min(dim=1).values.max()) == 0.0  # every object seed stayed
    kept_background = int((torch.cdist(background, mem.means).min(dim=1).values == 0).sum())
    assert kept_background <= len(background) - (n_over - len(seeds))  # background seeds went first


def _object_seeds_after_a_new_place(exposure: float = 0.0, birth: float | None = None, **cfg) -> tuple[int, int]:
    """(object seeds of keyframe 1, how many of them are still there after keyframe 2 put the memory over
    its limit): the setup above, with MemoryConfig overrides and the seeds' exposure set beforehand.
    spare_objects is off unless given: the keyframe and exposure rules apply only then."""
    cfg.setdefault("spare_objects", False)
    mem = M3Memory(_cfg(max_gaussians=1900, **cfg))
    mem.add_keyframe(render_view(0.0)[0])
    with torch.no_grad():
        mem.params["opacity_logits"][:] = 2.2
    mem.add_keyframe(_with_object(render_view(1.5, index=1)[0], 12, 30)[0])
    obj = (mem.opacities < 0.6) & (mem.params[BIRTH_KEY].detach() > 0)
    seeds = mem.means[obj].clone()
    mem.params[EXPOSURE_KEY].data[obj] = exposure
    if birth is not None:
        mem.params[BIRTH_KEY].data[obj] = birth
    mem.add_keyframe(render_view(-1.5, index=2)[0])
    return len(seeds), int((torch.cdist(seeds, mem.means).min(dim=1).values == 0).sum())


def test_evict_grace_overrides_recent():
    # the keyframe grace decides only with the exposure rule off
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_grace=0, evict_exposure=0)  # opacity alone
    assert n >= 10 and kept < n
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_grace=2, evict_exposure=0)
    assert n >= 10 and kept == n
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_exposure=0)  # None: the grace is `recent`
    assert n >= 10 and kept == n


def test_evict_exposure_spares_object_seeds_until_training_has_rendered_them():
    # with spare_objects off, the exposure rule is on by default: untrained seeds (exposure 0) are spared
    # even with no keyframe grace
    assert MemoryConfig().evict_exposure > 0
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_grace=0)
    assert n >= 10 and kept == n
    # replaces the keyframe grace: with grace 0 as well, exposure alone decides
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_grace=0, evict_exposure=5, exposure=4.0)
    assert n >= 10 and kept == n
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_grace=0, evict_exposure=5, exposure=5.0)
    assert n >= 10 and kept < n  # trained enough: opacity decides again
    # the keyframe grace no longer applies: exposed seeds go even within `recent`
    n, kept = _object_seeds_after_a_new_place(recent=3, evict_exposure=5, exposure=5.0)
    assert n >= 10 and kept < n
    # a seed whose keyframe is older than the newest `window` is not spared forever: keyframe 2 is the
    # third taken, so with window 1 a birth of 1 (the first keyframe's) is out, with window 2 still in
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_grace=0, evict_exposure=5, birth=1.0, window=1)
    assert n >= 10 and kept < n
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_grace=0, evict_exposure=5, birth=1.0, window=2)
    assert n >= 10 and kept == n


def test_spare_objects_keeps_trained_object_seeds_of_any_age():
    # trained (exposure past the rule) and older than the window: without spare_objects opacity decides
    # and they go first; with it every object seed outlasts the background
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_exposure=5, exposure=50.0, birth=1.0, window=1)
    assert n >= 10 and kept < n
    n, kept = _object_seeds_after_a_new_place(recent=1, evict_exposure=5, exposure=50.0, birth=1.0, window=1,
                                              spare_objects=True)
    assert n >= 10 and kept == n


def test_a_train_step_counts_exposure_only_for_the_gaussians_it_rendered():
    mem = M3Memory(_cfg(recent=1, recent_prob=1.0))
    mem.add_keyframe(render_view(0.0)[0])
    right = mem.means[:, 0].max().item()
    mem.add_keyframe(render_view(3.0, index=1)[0])  # a place view 0 cannot see
    far = mem.means[:, 0] > right + 0.5
    assert int(far.sum()) > 20 and bool((mem.params[EXPOSURE_KEY].detach() == 0).all())
    first = mem._views[0]
    mem._views = [first]  # train on view 0 only
    mem.train(3)
    exp = mem.params[EXPOSURE_KEY].detach()
    assert bool((exp[far] == 0).all())  # never rendered: training has said nothing about them
    assert float((exp[~far] == 3).float().mean()) > 0.9  # what view 0 sees was rendered by all 3 steps
    assert set(exp.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}

"""Free-space evidence (m3_ros/memory/freespace.py): rays that pass through Gaussians remove them;
surfaces, silhouettes, hidden Gaussians and holes never do."""
import numpy as np
import pytest
import torch

from m3_ros.geometry import intrinsics_matrix
from m3_ros.memory.freespace import (HIDDEN, OUTSIDE, SURFACE, THROUGH, UNKNOWN, FreeSpaceConfig, classify,
                                     decayed_logits)
from m3_ros.memory.gaussians import query_key
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from synthetic_scene import render_view

W, H = 80, 60
K = intrinsics_matrix(64.0, 64.0, (W - 1) / 2, (H - 1) / 2)
CENTRE = np.array([0.0, 0.0, 1.0])
R = 0.05  # blob radius (m)


def _blob(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian means [n, 3] filling a ball of radius R at CENTRE (camera frame = world), scales [n, 3]."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = CENTRE + d * R * rng.random(n)[:, None] ** (1 / 3)
    return torch.tensor(pts, dtype=torch.float32), torch.full((n, 3), 0.005)


def _rays() -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]


def _ball_depth(wall: float = 2.0, shift_px: float = 0.0) -> np.ndarray:
    """[H, W] depth of the blob's front surface (a sphere) in front of a wall, optionally drawn
    shift_px pixels to the right (a misregistered view)."""
    rx, ry = _rays()
    rx = rx - shift_px / K[0, 0]
    # ray t*(rx, ry, 1) hits the sphere |p - CENTRE| = R
    a = rx ** 2 + ry ** 2 + 1
    b = -2 * CENTRE[2]
    c = CENTRE[2] ** 2 - R ** 2
    disc = b ** 2 - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where(disc > 0, t, wall).astype(np.float32)


def _codes(depth, means, scales, T=np.eye(4), **kw):
    return classify(depth, K, T, means, scales, FreeSpaceConfig(**kw))


def test_a_view_past_the_blob_sees_through_it():
    means, scales = _blob()
    codes = _codes(np.full((H, W), 2.0, np.float32), means, scales)
    assert (codes == THROUGH).all()


def test_the_blob_surface_silhouette_and_hidden_inside_are_kept():
    means, scales = _blob()
    codes = _codes(_ball_depth(), means, scales)
    assert not (codes == THROUGH).any()
    assert (codes == SURFACE).sum() > 100  # the front half lies on the observed surface
    # silhouette: Gaussians that project at or just outside the rim, where the centre pixel sees the wall
    rim = (codes != SURFACE) & (codes != HIDDEN)
    assert not (codes[rim] == THROUGH).any()
    # misregistered by the window's half-width (a pose error): the window still holds the blob's own
    # surface; misregistered by far more, the blob's trailing side is (wrongly) seen through
    r = FreeSpaceConfig().radius_px(W)
    assert r >= 2
    assert not (_codes(_ball_depth(shift_px=r), means, scales) == THROUGH).any()
    assert (_codes(_ball_depth(shift_px=4 * r), means, scales) == THROUGH).any()


def test_gaussians_behind_the_observed_surface_are_hidden_not_removed():
    means, scales = _blob()
    codes = _codes(np.full((H, W), 0.8, np.float32), means, scales)
    assert (codes == HIDDEN).all()


def test_holes_give_no_evidence():
    means, scales = _blob()
    depth = np.full((H, W), 2.0, np.float32)
    rx, ry = _rays()
    depth[np.hypot(rx, ry) < 0.12] = 0.0  # no return over the blob and around it
    codes = _codes(depth, means, scales)
    assert not (codes == THROUGH).any()
    assert (codes == UNKNOWN).all()
    # a few speckle holes do not hide the evidence
    speckle = np.full((H, W), 2.0, np.float32)
    speckle[::5, ::5] = 0.0
    assert (_codes(speckle, means, scales) == THROUGH).all()


def test_a_thin_rod_is_kept_while_seen_and_removed_once_gone():
    y = np.linspace(-0.2, 0.2, 40)
    x0 = (40 - K[0, 2]) / K[0, 0]  # a 1.5 cm rod at 1 m, seen as the single pixel column u = 40
    means = torch.tensor(np.stack([np.full_like(y, x0), y, np.ones_like(y)], 1), dtype=torch.float32)
    scales = torch.full((40, 3), 0.002)
    depth = np.full((H, W), 2.0, np.float32)
    depth[:, 40] = 1.0
    assert not (_codes(depth, means, scales) == THROUGH).any()
    assert (_codes(np.full((H, W), 2.0, np.float32), means, scales) == THROUGH).all()


def test_outside_the_image_or_behind_the_camera_gives_nothing():
    means = torch.tensor([[0.0, 0.0, -1.0], [5.0, 0.0, 1.0], [0.0, 0.0, 0.05]])
    codes = _codes(np.full((H, W), 2.0, np.float32), means, None)
    assert (codes == OUTSIDE).all()


def test_margin_grows_with_range():
    means = torch.tensor([[0.0, 0.0, 2.9]])
    depth = np.full((H, W), 3.0, np.float32)  # 10 cm behind at 3 m: within 0.02 * 9 = 18 cm
    assert _codes(depth, means, None)[0] == SURFACE
    assert _codes(depth, means, None, noise=0.0)[0] == THROUGH


def test_a_slanted_floor_does_not_hide_a_floater_above_it():
    """A floor seen at a grazing angle: window pixels below see it far nearer than the centre pixel,
    yet none of them sees a surface near the floater, so the floater is seen through; a Gaussian on
    the floor is explained by its own surface."""
    cam_h = 0.2  # camera 20 cm above a floor (y down in the optical frame: the floor is y = cam_h)
    _, ry = _rays()
    depth = np.where(ry > 0, cam_h / np.maximum(ry, 1e-9), 0.0).astype(np.float32)
    depth[depth > 3.0] = 0.0
    on_floor = torch.tensor([[0.0, cam_h, 1.0]])
    floater = torch.tensor([[0.0, cam_h - 0.08, 1.0]])  # 8 cm above the floor, 1 m ahead
    assert _codes(depth, on_floor, None)[0] == SURFACE
    assert _codes(depth, floater, None)[0] == THROUGH


def test_decay_multiplies_opacity_and_config_is_checked():
    logits = torch.tensor([2.0, 0.0, -1.0])
    out = decayed_logits(logits, torch.tensor([True, True, False]), 0.2)
    torch.testing.assert_close(torch.sigmoid(out), torch.sigmoid(logits) * torch.tensor([0.2, 0.2, 1.0]))
    with pytest.raises(ValueError, match="decay"):
        FreeSpaceConfig(decay=1.0)
    with pytest.raises(ValueError, match="window"):
        FreeSpaceConfig(window=-0.1)


def _memory(**fs) -> M3Memory:
    return M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02,
                                 seed_stride=1, train_scale=1.0, feature_points=200, backend="torch", seed=0,
                                 freespace=FreeSpaceConfig(**fs)))


def _box_moved_away(index: int):
    """The synthetic scene's first view with the red box (region 1) gone: the wall shows behind it."""
    kf, region = render_view(0.0, index=index)
    wall = region == 0
    gone = region == 1
    kf.depth[gone] = 2.0
    kf.rgb[gone] = kf.rgb[wall][0]
    f = kf.features["dino"].features
    f[torch.from_numpy(gone)] = f[torch.from_numpy(wall)][0]
    return kf


def _box_gaussians(mem: M3Memory) -> torch.Tensor:
    m = mem.means
    return (m[:, 2] < 1.55) & (m[:, 2] > 1.3) & (mem.opacities >= 0.2)  # the red box face at z = 1.5


def test_memory_removes_a_moved_box_and_maps_the_wall_behind_it():
    mem = _memory()
    mem.add_keyframe(render_view(0.0)[0])
    mem.add_keyframe(render_view(0.3, index=1)[0])
    mem.train(5)
    n_box = int(_box_gaussians(mem).sum())
    green = (mem.means[:, 2] - 1.7).abs() < 0.02
    n_green = int(green.sum())
    assert n_box > 50 and n_green > 30

    def behind_box(m):  # the wall the box hid
        return ((m[:, 2] - 2.0).abs() < 0.02) & (m[:, 0] > -0.3) & (m[:, 0] < 0.0) & (m[:, 1].abs() < 0.15)
    assert behind_box(mem.means).sum() == 0
    mem.add_keyframe(_box_moved_away(2))
    assert _box_gaussians(mem).sum() == 0  # one view already fades them below grounding's 0.2
    mem.add_keyframe(_box_moved_away(3))
    m = mem.means
    assert ((m[:, 2] < 1.55) & (m[:, 2] > 1.3)).sum() == 0  # two views remove them
    assert ((mem.means[:, 2] - 1.7).abs() < 0.02).sum() >= n_green  # the green box stays
    # the wall where the box stood is mapped, with the wall's query
    behind = behind_box(m)
    assert behind.sum() >= 15  # of 25 pixels there (6 cm each at 2 m)
    assert (mem.params[query_key("dino")].detach()[behind].norm(dim=1) > 0).all()
    # the keyframes that saw the box stay for training, with the box's pixels masked
    assert [v.kf.index for v in mem._views] == [0, 1, 2, 3]
    region0 = render_view(0.0)[1]
    v0 = mem._views[0]
    assert v0.stale is not None and v0.stale.shape == region0.shape
    box, rest = torch.from_numpy(region0 == 1), torch.from_numpy(region0 != 1)
    assert v0.stale[box].float().mean() > 0.9  # the box's footprint, a window's margin around it
    assert v0.stale[rest].float().mean() < 0.3
    assert mem.stats()["stale_masked"] == 2 and mem.stats()["stale_dropped"] == 0
    assert mem._views[2].stale is None  # the views after the move saw nothing stale
    mem.train(30)  # the old views train the rest of the scene; nothing pulls the box back
    assert _box_gaussians(mem).sum() == 0
    assert ((mem.means[:, 2] - 1.7).abs() < 0.02).sum() >= n_green


def test_without_stale_masks_the_keyframes_that_saw_the_box_leave():
    mem = _memory(stale_mask=False)
    mem.add_keyframe(render_view(0.0)[0])
    mem.add_keyframe(render_view(0.3, index=1)[0])
    mem.train(5)
    mem.add_keyframe(_box_moved_away(2))
    mem.add_keyframe(_box_moved_away(3))
    assert [v.kf.index for v in mem._views] == [2, 3]
    assert mem.stats()["stale_dropped"] == 2 and mem.stats()["stale_masked"] == 0
    mem.train(3)  # training goes on with what is left


def test_a_keyframe_mostly_masked_leaves_the_window():
    mem = _memory(stale_max_fraction=0.01)
    mem.add_keyframe(render_view(0.0)[0])
    mem.train(3)
    mem.add_keyframe(_box_moved_away(1))
    mem.add_keyframe(_box_moved_away(2))
    assert [v.kf.index for v in mem._views] == [1, 2]


def test_memory_without_freespace_keeps_the_box():
    mem = _memory(enabled=False)
    mem.add_keyframe(render_view(0.0)[0])
    n_box = int(_box_gaussians(mem).sum())
    mem.add_keyframe(_box_moved_away(1))
    mem.add_keyframe(_box_moved_away(2))
    assert int(_box_gaussians(mem).sum()) == n_box
    assert len(mem._views) == 3


def _reference_codes(depth, means, scales, params):
    """classify's rule read literally, one Gaussian and one window pixel at a time (camera = world)."""
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64))
    f, r = 0.5 * (K[0, 0] + K[1, 1]), params.radius_px(W)
    out = []
    for (x, y, z), s in zip(means.double().numpy(), scales.double().numpy()):
        u, v = (int(np.rint(K[0, 0] * x / z + K[0, 2])), int(np.rint(K[1, 1] * y / z + K[1, 2]))) if z > params.near else (-1, -1)
        if not (z > params.near and 0 <= u < W and 0 <= v < H):
            out.append(OUTSIDE)
            continue
        m = max(params.margin, params.noise * z ** 2) + params.extent * s.max()
        window = [(d[v + a, u + b] if 0 <= v + a < H and 0 <= u + b < W else 0.0, np.hypot(a, b))
                  for a in range(-r, r + 1) for b in range(-r, r + 1)]
        seen = [dw for dw, _ in window if dw > 0]
        if any(dw > 0 and (dw - z) ** 2 + (z * o / f) ** 2 <= m ** 2 for dw, o in window):
            out.append(SURFACE)
        elif len(seen) / len(window) >= params.min_valid and seen and z < min(seen) - m:
            out.append(THROUGH)
        elif d[v, u] > 0 and z > d[v, u] + m:
            out.append(HIDDEN)
        else:
            out.append(UNKNOWN)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classify_matches_the_rule_read_pixel_by_pixel(seed):
    """The window statistics (min / max filters, valid counts) and the centre-pixel shortcut give the
    same codes as the rule evaluated literally, on a slanted, holed depth image with Gaussians
    around, in front of and behind its surfaces, at the image border and out of view."""
    rng = np.random.default_rng(seed)
    rx, ry = _rays()
    depth = 1.0 + 0.6 * rx + 0.3 * ry + 0.4 * (rx > 0.2)  # a slanted plane with a step
    depth[rng.random((H, W)) < 0.25] = 0.0  # holes
    depth[:, : W // 6] = 0.0  # a band without depth
    n = 1500
    v, u = rng.uniform(-3, H + 2, n), rng.uniform(-3, W + 2, n)
    base = 1.0 + 0.6 * (u - K[0, 2]) / K[0, 0] + 0.3 * (v - K[1, 2]) / K[1, 1]
    z = np.maximum(base + rng.normal(0, 0.12, n), 0.05)
    means = torch.tensor(np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1))
    scales = torch.tensor(rng.uniform(0.001, 0.02, (n, 3)))
    params = FreeSpaceConfig()
    got = classify(depth.astype(np.float32), K, np.eye(4), means, scales, params).numpy()
    want = _reference_codes(depth.astype(np.float32), means, scales, params)
    assert {int(c) for c in np.unique(want)} >= {SURFACE, THROUGH, HIDDEN, UNKNOWN, OUTSIDE}  # every case occurs
    assert np.array_equal(got, want), np.nonzero(got != want)[0][:10]


def test_stale_pixels_carry_no_loss_and_no_gradient():
    """view_losses on a kept view: where it is stale the render's colour, depth and queries get no
    gradient; elsewhere the same losses as without a mask."""
    from m3_ros.memory.training import view_losses
    from m3_ros.memory.views import mark_stale
    mem = _memory()
    mem.add_keyframe(render_view(0.0)[0])
    v = mem._views[0]
    h, w = v.rgb.shape[:2]
    l = mem.cfg.models["dino"].channels
    g = torch.Generator().manual_seed(0)
    img = torch.rand(h, w, 3 + l + 1, generator=g).requires_grad_(True)
    region = render_view(0.0)[1]
    box = torch.from_numpy(region == 1)
    assert mark_stale(v, mem.means[_box_gaussians(mem)], 1) >= int(box.sum())
    mem.cfg.feature_points = h * w  # every pixel's feature target
    loss, _ = view_losses(mem.cfg, v, img, ["dino"], mem.W, mem.banks, torch.Generator().manual_seed(1))
    loss.backward()
    grad = img.grad.abs().sum(-1)
    assert float(grad[v.stale].max()) == 0.0
    assert float(grad[~v.stale].min()) > 0.0
    v.stale = torch.ones(h, w, dtype=torch.bool)  # a wholly stale view: nothing to learn from it
    loss, terms = view_losses(mem.cfg, v, img, ["dino"], mem.W, mem.banks, torch.Generator().manual_seed(1))
    terms = {k: float(t.detach()) for k, t in terms.items()}
    assert terms["rgb"] == pytest.approx(0.0, abs=1e-6) and terms["depth"] == 0.0 and terms["feat_dino"] == 0.0

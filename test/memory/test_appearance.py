"""Appearance-change evidence (appearance.py) and the memory using it (FreeSpaceConfig.appearance_change)."""
from __future__ import annotations

import numpy as np
import torch

from m3_ros.memory.appearance import colour_changed
from m3_ros.memory.freespace import FreeSpaceConfig
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.sh import sh_to_rgb
from synthetic_scene import render_view

GREY, YELLOW = (0.5, 0.5, 0.5), (0.9, 0.8, 0.1)


def _image(patch: tuple = YELLOW, gain: float = 1.0) -> np.ndarray:
    """[40, 60, 3] uint8 grey floor with a 6x6 patch at rows 10-15, columns 10-15, times an exposure gain."""
    img = np.full((40, 60, 3), GREY)
    img[10:16, 10:16] = patch
    return (np.clip(img * gain, 0, 1) * 255).astype(np.uint8)


def _changed(img, pix, colours, r: int = 3) -> np.ndarray:
    return colour_changed(img, np.array(pix), np.array(colours, dtype=np.float64), r, 0.1, 0.3, 0.5)


def test_a_colour_no_pixel_around_shows_is_changed_and_one_nearby_is_not():
    img = _image()
    # a yellow Gaussian on the plain floor, one at the patch's border (its window reaches the patch),
    # one inside the patch, a grey one on the floor
    got = _changed(img, [(30, 40), (13, 18), (12, 12), (30, 40)], [YELLOW, YELLOW, YELLOW, GREY])
    assert got.tolist() == [True, False, False, False]


def test_exposure_changes_no_colour():
    dark, bright = _image(gain=0.7), _image(gain=1.3)
    for img in (dark, bright):
        assert _changed(img, [(30, 40), (12, 12)], [GREY, YELLOW]).tolist() == [False, False]
        assert _changed(img, [(30, 40)], [YELLOW]).tolist() == [True]


def test_too_dark_or_too_little_image_gives_no_evidence():
    black = np.zeros((40, 60, 3), np.uint8)
    assert not _changed(black, [(20, 20)], [YELLOW]).any()  # no pixel bright enough
    assert not _changed(_image(), [(30, 40)], [(0.05, 0.04, 0.01)]).any()  # the Gaussian has no chromaticity
    # at the image corner 3/4 of the window lies outside: under min_valid
    assert not _changed(_image(), [(0, 0)], [YELLOW]).any()
    assert _changed(_image(), [(0, 0)], [YELLOW], r=0).all()  # a 1-pixel window is all inside


def _memory(**fs) -> M3Memory:
    return M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02,
                                 seed_stride=1, train_scale=1.0, feature_points=200, backend="torch", seed=0,
                                 freespace=FreeSpaceConfig(**fs)))


def _paint_gone(index: int):
    """The first view with the red box face repainted the wall's colour, its depth unchanged: what a flat
    object taken off a surface looks like to a depth camera (free space sees nothing)."""
    kf, region = render_view(0.0, index=index)
    kf.rgb[region == 1] = kf.rgb[region == 0][0]
    return kf


def _red(mem: M3Memory) -> torch.Tensor:
    """Opaque Gaussians on the red face that are red (once it is gone, the wall-coloured face is seeded anew)."""
    m = mem.means
    rgb = sh_to_rgb(mem.params["colors"].detach(), m, torch.zeros(3), mem.cfg.sh_degree)
    return (m[:, 2] < 1.55) & (m[:, 2] > 1.45) & (mem.opacities >= 0.2) & (rgb[:, 0] > rgb[:, 1] + 0.3)


def _green(mem: M3Memory) -> torch.Tensor:
    return ((mem.means[:, 2] - 1.7).abs() < 0.02) & (mem.opacities >= 0.2)


def _walk(mem: M3Memory) -> tuple[int, int]:
    mem.add_keyframe(render_view(0.0)[0])
    mem.add_keyframe(render_view(0.3, index=1)[0])
    mem.train(5)
    return int(_red(mem).sum()), int(_green(mem).sum())


def test_memory_fades_a_repainted_surface_only_with_appearance_change():
    on, off = _memory(appearance_change=True), _memory()
    for mem in (on, off):
        n_red, n_green = _walk(mem)
        assert n_red > 50 and n_green > 30
        mem.add_keyframe(_paint_gone(2))
        mem.add_keyframe(_paint_gone(3))
    assert int(_red(off).sum()) >= n_red  # depth explains the face: free space keeps it
    assert int(_red(on).sum()) < 0.1 * n_red  # its colour is gone: it fades and goes
    assert int(_green(on).sum()) >= 0.9 * n_green  # the green box still shows its colour
    assert on.stats()["cleared"] > 0 and on.stats()["stale_masked"] == 2  # the views that saw it red


def test_an_unchanged_scene_keeps_every_gaussian_with_appearance_change():
    mem = _memory(appearance_change=True)
    n_red, n_green = _walk(mem)
    n = mem.n_gaussians
    mem.add_keyframe(render_view(0.0, index=2)[0])
    mem.add_keyframe(render_view(0.15, index=3)[0])
    assert mem.stats()["cleared"] == 0
    assert int(_red(mem).sum()) >= n_red and int(_green(mem).sum()) >= n_green and mem.n_gaussians >= n

"""Appearance-change evidence: a Gaussian on the observed surface whose colour no pixel around it shows.

A moved object lower than free space's margin (freespace.py: 5 cm plus range noise plus the
Gaussian's extent), a 2 cm lego taken off the floor, leaves Gaussians that the new depth explains as
the floor; where no detector names the place (a floor, a wall), label change (labelchange.py) has no
evidence either. The new view's colour still tells: the yellow Gaussians sit where every pixel is
now the floor's grey.

Read as conservatively as free space, with the same window around the Gaussian's pixel: its colour
as this keyframe would see it (its SH colour from the camera centre) is CHANGED when every usable
pixel of the window differs from it by more than ``min_chroma`` in rg chromaticity, (r, g) / (r + g + b),
which a change of exposure (the gain scales r, g and b together) leaves alone. A pixel is usable when
it is bright enough for its chromaticity to mean something (r + g + b >= ``min_bright``, 0..3); the
window needs ``min_valid`` of them. An object's border, or an object misregistered by a few pixels,
keeps its own pixels in the window and gives no evidence; so does a change to a look-alike colour.
Opt-in (FreeSpaceConfig.appearance_change). Pure numpy / torch; no ROS, no memory state.
"""
from __future__ import annotations

import numpy as np


def chromaticity(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rg chromaticity [..., 2], brightness r + g + b [...]) of colours rgb [..., 3] in 0..1."""
    rgb = np.asarray(rgb, dtype=np.float64)
    s = rgb.sum(-1)
    return rgb[..., :2] / np.maximum(s, 1e-6)[..., None], s


def colour_changed(image: np.ndarray, pix: np.ndarray, colours: np.ndarray, radius_px: int, min_chroma: float,
                   min_bright: float, min_valid: float) -> np.ndarray:
    """[S] bool: the Gaussians (pixels pix [S, 2] (v, u), colours [S, 3] in 0..1 as this view would see
    them) whose window of half-width radius_px in image [H, W, 3] (uint8 or 0..1 floats) holds enough
    usable pixels (min_valid of the window; outside the image counts as unusable), none of them within
    min_chroma (rg chromaticity, Euclidean) of the Gaussian's colour. Gaussians too dark to have a
    chromaticity (brightness < min_bright) are never changed."""
    img = np.asarray(image)
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    H, W = img.shape[:2]
    S = len(pix)
    out = np.zeros(S, dtype=bool)
    if S == 0:
        return out
    chroma, bright = chromaticity(img)
    g_chroma, g_bright = chromaticity(colours)
    pix = np.asarray(pix, dtype=np.int64)
    v, u = pix[:, 0], pix[:, 1]
    # the centre pixel alone settles most Gaussians of a static scene: it still shows their colour
    near = (bright[v, u] >= min_bright) & (np.linalg.norm(chroma[v, u] - g_chroma, axis=1) <= min_chroma)
    cand = np.nonzero(~near & (g_bright >= min_bright))[0]
    r = int(radius_px)
    dv, du = (x.reshape(-1) for x in np.mgrid[-r:r + 1, -r:r + 1])
    for s in range(0, len(cand), 2048):  # chunks bound the [chunk, P] arrays
        c = cand[s:s + 2048]
        vv, uu = v[c, None] + dv, u[c, None] + du  # [C, P]
        inside = (vv >= 0) & (vv < H) & (uu >= 0) & (uu < W)
        vv, uu = np.clip(vv, 0, H - 1), np.clip(uu, 0, W - 1)
        usable = inside & (bright[vv, uu] >= min_bright)
        dist = np.linalg.norm(chroma[vv, uu] - g_chroma[c, None], axis=-1)  # [C, P]
        enough = usable.sum(1) >= min_valid * len(dv) - 1e-9
        out[c] = enough & ~(usable & (dist <= min_chroma)).any(1)
    return out

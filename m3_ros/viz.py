"""Pictures for people: one colour map for relevance images (demo, CLI, node)."""
from __future__ import annotations

import numpy as np

_STOPS = np.array([[20, 10, 60], [180, 30, 60], [250, 150, 20], [255, 255, 200]], dtype=np.float64)


def heatmap(values: np.ndarray, empty: np.ndarray | None = None) -> np.ndarray:
    """Relevance [H, W] -> [H, W, 3] uint8, dark -> red -> yellow -> white between its 1st and
    99.5th percentiles; pixels where ``empty`` [H, W] bool is True, or that are not finite, are grey."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values) if empty is None else np.isfinite(values) & ~np.asarray(empty, dtype=bool)
    out = np.full(values.shape + (3,), 64, dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values[valid], [1, 99.5])
    t = np.clip((np.where(valid, values, lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    x = t * (len(_STOPS) - 1)
    i = np.minimum(x.astype(int), len(_STOPS) - 2)
    f = (x - i)[..., None]
    rgb = _STOPS[i] * (1 - f) + _STOPS[i + 1] * f
    out[valid] = rgb[valid].astype(np.uint8)
    return out

"""Compact keyframe storage: region (label) maps as an index map plus a table of distinct features.

A region model's feature map repeats one embedding over every cell of a region: at 320x240 with a
stride-4 grid and d = 384 that is a [60, 80, 384] float32 map, 7.4 MB per keyframe, for a handful
of distinct labels. ``IndexedFeatureMap`` keeps an int16 [h, w] index map (-1 = no feature) and the
[k, d] table of the distinct rows instead, and samples exactly as the dense map does (the same
grid_sample call reads the index map), so training and seeding see identical targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.types import FeatureMap, Keyframe

INDEX_DTYPE = torch.int16
MAX_TABLE_ROWS = int(torch.iinfo(INDEX_DTYPE).max)  # distinct rows an int16 index can address


@dataclass
class IndexedFeatureMap:
    """A piecewise-constant FeatureMap as index [h, w] int16 (-1 = all-zero cell) + table [k, d].

    Same grid convention and ``sample`` results as ``FeatureMap`` (m3_ros/types.py).
    """

    model: str
    index: torch.Tensor  # [h, w] int16 row of `table`, -1 = no feature
    table: torch.Tensor  # [k, d] float32 distinct non-zero rows
    image_size: tuple[int, int]  # (H, W) of the source image

    @property
    def dim(self) -> int:
        return int(self.table.shape[-1])

    @property
    def features(self) -> torch.Tensor:
        """The dense [h, w, d] map (materialised on each call: for code that needs it whole)."""
        idx = self.index.long()
        out = torch.zeros(*idx.shape, self.dim)
        hit = idx >= 0
        out[hit] = self.table[idx[hit]]
        return out

    @property
    def nbytes(self) -> int:
        return self.index.numel() * self.index.element_size() + self.table.numel() * self.table.element_size()

    def sample(self, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Features at pixel coordinates uv [N, 2] (u, v) -> [N, d], as FeatureMap.sample.

        "nearest" picks cells with the same grid_sample call the dense map uses, applied to the
        index map, then looks the rows up; "bilinear" blends labels, so it goes through the dense map.
        """
        if mode != "nearest":
            return FeatureMap(self.model, self.features, self.image_size).sample(uv, mode=mode)
        H, W = self.image_size
        grid = torch.empty(1, 1, uv.shape[0], 2, dtype=torch.float32)
        grid[0, 0, :, 0] = (uv[:, 0].float() + 0.5) / W * 2 - 1
        grid[0, 0, :, 1] = (uv[:, 1].float() + 0.5) / H * 2 - 1
        imap = self.index.float()[None, None]  # [1, 1, h, w]; int16 values are exact in float32
        cell = F.grid_sample(imap, grid, mode="nearest", padding_mode="border", align_corners=False)
        idx = cell[0, 0, 0].round().long()  # [N]
        out = torch.zeros(uv.shape[0], self.dim)
        hit = idx >= 0
        out[hit] = self.table[idx[hit]]
        return out


def index_feature_map(fm: FeatureMap) -> IndexedFeatureMap | None:
    """fm as an IndexedFeatureMap, or None if it has more distinct rows than an int16 index holds."""
    h, w, d = fm.features.shape
    flat = fm.features.reshape(-1, d).float()
    zero = flat.abs().sum(-1) == 0
    table, inv = torch.unique(flat[~zero], dim=0, return_inverse=True)
    if table.shape[0] > MAX_TABLE_ROWS:
        return None
    index = torch.full((h * w,), -1, dtype=torch.long)
    index[~zero] = inv
    return IndexedFeatureMap(fm.model, index.reshape(h, w).to(INDEX_DTYPE), table.contiguous(), fm.image_size)


def grid_hw(fm) -> tuple[int, int]:
    """(h, w) of a FeatureMap's or IndexedFeatureMap's grid."""
    return tuple(fm.index.shape) if isinstance(fm, IndexedFeatureMap) else tuple(fm.features.shape[:2])


def feature_map_nbytes(fm) -> int:
    """Bytes held by a FeatureMap or IndexedFeatureMap."""
    if isinstance(fm, IndexedFeatureMap):
        return fm.nbytes
    return fm.features.numel() * fm.features.element_size()


def keyframe_nbytes(kf: Keyframe) -> int:
    """Bytes of a keyframe's arrays: images, features, instance masks."""
    n = np.asarray(kf.rgb).nbytes + np.asarray(kf.depth).nbytes
    n += sum(feature_map_nbytes(fm) for fm in kf.features.values())
    n += sum(np.asarray(inst.mask).nbytes for inst in kf.instances)
    return int(n)

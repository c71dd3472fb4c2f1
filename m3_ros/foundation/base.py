"""The interface every foundation-model feature extractor implements, and shared image helpers."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.types import FeatureMap, Instance


class WeightsMissing(RuntimeError):
    """A model's weights are not on this machine; the message says what to install or where to put files."""


class FeatureModel(ABC):
    """One foundation model: image -> dense feature map, and (where it has one) a query encoder."""

    name: str
    """Registry name, also the memory-bank key: "clip", "siglip", "dinov2_s", "minilm_labels"."""
    dim: int
    """Feature dimension d."""
    kind: Literal["dense", "regions"]
    """"dense": a patch grid (sample bilinearly); "regions": one vector per labelled region."""

    @abstractmethod
    def extract(self, rgb: np.ndarray, instances: list[Instance] | None = None) -> FeatureMap:
        """Feature map of one image.

        Args:
            rgb: [H, W, 3] uint8.
            instances: labelled regions of this image (used by region models, ignored by dense ones).
        Returns:
            FeatureMap with features [h, w, d] covering the whole image.
        """

    def encode_text(self, texts: list[str]) -> torch.Tensor | None:
        """Text queries -> [n, d] in the same space as `extract`'s features; None without a text tower."""
        return None

    def encode_crop(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor | None:
        """Image crop ("find things that look like this") -> [d]; None without an image tower.

        box: (x0, y0, x1, y1) pixel bounds, end exclusive.
        """
        return None


def check_rgb(rgb: np.ndarray) -> None:
    """Raise ValueError unless rgb is an [H, W, 3] uint8 array."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        desc = f"{type(rgb).__name__} {getattr(rgb, 'shape', None)} {getattr(rgb, 'dtype', None)}"
        raise ValueError(f"rgb must be an [H, W, 3] uint8 array, got {desc}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"rgb is empty: shape {rgb.shape}")


def crop_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The [y0:y1, x0:x1] crop of rgb; ValueError for a box outside the image or empty."""
    check_rgb(rgb)
    H, W = rgb.shape[:2]
    x0, y0, x1, y1 = (int(b) for b in box)
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise ValueError(f"box {tuple(box)} is empty or outside the {W}x{H} image (x0, y0, x1, y1)")
    return rgb[y0:y1, x0:x1]


def round_to_patch(size_hw: tuple[int, int], patch: int) -> tuple[int, int]:
    """(H, W) rounded to the nearest multiples of patch (at least one patch each)."""
    return tuple(max(patch, int(round(s / patch)) * patch) for s in size_hw)  # type: ignore[return-value]


def to_model_input(rgb: np.ndarray, size_hw: tuple[int, int], mean: tuple[float, float, float],
                   std: tuple[float, float, float]) -> torch.Tensor:
    """[H, W, 3] uint8 -> normalised [1, 3, h, w] float32 resized to size_hw.

    The whole image is resized (no crop, no padding), so grid cell (i, j) of a model with
    patch p covers pixels [j*p, (j+1)*p) of the input, i.e. the FeatureMap convention.
    """
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float() / 255.0  # [1, 3, H, W]
    if tuple(x.shape[-2:]) != tuple(size_hw):
        # antialias: keyframes are usually downscaled or near-native; avoids aliasing of fine texture
        x = F.interpolate(x, size=tuple(size_hw), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s

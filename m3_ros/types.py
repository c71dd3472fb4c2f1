"""Plain data passed between the core pieces (no ROS): keyframes, feature maps, instances."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class FeatureMap:
    """Dense raw features of one foundation model for one image.

    The grid covers the whole image: cell (i, j) has its centre at pixel
    ``u = (j + 0.5) * W / w - 0.5``, ``v = (i + 0.5) * H / h - 0.5`` (grid_sample with
    ``align_corners=False``). An all-zero feature vector means "no feature here"
    (e.g. a pixel outside every labelled region) and is ignored by the losses.
    """

    model: str
    features: torch.Tensor  # [h, w, d] float32, un-normalised, in the model's own space
    image_size: tuple[int, int]  # (H, W) of the source image

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    def sample(self, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Features at pixel coordinates uv [N, 2] (u, v) -> [N, d].

        mode: "bilinear" for smooth maps (patch grids), "nearest" for region maps where
        blending two labels would invent a feature.
        """
        H, W = self.image_size
        grid = torch.empty(1, 1, uv.shape[0], 2, dtype=torch.float32)
        grid[0, 0, :, 0] = (uv[:, 0].float() + 0.5) / W * 2 - 1
        grid[0, 0, :, 1] = (uv[:, 1].float() + 0.5) / H * 2 - 1
        fmap = self.features.permute(2, 0, 1).unsqueeze(0).float()  # [1, d, h, w]
        out = F.grid_sample(fmap, grid, mode=mode, padding_mode="border", align_corners=False)
        return out[0, :, 0, :].T.contiguous()


@dataclass
class Instance:
    """One labelled region of a colour frame (from a detector, or the simulator's oracle)."""

    mask: np.ndarray  # [H, W] bool
    label: str
    score: float = 1.0
    id: int = 0


@dataclass
class Keyframe:
    """One RGB-D view with its camera pose and the foundation features extracted from it."""

    index: int
    stamp: float  # seconds
    rgb: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray  # [H, W] float32 metres (0 = no return)
    K: np.ndarray  # [3, 3] intrinsics
    T_world_cam: np.ndarray  # [4, 4] optical camera -> memory (odom) frame
    features: dict[str, FeatureMap] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

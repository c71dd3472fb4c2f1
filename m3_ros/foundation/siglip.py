"""SigLIP through transformers (local directory only): dense features in SigLIP's image-text space.

SigLIP has no CLS token: its image embedding is an attention-pooling head (a learned probe
attends over the patch tokens, then LayerNorm + MLP with a residual). The dense head applies
that head's *value path* to each patch alone, i.e. what the pooled embedding would be if the
probe attended to that one patch: ``h = out_proj(W_v x + b_v); h + mlp(layernorm(h))``, the
MaskCLIP idea transposed to SigLIP's pooling. Position embeddings are interpolated by
transformers (`interpolate_pos_encoding=True`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.foundation.base import (FeatureModel, WeightsMissing, check_rgb, crop_box, round_to_patch,
                                    to_model_input)
from m3_ros.foundation.config import FoundationConfig
from m3_ros.types import FeatureMap, Instance

log = logging.getLogger(__name__)


@torch.inference_mode()
def siglip_dense(vision: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """SiglipVisionTransformer + normalised [B, 3, H, W] -> per-patch pooled-space features [B, H/p, W/p, D]."""
    B, _, H, W = pixel_values.shape
    p = vision.config.patch_size
    tokens = vision(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state  # [B, N, D]
    head = vision.head
    D = tokens.shape[-1]
    attn = head.attention
    v = F.linear(tokens, attn.in_proj_weight[2 * D:], attn.in_proj_bias[2 * D:])  # [B, N, D]
    h = attn.out_proj(v)
    h = h + head.mlp(head.layernorm(h))
    return h.reshape(B, H // p, W // p, D).float()


class SiglipFeatures(FeatureModel):
    """SigLIP dense features [h, w, D]; text and crop queries in the same space."""

    name = "siglip"
    kind = "dense"

    def __init__(self, model: torch.nn.Module, tokenizer: object, input_hw: tuple[int, int] | None = None,
                 text_length: int = 64, mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 std: tuple[float, float, float] = (0.5, 0.5, 0.5)):
        """model: transformers SiglipModel; tokenizer: its tokenizer (called with padding="max_length")."""
        self.vision = model.vision_model.vision_model if hasattr(model.vision_model, "vision_model") else model.vision_model
        if getattr(self.vision, "head", None) is None:
            raise ValueError("SigLIP dense head needs the vision attention-pooling head (vision_use_head=True)")
        self.patch = int(self.vision.config.patch_size)
        if input_hw is not None and (input_hw[0] % self.patch or input_hw[1] % self.patch or min(input_hw) <= 0):
            raise ValueError(f"siglip_input_hw {input_hw} must be positive multiples of the patch {self.patch}")
        if text_length < 1:
            raise ValueError(f"siglip_text_length must be >= 1, got {text_length}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.input_hw = input_hw
        self.text_length = text_length
        self.mean, self.std = tuple(mean), tuple(std)
        self.dim = int(self.vision.config.hidden_size)
        self.native_hw = (int(self.vision.config.image_size),) * 2

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return self.input_hw if self.input_hw is not None else round_to_patch(image_hw, self.patch)

    def extract(self, rgb: np.ndarray, instances: list[Instance] | None = None) -> FeatureMap:
        check_rgb(rgb)
        H, W = rgb.shape[:2]
        x = to_model_input(rgb, self.input_size((H, W)), self.mean, self.std)
        return FeatureMap(model=self.name, features=siglip_dense(self.vision, x)[0], image_size=(H, W))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            raise ValueError("encode_text needs at least one text")
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.text_length, truncation=True,
                             return_tensors="pt")["input_ids"]
        return self.model.text_model(input_ids=ids).pooler_output.float()  # [n, D]

    @torch.inference_mode()
    def encode_crop(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """The crop's pooled SigLIP image embedding [D] at the model's native size."""
        x = to_model_input(crop_box(rgb, box), self.native_hw, self.mean, self.std)
        return self.vision(pixel_values=x).pooler_output[0].float()


def load_siglip(cfg: FoundationConfig) -> SiglipFeatures:
    """SiglipModel + tokenizer from cfg.siglip_path (a local directory; never the hub)."""
    if not cfg.siglip_path:
        raise WeightsMissing("siglip: set siglip_path to a local transformers SigLIP directory "
                             "(config.json, model.safetensors, tokenizer files)")
    path = Path(cfg.siglip_path).expanduser()
    if not (path / "config.json").is_file():
        raise WeightsMissing(f"siglip: no config.json in siglip_path {path}; put a saved transformers SigLIP model there")
    from transformers import AutoTokenizer, SiglipModel

    model = SiglipModel.from_pretrained(str(path), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    pp = path / "preprocessor_config.json"
    if pp.is_file():
        pcfg = json.loads(pp.read_text())
        mean, std = tuple(pcfg.get("image_mean", mean)), tuple(pcfg.get("image_std", std))
    log.info("siglip: loaded from %s", path)
    return SiglipFeatures(model, tokenizer, cfg.siglip_input_hw, cfg.siglip_text_length, mean, std)

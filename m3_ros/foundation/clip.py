"""CLIP through open_clip: MaskCLIP-style dense features in the joint image-text space.

Deployment default wherever the user supplies CLIP weights (no PyPI package ships them):
a local checkpoint file (`clip_checkpoint`) or an open_clip / Hugging Face cache that already
holds the pretrained tag's files. Nothing is ever downloaded.

Dense head (MaskCLIP, Zhou et al. 2022): the last block's attention pooling mixes every patch
into the CLS token, so per-patch features come from the last block's *value path* alone,
``ln_post(ls_1(out_proj(W_v ln_1(x) + b_v))) @ proj`` for each patch token x entering the last
block (no query/key, no residual, no MLP), projected into the joint space like the CLS token.
The positional embedding is interpolated bicubically to the input's patch grid.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.foundation.base import (FeatureModel, WeightsMissing, check_rgb, crop_box, round_to_patch,
                                    to_model_input)
from m3_ros.foundation.config import FoundationConfig
from m3_ros.types import FeatureMap, Instance

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def interpolate_pos_embed(pos: torch.Tensor, grid_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Positional embedding [1 + gh*gw, C] (CLS first) resampled to a new patch grid -> [1 + h*w, C]."""
    if tuple(grid_hw) == tuple(new_hw):
        return pos
    gh, gw = grid_hw
    cls_pos, patch_pos = pos[:1], pos[1:]
    grid = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()  # [1, C, gh, gw]
    grid = F.interpolate(grid, size=tuple(new_hw), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(new_hw[0] * new_hw[1], -1).to(pos.dtype)], 0)


def check_maskclip_compatible(visual: torch.nn.Module) -> None:
    """ValueError unless visual is an open_clip VisionTransformer with a plain CLS-token head."""
    name = type(visual).__name__
    if name != "VisionTransformer":
        raise ValueError(f"MaskCLIP dense head needs an open_clip VisionTransformer, got {name}")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        raise ValueError("MaskCLIP dense head needs a CLS-token head (no attentional pooler, ln_post before pool)")
    last = visual.transformer.resblocks[-1]
    if not isinstance(getattr(last, "attn", None), torch.nn.MultiheadAttention) or last.attn.in_proj_weight is None:
        raise ValueError(f"last block {type(last).__name__} has no packed nn.MultiheadAttention value projection")


@torch.inference_mode()
def maskclip_dense(visual: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Normalised [B, 3, H, W] (multiples of the patch) -> dense joint-space features [B, H/p, W/p, D]."""
    B, _, H, W = pixel_values.shape
    ph, pw = visual.patch_size
    gh, gw = H // ph, W // pw
    x = visual.conv1(pixel_values)  # [B, C, gh, gw]
    x = x.flatten(2).transpose(1, 2)  # [B, gh*gw, C]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(B, 1, -1)
    x = torch.cat([cls, x], dim=1)  # [B, 1 + gh*gw, C]
    x = x + interpolate_pos_embed(visual.positional_embedding, visual.grid_size, (gh, gw)).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    if not batch_first:
        x = x.transpose(0, 1)
    last = blocks[-1]
    C = x.shape[-1]
    w_v = last.attn.in_proj_weight[2 * C:]  # [C, C] value rows of the packed q/k/v projection
    b_v = last.attn.in_proj_bias[2 * C:] if last.attn.in_proj_bias is not None else None
    v = F.linear(last.ln_1(x[:, 1:]), w_v, b_v)  # [B, gh*gw, C]
    v = last.ls_1(last.attn.out_proj(v))
    feats = visual.ln_post(v) @ visual.proj  # [B, gh*gw, D]
    return feats.reshape(B, gh, gw, -1).float()


class OpenClipFeatures(FeatureModel):
    """open_clip CLIP: dense MaskCLIP features [h, w, D], text and crop queries in the same joint space."""

    kind = "dense"

    def __init__(self, model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                 input_hw: tuple[int, int] | None = None, name: str = "clip"):
        """model: an open_clip CLIP; tokenizer: texts -> token ids [n, L]; input_hw: fixed input size or None."""
        check_maskclip_compatible(model.visual)
        ph, pw = model.visual.patch_size
        if input_hw is not None and (input_hw[0] % ph or input_hw[1] % pw or min(input_hw) <= 0):
            raise ValueError(f"clip_input_hw {input_hw} must be positive multiples of the patch {ph}x{pw}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.input_hw = input_hw
        self.name = name
        self.dim = int(model.visual.output_dim)
        pcfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(pcfg.get("mean", OPENAI_MEAN))
        self.std = tuple(pcfg.get("std", OPENAI_STD))

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Model input (H, W): the configured size, else the image rounded to the patch."""
        if self.input_hw is not None:
            return self.input_hw
        return round_to_patch(image_hw, int(self.model.visual.patch_size[0]))

    def extract(self, rgb: np.ndarray, instances: list[Instance] | None = None) -> FeatureMap:
        check_rgb(rgb)
        H, W = rgb.shape[:2]
        x = to_model_input(rgb, self.input_size((H, W)), self.mean, self.std)  # [1, 3, h*p, w*p]
        return FeatureMap(model=self.name, features=maskclip_dense(self.model.visual, x)[0], image_size=(H, W))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            raise ValueError("encode_text needs at least one text")
        return self.model.encode_text(self.tokenizer(list(texts))).float()  # [n, D]

    @torch.inference_mode()
    def encode_crop(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """The crop's CLIP image embedding [D] (CLS head at the model's native size)."""
        crop = crop_box(rgb, box)
        x = to_model_input(crop, tuple(self.model.visual.image_size), self.mean, self.std)
        return self.model.encode_image(x)[0].float()


def find_clip_checkpoint(cfg: FoundationConfig) -> Path:
    """A local checkpoint for cfg.clip_arch: cfg.clip_checkpoint, else the pretrained tag's files
    already in the Hugging Face hub cache or cfg.clip_cache_dir. WeightsMissing when none."""
    if cfg.clip_checkpoint:
        path = Path(cfg.clip_checkpoint).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"clip: clip_checkpoint {path} does not exist; put the open_clip checkpoint "
                                 f"file for {cfg.clip_arch} there")
        return path
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(cfg.clip_arch, cfg.clip_pretrained) or {}
    candidates: list[Path] = []
    hub_id = str(pcfg.get("hf_hub", "")).strip("/")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache  # reads the local cache only

        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            # open_clip's cache_dir is a hub-layout cache too (it downloads with hf_hub_download)
            hit = try_to_load_from_cache(hub_id, fname, cache_dir=cfg.clip_cache_dir or None)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    url = str(pcfg.get("url", ""))
    dirs = [Path(cfg.clip_cache_dir).expanduser()] if cfg.clip_cache_dir else []
    dirs.append(Path(os.path.expanduser("~/.cache/clip")))
    if url:
        candidates += [d / os.path.basename(url) for d in dirs]
    for c in candidates:
        if c.is_file():
            return c
    where = f"hf hub cache of {hub_id}" if hub_id else "no known files"
    raise WeightsMissing(f"clip: no local weights for {cfg.clip_arch}/{cfg.clip_pretrained} ({where}); set "
                         f"clip_checkpoint to an open_clip checkpoint file (e.g. open_clip_model.safetensors "
                         f"from {hub_id or 'the model card'}) - nothing is downloaded")


def load_clip(cfg: FoundationConfig) -> OpenClipFeatures:
    """open_clip model from a local checkpoint (never the network)."""
    import open_clip

    path = find_clip_checkpoint(cfg)
    model = open_clip.create_model(cfg.clip_arch, pretrained=str(path), device="cpu")
    tokenizer = open_clip.get_tokenizer(cfg.clip_arch)
    log.info("clip: %s from %s", cfg.clip_arch, path)
    return OpenClipFeatures(model, tokenizer, cfg.clip_input_hw)

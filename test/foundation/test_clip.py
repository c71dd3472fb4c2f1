"""open_clip CLIP: local loading without network, MaskCLIP dense head vs a slow per-patch reference."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3_ros.foundation import FoundationConfig, WeightsMissing, grounding_text_model, load_models
from m3_ros.foundation.clip import OpenClipFeatures, interpolate_pos_embed, load_clip, maskclip_dense

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip_ckpt(tmp_path_factory):
    """A randomly initialised tiny CLIP registered as open_clip arch "m3-tiny-clip", saved to a file."""
    import open_clip

    d = tmp_path_factory.mktemp("clipcfg")
    (d / "m3-tiny-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(d)
    torch.manual_seed(0)
    model = open_clip.create_model("m3-tiny-clip")
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return model.eval(), ckpt


def _slow_reference(visual, pixel_values):
    """Per-patch MaskCLIP head on the tokens open_clip itself feeds into the last block."""
    captured = {}
    h = visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    with torch.no_grad():
        visual(pixel_values)
    h.remove()
    x = captured["x"][0]  # [1 + g*g, C]
    last = visual.transformer.resblocks[-1]
    C = x.shape[-1]
    W_v, b_v = last.attn.in_proj_weight[2 * C:], last.attn.in_proj_bias[2 * C:]
    W_o, b_o = last.attn.out_proj.weight, last.attn.out_proj.bias
    out = []
    with torch.no_grad():
        for i in range(1, x.shape[0]):
            y = F.layer_norm(x[i], (C,), last.ln_1.weight, last.ln_1.bias, last.ln_1.eps)
            v = W_o @ (W_v @ y + b_v) + b_o
            v = F.layer_norm(v, (C,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
            out.append(v @ visual.proj)
    g = visual.grid_size
    return torch.stack(out).reshape(g[0], g[1], -1)


def test_dense_head_matches_per_patch_reference(tiny_clip_ckpt):
    model, _ = tiny_clip_ckpt
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fast = maskclip_dense(model.visual, x)[0]
    torch.testing.assert_close(fast, _slow_reference(model.visual, x), rtol=1e-4, atol=1e-5)


def test_pos_embed_interpolation():
    pos = torch.randn(1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos
    out = interpolate_pos_embed(pos, (4, 4), (3, 5))
    assert out.shape == (1 + 15, 8)
    torch.testing.assert_close(out[0], pos[0])
    # a constant embedding stays constant under bicubic resampling
    const = torch.ones(1 + 16, 8)
    torch.testing.assert_close(interpolate_pos_embed(const, (4, 4), (6, 7))[1:], torch.ones(42, 8))


def test_load_from_local_checkpoint_without_network(tiny_clip_ckpt, no_network):
    model, ckpt = tiny_clip_ckpt
    clip = load_clip(FoundationConfig(clip_arch="m3-tiny-clip", clip_checkpoint=str(ckpt)))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(clip.model.state_dict()[k], v)
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    fmap = clip.extract(rgb)
    assert fmap.features.shape == (30, 40, 16)  # 320x240 at patch 8, no resize needed
    assert fmap.image_size == (240, 320)
    text = clip.encode_text(["a yellow rubber duck", "a mug"])
    assert text.shape == (2, 16) and torch.isfinite(text).all()
    assert not torch.allclose(text[0], text[1])
    crop = clip.encode_crop(rgb, (10, 20, 90, 100))
    assert crop.shape == (16,)
    assert no_network == []


def test_missing_checkpoint_is_skipped_with_one_log_line(tmp_path, caplog, no_network):
    cfg = FoundationConfig(models=["clip"], clip_checkpoint=str(tmp_path / "absent.pt"))
    with pytest.raises(WeightsMissing, match="absent.pt"):
        load_clip(cfg)
    with caplog.at_level(logging.WARNING, logger="m3_ros.foundation"):
        assert load_models(cfg) == {}
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "clip" in lines[0] and "clip_checkpoint" in lines[0]


def test_no_cached_pretrained_tag_means_skip(monkeypatch, tmp_path, no_network):
    import huggingface_hub

    # an empty cache, whatever this machine holds
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsMissing, match="nothing is downloaded"):
        load_clip(FoundationConfig(clip_arch="ViT-B-16", clip_pretrained="openai"))
    assert no_network == []


def test_input_size_validation(tiny_clip_ckpt):
    model, _ = tiny_clip_ckpt
    with pytest.raises(ValueError, match="clip_input_hw"):
        OpenClipFeatures(model, lambda t: t, input_hw=(30, 40))
    clip = OpenClipFeatures(model, lambda t: t)
    with pytest.raises(ValueError, match="uint8"):
        clip.extract(np.zeros((24, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="box"):
        clip.encode_crop(np.zeros((24, 32, 3), dtype=np.uint8), (10, 10, 5, 20))


def test_pretrained_tag_found_in_local_hub_cache(tmp_path, no_network):
    """A cache that already holds the tag's files (hub layout) is used; nothing is fetched."""
    import open_clip

    hub_id = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].strip("/")
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    (snap / "open_clip_model.safetensors").write_bytes(b"not loaded by this test")
    from m3_ros.foundation.clip import find_clip_checkpoint

    found = find_clip_checkpoint(FoundationConfig(clip_arch="ViT-B-16", clip_pretrained="openai",
                                                  clip_cache_dir=str(tmp_path)))
    assert found.resolve() == (snap / "open_clip_model.safetensors").resolve()
    assert no_network == []


def test_grounding_prefers_clip_when_loaded(tiny_clip_ckpt, label_model):
    import open_clip

    model, _ = tiny_clip_ckpt
    clip = OpenClipFeatures(model, open_clip.get_tokenizer("m3-tiny-clip"))
    assert grounding_text_model({"minilm_labels": label_model, "clip": clip}) is clip
    assert grounding_text_model({"clip": clip}).encode_text(["a duck"]).shape == (1, 16)

"""SigLIP through transformers: a tiny random model saved to a temp dir and loaded by path, offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3_ros.foundation import FoundationConfig, WeightsMissing
from m3_ros.foundation.siglip import load_siglip, siglip_dense


@pytest.fixture(scope="module")
def tiny_siglip_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    d = tmp_path_factory.mktemp("siglip")
    words = "a the duck cup yellow red mug toy rubber".split()
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16, pad_token_id=0, bos_token_id=None,
                         eos_token_id=2),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8))
    torch.manual_seed(0)
    SiglipModel(cfg).save_pretrained(d)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(d)
    return d


def test_load_by_path_offline_and_shapes(tiny_siglip_dir, no_network):
    model = load_siglip(FoundationConfig(siglip_path=str(tiny_siglip_dir), siglip_text_length=16))
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    fmap = model.extract(rgb)
    assert fmap.features.shape == (30, 40, 32) and fmap.image_size == (240, 320)
    text = model.encode_text(["a yellow rubber duck", "a red mug"])
    assert text.shape == (2, 32) and not torch.allclose(text[0], text[1])
    assert model.encode_crop(rgb, (0, 0, 64, 48)).shape == (32,)
    assert no_network == []


def test_dense_head_is_pooling_head_on_each_patch(tiny_siglip_dir):
    """Each dense feature equals SigLIP's own pooled embedding of a sequence holding only that patch."""
    model = load_siglip(FoundationConfig(siglip_path=str(tiny_siglip_dir)))
    vision = model.vision
    x = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    dense = siglip_dense(vision, x)[0]  # [3, 5, 32]
    with torch.no_grad():
        tokens = vision(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[0]  # [15, 32]
        ref = torch.stack([vision.head(tokens[i].view(1, 1, -1))[0] for i in range(tokens.shape[0])])
    torch.testing.assert_close(dense.reshape(-1, 32), ref, rtol=1e-4, atol=1e-5)


def test_missing_path_raises_weights_missing(tmp_path):
    with pytest.raises(WeightsMissing, match="siglip_path"):
        load_siglip(FoundationConfig())
    with pytest.raises(WeightsMissing, match="config.json"):
        load_siglip(FoundationConfig(siglip_path=str(tmp_path)))

"""Labelled regions with all-MiniLM-L6-v2: paraphrase ranking on the rendered scene, overlap rule, cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3_ros.foundation import FoundationConfig, grounding_text_model
from m3_ros.foundation.labels import LabelRegionFeatures
from m3_ros.types import Instance

from tabletop import OBJECTS


def test_paraphrase_ranks_its_object_first(label_model, tabletop):
    labels = [OBJECTS[n][4] for n in tabletop.names]
    paraphrases = [OBJECTS[n][5] for n in tabletop.names]
    fmap = label_model.extract(tabletop.rgb, tabletop.instances)
    # the object's embedding as it sits in the feature map (at its mask's most central cell)
    region = []
    for n in tabletop.names:
        mask = torch.from_numpy(tabletop.masks[n]).float()[None, None]
        cover = F.interpolate(mask, size=fmap.features.shape[:2], mode="area")[0, 0]  # [h, w]
        i, j = divmod(int(cover.argmax()), cover.shape[1])  # the cell most inside the object
        region.append(fmap.features[i, j])
    region = torch.stack(region)  # [n, 384]
    torch.testing.assert_close(region, label_model.encode_text(labels), rtol=1e-4, atol=1e-5)
    scores = label_model.encode_text(paraphrases) @ region.T  # [n, n]
    assert scores.argmax(1).tolist() == list(range(len(labels))), scores


def test_regions_zero_outside_and_smaller_wins(label_model):
    rgb = np.zeros((40, 48, 3), dtype=np.uint8)
    big = np.zeros((40, 48), dtype=bool)
    big[4:36, 4:44] = True
    small = np.zeros((40, 48), dtype=bool)
    small[12:20, 12:20] = True
    tie = small.copy()
    m = LabelRegionFeatures(label_model.encoder, grid_stride=4)
    fmap = m.extract(rgb, [Instance(small, "a yellow rubber duck", 0.2, 1), Instance(big, "a grey tray", 0.9, 2)])
    f = fmap.features  # [10, 12, 384]
    duck, tray = m.encode_text(["a yellow rubber duck", "a grey tray"])
    torch.testing.assert_close(f[4, 4], duck)  # inside both: the smaller region wins despite its lower score
    torch.testing.assert_close(f[8, 8], tray)
    assert f[0, 0].abs().sum() == 0 and f[9, 11].abs().sum() == 0  # outside every mask: no feature
    fmap = m.extract(rgb, [Instance(small, "a mug", 0.9, 1), Instance(tie, "a cup", 0.3, 2)])
    torch.testing.assert_close(fmap.features[4, 4], m.encode_text(["a mug"])[0])  # equal area: higher score


def test_label_embeddings_are_cached(label_model):
    calls: list[list[str]] = []

    class Counting:
        def encode(self, texts, **kw):
            calls.append(list(texts))
            return label_model.encoder.encode(texts, **kw)

    m = LabelRegionFeatures(Counting(), grid_stride=8)
    calls.clear()
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    mask = np.ones((16, 16), dtype=bool)
    for _ in range(3):
        m.extract(rgb, [Instance(mask, "a mug"), Instance(mask[:, ::-1].copy(), "a duck")])
    assert calls == [["a mug", "a duck"]]


def test_bad_inputs(label_model):
    m = label_model
    with pytest.raises(ValueError, match="mask shape"):
        m.extract(np.zeros((8, 8, 3), dtype=np.uint8), [Instance(np.ones((4, 4), bool), "x")])
    with pytest.raises(ValueError, match="label_grid_stride"):
        LabelRegionFeatures(m.encoder, grid_stride=0)


def test_grounding_uses_labels_without_clip(label_model):
    assert grounding_text_model({"minilm_labels": label_model}) is label_model
    with pytest.raises(ValueError, match="no text model"):
        grounding_text_model({})
    assert FoundationConfig().models[0] == "clip"

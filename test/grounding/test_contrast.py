"""Colour contrast with the real sentence model: a region the query matches better in another colour."""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from m3_ros.grounding import GroundingConfig, ground
from m3_ros.grounding.contrast import BASIC_COLOURS, colour_swaps, query_embeddings
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.types import FeatureMap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "memory"))
from synthetic_scene import labelled_view  # noqa: E402

NEAR_FACE = np.array([-0.15, 0.0, 1.5])  # synthetic_scene's region 1
FAR_FACE = np.array([0.325, 0.1, 1.7])  # region 2


def test_colour_swaps():
    swaps = colour_swaps("my blue cube")
    assert len(swaps) == len(BASIC_COLOURS) - 1
    assert "my green cube" in swaps and "my blue cube" not in swaps
    assert colour_swaps("the Gray mug")[0] == "the black mug"  # either spelling, any case
    assert "the grey mug" not in colour_swaps("the gray mug")  # gray is grey: not a swap of itself
    assert colour_swaps("a stick to poke with") == []
    assert colour_swaps("the black-and-white soccer ball") == []  # two colours: nothing single to swap
    assert colour_swaps("the reddish bluebell") == []  # words, not parts of words


@pytest.fixture(scope="module")
def memory(text_model):
    """The near face labelled by a detector as a green cube, the far one as a yellow rubber duck."""
    labels = text_model.encode_text(["a small green cube", "a yellow rubber duck"])
    mem = M3Memory(MemoryConfig(models={"labels": ModelSlot(channels=8, theta=0.9, max_rows=20, sample_mode="nearest")},
                                voxel_size=0.04, object_voxel_size=0.02, seed_stride=1, train_scale=1.0,
                                feature_points=200, backend="torch", seed=0))
    for i, tx in enumerate((0.0, 0.05, -0.05, 0.1, -0.1)):
        kf, _ = labelled_view(tx, i)
        region = [inst.mask for inst in kf.instances]
        f = torch.zeros(*region[0].shape, labels.shape[1])
        f[torch.from_numpy(region[0])] = labels[0]
        f[torch.from_numpy(region[1])] = labels[1]
        kf.features["labels"] = FeatureMap("labels", f, region[0].shape)
        mem.add_keyframe(kf)
    for _ in range(30):
        mem.train_step()
    return mem


def _ask(text_model, memory, query: str, cfg: GroundingConfig) -> np.ndarray:
    emb, contrast = query_embeddings(text_model.encode_text, query)
    assert (contrast is None) == (not colour_swaps(query))
    return ground(memory, emb, "labels", cfg, contrast=contrast).points[0]


def test_a_cube_of_another_colour_is_not_the_one_asked_for(text_model, memory):
    base = GroundingConfig(verify_views=0, cluster_radius=0.05, colour_contrast="off")
    # the sentence model alone takes the green cube for "my blue cube" (category outweighs colour)
    assert np.linalg.norm(_ask(text_model, memory, "my blue cube", base) - NEAR_FACE) < 0.1
    # the colour asked for is there: contrast on, the green cube still answers "my green cube"
    on = replace(base, colour_contrast="drop")
    assert np.linalg.norm(_ask(text_model, memory, "my green cube", on) - NEAR_FACE) < 0.1
    assert np.linalg.norm(_ask(text_model, memory, "the yellow duck", on) - FAR_FACE) < 0.1
    # no blue cube anywhere: refused, with the reason
    with pytest.raises(ValueError, match="another colour"):
        _ask(text_model, memory, "my blue cube", on)
    # demoted rather than dropped: the only region still answers
    assert np.linalg.norm(_ask(text_model, memory, "my blue cube", replace(on, colour_contrast="last")) - NEAR_FACE) < 0.1
    # a query without a colour word is not touched
    assert np.linalg.norm(_ask(text_model, memory, "the cube", on) - NEAR_FACE) < 0.1


def test_the_pipeline_asks_with_the_colour_swaps(text_model):
    """MemoryPipeline.ground embeds the swaps with the query (one encoder call, cached) and passes them on:
    the same scene through detector labels refuses "my blue cube" by default and answers it with contrast off."""
    from m3_ros.pipeline import MemoryPipeline, PipelineConfig
    from m3_ros.types import Instance

    cfg = PipelineConfig(models=["minilm_labels"], grounding=GroundingConfig(cluster_radius=0.05, verify_views=0),
                         memory_overrides=dict(backend="torch", seed_stride=1, train_scale=1.0, feature_points=300,
                                               voxel_size=0.02, seed=0))
    pipe = MemoryPipeline(cfg, models={"minilm_labels": text_model})
    pipe.load()
    try:
        for i, tx in enumerate((-0.3, -0.15, 0.0, 0.15, 0.3)):  # 15 cm apart: each one a keyframe
            kf, _ = labelled_view(tx, i)
            masks = [inst.mask for inst in kf.instances]
            inst = [Instance(mask=masks[0], label="a small green cube", id=1),
                    Instance(mask=masks[1], label="a yellow rubber duck", id=2)]
            assert pipe.offer_frame(i, kf.rgb, kf.depth, kf.K, kf.T_world_cam, inst)
            while not pipe.idle():
                pipe.train_for(0.05, max_steps=1)
        assert pipe.cfg.grounding.colour_contrast == "drop"  # the default
        with pytest.raises(ValueError, match="another colour"):
            pipe.ground("my blue cube")
        assert np.linalg.norm(pipe.ground("my green cube").points[0] - NEAR_FACE) < 0.1
        pipe.cfg.grounding.colour_contrast = "off"
        assert np.linalg.norm(pipe.ground("my blue cube").points[0] - NEAR_FACE) < 0.1
    finally:
        pipe.close()

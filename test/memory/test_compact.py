"""Compact keyframes: region maps as an int16 index map + a table of distinct rows."""
import numpy as np
import torch

from m3_ros.memory.compact import IndexedFeatureMap, index_feature_map, keyframe_nbytes
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.types import FeatureMap, Instance
from synthetic_scene import render_view


def _label_map(h=15, w=20, d=48, H=30, W=40, seed=0) -> FeatureMap:
    g = torch.Generator().manual_seed(seed)
    table = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=-1)
    owner = torch.randint(-1, 4, (h, w), generator=g)
    f = torch.where((owner >= 0)[..., None], table[owner.clamp_min(0)], 0.0)
    return FeatureMap("labels", f, (H, W))


def test_indexed_map_samples_exactly_like_the_dense_map():
    fm = _label_map()
    ix = index_feature_map(fm)
    assert ix.index.dtype == torch.int16 and ix.table.shape[0] <= 4
    assert torch.equal(ix.features, fm.features)
    g = torch.Generator().manual_seed(1)
    H, W = fm.image_size
    # random points, pixel centres, and cell boundaries (where nearest rounding ties)
    uv = torch.cat([torch.rand(500, 2, generator=g) * torch.tensor([W + 4.0, H + 4.0]) - 2,
                    torch.stack(torch.meshgrid(torch.arange(W).float(), torch.arange(H).float(), indexing="xy"), -1).reshape(-1, 2),
                    torch.stack(torch.meshgrid(torch.arange(W).float() + 0.5, torch.arange(H).float() + 0.5, indexing="xy"), -1).reshape(-1, 2)])
    for mode in ("nearest", "bilinear"):
        assert torch.equal(ix.sample(uv, mode), fm.sample(uv, mode)), mode
    # all-zero cells stay "no feature"
    assert (ix.index == -1).any() and (ix.sample(uv, "nearest").abs().sum(-1) == 0).any()
    assert ix.nbytes < fm.features.numel() * 4 / 20


def test_memory_keeps_region_maps_indexed_and_trains_the_same():
    def build(mode):
        kf, _ = render_view(0.0)
        kf.instances = [Instance(mask=np.ones(kf.size, bool), label="wall")]
        cfg = MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, sample_mode=mode)}, voxel_size=0.05,
                           backend="torch")
        mem = M3Memory(cfg)
        mem.add_keyframe(kf)
        return mem, kf
    mem, kf = build("nearest")
    stored = mem.keyframes[0]
    assert isinstance(stored.features["dino"], IndexedFeatureMap) and stored.instances == []
    assert keyframe_nbytes(stored) < keyframe_nbytes(kf)
    assert torch.equal(stored.features["dino"].features, kf.features["dino"].features)
    # the same train steps as with the dense map (same targets, same randomness)
    dense, _ = build("nearest")
    dense._views[0].kf = kf
    for _ in range(3):
        a, b = mem.train_step(), dense.train_step()
        assert a == b
    # patch-grid (bilinear) maps stay dense
    mem_b, _ = build("bilinear")
    assert isinstance(mem_b.keyframes[0].features["dino"], FeatureMap)

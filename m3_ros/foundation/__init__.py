"""m3_ros.foundation: foundation-model feature extractors (no ROS imports).

Public API: FeatureModel, FoundationConfig, load_models, grounding_text_model, FeatureWorker.
Model modules (clip, siglip, dinov2, labels) import their heavy libraries lazily.
"""
from m3_ros.foundation.base import FeatureModel, WeightsMissing
from m3_ros.foundation.config import FoundationConfig
from m3_ros.foundation.registry import grounding_text_model, load_models
from m3_ros.foundation.worker import FeatureWorker, ModelTiming

__all__ = ["FeatureModel", "WeightsMissing", "FoundationConfig", "load_models", "grounding_text_model",
           "FeatureWorker", "ModelTiming"]

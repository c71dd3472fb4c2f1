"""Held-out feature fidelity: M3's decoded features vs Feature-3DGS-style distillation on the
same Gaussians and the same number of steps, at held-out views' patch centres."""
from __future__ import annotations

import time

import torch

from m3_ros.memory.distill import DistillBaseline, feature_distance
from m3_ros.types import FeatureMap


def _at_patch_centres(img: torch.Tensor, fm: FeatureMap) -> torch.Tensor:
    """Rendered [H, W, c] read at the feature grid's cell centres (FeatureMap's convention) -> [h*w, c]."""
    H, W = fm.image_size
    h, w = fm.features.shape[:2]
    v = ((torch.arange(h) + 0.5) * H / h - 0.5).round().long().clamp(0, H - 1)
    u = ((torch.arange(w) + 0.5) * W / w - 0.5).round().long().clamp(0, W - 1)
    return img[v][:, u].reshape(h * w, -1)


def feature_fidelity(mem, extractor, frames: list, model: str = "dinov2_s",
                     steps: int | None = None) -> dict[str, float]:
    """1 - cos and MSE of M3 and of distillation against the model's raw features.

    Args:
        mem: the trained M3Memory (its Gaussians are shared, frozen, by the baseline).
        extractor: the foundation model (``extract(rgb) -> FeatureMap``).
        frames: held-out SimFrames (never keyframes); their odometry pose is used, as the memory's.
        steps: distillation steps; default: as many as the memory has trained.
    """
    feats = [extractor.extract(f.rgb) for f in frames]
    d = feats[0].dim
    l = mem.cfg.models[model].channels

    def evaluate(render_fn) -> dict[str, float]:
        preds, gts = [], []
        for f, fm in zip(frames, feats):
            H, W = f.rgb.shape[:2]
            preds.append(render_fn(f, W, H))
            gts.append(fm.features.reshape(-1, d))
        return feature_distance(torch.cat(preds), torch.cat(gts))

    def m3(f, W, H):
        q = mem.render(f.T_odom_cam, f.K, W, H)["queries"][model]  # [H, W, l]
        return mem.decode(model, _at_patch_centres(torch.as_tensor(q), fm_of[id(f)]).reshape(-1, l))

    fm_of = {id(f): fm for f, fm in zip(frames, feats)}
    with torch.no_grad():
        m3_metrics = evaluate(m3)
    n = int(steps if steps is not None else mem.stats()["iteration"])
    base = DistillBaseline(mem, model)
    t0 = time.perf_counter()
    for _ in range(n):
        base.train_step()
    distill_s = time.perf_counter() - t0

    def distill(f, W, H):
        return _at_patch_centres(base.render_features(f.T_odom_cam, f.K, W, H), fm_of[id(f)])

    with torch.no_grad():
        d_metrics = evaluate(distill)
    return {"m3_cos": m3_metrics["cos_dist"], "m3_mse": m3_metrics["mse"],
            "distill_cos": d_metrics["cos_dist"], "distill_mse": d_metrics["mse"], "steps": n,
            "distill_s": distill_s, "views": len(frames), "bank_rows": len(mem.banks[model]),
            "m3_params": int(mem.n_gaussians * l + mem.banks[model].rows.numel() + mem.W[model].numel()),
            "distill_params": int(base.n_params()), "gaussians": int(mem.n_gaussians)}

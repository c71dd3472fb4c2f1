"""Foundation-model features: per-frame extraction time at the memory node's 320x240, and
feature quality against the rendered scene's object masks.

    .venv/bin/python bench/bench_features.py [--quick]

Quality:
- dino_inside_over_p90: for each visible object, the DINOv2 crop query (its mask's bounding
  box, M3's visual prompt) is scored (cosine) against every pixel's bilinearly sampled feature;
  the fraction of in-mask pixels scoring above the 90th percentile of out-of-mask pixels,
  averaged over objects and views.
- label_top1: each object's paraphrase is encoded with MiniLM and compared with the region
  features of the frame (one per visible object); the fraction whose best region is its own.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "test" / "foundation"))  # the table-top render fixture

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import machine_header, table, time_ms, write_report  # noqa: E402
from tabletop import OBJECTS, render_tabletop  # noqa: E402

from m3_ros.foundation import FoundationConfig, load_models  # noqa: E402
from m3_ros.foundation.base import to_model_input  # noqa: E402
from m3_ros.foundation.convert_dinov2 import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

EYES_FULL = [(0.55, 0.0, 1.15), (0.45, 0.35, 1.05), (0.40, -0.40, 1.10), (0.65, 0.15, 0.95)]


def dino_quality(model, frame) -> dict[str, float]:
    H, W = frame.rgb.shape[:2]
    fmap = model.extract(frame.rgb)
    v, u = np.mgrid[0:H, 0:W]
    pix = F.normalize(fmap.sample(torch.from_numpy(np.stack([u.ravel(), v.ravel()], 1)).float()), dim=1)
    out = {}
    for name, mask in frame.masks.items():
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        score = (pix @ F.normalize(model.encode_crop(frame.rgb, box), dim=0)).numpy().reshape(H, W)
        out[name] = float((score[mask] > np.percentile(score[~mask], 90)).mean())
    return out


def label_quality(model, frame) -> dict[str, bool]:
    fmap = model.extract(frame.rgb, frame.instances)
    region = []
    for n in frame.names:
        cover = F.interpolate(torch.from_numpy(frame.masks[n]).float()[None, None], size=fmap.features.shape[:2],
                              mode="area")[0, 0]
        i, j = divmod(int(cover.argmax()), cover.shape[1])
        region.append(fmap.features[i, j])
    scores = model.encode_text([OBJECTS[n][5] for n in frame.names]) @ torch.stack(region).T  # [n, n]
    return {n: bool(scores[k].argmax() == k) for k, n in enumerate(frame.names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one view, fewer repeats (< 5 min on 2 cores)")
    args = ap.parse_args()
    repeats = 3 if args.quick else 10
    eyes = EYES_FULL[:1] if args.quick else EYES_FULL

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    models = load_models(FoundationConfig(models=["clip", "siglip", "dinov2_s", "minilm_labels"]))
    load_s = time.perf_counter() - t0
    if "dinov2_s" not in models or "minilm_labels" not in models:
        raise SystemExit(f"bench needs dinov2_s and minilm_labels, loaded {sorted(models)}")
    dino, labels = models["dinov2_s"], models["minilm_labels"]
    frames = [render_tabletop(eye=e) for e in eyes]
    f0 = frames[0]
    box = tuple(int(b) for b in np.argwhere(f0.masks["duck"])[:, ::-1].min(0)) + \
        tuple(int(b) + 1 for b in np.argwhere(f0.masks["duck"])[:, ::-1].max(0))

    rows = []
    dino_ms = time_ms(lambda: dino.extract(f0.rgb), repeats=repeats)
    gh, gw = dino.extract(f0.rgb).features.shape[:2]
    rows.append(["dinov2_s extract", "322x238", f"{gh}x{gw}x384", dino_ms])
    x224 = to_model_input(f0.rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD)
    rows.append(["dinov2_s extract (224x224, for reference)", "224x224", "16x16x384",
                 time_ms(lambda: dino.patch_grid(x224), repeats=repeats)])
    rows.append(["dinov2_s encode_crop (duck)", f"box {box}", "384", time_ms(lambda: dino.encode_crop(f0.rgb, box),
                                                                             repeats=repeats)])
    labels.extract(f0.rgb, f0.instances)  # label embeddings cached: the steady state of a running robot
    label_ms = time_ms(lambda: labels.extract(f0.rgb, f0.instances), repeats=repeats)
    rows.append([f"minilm_labels extract ({len(f0.instances)} instances, cached labels)", "320x240", "60x80x384",
                 label_ms])
    fresh = [f"an unseen label number {i}" for i in range(len(f0.instances))]
    rows.append(["minilm_labels encode (uncached labels, batch)", f"{len(fresh)} texts", "384",
                 time_ms(lambda: labels.encode_text(fresh), repeats=repeats)])
    rows.append(["minilm_labels encode_text (1 query)", "1 text", "384",
                 time_ms(lambda: labels.encode_text(["a yellow bath duck"]), repeats=repeats)])
    for name in ("clip", "siglip"):
        if name in models:
            rows.append([f"{name} extract", "320x240", "-", time_ms(lambda m=models[name]: m.extract(f0.rgb),
                                                                    repeats=repeats)])
        else:
            rows.append([f"{name} extract", "-", "-", "skipped: no local weights"])

    per_obj: dict[str, list[float]] = {}
    per_lab: dict[str, list[bool]] = {}
    for fr in frames:
        for k, v in dino_quality(dino, fr).items():
            per_obj.setdefault(k, []).append(v)
        for k, v in label_quality(labels, fr).items():
            per_lab.setdefault(k, []).append(v)
    qrows = [[n, OBJECTS[n][4], OBJECTS[n][5], float(np.mean(per_obj.get(n, [np.nan]))),
              f"{sum(per_lab.get(n, []))}/{len(per_lab.get(n, []))}"] for n in OBJECTS if n in per_obj]
    dino_q = float(np.mean([np.mean(v) for v in per_obj.values()]))
    label_top1 = float(np.mean([x for v in per_lab.values() for x in v]))

    sections = machine_header({"transformers": __import__("transformers").__version__,
                               "sentence-transformers": __import__("sentence_transformers").__version__}) + [
        f"- models loaded: {', '.join(sorted(models))} (load {load_s:.1f} s); views: {len(frames)}; "
        f"repeats: {repeats} (median ms)",
        f"- load average at start (1/5/15 min): {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
        "(other processes share these cores; timings are wall-clock medians)",
        "- scene: pybullet table-top (duck, mug, teddy, soccer ball, lego, tray), Tiny renderer 320x240, oracle masks",
        "", "## Extraction time per frame", ""] + table(["step", "input", "output", "ms"], rows) + [
        "", "## Quality against masks", "",
        "DINOv2 crop query: fraction of in-mask pixels above the out-of-mask 90th percentile; "
        "labels: paraphrase -> nearest region is its own object.", ""] + table(
        ["object", "label", "paraphrase", "dino inside>p90", "label top1"], qrows)
    write_report("features", "Foundation-model features", sections,
                 {"dino_ms": dino_ms, "label_ms": label_ms, "dino_inside_over_p90": dino_q, "label_top1": label_top1})


if __name__ == "__main__":
    main()

"""Where do an object's Gaussians go during a walk? (dev diagnostic, dev seeds only)

Replays bench_scale's refined walk of one dev room in this process (no moved-object trials) and counts every
Gaussian row added or removed inside an object box (graspable objects under 0.3 m, box + 3 cm, above the
bottom face + 1 cm, map frame taken as the world: drift is a few cm), by the code path that did it: seeding,
eviction at the Gaussian limit while seeding, densify clone/split, pruning, free-space clearing. Boxes come
from a cached snapshot of the same room (``bench_scale.py --moved-only --snapshot-dir``).

    .venv/bin/python bench/dev_object_gaussians.py --seed 13 --memory seed=13 --boxes /tmp/devsnapG/G_r13_m13.pt

Writes results/object_gaussians_<tag>.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench.bench_scale as bench_scale  # noqa: E402
import m3_ros.memory.ops as ops  # noqa: E402
import m3_ros.memory.strategy as strategy  # noqa: E402
from bench._common import machine_header, table, write_report  # noqa: E402
from bench._devcache import load_snapshot  # noqa: E402
from m3_ros.eval.phrasings import scene_queries  # noqa: E402
from m3_ros.eval.suite import RunConfig  # noqa: E402
from m3_ros.sim.generate import resolve_scene  # noqa: E402

# the function (below the ops call) whose name says which path added or removed rows
_PATHS = {"_seed": "seeding", "clear_free_space": "free space", "_refine": "densify / prune"}


def _path() -> str:
    names = [f.name for f in traceback.extract_stack()[:-2]]
    if "_remove" in names and "_seed" in names:
        return "evicted at the limit"
    for name in reversed(names):
        if name in _PATHS:
            return _PATHS[name]
    return "/".join(names[-3:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, required=True, help="dev room seed (< 100)")
    ap.add_argument("--memory", nargs="+", default=[], metavar="NAME=JSON", help="MemoryConfig overrides")
    ap.add_argument("--boxes", type=Path, required=True, help="a cached snapshot of the same room")
    ap.add_argument("--tag", default="")
    a = ap.parse_args(argv)
    if a.seed >= 100:
        sys.exit("dev_object_gaussians: dev seeds only")
    _, _, boxes, meta = load_snapshot(a.boxes)
    if meta["seed"] != a.seed:
        sys.exit(f"dev_object_gaussians: {a.boxes} is room {meta['seed']}, not {a.seed}")
    boxes = [b for b in boxes if b.size.max() < 0.3]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def owner(means: torch.Tensor) -> np.ndarray:
        m = means.detach().numpy()
        out = np.full(len(m), -1)
        for i, b in enumerate(boxes):
            out[np.all(np.abs(m - b.centre) <= b.size / 2 + 0.03, axis=1) & (m[:, 2] > b.centre[2] - b.size[2] / 2 + 0.01)] = i
        return out

    remove, append = ops.remove_gaussians, ops.append_gaussians

    def counted_remove(params, optimizer, mask):
        o = owner(params["means"])[mask.numpy()]
        for i in o[o >= 0]:
            counts[boxes[i].name]["removed: " + _path()] += 1
        return remove(params, optimizer, mask)

    def counted_append(params, optimizer, new):
        o = owner(new["means"])
        for i in o[o >= 0]:
            counts[boxes[i].name]["added: " + _path()] += 1
        return append(params, optimizer, new)

    ops.remove_gaussians = strategy.remove_gaussians = counted_remove
    ops.append_gaussians = strategy.append_gaussians = counted_append
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.memory)}
    rc = RunConfig(family="room", seed=a.seed, sensors="realistic", m3_modes=["gaussians"], voxel=False, grasps=0,
                   iou_views=0)
    queries = {"dev": scene_queries(resolve_scene("room", a.seed), "dev")}
    out = bench_scale._job_refined(bench_scale.MODELS, overrides, rc, queries, 0, {}, None, 0)
    kinds = sorted({k for c in counts.values() for k in c})
    rows = [[name] + [counts[name][k] for k in kinds] for name in sorted(counts)]
    sections = machine_header() + [
        f"- dev room {a.seed}, memory overrides {overrides}; dev phrasings within 5 cm after the walk "
        f"{out['acc']['dev']:.2f}", "", *table(["object"] + kinds, rows)]
    removed = sum(v for c in counts.values() for k, v in c.items() if k.startswith("removed"))
    added = sum(v for c in counts.values() for k, v in c.items() if k.startswith("added"))
    write_report(f"object_gaussians{'_' + a.tag if a.tag else ''}", "Where an object's Gaussians go during a walk",
                 sections, {"added": added, "removed": removed, "within5": out["acc"]["dev"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

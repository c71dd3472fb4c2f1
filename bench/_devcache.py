"""Dev cache: a walked memory's query snapshot, kept so grounding variants are compared on the
same memories without walking again (bench_scale.py --snapshot-dir writes, dev_ground.py reads).

A walk moves a room's dev figure by up to ~0.3 with one pixel's last bit (results/determinism.md),
so comparing grounding variants on fresh walks measures the walks. On cached snapshots every variant
answers from the same memory, paired.

Dev tooling only: the file is a torch pickle of this project's own objects, written and read on one
machine. A user's memory is saved with M3Memory.save (safetensors + JSON, never unpickled).
Keyframes keep only what grounding reads of them (camera, size, depth), not images or features.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from m3_ros.eval.metrics import Box
from m3_ros.memory.snapshot import AttentionCache, MemorySnapshot
from m3_ros.types import Keyframe


def save_snapshot(snap: MemorySnapshot, path: Path, T_world_map: np.ndarray, boxes: list[Box], meta: dict) -> None:
    """Write ``snap`` with the walk's end state: T_world_map [4, 4] (how the robot's answers map to
    the world after the walk) and the objects' boxes then. Written to a temp file, then renamed."""
    skip = {"_lock", "_index_base", "caches", "keyframes"}
    fields = {f.name: getattr(snap, f.name) for f in dataclasses.fields(snap) if f.name not in skip}
    caches = {m: {"top_rows": c.top_rows, "q_tol": c.q_tol, "w_tol": c.w_tol, "budget_bytes": c.budget_bytes}
              for m, c in snap.caches.items()}
    kfs = [{"index": k.index, "stamp": k.stamp, "size": k.size, "depth": k.depth, "K": k.K,
            "T_world_cam": k.T_world_cam} for k in snap.keyframes]
    obj = {"fields": fields, "caches": caches, "keyframes": kfs, "T_world_map": np.asarray(T_world_map),
           "boxes": [(b.name, b.centre, b.size) for b in boxes], "meta": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_snapshot(path: Path) -> tuple[MemorySnapshot, np.ndarray, list[Box], dict]:
    """(snapshot, T_world_map [4, 4], boxes, meta) from save_snapshot. Attention caches start empty
    (the first query fills them), keyframe images are blank (grounding reads cameras and depth)."""
    obj = torch.load(path, weights_only=False)
    kfs = [Keyframe(index=k["index"], stamp=k["stamp"], rgb=np.zeros((*k["size"], 3), np.uint8), depth=k["depth"],
                    K=k["K"], T_world_cam=k["T_world_cam"]) for k in obj["keyframes"]]
    caches = {m: AttentionCache(**c) for m, c in obj["caches"].items()}
    snap = MemorySnapshot(**obj["fields"], keyframes=kfs, caches=caches)
    boxes = [Box(n, np.asarray(c, float), np.asarray(s, float)) for n, c, s in obj["boxes"]]
    return snap, obj["T_world_map"], boxes, obj["meta"]

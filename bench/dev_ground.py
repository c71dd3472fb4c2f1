"""Grounding variants on cached dev memories, paired: every variant answers from the same snapshots.

    .venv/bin/python bench/bench_scale.py --moved-only --quick --family room --seed 3 --memory seed=0 \\
        --tag r3_m0 --snapshot-dir /tmp/devsnap          # once per dev room and memory seed
    .venv/bin/python bench/dev_ground.py --dir /tmp/devsnap --variants '{"support05": {"label_support": 0.5}}'

Asks each snapshot's dev phrasings and up to ``--absent`` phrasings of objects its room does not
hold (a refusal is right) with the default GroundingConfig and each variant, judged like the suite,
and writes results/dev_ground_<tag>.md (+ _answers.json): per variant, within 5 cm, wrong object,
absent refused; and the paired count of phrasings each variant fixes and breaks against the
default. Dev seeds only (the snapshots refuse seeds >= 100).

``--moved`` asks the snapshots cached after moved-object trials (``<tag>_moved_<object>.pt``) instead:
ok as bench_scale judges a trial (the first of three answers within 5 cm of the new place, none of
them within 5 cm of the old one), per variant, with the trials each variant fixes and breaks.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import RESULTS_DIR, machine_header, table, write_report  # noqa: E402
from bench._devcache import load_snapshot  # noqa: E402
from m3_ros.eval.metrics import SUCCESS_M, judge, judge_local  # noqa: E402
from m3_ros.eval.phrasings import absent_queries, scene_queries  # noqa: E402
from m3_ros.foundation import FoundationConfig, grounding_text_model, load_models  # noqa: E402
from m3_ros.geometry import transform_points  # noqa: E402
from m3_ros.grounding import GroundingConfig, ground, validate_query  # noqa: E402
from m3_ros.grounding.contrast import query_embeddings  # noqa: E402
from m3_ros.sim.generate import resolve_scene  # noqa: E402


def embed(text, query: str):
    """(embedding [d], colour swaps' embeddings [k, d] or None) of a query, as the pipeline asks."""
    return query_embeddings(text.encode_text, validate_query(query))


def answer_map(snap, emb, model: str, cfg: GroundingConfig) -> np.ndarray | None:
    """The map point [3] a variant answers, or None when it refuses; emb: embed()'s pair."""
    try:
        return ground(snap, emb[0], model, cfg, contrast=emb[1]).points[0]
    except ValueError:
        return None


def answer(snap, T_world_map: np.ndarray, emb, model: str, cfg: GroundingConfig) -> np.ndarray | None:
    """The world point [3] a variant answers (answer_map through T_world_map [4, 4]), or None."""
    p_map = answer_map(snap, emb, model, cfg)
    return None if p_map is None else transform_points(T_world_map, np.atleast_2d(p_map))[0]


def moved_rows(paths: list[Path], variants: dict, text) -> list[dict]:
    """One row per (moved-object snapshot, variant): ok, cm from the new place, nearest answer to the old."""
    rows = []
    for path in paths:
        snap, T_wm, _, meta = load_snapshot(path)
        if meta["seed"] >= 100:
            sys.exit(f"dev_ground: {path} is a test scene (seed {meta['seed']}); dev seeds only")
        mv = meta["moved"]
        old, new = np.asarray(mv["old"]), np.asarray(mv["new"])
        emb, contrast = embed(text, mv["query"])
        for name, cfg in variants.items():
            try:
                pts = transform_points(T_wm, ground(snap, emb, text.name, cfg, top_k=3, contrast=contrast).points)
                d_new, d_old = float(np.linalg.norm(pts[0] - new)), float(np.linalg.norm(pts - old, axis=1).min())
            except ValueError:
                d_new = d_old = float("inf")
            rows.append({"snapshot": path.stem, "variant": name, "object": mv["object"], "query": mv["query"],
                         "new_cm": 100 * d_new, "old_cm": 100 * d_old,
                         "success": d_new <= SUCCESS_M and d_old > SUCCESS_M})
    return rows


def moved_report(rows: list[dict], variants: dict, tag: str, paths: list[Path], spec: str) -> None:
    ref = {r["snapshot"]: r["success"] for r in rows if r["variant"] == "default"}
    summary = []
    for name in variants:
        sel = [r for r in rows if r["variant"] == name]
        summary.append([name, len(sel), float(np.mean([r["success"] for r in sel])),
                        sum(r["success"] and not ref[r["snapshot"]] for r in sel),
                        sum(not r["success"] and ref[r["snapshot"]] for r in sel)])
    detail = [[r["snapshot"], r["variant"], r["query"], r["new_cm"], r["old_cm"], r["success"]] for r in rows]
    sections = machine_header() + [
        "", f"{len(paths)} cached moved-object snapshots; variants: {spec}", "",
        *table(["variant", "trials", "moved ok", "fixed vs default", "broken vs default"], summary), "",
        *table(["snapshot", "variant", "query", "answer to new cm", "nearest answer to old cm", "ok"], detail)]
    write_report(f"dev_ground_moved{tag}", "Moved-object trials on cached dev memories", sections,
                 {"default_moved_ok": summary[0][2]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="snapshots written by bench_scale.py --snapshot-dir")
    ap.add_argument("--variants", default="{}", metavar="JSON", help='{"name": {GroundingConfig field: value}}')
    ap.add_argument("--absent", type=int, default=12, help="absent-object phrasings asked per snapshot")
    ap.add_argument("--tag", default="", help="results/dev_ground_<tag>.md")
    ap.add_argument("--moved", action="store_true", help="ask the moved-object snapshots (<tag>_moved_<object>.pt)")
    a = ap.parse_args(argv)
    base = GroundingConfig(mode="gaussians")
    variants = {"default": base, **{k: dataclasses.replace(base, **v) for k, v in json.loads(a.variants).items()}}
    paths = sorted(p for p in a.dir.glob("*.pt") if ("_moved_" in p.stem) == a.moved)
    if not paths:
        sys.exit(f"dev_ground: no {'moved-object ' if a.moved else ''}snapshots in {a.dir}")
    models = load_models(FoundationConfig(models=["minilm_labels"]))
    text = grounding_text_model(models)
    if a.moved:
        moved_report(moved_rows(paths, variants, text), variants, f"_{a.tag}" if a.tag else "", paths,
                     "; ".join(f"`{k}` {json.loads(a.variants).get(k, {})}" for k in variants))
        return 0
    rows: list[dict] = []
    t0 = time.monotonic()
    for path in paths:
        snap, T_wm, boxes, meta = load_snapshot(path)
        if meta["seed"] >= 100:
            sys.exit(f"dev_ground: {path} is a test scene (seed {meta['seed']}); dev seeds only")
        scene = resolve_scene(meta["family"], meta["seed"])
        local = {k: np.asarray(v, float) for k, v in meta["local"].items()} if "local" in meta else None
        present = [(q, False) for q in scene_queries(scene, "dev")]
        absent = [(q, True) for q in absent_queries(scene, "dev", a.absent)]
        # the walk's own answers, by phrasing and target (one text can name two objects: "the cube")
        live = {(r["query"], r.get("object")): r["success"] for r in meta.get("answers", []) if "query" in r}
        for q, is_absent in present + absent:
            emb = embed(text, q.text)
            for name, cfg in variants.items():
                p_map = answer_map(snap, emb, text.name, cfg)
                pt = None if p_map is None else transform_points(T_wm, np.atleast_2d(p_map))[0]
                rec = {"snapshot": path.stem, "family": meta["family"], "seed": meta["seed"],
                       "memory_seed": meta["memory"].get("seed", 0), "variant": name, "query": q.text,
                       "absent": is_absent, "refused": pt is None}
                if not is_absent:
                    j = judge(pt, q.targets, boxes)
                    if local is not None:  # each target judged where the robot last saw it (bench_scale)
                        rec["success_local"] = judge_local(p_map, q.targets, boxes, local, T_wm)
                    rec.update(object=q.targets[0], success=j.success, error_cm=100 * j.error_m,
                               wrong_object=j.wrong_object, hit=j.hit, live=live.get((q.text, q.targets[0])),
                               answer=None if pt is None else [round(float(v), 4) for v in pt])
                rows.append(rec)
        print(f"[{time.monotonic() - t0:5.0f} s] {path.stem}: {len(present)} dev + {len(absent)} absent phrasings", flush=True)

    tag = f"_{a.tag}" if a.tag else ""
    (RESULTS_DIR / f"dev_ground{tag}_answers.json").write_text(json.dumps(rows, indent=1))
    asked = [r for r in rows if not r["absent"]]
    key = lambda r: (r["snapshot"], r["query"])  # noqa: E731
    ref = {key(r): r["success"] for r in asked if r["variant"] == "default"}
    summary = []
    for name in variants:
        sel = [r for r in asked if r["variant"] == name]
        gone = [r["refused"] for r in rows if r["absent"] and r["variant"] == name]
        loc = [r["success_local"] for r in sel if "success_local" in r]
        fixed = sum(1 for r in sel if r["success"] and not ref[key(r)])
        broke = sum(1 for r in sel if not r["success"] and ref[key(r)])
        summary.append([name, len(sel), float(np.mean([r["success"] for r in sel])),
                        float(np.median([r["error_cm"] for r in sel])), float(np.mean([r["wrong_object"] for r in sel])),
                        float(np.mean(gone)) if gone else float("nan"), fixed, broke,
                        float(np.mean(loc)) if loc and len(loc) == len(sel) else float("nan")])
    per = []
    for snap_name in sorted({r["snapshot"] for r in asked}):
        here = [r for r in asked if r["snapshot"] == snap_name]
        loc = [r["success_local"] for r in here if r["variant"] == "default" and "success_local" in r]
        per.append([snap_name] + [float(np.mean([r["success"] for r in here if r["variant"] == n])) for n in variants]
                   + [float(np.mean(loc)) if loc else float("nan")])
    same = [r for r in asked if r["variant"] == "default" and r["live"] is not None]
    agree = float(np.mean([r["success"] == r["live"] for r in same])) if same else float("nan")
    sections = machine_header() + [
        "", f"{len(paths)} cached dev snapshots in {a.dir} ({', '.join(p.stem for p in paths)}); variants: "
        + "; ".join(f"`{k}` {json.loads(a.variants).get(k, {})}" for k in variants), "",
        *table(["variant", "n", "within 5 cm", "median cm", "wrong object", "absent refused",
                "fixed vs default", "broken vs default", "within 5 cm, where last seen"], summary), "",
        "Where last seen: each target judged through map -> world as it stood at the last kept keyframe that held "
        "it (metrics.local_alignments, walks from bench_scale after 2026-12-07 only; nan for older snapshots).", "",
        f"The default's answers from the cache agree with the live run's (after the walk, asked with the defaults "
        f"of the code that walked) on {agree:.3f} of {len(same)} dev phrasings (the attention cache starts empty "
        "here; below 1 when the grounding defaults changed since).", "",
        *table(["snapshot"] + list(variants) + ["default, where last seen"], per)]
    best = max(summary, key=lambda r: r[2])
    write_report(f"dev_ground{tag}", "Grounding variants on cached dev memories", sections,
                 {"default_within5": summary[0][2], "best": best[0], "best_within5": best[2]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

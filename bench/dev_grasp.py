"""Grasp-planner variants on cached dev walks, paired: every variant plans from the same memories.

    .venv/bin/python bench/dev_grasp.py walk --dir /tmp/devgrasp --families table two_tables room --seeds 1 2 3
    .venv/bin/python bench/dev_grasp.py replay --dir /tmp/devgrasp --variants '{"core05": {"core_fraction": 0.5}}'
    .venv/bin/python bench/dev_grasp.py compare --base /tmp/devgrasp --new /tmp/devgrasp_back

``walk`` walks each dev scene with realistic sensors (as the suite does), then for every reachable
object with a single-target dev phrasing stands at its grasp pose, grounds the phrasing, plans with
the default GraspConfig and executes it in the simulator (the live outcome); it caches what each plan
was made from (target, the memory's point cloud, the robot's position, map -> world) in
``<dir>/<family>_<seed>.pt``, each trial planned blind (the end-of-walk map -> odom) and after looking
from the grasp pose (suite.RunConfig.grasp_look), and after looking with the answer found again in the
current view (``live``: MemoryPipeline.refine_in_view, planned on the view's depth). ``replay`` rebuilds each scene's world, plans every cached trial with
the default and each variant and executes them, and writes results/dev_grasp_<tag>.md: success per
variant, the trials each fixes and breaks against the default, and whether the default's replay
matches the live outcome. ``compare`` pairs the live outcomes of two walks of the same scenes
whose code differs in what a replay cannot redo (where the robot looks from: ``walk --step-back``).
Dev seeds only (< 100); the suite's grasps (run_all, seed 100, test
phrasings) are the report.
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
import torch  # noqa: E402

from bench._common import machine_header, table, write_report  # noqa: E402
from m3_ros.eval.suite import RunConfig, run_scene  # noqa: E402
from m3_ros.grasp import GraspConfig, plan_grasp  # noqa: E402
from m3_ros.grounding.live import LiveConfig, refine_in_view  # noqa: E402
from m3_ros.pipeline import MemoryPipeline, PipelineConfig  # noqa: E402
from m3_ros.sim.generate import resolve_scene  # noqa: E402
from m3_ros.sim.sensors import SensorConfig  # noqa: E402
from m3_ros.sim.world import SimWorld  # noqa: E402

SENSORS = "realistic"
MODES = ("blind", "look", "live")


def walk(a: argparse.Namespace) -> int:
    if any(s >= 100 for s in a.seeds):
        sys.exit("dev_grasp: seeds >= 100 are test scenes; dev seeds only")
    pipe = MemoryPipeline(PipelineConfig(models=["dinov2_s", "minilm_labels"]))
    pipe.load()  # models first (run_all.py)
    t0 = time.monotonic()
    for fam in a.families:
        for seed in a.seeds:
            rc = RunConfig(family=fam, seed=seed, sensors=SENSORS, m3_modes=["gaussians"], voxel=False,
                           splits=("dev",), grasps=99, grasp_split="dev", keep_grasp_inputs=True,
                           iou_views=0, extra_train_steps=100, grasp_step_back=a.step_back)
            r = run_scene(rc, pipe)
            a.dir.mkdir(parents=True, exist_ok=True)
            path = a.dir / f"{fam}_{seed}.pt"
            tmp = path.with_suffix(".tmp")
            torch.save({"family": fam, "seed": seed, "live": r.grasps, "inputs": r.grasp_inputs,
                        "live_mode": _executed(rc), "step_back": a.step_back}, tmp)
            tmp.replace(path)
            ok = sum(g["success"] for g in r.grasps)
            print(f"[{time.monotonic() - t0:5.0f} s] {fam}/{seed}: {ok} of {len(r.grasps)} grasps", flush=True)
    pipe.close()
    return 0


def _executed(rc: RunConfig) -> str:
    """The mode a walk's live grasps executed (until 2026-12-07 recorded as `look` when it was `live`,
    so replay_agrees compared the live outcomes with the wrong replay: 44 of 53 instead of 53 of 53)."""
    return ("live" if rc.grasp_live else "look") if rc.grasp_look else "blind"


def _refind(t: dict, embed) -> dict | None:
    """refine_in_view of this code on a look's cached views and memory feature (walks since round 5)."""
    found, _ = refine_in_view(t["target"], t["answer_feature"], t["views"], embed, LiveConfig())
    return None if found is None else {"target": found.point, "cloud": found.cloud(), "label": found.label,
                                       "similarity": found.similarity, "moved_cm": 100 * found.moved_m}


def replay(a: argparse.Namespace) -> int:
    spec = json.loads(a.variants)
    from m3_ros.foundation import FoundationConfig, load_models
    text = load_models(FoundationConfig(models=["minilm_labels"]))["minilm_labels"]  # the walks' text model
    embed = text.encode_text
    variants = {"default": GraspConfig(), **{k: dataclasses.replace(GraspConfig(), **v) for k, v in spec.items()}}
    paths = sorted(a.dir.glob("*.pt"))
    if not paths:
        sys.exit(f"dev_grasp: no cached walks in {a.dir}")
    rows = []
    live_mode: dict[str, str] = {}  # which mode the walk executed live, per cache
    for path in paths:
        c = torch.load(path, weights_only=False)
        if c["seed"] >= 100:
            sys.exit(f"dev_grasp: {path} is a test scene (seed {c['seed']}); dev seeds only")
        live = {g["object"]: g for g in c["live"]}
        live_mode[path.stem] = c.get("live_mode", "blind")  # caches from before the key: blind
        with SimWorld(resolve_scene(c["family"], c["seed"]), seed=c["seed"],
                      sensors=SensorConfig.resolve(SENSORS)) as world:
            world.advance(0.0)
            for mode in MODES:
                got = {t["object"] for t in c["inputs"] if t["look"] == (mode != "blind")}
                for g in c["live"]:  # grounding refused: no inputs, a failure every planner variant shares
                    if g["object"] not in got:
                        for name in variants:
                            rows.append({"trial": f"{path.stem}/{g['object']}", "variant": f"{mode}:{name}",
                                         "query": g["query"], "success": False, "message": "grounding refused",
                                         "live": bool(g["success"]), "offset_cm": float("nan"), "in_view": "-"})
            for t, mode in [(t, m) for t in c["inputs"] for m in (("look", "live") if t["look"] else ("blind",))]:
                target, cloud = t["target"], t["cloud"]
                if mode == "live":
                    t["live"] = _refind(t, embed) if t.get("views") else t.get("live")
                    if t["live"] is not None:  # found again in the view: plan on its depth
                        target, cloud = t["live"]["target"], t["live"]["cloud"]
                for name, cfg in variants.items():
                    state = world.save_state()
                    off = float("nan")
                    try:
                        world.teleport_base(t["grasp_base"])
                        plan = plan_grasp(target, cloud, cfg, viewpoint=t["viewpoint"])
                        T = t["T_world_map"] @ plan.T_world_tcp
                        obj = world.object_state(t["object"])
                        off = 100 * float(np.linalg.norm(T[:2, 3] - np.asarray(obj.aabb_center)[:2]))
                        out = world.execute_grasp(T)
                        ok, msg = bool(out.success and out.object == t["object"]), out.message
                    except ValueError as e:
                        ok, msg = False, f"no plan: {e}"
                    finally:
                        world.restore_state(state)
                    found = t.get("live") if mode == "live" else None
                    rows.append({"trial": f"{path.stem}/{t['object']}", "variant": f"{mode}:{name}",
                                 "query": t["query"], "success": ok, "message": msg,
                                 "live": bool(live[t["object"]]["success"]), "offset_cm": off,
                                 "in_view": "-" if found is None else f"{found['label']} {found['moved_cm']:.1f} cm"})
        print(f"{path.stem}: {len(c['inputs'])} trials replayed", flush=True)
    ref = {m: {r["trial"]: r["success"] for r in rows if r["variant"] == f"{m}:default"} for m in MODES}
    # the live outcome against the replay of the mode the walk executed
    live_ok = {r["trial"]: r["live"] for r in rows
               if r["variant"] == f"{live_mode[r['trial'].split('/')[0]]}:default"}
    summary = []
    for name in [f"{m}:{v}" for m in MODES for v in variants]:
        sel = [r for r in rows if r["variant"] == name]
        prev = {"look:default": "blind", "live:default": "look"}  # each mode against the one before it
        base = ref[prev.get(name, name.split(":")[0])]
        summary.append([name, len(sel), sum(r["success"] for r in sel),
                        sum(r["success"] and not base[r["trial"]] for r in sel),
                        sum(not r["success"] and base[r["trial"]] for r in sel)])
    n_look = sum(r["variant"] == "live:default" for r in rows)
    n_found = sum(r["variant"] == "live:default" and r["in_view"] != "-" for r in rows)
    same = sum(ref[live_mode[k.split("/")[0]]][k] == ok for k, ok in live_ok.items())
    detail = [[r["trial"], r["variant"], r["query"], "yes" if r["success"] else "no", r["offset_cm"],
               r["in_view"], r["message"][:60]] for r in rows]
    sections = machine_header() + [
        "", f"{len(paths)} cached dev walks ({SENSORS} sensors); variants: "
        + "; ".join(f"`{k}` {spec.get(k, {})}" for k in variants),
        f"The default's replay agrees with the live outcome (the mode each walk executed: "
        f"{', '.join(sorted(set(live_mode.values())))}) in {same} of {len(live_ok)} trials. "
        "Fixed / broken: against the same mode's default (`look:default` against `blind:default`). "
        "`blind`: planned with the end-of-walk map -> odom carried by odometry to the grasp pose; `look`: "
        "after streaming frames there until one became a keyframe (suite.RunConfig.grasp_look); `live`: "
        "`look`, then the answer found again in the current view and planned on its depth where it was "
        f"(grounding/live.py, recomputed from the cached views by this code; found in {n_found} of "
        f"{n_look} looks), else as `look` "
        "(`live:default` against `look:default`).", "",
        *table(["variant", "trials", "success", "fixed vs default", "broken vs default"], summary), "",
        *table(["trial", "variant", "query", "success", "TCP to object centre cm (xy)",
                "found in view (label, cm from the answer)", "message"], detail)]
    tag = f"_{a.tag}" if a.tag else ""
    write_report(f"dev_grasp{tag}", "Grasp-planner variants on cached dev walks", sections,
                 {"blind_grasp_ok": summary[0][2] / max(summary[0][1], 1),
                  "look_grasp_ok": summary[len(variants)][2] / max(summary[len(variants)][1], 1),
                  "live_grasp_ok": summary[2 * len(variants)][2] / max(summary[2 * len(variants)][1], 1),
                  "trials": summary[0][1], "found_in_view": n_found,
                  "replay_agrees": same})
    return 0


def compare(a: argparse.Namespace) -> int:
    """Paired live outcomes of two walks of the same dev scenes (--base, then --new): which trials the
    new walk's code fixed and broke, where it stepped back, and whether the trials it did not change
    (no step back) agree, a control for how far two walks of one scene differ by themselves."""
    rows, fixed, broken, same, ctrl = [], 0, 0, 0, [0, 0]
    for path in sorted(a.new.glob("*.pt")):
        base_path = a.base / path.name
        if not base_path.exists():
            continue
        new, base = torch.load(path, weights_only=False), torch.load(base_path, weights_only=False)
        if min(new["seed"], base["seed"]) >= 100 or new["seed"] != base["seed"]:
            sys.exit(f"dev_grasp compare: {path.name}: dev seeds only, the same scene in both")
        b = {g["object"]: g for g in base["live"]}
        for g in new["live"]:
            if g["object"] not in b:
                continue
            was, now, step = bool(b[g["object"]]["success"]), bool(g["success"]), g.get("step_back_m", 0.0)
            fixed += now and not was
            broken += was and not now
            same += now == was
            if not step:
                ctrl[0] += 1
                ctrl[1] += now == was
            rows.append([f"{path.stem}/{g['object']}", g["query"], f"{100 * step:.0f}", "yes" if was else "no",
                         "yes" if now else "no", g.get("in_view", "-")[:50], g["message"][:50]])
    sections = machine_header() + [
        "", f"base walks {a.base}, new walks {a.new} (live outcomes, each as its walk executed it). "
        f"{len(rows)} paired trials: new {sum(r[4] == 'yes' for r in rows)}, base {sum(r[3] == 'yes' for r in rows)}; "
        f"fixed {fixed}, broken {broken}. Control: of the {ctrl[0]} trials where the new walk did not step "
        f"back, {ctrl[1]} ended as in the base walk.", "",
        *table(["trial", "query", "step back cm", "base", "new", "new: found in view", "new: message"], rows)]
    tag = f"_{a.tag}" if a.tag else ""
    write_report(f"dev_grasp_compare{tag}", "Paired live grasp outcomes of two dev walks", sections,
                 {"base_ok": sum(r[3] == "yes" for r in rows), "new_ok": sum(r[4] == "yes" for r in rows),
                  "fixed": fixed, "broken": broken, "trials": len(rows), "control_same": ctrl[1],
                  "control_trials": ctrl[0]})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("walk", help="walk dev scenes, grasp live, cache the planner's inputs")
    w.add_argument("--dir", type=Path, required=True)
    w.add_argument("--families", nargs="+", default=["table", "two_tables", "room"])
    w.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    w.add_argument("--step-back", action="store_true", help="suite.RunConfig.grasp_step_back on")
    r = sub.add_parser("replay", help="plan and execute every cached trial with each variant")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--variants", default="{}", metavar="JSON", help='{"name": {GraspConfig field: value}}')
    r.add_argument("--tag", default="")
    c = sub.add_parser("compare", help="paired live outcomes of two walks of the same dev scenes")
    c.add_argument("--base", type=Path, required=True)
    c.add_argument("--new", type=Path, required=True)
    c.add_argument("--tag", default="")
    a = ap.parse_args(argv)
    return {"walk": walk, "replay": replay, "compare": compare}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())

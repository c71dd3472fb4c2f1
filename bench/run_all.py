"""The evaluation suite: every scene family under ideal and realistic sensors, M3 in each
grounding mode against the labelled voxel map, on held-out phrasings; grasps executed in
the simulator; feature fidelity against distillation; relevance mIoU; latency and memory.

    bench/run_all [--quick]        (a wrapper for .venv/bin/python bench/run_all.py)

Writes bench/results/suite.md, bench/results/suite_*.png and bench/README.md, and ends
with one RESULT line. Thresholds are never set here: the grounding defaults come from
GroundingConfig; the `test` phrasings are reported, not tuned on.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import RESULTS_DIR, in_fresh_process, machine_header, table, write_report  # noqa: E402
from m3_ros.eval.fidelity import feature_fidelity  # noqa: E402
from m3_ros.eval.suite import RunConfig, RunResult, run_scene  # noqa: E402
from m3_ros.grounding import GroundingConfig  # noqa: E402
from m3_ros.pipeline import MemoryPipeline, PipelineConfig  # noqa: E402
from m3_ros.sim.generate import FAMILIES  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
CONDITIONS = ("ideal", "realistic")


def _modes() -> list[str]:
    """Every grounding mode GroundingConfig accepts (render, gaussians, and view where it exists)."""
    import typing
    hint = typing.get_type_hints(GroundingConfig)["mode"]
    return list(typing.get_args(hint))


def _frac(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else float("nan")


def _summary(queries: list[dict], **where) -> dict:
    sel = [q for q in queries if all(q[k] == v for k, v in where.items())]
    errs = [q["error_cm"] for q in sel]
    return {"n": len(sel), "within5": _frac(q["success"] for q in sel),
            "local": _frac(q["success_local"] for q in sel if "success_local" in q),
            "median_cm": float(np.median(errs)) if errs else float("nan"),
            "wrong": _frac(q["wrong_object"] for q in sel), "ms": float(np.median([q["ms"] for q in sel])) if sel else
            float("nan")}


def _winner(m3: float, voxel: float) -> str:
    """Which of M3 and the better voxel map answers more phrasings within 5 cm."""
    return "M3" if m3 > voxel else ("voxel baseline" if voxel > m3 else "tie")


def _plots(runs: list[RunResult], queries: list[dict], methods: list[str], default: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    # grounding error against training time (the probe query asked while the walk trains)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        if r.probe:
            ax.plot([x["t_s"] for x in r.probe], [min(100 * x["error_m"], 300) for x in r.probe],
                    label=f"{r.family}/{r.sensors}", lw=1)
    ax.axhline(5, color="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("wall seconds since the first keyframe")
    ax.set_ylabel("probe query error, cm (capped at 300)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "suite_error_vs_time.png", dpi=90)
    names.append("suite_error_vs_time.png")
    plt.close(fig)
    # success per family
    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(10, 3.5), sharey=True)
    fams = sorted({q["family"] for q in queries}, key=lambda f: FAMILIES.index(f) if f in FAMILIES else 99)
    for ax, cond in zip(np.atleast_1d(axes), CONDITIONS):
        w = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            vals = [_summary(queries, family=f, sensors=cond, method=m, split="test")["within5"] for f in fams]
            ax.bar(np.arange(len(fams)) + i * w, np.nan_to_num(vals), w, label=m)
        ax.set_xticks(np.arange(len(fams)) + 0.4 - w / 2, fams)
        ax.set_title(f"{cond}: test phrasings within 5 cm")
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "suite_success_per_family.png", dpi=90)
    names.append("suite_success_per_family.png")
    plt.close(fig)
    # relevance beside the camera image
    ex = [r for r in runs if r.example]
    if ex:
        fig, axes = plt.subplots(len(ex), 2, figsize=(7, 2.6 * len(ex)), squeeze=False)
        for row, r in zip(axes, ex):
            row[0].imshow(r.example["rgb"])
            row[0].set_title(f"{r.family}/{r.sensors}: camera", fontsize=8)
            row[1].imshow(r.example["relevance"], cmap="inferno")
            row[1].set_title(f"relevance: {r.example['query']!r}", fontsize=8)
            for a in row:
                a.axis("off")
        fig.tight_layout()
        fig.savefig(RESULTS_DIR / "suite_relevance.png", dpi=90)
        names.append("suite_relevance.png")
        plt.close(fig)
    # latency histogram of queries asked while training
    ms = [x["ms"] for r in runs for x in r.probe]
    if ms:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(ms, bins=40)
        ax.set_xlabel(f"query latency while training, ms ({default})")
        ax.set_ylabel("queries")
        fig.tight_layout()
        fig.savefig(RESULTS_DIR / "suite_latency.png", dpi=90)
        names.append("suite_latency.png")
        plt.close(fig)
    return names


def _run_one(rc: RunConfig, fidelity: bool) -> tuple[RunResult, dict]:
    """One scene in a fresh process: (its result, feature fidelity on its held-out frames if asked).

    Run through _common.in_fresh_process (why: its docstring); the models load again for each scene
    (seconds)."""
    pipe = MemoryPipeline(PipelineConfig(models=["dinov2_s", "minilm_labels"]))
    pipe.load()  # models first (the other order crashed until SimWorld imported triton before EGL)
    try:
        r = run_scene(rc, pipe)
        fid = feature_fidelity(pipe.memory, pipe.model("dinov2_s"), r.held_out) if fidelity and r.held_out else {}
    finally:
        pipe.close()
    r.held_out = []
    return r, fid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed per family and condition (< 25 min on 2 cores)")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    a = ap.parse_args()
    seeds = a.seeds or ([100] if a.quick else [100, 101, 102])
    t_start = time.monotonic()
    modes = _modes()
    default = GroundingConfig().mode
    methods = [f"m3_{m}" for m in modes] + ["voxel_labels", "voxel_labels_map"]
    runs: list[RunResult] = []
    fidelity: dict = {}
    for fam in a.families:
        for cond in CONDITIONS:
            for seed in seeds:
                keep = 6 if (fam == a.families[0] and cond == "realistic" and seed == seeds[0]) else 0
                rc = RunConfig(family=fam, seed=seed, sensors=cond, m3_modes=modes,
                               grasps=(3 if a.quick else 6) if cond == "realistic" or not a.quick else 0,
                               iou_views=3 if a.quick else 8, keep_frames=keep,
                               extra_train_steps=100 if a.quick else 400, absent=24)
                t0 = time.monotonic()
                r, fid = in_fresh_process(_run_one, rc, bool(keep))
                print(f"[{time.monotonic() - t_start:6.0f} s] {fam}/{cond}/seed {seed}: {len(r.queries)} answers, "
                      f"{len(r.grasps)} grasps, {time.monotonic() - t0:.0f} s", flush=True)
                fidelity = fid or fidelity
                runs.append(r)
    queries = [q for r in runs for q in r.queries]
    grasps = [g for r in runs for g in r.grasps]
    absent = [q for r in runs for q in r.absent]
    (RESULTS_DIR / "suite_answers.json").write_text(json.dumps({"queries": queries, "grasps": grasps,
                                                                "absent": absent}, indent=1))

    rows = []
    for fam in a.families:
        for cond in CONDITIONS:
            for m in methods:
                for split in ("dev", "test"):
                    s = _summary(queries, family=fam, sensors=cond, method=m, split=split)
                    rows.append([fam, cond, m, split, s["n"], s["within5"], s["median_cm"], s["wrong"], s["ms"],
                                 s["local"]])
    overall = []
    for cond in CONDITIONS:
        for m in methods:
            s = _summary(queries, sensors=cond, method=m, split="test")
            overall.append([cond, m, s["n"], s["within5"], s["median_cm"], s["wrong"], s["local"]])
    g_rows = [[g["family"], g["sensors"], g["object"], g["query"], "yes" if g["success"] else "no", g["lifted"],
               g.get("in_view", "")[:70], g["message"][:70]] for g in grasps]
    view_rows = []
    for cond in CONDITIONS:
        for m in methods:
            s = _summary(queries, sensors=cond, method=m, split="test", in_view=True)
            view_rows.append([cond, m, s["n"], s["within5"], s["median_cm"], s["wrong"]])
    absent_rows = []
    for cond in CONDITIONS:
        for m in methods:
            sel = [q["refused"] for q in absent if q["sensors"] == cond and q["method"] == m and q["split"] == "test"]
            absent_rows.append([cond, m, len(sel), _frac(sel)])
    kinds = sorted({q["kind"] for q in queries})
    kind_rows = [[k, *[_summary(queries, sensors="realistic", method=m, split="test", kind=k)["within5"]
                       for m in methods]] for k in kinds]
    run_rows = [[r.family, r.sensors, r.seed, r.walk.get("walk_m", 0), r.walk.get("frames", 0), r.walk.get("dropped", 0),
                 r.stats.get("keyframes", 0), r.stats.get("gaussians", 0),
                 " ".join(f"{k}:{v}" for k, v in r.stats.get("bank_rows", {}).items()),
                 r.stats.get("iteration", 0), r.walk.get("wall_s", 0), r.first_correct_s,
                 float(np.percentile([x["ms"] for x in r.probe], 50)) if r.probe else float("nan"),
                 float(np.percentile([x["ms"] for x in r.probe], 95)) if r.probe else float("nan"),
                 float(np.median(r.keyframe_ms)) if r.keyframe_ms else float("nan"),
                 _frac(r.ious)] for r in runs]
    real = [r for r in runs if r.sensors == "realistic"]
    probe_real = [x["ms"] for r in real for x in r.probe]
    # the largest scene process's peak (each scene runs in its own: _run_one)
    rss_mb = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024.0
    pngs = _plots(runs, queries, methods, default)
    dflt = f"m3_{default}"
    t_real = _summary(queries, sensors="realistic", method=dflt, split="test")
    verdict = []
    for cond in CONDITIONS:
        for fam in a.families:
            m3 = _summary(queries, family=fam, sensors=cond, method=dflt, split="test")["within5"]
            vx = _summary(queries, family=fam, sensors=cond, method="voxel_labels", split="test")["within5"]
            vm = _summary(queries, family=fam, sensors=cond, method="voxel_labels_map", split="test")["within5"]
            who = _winner(m3, max(vx, vm))
            loc = {m: _summary(queries, family=fam, sensors=cond, method=m, split="test")["local"]
                   for m in (dflt, "voxel_labels", "voxel_labels_map")}
            who_l = _winner(loc[dflt], max(loc["voxel_labels"], loc["voxel_labels_map"]))
            verdict.append(f"- {fam}/{cond}: M3 ({default}) {m3:.2f} vs voxel {vx:.2f} (odometry poses), {vm:.2f} "
                           f"(the memory's refined poses) within 5 cm on test phrasings: **{who}**; judged where "
                           f"the robot last saw each target {loc[dflt]:.2f} vs {loc['voxel_labels']:.2f}, "
                           f"{loc['voxel_labels_map']:.2f}: **{who_l}**")
    lines = machine_header() + [
        f"- wall time: {time.monotonic() - t_start:.0f} s; seeds {seeds}; families {a.families}; M3 default mode "
        f"`{default}`",
        "- answers are judged in the world through the robot's odometry error at query time (where the robot "
        "would reach); success = within 5 cm of the centre of the object's box (of any object the phrasing could "
        "mean); wrong object = not a success and within 3 cm of another object's box.",
        "- realistic: D435-like depth (sigma 4 mm at 1 m, growing with z^2; edge holes; mm quantisation), odometry "
        "drift (2 % of distance, yaw 1 deg/sqrt(m)), image noise, 5 % dropped frames, a noisy detector (20 % misses, "
        "2 px erosion, 50 % synonyms); ideal: none of those.",
        "- splits: scenes with seeds 0-99 and the `dev` phrasings are for tuning; this report runs seeds >= 100 "
        "(never debugged against) and shows both phrasing splits; the headline is `test`.",
        "- thresholds: GroundingConfig defaults (see its docstrings for what each was set on); nothing here was "
        "tuned on `test` phrasings or scenes >= 100.",
        "", "## Runs", "",
        *table(["family", "sensors", "seed", "walk m", "frames", "dropped", "keyframes", "Gaussians", "bank rows",
                "train steps", "walk wall s", "first correct s", "query p50 ms (training)", "query p95 ms (training)",
                "keyframe ms", "mIoU"], run_rows),
        "", "## Grounding on test phrasings, all families", "",
        *table(["sensors", "method", "queries", "within 5 cm", "median cm", "wrong object",
                "within 5 cm, where last seen"], overall),
        "", "Where last seen (a diagnostic, never a target): each target judged through its method's frame -> world "
        "as it stood at the last keyframe whose image held it (metrics.local_alignments), i.e. after the robot "
        "walked back and relocalised, not from where the walk ended. Without loop closure a map is right where it "
        "was built and bent elsewhere by the drift met on the way (dev two_tables: 4-6 cm between the tables).",
        "", "## Targets in view of the robot's last camera (test phrasings; view mode's own case)", "",
        *table(["sensors", "method", "queries", "within 5 cm", "median cm", "wrong object"], view_rows),
        "", "## Objects that are not there (test phrasings of library objects no scene object fits)", "",
        "A refusal is the right answer; an answer points the robot at something else (phrasings.absent_queries, "
        "up to 24 per scene and split).", "",
        *table(["sensors", "method", "queries", "refused"], absent_rows),
        "", "## M3 against the voxel baseline", "", *verdict,
        "", "## Realistic, test phrasings, by kind of phrasing (within 5 cm)", "",
        *table(["kind", *methods], kind_rows),
        "", "## Per family, condition, method and split", "",
        *table(["family", "sensors", "method", "split", "queries", "within 5 cm", "median cm", "wrong object",
                "median ms", "within 5 cm, where last seen"], rows),
        "", "## Grasps (executed in the simulator; success only when the lifted object is the target)", "",
        *table(["family", "sensors", "object", "query", "success", "lifted",
                "found again in the current view (RunConfig.grasp_live)", "message"], g_rows),
        "", "## Held-out DINOv2-S feature fidelity (same Gaussians, same steps)", "",
        *(table(list(fidelity), [list(fidelity.values())]) if fidelity else ["- not measured"]),
        "", "## Plots", "", *[f"![{n}]({n})" for n in pngs],
    ]
    result = {
        "ground_test_5cm": t_real["within5"],
        "ground_test_5cm_voxel": _summary(queries, sensors="realistic", method="voxel_labels", split="test")["within5"],
        "ground_test_5cm_voxel_map": _summary(queries, sensors="realistic", method="voxel_labels_map",
                                              split="test")["within5"],
        "ground_dev_5cm": _summary(queries, sensors="realistic", method=dflt, split="dev")["within5"],
        "ground_test_5cm_local": t_real["local"],
        "ground_test_5cm_voxel_local": _summary(queries, sensors="realistic", method="voxel_labels",
                                                split="test")["local"],
        "ground_test_5cm_voxel_map_local": _summary(queries, sensors="realistic", method="voxel_labels_map",
                                                    split="test")["local"],
        "wrong_object": t_real["wrong"],
        "absent_refused": _frac(q["refused"] for q in absent
                                if q["sensors"] == "realistic" and q["method"] == dflt and q["split"] == "test"),
        "grasp_success": _frac(g["success"] for g in grasps if g["sensors"] == "realistic"),
        "m3_cos": fidelity.get("m3_cos", float("nan")), "distill_cos": fidelity.get("distill_cos", float("nan")),
        "miou": _frac(x for r in real for x in r.ious),
        "first_correct_s": float(np.nanmedian([r.first_correct_s for r in real])) if real else float("nan"),
        "query_p95_ms": float(np.percentile(probe_real, 95)) if probe_real else float("nan"),
        "rss_mb": rss_mb,
    }
    line = write_report("suite", "Evaluation suite: scene families x sensors x methods, held-out phrasings", lines,
                        result)
    _bench_readme(line, overall, verdict)


def _bench_readme(result_line: str, overall: list, verdict: list[str]) -> None:
    """bench/README.md: what each benchmark measures, and the suite's latest headline."""
    others = sorted(p.name for p in BENCH_DIR.glob("bench_*.py"))
    dev_tools = sorted(p.name for p in BENCH_DIR.glob("dev_*.py"))
    text = "\n".join([
        "# Benchmarks", "",
        "Every performance or accuracy claim of this package lives here. Each script prints a table (machine, "
        "threads, versions), writes it to `bench/results/<name>.md` and ends with a `RESULT` line.", "",
        "- `bench/run_all [--quick]`: the evaluation suite (this page's figures; `results/suite.md`).",
        *[f"- `.venv/bin/python bench/{n} [--quick]`: see its docstring; `results/{n[6:-3]}.md`." for n in others],
        "", "Dev studies (dev scenes and phrasings only; thresholds are set with these, never on the suite's test "
        "split):", "",
        *[f"- `.venv/bin/python bench/{n}`: {_summary_line(BENCH_DIR / n)} See its docstring." for n in dev_tools],
        "", "## Latest suite run", "",
        *table(["sensors", "method", "queries", "within 5 cm", "median cm", "wrong object",
                "within 5 cm, where last seen"], overall), "",
        *verdict, "", "```", result_line, "```", "",
        "Plots: `results/suite_error_vs_time.png`, `results/suite_success_per_family.png`, "
        "`results/suite_relevance.png`, `results/suite_latency.png`.", ""])
    (BENCH_DIR / "README.md").write_text(text)


def _summary_line(path: Path) -> str:
    """The first line of a script's module docstring (read, not imported)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


if __name__ == "__main__":
    main()

"""Odometry drift with and without depth-to-map ICP (m3_ros.tracking), no foundation models.

Walks a generated dev scene with realistic sensors (2 % drift, 1 deg/sqrt(m) yaw walk, D435
depth noise, dropped frames), picks keyframes as the pipeline does (its KeyframeSelector and
max_depth; the tracker gets the depth uncut, as the pipeline hands it over), and compares each
keyframe's camera position with the truth: ``off`` takes the odometry pose, ``on`` the pose
DriftTracker refines against the keyframes before it. Odometry starts at the truth, so
``T_world_map`` is the identity.

``object cm`` is what grounding after the walk sees (bench_scale judges answers mapped to the world
through the robot's final odometry error and ``map -> odom``): for each scene object, the median
over the keyframes that see it (>= 300 pixels) of how far its true centre lands when carried
through that keyframe's stored pose and back to the world through the final ``map -> world``.

    .venv/bin/python bench/bench_drift.py [--family two_tables] [--seeds 1]

Dev seeds only (< 100): the test seeds stay untouched for the evaluation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import machine_header, table, write_report  # noqa: E402
from m3_ros.pipeline import PipelineConfig  # noqa: E402
from m3_ros.sim.generate import resolve_scene  # noqa: E402
from m3_ros.sim.sensors import SensorConfig  # noqa: E402
from m3_ros.sim.world import SimWorld  # noqa: E402
from m3_ros.stream import KeyframeSelector  # noqa: E402
from m3_ros.tracking import DriftTracker, OdometryPrior  # noqa: E402

SENSORS = {"realistic": SensorConfig.realistic, "realistic_nodrift": SensorConfig.realistic_no_drift,
           "nodrift_exact_depth": lambda: dataclasses.replace(SensorConfig.realistic_no_drift(), depth=None,
                                                             name="nodrift_exact_depth")}


# what the table cannot say; the numbers come from dev walks (room seeds 1-5, two_tables seeds 1-3)
NOTES = ["", (
    "Notes: frame-to-model ICP without a pose graph. Each keyframe aligns with the accumulated cloud, and "
    "ground seen for the first time enters that cloud at the keyframe's refined pose, so a correction comes "
    "only where a keyframe sees older map. The tracker then drifts at about 0.4 of the odometry's rate (room "
    "seed 1: 3.3 cm after the first lap against the odometry's 8.3, 9.3 against 23.7 in the second). What holds "
    "it in a room is the walls, and they had never entered the map: with depth cut at 2.5 m and every point taken "
    "for exact, far wall points (noise 1.6 cm at 2 m) failed the planarity test (3 % kept at 2-2.5 m) and 86 % of "
    "the map was floor. The tracker now models stereo noise (points weighted by it, map planes fitted over "
    "noise-wide patches, points put on their plane) and takes depth to 4 m (TrackerConfig.max_depth). Room seeds "
    "1-5, mean / final keyframe cm: odometry 12.3 / 18.4, ICP before 6.3 / 8.6, now 4.9 / 6.4 (object cm 4.5; "
    "6.4 before, replayed without the tray). two_tables seeds 1-3 (no walls): 7.9 / 17.6 before, 8.5 / 18.2 "
    "now (seeds 1, 2 better, 3 worse: 16.9 -> 19.6 mean). Tried and not kept (room seeds 1-5 unless "
    "said): the noise model at 2.5 m without far depth (mixed: 28-30 cm final on seeds 2 and 3); a gate refusing "
    "corrections larger than the odometry's drift since the last accepted keyframe (helped at 2.5 m, 5.2 / 8.7 / "
    "5.9 at 4 m: it refuses the large, right corrections when the end of the walk sees the early walls again, "
    "because the map, not only odometry, drifted); gain 1 (unstable: 96 cm on seed 5 at 2.5 m); a map built only "
    "from accepted keyframes (22-28 cm final on seeds 1 and 5); 64 instead of 32 neighbours per normal (5.6 / "
    "6.6 / 4.6, slower). Still open: two_tables seed 3, where ICP adds yaw (-0.3 deg a keyframe, 4 deg after the "
    "first lap) while the camera orbits a table whose shape barely pins the turn about its axis; and whatever "
    "drift remains once nothing old is in view (a pose graph cannot re-anchor what the memory already holds). "
    "2026-12-04: a keyframe is now placed at ICP's full estimate and the gain smooths only T_map_odom (it had "
    "placed keyframes at the half-corrected pose, half of every measured residual going into the map): room "
    "seeds 1-5 mean / final / object cm 4.9 / 7.0 / 5.0 -> 4.5 / 7.1 / 4.0; two_tables seeds 1-3 object cm "
    "8.5 -> 4.2 (seed 1 12.7 -> 3.7). Later: T_map_odom, which answers go through, had stayed the gain-smoothed "
    "correction and lagged the keyframes' placement; it now agrees with the newest keyframe (the smoothed one only "
    "seeds the next ICP): object cm room 4.0 -> 3.45, two_tables 4.2 -> 3.55. Tried and not kept: a keyframe pose "
    "graph (odometry edges, ICP edges to the keyframes whose points were matched, loop edges from ICP against old "
    "and recent map separately, Gaussians moved with their keyframe): room 1-5 camera 4.49 -> 5.24 cm, object "
    "3.99 -> 6.01, and 4 cm on an exact-geometry loop where frame-to-model ICP holds 2 cm (edges with fixed "
    "sigmas; old map points moving with their keyframes loses the anchor the first keyframes give). 2026-12-04, "
    "later: a correction is refused when fewer points fit the map within 3 noise sigmas afterwards than before "
    "(IcpConfig.consensus_sigmas): on the default table with exact depth and odometry, a keyframe 2.75 s after the "
    "previous one (a loaded machine) had been moved 4.6 cm / 3.5 deg off by its new surfaces (a table edge face, "
    "new object sides) pulling toward the nearest old plane. Dev object cm room 3.45 -> 3.56, two_tables 3.55 -> "
    "3.57 (2 sigmas: 3.67 / 3.57). Tried and not kept (`--icp ... --tag`, results/drift_*_{c2,p30,p60}.md): "
    "matching only the keyframe's planar points with a normal-compatibility test (30 or 60 deg): exact on the "
    "default table, but room object cm 5.6 / 4.3 and two_tables 7.7 / 7.3 with noisy depth. With the test: a fine "
    "cap of 1.5 cm (fine_corr_m, the map's voxel; results/drift_*_f15.md) gave room 2.86 (4 of 5 better) but "
    "two_tables 4.09 (seed 3 4.65 -> 7.93) and left the exact-depth keyframe 1.9 cm off; the consensus counted "
    "over 10 cm correspondences instead of the fine cap: room 4.10, two_tables 3.61. "
    "2026-12-05: with exact odometry (`--sensors realistic_nodrift`, results/drift_room_nodrift.md) ICP still "
    "places keyframes 2.67 cm off on average (room seeds 1-5; object cm 1.65), with exact depth as well 0.38 "
    "(drift_room_nodrift_exact.md): the depth noise, not the odometry, sets the tracker's floor. A voxel's map "
    "point replaced by a later view that measured it with under half the noise (a PointMapConfig.refine_ratio 0.5 "
    "tried on 2026-12-05, code removed since; "
    "drift_room_rr05.md, drift_two_tables_rr05.md): object cm room 1-5 3.56 -> 2.76, two_tables 1-3 3.57 -> "
    "3.25, room seeds 6-10 4.89 -> 4.14 (drift_room_base_6to10.md, drift_room_rr05_6to10.md), exact odometry "
    "1.65 -> 1.78 (drift_room_nodrift_rr05.md); but grounding did not follow (bench_scale, memory seeds 0-2, "
    "test phrasings: dev room 1 0.69 -> 0.65, room 2 0.52 -> 0.62, room 3 0.39 -> 0.28; scale_dev_room*), so "
    "the first point stays. Also tried and not kept: dropping the noisier points "
    "beside a replaced surface (rr05c: 2.76 / 3.38); the published map -> odom as the mean of the 5 newest "
    "accepted corrections (room object cm 4.42: it lags the drift); 8000 ICP points instead of 3000 (room "
    "2.96, camera 5.28 cm). "
    "2026-12-06: an odometry prior on each ICP correction (TrackerConfig.prior, OdometryPrior; `--prior "
    "FIELD=JSON`), results/drift_*_s13*.md. Room 1-5 / two_tables 1-3, object cm (camera mean cm): none 3.56 / "
    "3.57 (4.61 / 7.95); centred on the guess, gain and the conditioning refusal kept, weight 1: 2.67 / 3.60 "
    "(4.26 / 7.55), weight 30: 3.47 / 10.2 (3.34 / 6.54); centred on the newest placement carried by odometry, "
    "no gain, weak views held by the prior instead of refused: 2.71 / 10.4 (5.69 / 13.7) and 3.28 / 7.81 "
    "(3.58 / 5.74); ICP in yaw, x, y only (IcpConfig.dof planar): 4.44 / 6.87. Object cm follows the last "
    "keyframe's placement (answers go through the final map -> odom), so one walk's figure moves a lot with it. "
    "Files: s13vb / s13vb30 the kept form at weight 1 / 30, s13prior / s13prior_w30 the placement-centred form "
    "(its code not kept), s13planar, s13base. 2026-12-07: map points that carry their keyframe's placement "
    "uncertainty (a keyframe inherits the correspondence-weighted placement sigma of the map it aligned to plus "
    "a rate per metre travelled, a refused one the odometry's 2 % per metre; ICP weighs each correspondence by "
    "depth and placement noise together), so that the end of a walk leans on the early, least drifted map. "
    "Dev rooms 1-10 against today's 2.82 object cm / 4.43 camera cm (drift_room_s24_r1to10.md): rate 0.008 m/m "
    "3.01 / 6.60, rate 0.004 3.34 / 6.62 (drift_room_mu0.008.md, drift_room_mu0.004.md). Room 8's final "
    "keyframe improved (7.15 -> 5.35 cm, object 7.09 -> 6.20), but down-weighted recent ground left fewer "
    "keyframes accepted (room 3: 63 -> 48 of 79) and rooms 3 and 7 ran off (camera 6.0 -> 10.4, 8.7 -> 26.7 "
    "cm): not kept, code not kept. The same day, refine_ratio 0.5 (21b654a) re-applied on today's code for dev "
    "rooms 1-10: camera 4.43 -> 3.97 cm, object 2.82 -> 2.98 (drift_room_s25_rr05.md): with the odometry prior "
    "its object gain is gone; not re-applied. Later the same day: the published map -> odom fused from the 3 "
    "newest accepted keyframes, each carried to now by odometry and weighted by 1 / (2.7 cm² + (2 % of the "
    "distance since)²) (drift_room_s26_bw3.md): object cm 2.82 -> 3.55 (room 8 7.09 -> 7.67): the newest "
    "placement alone stays, as the unweighted mean of 5 (4.42) had said; code not kept.")]


MIN_OBJECT_PX = 300


def object_errors(views: list[tuple[np.ndarray, np.ndarray, dict]], T_world_map: np.ndarray,
                  centres: dict[int, np.ndarray]) -> list[float]:
    """Per object (segmentation id -> true centre [3]): median over the keyframes (T_map_cam [4, 4],
    T_world_cam true [4, 4], pixel counts by id) that see it of where its centre lands (cm)."""
    out = []
    for sid, c in centres.items():
        errs = [100 * np.linalg.norm((T_world_map @ T @ np.linalg.inv(T_true) @ np.append(c, 1.0))[:3] - c)
                for T, T_true, px in views if px.get(sid, 0) >= MIN_OBJECT_PX]
        if errs:
            out.append(float(np.median(errs)))
    return out


def walk(family: str, seed: int, dt: float = 0.25, icp: dict | None = None, sensors: str = "realistic",
         pmap: dict | None = None, prior: dict | None = None, tracker: dict | None = None) -> dict:
    """Keyframe camera errors (cm, deg) of one walk, refinement off and on; icp and pmap override IcpConfig and
    PointMapConfig fields, tracker TrackerConfig's own; sensors names a SensorConfig (``realistic_nodrift``: odometry exact, so the error
    left is the tracker's own)."""
    pcfg = PipelineConfig()
    pcfg.tracking.map = dataclasses.replace(pcfg.tracking.map, **(pmap or {}))
    pcfg.tracking.icp = dataclasses.replace(pcfg.tracking.icp, **(icp or {}))
    pcfg.tracking = dataclasses.replace(pcfg.tracking, **(tracker or {}))
    if prior is not None:
        pcfg.tracking.prior = OdometryPrior(**prior)
    tracker = DriftTracker(pcfg.tracking)
    sel = {"off": KeyframeSelector(pcfg.keyframes), "on": KeyframeSelector(pcfg.keyframes)}
    err = {"off": [], "on": []}
    rot = {"off": [], "on": []}
    views: dict[str, list] = {"off": [], "on": []}
    icp_s: list[float] = []
    scene = resolve_scene(family, seed)
    names = {o.name for o in scene.objects}  # what queries ask for (not the table, walls, fixtures)
    with SimWorld(scene, seed=seed, sensors=SENSORS[sensors]()) as world:
        length = world.walk_length
        centres = {o.segmentation_id: np.asarray(o.aabb_center, float) for o in world.objects() if o.name in names}
        while not world.walk_done:
            world.advance(dt)
            f = world.render()
            if f.dropped:
                continue
            T_true = world.T_world_cam
            for mode in ("off", "on"):
                T_guess = f.T_odom_cam if mode == "off" else tracker.predict(f.T_odom_cam)
                if not sel[mode].consider(f.stamp, T_guess):
                    continue
                T = T_guess
                if mode == "on":
                    t0 = time.perf_counter()
                    T, _ = tracker.track(f.depth, f.K, f.T_odom_cam)  # uncut, as the pipeline hands it over
                    icp_s.append(time.perf_counter() - t0)
                err[mode].append(100 * np.linalg.norm(T[:3, 3] - T_true[:3, 3]))
                rot[mode].append(np.degrees(Rotation.from_matrix(T[:3, :3].T @ T_true[:3, :3]).magnitude()))
                ids, n = np.unique(f.segmentation[f.segmentation >= 0], return_counts=True)
                views[mode].append((T, T_true, dict(zip(ids.tolist(), n.tolist()))))
        T_world_odom = world.T_world_base @ np.linalg.inv(world.T_odom_base)
        obj = {"off": object_errors(views["off"], T_world_odom, centres),
               "on": object_errors(views["on"], T_world_odom @ np.linalg.inv(tracker.T_map_odom), centres)}
    return {"length": length, "err": err, "rot": rot, "obj": obj, "icp_ms": 1e3 * float(np.median(icp_s)),
            **tracker.stats()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="two_tables")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--icp", nargs="+", default=[], metavar="FIELD=JSON",
                    help="IcpConfig overrides for a dev study, e.g. max_normal_deg=45")
    ap.add_argument("--map", nargs="+", default=[], metavar="FIELD=JSON",
                    help="PointMapConfig overrides for a dev study")
    ap.add_argument("--prior", nargs="*", default=None, metavar="FIELD=JSON",
                    help="TrackerConfig.prior = OdometryPrior(FIELD=JSON ...) for a dev study (no fields: defaults)")
    ap.add_argument("--tracker", nargs="+", default=[], metavar="FIELD=JSON",
                    help="TrackerConfig fields for a dev study, e.g. refused_at='\"belief\"'")
    ap.add_argument("--sensors", default="realistic", choices=sorted(SENSORS),
                    help="realistic_nodrift / nodrift_exact_depth: odometry exact, so any error is the tracker's")
    ap.add_argument("--tag", default="", help="write results/drift_<family>_<tag>.md (dev studies)")
    args = ap.parse_args(argv)
    icp = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.icp)}
    pmap = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.map)}
    trk = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.tracker)}
    prior = None if args.prior is None else {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.prior)}
    if any(s >= 100 for s in args.seeds):
        ap.error("dev seeds only (< 100): seeds >= 100 are the evaluation's test scenes")
    rows, all_err, all_obj = [], {"off": [], "on": []}, {"off": [], "on": []}
    for seed in args.seeds:
        r = walk(args.family, seed, icp=icp, sensors=args.sensors, pmap=pmap, prior=prior, tracker=trk)
        for mode in ("off", "on"):
            e, a = np.array(r["err"][mode]), np.array(r["rot"][mode])
            o = np.array(r["obj"][mode])
            all_err[mode] += list(e)
            all_obj[mode] += list(o)
            rows.append([f"{args.family} {seed}", f"{r['length']:.1f}", mode, len(e), float(np.mean(e)),
                         float(np.percentile(e, 90)), float(e.max()), float(e[-1]), float(np.mean(a)), float(a.max()),
                         float(np.mean(o)), f"{int(np.sum(o <= 3))}/{len(o)}",
                         f"{r['accepted']}/{r['accepted'] + r['refused']}" if mode == "on" else "-",
                         f"{r['icp_ms']:.0f}" if mode == "on" else "-"])
    sections = machine_header() + [
        "", f"Keyframe camera pose against the truth, {args.sensors} sensors, dev seeds {args.seeds}; "
        "`off`: odometry, `on`: DriftTracker (depth-to-map ICP, defaults of PipelineConfig.tracking"
        + (f", IcpConfig overrides {icp}" if icp else "") + (f", PointMapConfig overrides {pmap}" if pmap else "")
        + ").", "",
        *table(["scene seed", "walk m", "refine", "keyframes", "mean cm", "p90 cm", "max cm", "final cm",
                "mean deg", "max deg", "object cm", "objects <= 3 cm", "ICP accepted", "ms / keyframe"], rows),
        *NOTES]
    off, on = float(np.mean(all_err["off"])), float(np.mean(all_err["on"]))
    name = f"drift_{args.family}" if args.family != "two_tables" or args.tag else "drift"
    write_report(f"{name}_{args.tag}" if args.tag else name, "Odometry drift: depth-to-map ICP",
                 sections, {"cam_err_cm_off": off, "cam_err_cm_on": on,
                            "object_cm_off": float(np.mean(all_obj["off"])), "object_cm_on": float(np.mean(all_obj["on"]))})
    return 0


if __name__ == "__main__":
    sys.exit(main())

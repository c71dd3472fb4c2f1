"""One evaluation run: walk a generated scene with chosen sensors, build the M3 memory and the
voxel baseline from the same frames, then ground every phrasing with every method, execute
grasps in the simulator and measure relevance IoU, timing and memory use.

The memory sees only what the robot sees: noisy depth, drifting odometry, the detector's
labels. The truth (object boxes, true poses) is used only to judge. M3 answers live in the
memory's ``map`` frame (odometry refined by ICP, PipelineConfig.refine_poses), ``voxel_labels`` in
odom (raw odometry poses) and ``voxel_labels_map`` in map (the same refined keyframe poses as the
memory, so drift does not separate it from M3); all are judged in the world through the robot's *current* odometry error and, for
M3, its map -> odom estimate (``T_world_map = T_world_base_true @ inv(T_odom_base) @
inv(T_map_odom)``), i.e. where the robot would reach for them from where it stands. Each answer is
also judged where the robot last saw its target (``success_local``, metrics.local_alignments): a
diagnostic that separates the method's errors from the bending of a map built without loop closure.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from m3_ros.baselines.voxel_labels import VoxelLabelMap
from m3_ros.eval.metrics import Box, judge, judge_local, local_alignments, otsu_iou
from m3_ros.eval.phrasings import Query, absent_queries, scene_queries
from m3_ros.geometry import invert, transform_points
from m3_ros.grasp import GraspConfig, plan_grasp
from m3_ros.grounding import GroundingConfig
from m3_ros.pipeline import MemoryPipeline
from m3_ros.grounding.live import step_back_to_see
from m3_ros.sim.generate import resolve_scene, robot_pose_clear
from m3_ros.sim.sensors import SensorConfig
from m3_ros.sim.world import SimWorld

log = logging.getLogger(__name__)

CLOUD_MIN_OPACITY = 0.3  # the memory node's cloud_min_opacity default: what the grasp planner sees


@dataclass
class RunConfig:
    """One scene, one sensor condition."""

    family: str
    """Scene family (or scene name / YAML path)."""
    seed: int
    """Layout and sensor seed."""
    sensors: str = "realistic"
    """``ideal`` or ``realistic``."""
    m3_modes: list[str] = field(default_factory=lambda: ["gaussians", "render"])
    """M3 grounding modes to evaluate."""
    m3_variants: dict = field(default_factory=dict)
    """Extra M3 methods, name -> GroundingConfig (dev sweeps: bench/dev_sweep.py); reported as m3_<name>."""
    voxel: bool = True
    """Also evaluate the labelled voxel map."""
    splits: tuple[str, ...] = ("dev", "test")
    """Phrasing splits to ask."""
    absent: int = 0
    """Phrasings of objects the scene does not hold (phrasings.absent_queries) asked per split, evenly
    spaced over them; each method should refuse them (RunResult.absent). 0 = none."""
    frame_dt: float = 0.25
    """Sim seconds between camera frames (config/sim.yaml's 4 Hz camera)."""
    train_steps_per_frame: int = 2
    """Train steps after each camera frame (a step count, not wall time: every run and method
    gets the same training whatever the machine's load; ~a robot's rate, 4 Hz camera and
    ~8 train steps/s)."""
    extra_train_steps: int = 100
    """Train steps after the walk, before the final queries."""
    grasps: int = 3
    """Grasp trials on reachable targets (0 = none)."""
    grasp_look: bool = True
    """Before grounding a grasp target, stand at the grasp pose and stream frames until one becomes a
    keyframe, as a robot does: the memory node ingests all along and the grasp planner node maps with
    the newest map -> odom, which then holds that view's ICP. False: plan with the end-of-walk
    map -> odom carried by odometry (the suite before 2026-12-06; results/dev_grasp_rules.md)."""
    grasp_live: bool = True
    """After grounding (and looking), find the answer again in the current view and plan on that view's
    depth (MemoryPipeline.refine_in_view, grounding/live.py); where it is not found, plan on the memory as
    without it. Needs grasp_look (the view is the look's). On by results/dev_grasp_rules.md round 5
    (decision walks, seeds 7-9: 27 of 45 grasps against 24)."""
    grasp_step_back: bool = False
    """Where the memory's answer is not in the camera's view from the grasp pose (a floor object below
    the head camera's frame), look from a step back (grounding.live.step_back_to_see), then step in to
    grasp. Needs grasp_look. Off by results/dev_grasp_rules.md round 6: on development walks (seeds 1-3,
    paired) it lifted 42 of 53 against 41 (5 fixed, 4 broken; the rule asked for +3)."""
    grasp_split: str = "test"
    """Phrasing split the grasp trials ask with (dev studies: bench/dev_grasp.py asks dev phrasings)."""
    keep_grasp_inputs: bool = False
    """Keep what each grasp was planned from (RunResult.grasp_inputs), so planner variants can be
    executed again on the same memory (bench/dev_grasp.py)."""
    iou_views: int = 4
    """Held-out views for the relevance IoU."""
    keep_frames: int = 0
    """Held-out frames returned to the caller (for feature fidelity)."""
    probe_period_s: float = 2.0
    """Wall seconds between the probe queries asked while the walk trains."""


@dataclass
class RunResult:
    """Everything one run measured."""

    family: str
    sensors: str
    seed: int
    queries: list[dict] = field(default_factory=list)
    absent: list[dict] = field(default_factory=list)  # {"method", "split", "kind", "query", "refused", ...}
    grasps: list[dict] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    probe: list[dict] = field(default_factory=list)  # {"t_s", "error_m", "ms"} asked while training
    keyframe_ms: list[float] = field(default_factory=list)
    first_correct_s: float = float("nan")
    stats: dict = field(default_factory=dict)
    walk: dict = field(default_factory=dict)
    example: dict = field(default_factory=dict)  # an rgb frame + relevance map for the report
    held_out: list = field(default_factory=list)  # SimFrames not used as keyframes
    grasp_inputs: list[dict] = field(default_factory=list)  # per grasp: target, cloud, T_world_map (keep_grasp_inputs)


_NO_LIMIT_S = 3600.0  # train_for's time budget when a step count is the limit


def world_boxes(world: SimWorld) -> list[Box]:
    """The scene objects' true boxes now (judging only)."""
    return [Box(o.name, np.asarray(o.aabb_center, float), np.asarray(o.aabb_size, float))
            for o in world.objects()]


def world_from_map(world: SimWorld, pipe: MemoryPipeline) -> np.ndarray:
    """map -> world [4, 4]: the memory's map frame through its map -> odom estimate, then odom
    through the robot's current odometry error (what a user of the answer would act on)."""
    T_world_odom = world.T_world_base @ invert(world.T_odom_base)
    return T_world_odom @ invert(pipe.T_map_odom)


def to_world(world: SimWorld, pipe: MemoryPipeline, p_map: np.ndarray) -> np.ndarray:
    """Map answers [.., 3] in the memory's frame (map) to the world (see world_from_map)."""
    return transform_points(world_from_map(world, pipe), np.atleast_2d(p_map))


class _Prober(threading.Thread):
    """Asks one query every period while the walk trains; records latency and error."""

    def __init__(self, pipe: MemoryPipeline, world: SimWorld, query: Query, period: float) -> None:
        super().__init__(daemon=True)
        self.pipe, self.world, self.query, self.period = pipe, world, query, period
        self.records: list[dict] = []
        self.stop = threading.Event()
        self.boxes: list[Box] = []

    def run(self) -> None:
        while not self.stop.wait(self.period):
            t_first = self.pipe.first_keyframe_wall
            if t_first is None or self.pipe.memory is None or self.pipe.memory.n_gaussians == 0:
                continue
            t0 = time.perf_counter()
            try:
                res = self.pipe.ground(self.query.text)
            except ValueError:
                continue
            ms = (time.perf_counter() - t0) * 1e3
            t_s = time.monotonic() - t_first
            # the world is read from this thread only for judging: poses are plain arrays
            pt = to_world(self.world, self.pipe, res.points[0])[0]
            j = judge(pt, self.query.targets, self.boxes)
            self.records.append({"t_s": t_s, "error_m": j.error_m, "ok": j.success, "ms": ms})


def _offset(pt: np.ndarray | None, targets: list[str], boxes: list[Box]) -> dict:
    """{"offset_cm": answer - the nearest target's centre (world x, y, z), "target_size_cm": its box},
    empty without an answer: which way near misses lean."""
    if pt is None or not np.all(np.isfinite(pt)):
        return {}
    box = min((b for b in boxes if b.name in targets), key=lambda b: float(np.linalg.norm(pt - b.centre)))
    return {"offset_cm": [round(100 * float(v), 2) for v in pt - box.centre],
            "target_size_cm": [round(100 * float(v), 2) for v in box.size]}


def run_scene(rc: RunConfig, pipe: MemoryPipeline) -> RunResult:
    """Walk, train and evaluate one scene; ``pipe`` is loaded and empty (it is reset first)."""
    pipe.reset()
    scene = resolve_scene(rc.family, rc.seed)
    sensors = SensorConfig.resolve(rc.sensors)
    out = RunResult(rc.family, sensors.name, rc.seed)
    vmap = VoxelLabelMap() if rc.voxel else None
    # the same baseline on the keyframe poses the memory gets (ICP-refined, in map): drift is then
    # not what separates the two
    vmap_map = VoxelLabelMap() if rc.voxel and pipe.cfg.refine_poses else None
    text = pipe.text_model
    with SimWorld(scene, seed=rc.seed, sensors=sensors) as world:
        world.advance(0.0)
        boxes = world_boxes(world)
        queries = {s: scene_queries(scene, s) for s in rc.splits}
        probe_q = next(iter(queries.get("dev") or queries[rc.splits[0]]))
        prober = _Prober(pipe, world, probe_q, rc.probe_period_s)
        prober.boxes = boxes
        prober.start()
        t0, frames, taken_n, dropped = time.monotonic(), 0, 0, 0
        held: list = []
        last = None  # the newest frame the robot received: view mode answers from its camera
        truth: dict = {}  # stamp -> true T_world_cam of every frame received (judging only)
        odom_views: list = []  # the voxel map's keyframes: (T_odom_cam, true T_world_cam, K, (H, W))
        try:
            while not world.walk_done:
                world.advance(rc.frame_dt)
                f = world.render()
                frames += 1
                if f.dropped:
                    dropped += 1
                    continue
                last = f
                truth[f.stamp] = f.T_world_cam
                inst = world.oracle_instances(f)
                tk = time.perf_counter()
                taken = pipe.offer_frame(f.stamp, f.rgb, f.depth, f.K, f.T_odom_cam, inst)
                if taken:
                    taken_n += 1
                    odom_views.append((f.T_odom_cam, f.T_world_cam, f.K, f.depth.shape))
                    if vmap is not None:  # the same frame, clipped as the memory clips it
                        d = np.where(f.depth <= pipe.cfg.max_depth, f.depth, 0.0)
                        vmap.integrate(d, f.K, f.T_odom_cam, inst)
                        if vmap_map is not None:  # T_map_odom now agrees with this keyframe's placement
                            vmap_map.integrate(d, f.K, pipe.T_map_odom @ f.T_odom_cam, inst)
                elif frames % 4 == 2:
                    held.append(f)
                # wait for each keyframe (ingested, untrained): every run holds the same keyframes
                # and takes the same steps, whatever the machine load
                while taken and not pipe.idle():
                    time.sleep(0.005)
                    pipe.train_for(0.0, max_steps=0)
                if taken:
                    out.keyframe_ms.append((time.perf_counter() - tk) * 1e3)
                pipe.train_for(_NO_LIMIT_S, max_steps=rc.train_steps_per_frame)
            while not pipe.idle():
                time.sleep(0.005)
                pipe.train_for(0.0, max_steps=0)
            pipe.train_for(_NO_LIMIT_S, max_steps=rc.extra_train_steps)
        finally:
            prober.stop.set()
            prober.join()
        out.walk = {"frames": frames, "keyframes_offered": taken_n, "dropped": dropped,
                    "wall_s": time.monotonic() - t0, "walk_m": float(world.walk_length)}
        out.probe = prober.records
        ok_t = [r["t_s"] for r in prober.records if r["ok"]]
        out.first_correct_s = float(min(ok_t)) if ok_t else float("nan")
        out.stats = pipe.stats()
        boxes = world_boxes(world)
        seg = {o.name: o.segmentation_id for o in world.objects()}
        in_view = {n: last is not None and int(np.count_nonzero(last.segmentation == i)) >= 50 for n, i in seg.items()}
        # each target also judged where the robot last saw it (metrics.local_alignments): odom for the
        # voxel map on odometry, the memory's keyframe placements for the others
        local = {"map": local_alignments(keyframe_views(pipe, truth), boxes, pipe.cfg.max_depth),
                 "odom": local_alignments(odom_views, boxes, pipe.cfg.max_depth)}

        variants = {f"m3_{m}": GroundingConfig(mode=m) for m in rc.m3_modes}
        variants.update({f"m3_{k}": v for k, v in rc.m3_variants.items()})
        methods = list(variants) + (["voxel_labels"] if vmap is not None else []) + \
            (["voxel_labels_map"] if vmap_map is not None else [])
        for split, qs in queries.items():
            for q in qs:
                emb = text.encode_text([q.text])[0] if vmap is not None else None
                for method in methods:
                    tq = time.perf_counter()
                    p, T_world_frame = _answer(method, q.text, emb, world, pipe, vmap, vmap_map, variants)
                    ms = (time.perf_counter() - tq) * 1e3
                    pt = None if p is None else transform_points(T_world_frame, np.atleast_2d(p))[0]
                    j = judge(pt, q.targets, boxes)
                    where = local["odom" if method == "voxel_labels" else "map"]
                    out.queries.append({"family": rc.family, "sensors": sensors.name, "seed": rc.seed,
                                        "method": method, "split": split, "kind": q.kind, "object": q.targets[0],
                                        "query": q.text, "error_cm": 100 * j.error_m, "success": j.success,
                                        "wrong_object": j.wrong_object, "hit": j.hit, "ms": ms,
                                        "success_local": judge_local(p, q.targets, boxes, where, T_world_frame),
                                        "in_view": any(in_view.get(t, False) for t in q.targets),
                                        **_offset(pt, q.targets, boxes)})
            if rc.absent > 0:
                _ask_absent(out, world, pipe, vmap, vmap_map, variants, methods, scene, split, rc.absent)
        pipe.cfg.grounding = GroundingConfig()

        _relevance_iou(out, pipe, world, held, queries, rc.iou_views)
        out.held_out = held[: rc.keep_frames]
        if rc.grasps > 0:
            _grasps(out, pipe, world, scene, queries, rc)
    return out


def keyframe_views(pipe: MemoryPipeline, truth: dict) -> list:
    """The memory's keyframes as metrics.local_alignments views: (T_map_cam, true T_world_cam, K, (H, W)),
    the true pose looked up by stamp in truth {stamp: T_world_cam}."""
    return [(kf.T_world_cam, truth[kf.stamp], kf.K, kf.size) for kf in pipe.memory.keyframes if kf.stamp in truth]


def _answer(method: str, query: str, emb, world: SimWorld, pipe: MemoryPipeline, vmap, vmap_map,
            variants: dict) -> tuple[np.ndarray | None, np.ndarray]:
    """One method's answer to ``query`` in its own frame [3] (None when it refused) and that frame -> world
    [4, 4] at query time (odom for the voxel map on odometry, map for the others)."""
    text = pipe.text_model
    T_world_odom = world.T_world_base @ invert(world.T_odom_base)
    T_world_frame = T_world_odom if method == "voxel_labels" else world_from_map(world, pipe)
    try:
        if method == "voxel_labels":  # built on odometry poses: it answers in odom
            return vmap.ground(emb, text.encode_labels).points[0], T_world_frame
        if method == "voxel_labels_map":
            return vmap_map.ground(emb, text.encode_labels).points[0], T_world_frame
        pipe.cfg.grounding = variants[method]
        return pipe.ground(query).points[0], T_world_frame
    except ValueError as e:
        log.info("%s: %r: no answer (%s)", method, query, e)
        return None, T_world_frame


def _ask_absent(out: RunResult, world: SimWorld, pipe: MemoryPipeline, vmap, vmap_map, variants: dict,
                methods: list[str], scene, split: str, n: int) -> None:
    """Ask up to n phrasings of absent objects with every method; a refusal is the right answer."""
    for q in absent_queries(scene, split, n):
        emb = pipe.text_model.encode_text([q.text])[0] if vmap is not None else None
        for method in methods:
            refused = _answer(method, q.text, emb, world, pipe, vmap, vmap_map, variants)[0] is None
            out.absent.append({"family": out.family, "sensors": out.sensors, "seed": out.seed, "method": method,
                               "split": split, "kind": q.kind, "query": q.text, "refused": refused})


def _relevance_iou(out: RunResult, pipe: MemoryPipeline, world: SimWorld, held: list,
                   queries: dict, n_views: int) -> None:
    """The paper's 2D metric: IoU of the Otsu-thresholded relevance with the simulator's mask."""
    by_obj: dict[str, Query] = {}
    for q in queries.get("test") or next(iter(queries.values())):
        if len(q.targets) == 1:
            by_obj.setdefault(q.targets[0], q)
    seg = {o.name: o.segmentation_id for o in world.objects()}
    step = max(1, len(held) // max(1, n_views))
    for f in held[::step][:n_views]:
        for name, q in by_obj.items():
            mask = f.segmentation == seg[name]
            if mask.sum() < 300:  # too small to judge a 2D overlap
                continue
            T_map_cam = pipe.T_map_odom @ f.T_odom_cam  # the held-out view where the memory puts it
            rel = pipe.relevance_map(q.text, T_map_cam, f.K, f.rgb.shape[1], f.rgb.shape[0])
            out.ious.append(otsu_iou(rel, mask))
            if not out.example or mask.sum() > out.example["pixels"]:
                out.example = {"rgb": f.rgb, "relevance": rel, "query": q.text, "pixels": int(mask.sum())}


def offer_and_wait(pipe: MemoryPipeline, world: SimWorld, f) -> bool:
    """Offer one simulator frame (with the oracle detector's instances); if it became a keyframe, wait
    until it is ingested, so every run holds the same keyframes whatever the machine's load. True if taken."""
    taken = pipe.offer_frame(f.stamp, f.rgb, f.depth, f.K, f.T_odom_cam, world.oracle_instances(f))
    while taken and not pipe.idle():
        time.sleep(0.005)
        pipe.train_for(0.0, max_steps=0)
    return taken


def _look(pipe: MemoryPipeline, world: SimWorld, frames: int = 3) -> bool:
    """Stand still and stream camera frames, as the memory node ingests them between arriving and
    grasping: a keyframe among them re-localises the robot against the map (ICP), and all of them are
    the views refine_in_view looks in. True if one became a keyframe. (Before 2026-12-07 the look
    stopped at its first keyframe; refine_in_view wants the frames a detector may miss an object in.)"""
    taken = False
    for _ in range(frames):
        world.advance(0.5)  # longer than the keyframe selector's min_interval
        f = world.render()
        if not f.dropped:
            taken |= offer_and_wait(pipe, world, f)
    return taken


def _step_back(pipe: MemoryPipeline, world: SimWorld, scene, base: tuple, text: str) -> float:
    """Where the memory's answer to text is out of the camera's view from base (x, y, yaw; world),
    stand back as far as step_back_to_see says, if the robot is clear of the scene there. The step (m),
    0 where the robot stays."""
    try:
        answer = pipe.ground(text).points[0]
    except ValueError:  # refused: nothing to look for
        return 0.0
    cam = scene.camera
    s = step_back_to_see(answer, pipe.T_map_odom @ world.T_odom_base, world.T_base_cam, world.K,
                         (cam.width, cam.height), pipe.cfg.live)
    if not s:  # seen from here (0.0), or from no step (None)
        return 0.0
    x, y, yaw = (float(a) for a in base)
    pose = np.array([x - s * np.cos(yaw), y - s * np.sin(yaw), yaw])
    if not robot_pose_clear(scene, pose):
        return 0.0
    world.teleport_base(pose)
    return s


def _icp_summary(pipe: MemoryPipeline) -> dict | None:
    """The newest keyframe's ICP result (dev diagnostics), None without pose refinement."""
    last = pipe.tracker.last if pipe.cfg.refine_poses else None
    if last is None:
        return None
    return {"accepted": last.accepted, "reason": last.reason, "cm": 100 * last.translation_m,
            "deg": last.rotation_deg, "overlap": last.overlap, "conditioning": last.conditioning}


def _grasps(out: RunResult, pipe: MemoryPipeline, world: SimWorld, scene, queries: dict, rc: RunConfig) -> None:
    """Stand where the target is in reach, (look,) ground, plan on the memory's points, execute.

    With ``rc.keep_grasp_inputs`` every trial is also planned both ways for bench/dev_grasp.py: a blind
    pass first (the end-of-walk map -> odom carried by odometry), then a pass that looks first; the
    live outcomes are those of ``rc.grasp_look``."""
    phr = {q.targets[0]: q for q in (queries.get(rc.grasp_split) or []) if len(q.targets) == 1}
    reach = [o for o in scene.objects if getattr(o, "reachable", True) and getattr(o, "grasp_base", None)
             is not None and o.name in phr][:rc.grasps]
    passes = [False, True] if rc.keep_grasp_inputs else [rc.grasp_look]
    for look in passes:
        for o in reach:
            state = world.save_state()
            rec = {"family": out.family, "sensors": out.sensors, "object": o.name, "query": phr[o.name].text,
                   "looked": False}
            try:
                world.teleport_base(o.grasp_base)
                if look:
                    back = _step_back(pipe, world, scene, o.grasp_base, phr[o.name].text) if rc.grasp_step_back else 0.0
                    rec["looked"] = _look(pipe, world)
                    if back:
                        world.teleport_base(o.grasp_base)  # step in; odometry carries the view to here
                    rec["step_back_m"] = back
                res = pipe.ground(phr[o.name].text)
                mem = pipe.memory
                keep = mem.opacities.detach().cpu().numpy() >= CLOUD_MIN_OPACITY
                cloud = mem.means.detach().cpu().numpy()[keep]
                base_map = (pipe.T_map_odom @ world.T_odom_base)[:3, 3]
                T_world_map = world_from_map(world, pipe)
                found, why = pipe.refine_in_view(res.points[0]) if look else (None, "")
                if rc.keep_grasp_inputs:
                    out.grasp_inputs.append({"object": o.name, "query": phr[o.name].text, "look": look,
                                             "looked": rec["looked"], "target": res.points[0], "cloud": cloud,
                                             "viewpoint": base_map, "T_world_map": T_world_map,
                                             "grasp_base": np.asarray(o.grasp_base, float),
                                             "icp": _icp_summary(pipe) if rec["looked"] else None,
                                             "live": None if found is None else {
                                                 "target": found.point, "cloud": found.cloud(pipe.cfg.live), "label": found.label,
                                                 "similarity": found.similarity, "moved_cm": 100 * found.moved_m},
                                             "live_why": why, "views": pipe.live_views() if look else [],
                                             "answer_feature": pipe.feature_at(res.points[0]) if look else None})
                if look != rc.grasp_look:
                    continue
                target = res.points[0]
                if rc.grasp_live and found is not None:  # plan on what the camera sees now
                    target, cloud = found.point, found.cloud(pipe.cfg.live)
                rec["in_view"] = why
                plan = plan_grasp(target, cloud, GraspConfig(), viewpoint=base_map)
                outcome = world.execute_grasp(T_world_map @ plan.T_world_tcp)
                rec.update(success=bool(outcome.success and outcome.object == o.name), lifted=outcome.object,
                           message=outcome.message, approach=plan.approach)
            except ValueError as e:
                rec.update(success=False, lifted="", message=f"no plan: {e}", approach="")
            finally:
                world.restore_state(state)
            if look == rc.grasp_look:
                out.grasps.append(rec)

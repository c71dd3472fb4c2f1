"""``m3-ros``: record a simulator bag, build a memory from a bag, query, render and inspect it.

    m3-ros record-sim --scene NAME|PATH [--seed N] [--sensors ideal|realistic] --out BAG
    m3-ros build --bag BAG [--topics KEY=TOPIC ...] --out DIR
    m3-ros query DIR "text" [--top-k K] [--json] [--png FILE]
    m3-ros render DIR --pose x y z qx qy qz qw [--out PNG]
    m3-ros info DIR [--json]

Thin over ``m3_ros.sim.world.SimWorld`` and ``m3_ros.pipeline.MemoryPipeline``; bags are
read and written with ``rosbags`` (no ROS install needed). Every failure ends with one line
``m3-ros: error: ...`` on stderr and exit status 2 (1 for an unexpected internal error,
130 when interrupted), never a traceback; ``M3_ROS_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("m3_ros.cli")

MAX_QUERY_CHARS = 512
SCENE_FAMILIES = ("table", "two_tables", "room")
DEFAULT_MODELS = ["clip", "dinov2_s", "minilm_labels"]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


# ---- scenes and the simulator ------------------------------------------------------------------
def resolve_scene(scene: str, seed: int):
    """A SceneConfig for a family name, a scene name or a YAML path.

    Uses ``m3_ros.sim.generate.resolve_scene`` where that module exists; without it, a family
    name is an error (never silently another scene) and names/paths go to ``load_scene``.
    """
    try:
        generate = importlib.import_module("m3_ros.sim.generate")
    except ModuleNotFoundError as e:
        if e.name != "m3_ros.sim.generate":
            raise
        generate = None
    if generate is not None:
        return generate.resolve_scene(scene, seed=seed)
    if scene in SCENE_FAMILIES:
        raise CliError(f"scene family {scene!r} needs the scene generator m3_ros/sim/generate.py, "
                       "which this checkout does not have; pass a scene YAML path instead")
    from m3_ros.sim.scene import load_scene
    return load_scene(scene)


def open_world(scene_cfg, seed: int, sensors: str):
    from m3_ros.sim.world import SimWorld
    if "sensors" in inspect.signature(SimWorld).parameters:
        return SimWorld(scene_cfg, seed=seed, sensors=sensors)
    if sensors != "ideal":
        raise CliError(f"--sensors {sensors} needs SimWorld(sensors=...), which this checkout's "
                       "m3_ros/sim/world.py does not have; use --sensors ideal")
    return SimWorld(scene_cfg, seed=seed)


def cmd_record_sim(a: argparse.Namespace) -> int:
    from m3_ros.cli.bag import BagWriter, parse_topics

    out = Path(a.out)
    if out.exists():
        raise CliError(f"{out} exists already; rosbag2 directories are never overwritten")
    if a.rate <= 0 or a.clock_rate <= 0:
        raise CliError(f"--rate and --clock-rate must be > 0, got {a.rate}, {a.clock_rate}")
    topics = parse_topics(a.topics)
    scene = resolve_scene(a.scene, a.seed)
    if a.width:
        scene.camera.width = a.width
    if a.height:
        scene.camera.height = a.height
    odom_f, base_f, cam_f = "odom", "base_link", "camera_color_optical_frame"
    n_frames = dropped = 0
    with _stdout_to_stderr(), open_world(scene, a.seed, a.sensors) as world, BagWriter(out, topics, a.storage) as bag:
        m = bag.msgs
        t0 = world.time
        mount = m.transform(t0, base_f, cam_f, world.T_base_cam)
        bag.write("tf_static", t0, m.tf_message([mount]))
        bag.write("mount", t0, mount)
        next_frame = t0
        end = t0 + world.walk_duration + a.linger
        while world.time <= end and (a.max_frames <= 0 or n_frames < a.max_frames):
            t = world.time
            T_odom_base = world.T_odom_base  # what the (possibly drifting) odometry reports
            lin, ang = world.base_velocity()
            bag.write("clock", t, m.clock(t))
            bag.write("odom", t, m.odometry(t, odom_f, base_f, T_odom_base, lin, ang))
            bag.write("tf", t, m.tf_message([m.transform(t, odom_f, base_f, T_odom_base)]))
            if t + 1e-9 >= next_frame:
                next_frame += 1.0 / a.rate
                frame = world.render()
                if getattr(frame, "dropped", False):  # a realistic camera lost this frame
                    dropped += 1
                else:
                    bag.write("color", t, m.image(t, cam_f, frame.rgb, "rgb8"))
                    if a.depth_encoding == "32FC1":
                        bag.write("depth", t, m.image(t, cam_f, frame.depth.astype("<f4"), "32FC1"))
                    else:
                        mm = np.clip(np.round(frame.depth * 1000.0), 0, 65535).astype("<u2")
                        bag.write("depth", t, m.image(t, cam_f, mm, "16UC1"))
                    bag.write("camera_info", t, m.camera_info(t, cam_f, frame.K, frame.rgb.shape[1],
                                                              frame.rgb.shape[0]))
                    bag.write("instances", t, m.instances(t, cam_f, world.oracle_instances(frame)))
                    n_frames += 1
            world.advance(1.0 / a.clock_rate)
        truth = {"frame_id": odom_f,
                 "objects": [{"name": o.name, "description": o.description,
                              "centre": [float(x) for x in o.aabb_center]} for o in world.objects()]}
    _write_json_atomic(out / "ground_truth.json", truth)
    print(f"recorded {n_frames} frames ({dropped} dropped by the sensor model) of scene {scene.name!r} "
          f"seed {a.seed} to {out}")
    return 0


def _write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- building a memory from a bag ----------------------------------------------------------------
@contextlib.contextmanager
def _stdout_to_stderr():
    """Model loading and pybullet print, from Python and from C; keep stdout for the command's own output."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _pipeline(models: list[str]):
    from m3_ros.grounding import GroundingConfig
    from m3_ros.pipeline import MemoryPipeline, PipelineConfig
    from m3_ros.stream import KeyframeSelectorConfig
    cfg = PipelineConfig(models=list(models), grounding=GroundingConfig(max_query_chars=MAX_QUERY_CHARS),
                         keyframes=KeyframeSelectorConfig())
    pipe = MemoryPipeline(cfg)
    with _stdout_to_stderr():
        try:
            pipe.load()
        except Exception as e:
            raise CliError(f"could not load the foundation models {models}: {pipe.load_error or e}") from e
    return pipe


def _wait_extracted(pipe, timeout: float = 300.0) -> None:
    """Move every keyframe through feature extraction into the memory (train_for with 0 steps ingests)."""
    deadline = time.monotonic() + timeout
    while not pipe.idle():
        pipe.train_for(0.0, max_steps=0)
        if time.monotonic() > deadline:
            raise CliError("feature extraction did not finish within 300 s")
        time.sleep(0.005)
    pipe.train_for(0.0, max_steps=0)


def _camera_mount(a, reader, static, mount_msg, base_frame: str, cam_frame: str) -> np.ndarray:
    from m3_ros.geometry import pose_to_matrix
    from m3_ros.nodes import convert
    if a.camera_mount:
        return pose_to_matrix(a.camera_mount[:3], a.camera_mount[3:])
    if mount_msg is not None:
        return convert.transform_msg_to_matrix(mount_msg.transform, "camera mount")
    T = static.lookup(base_frame, cam_frame)
    if T is None:
        raise CliError(f"no camera mount: the bag has no {reader.topics['mount']!r} message and "
                       f"{reader.topics['tf_static']!r} does not connect {base_frame!r} to {cam_frame!r}; "
                       "pass --camera-mount x y z qx qy qz qw (base_link -> camera optical frame)")
    return T


def cmd_build(a: argparse.Namespace) -> int:
    from m3_ros.cli.bag import BagReader, nearest_odom, parse_topics, stamp_sec

    bag_path, out = Path(a.bag).resolve(), Path(a.out)
    topics = parse_topics(a.topics)
    reader = BagReader(bag_path, topics)  # a bag without the needed topics fails here, before torch loads
    reader.close()
    from tqdm import tqdm

    from m3_ros.memory import checkpoint
    from m3_ros.nodes import convert
    resume = None
    if out.exists():
        try:
            meta = checkpoint.read_meta(out)
        except checkpoint.CheckpointError as e:
            if out.is_dir() and not any(out.iterdir()):
                meta = None
            else:
                raise CliError(f"--out {out} exists and is not a memory this command can resume ({e})") from e
        if meta is not None:
            b = meta.get("extra", {}).get("build")
            if not b:
                raise CliError(f"--out {out} holds a memory that was not built by 'm3-ros build'; choose another --out")
            if b.get("bag") != str(bag_path):
                raise CliError(f"--out {out} holds a memory built from {b.get('bag')}, not {bag_path}; "
                               "choose another --out")
            if b.get("complete"):
                print(f"{out} is already built from {bag_path} ({b.get('keyframes')} keyframes); nothing to do")
                return 0
            resume = meta["extra"]
    reader = BagReader(bag_path, topics)
    try:
        odom, infos, static, mount_msg = reader.side_streams()
        if not odom:
            raise CliError(f"bag has no odometry messages on {topics['odom']!r}; remap with --topics odom=TOPIC")
        odom.sort(key=lambda o: stamp_sec(o.header.stamp))
        odom_t = np.array([stamp_sec(o.header.stamp) for o in odom])
        K, info = None, None
        for msg in infos:
            try:
                K, info = convert.intrinsics_from_camera_info(msg), msg
                break
            except ValueError as e:
                last_info_error = e
        if K is None:
            why = f" (the last one: {last_info_error})" if infos else ""
            raise CliError(f"no usable camera_info on {topics['camera_info']!r}{why}")
        base_frame = odom[0].child_frame_id.lstrip("/") or "base_link"
        cam_frame = info.header.frame_id.lstrip("/")
        T_base_cam = _camera_mount(a, reader, static, mount_msg, base_frame, cam_frame)
        n_total = reader.count("color")
        models = resume["build"]["models"] if resume else list(a.models)
        pipe = _pipeline(models)
        start, views, n_kf = 0, [], 0
        skipped: dict[str, int] = {}
        if resume:
            pipe.load_memory(str(out))
            start, views, n_kf = resume["build"]["next_frame"], resume["views"], resume["build"]["keyframes"]
            skipped = dict(resume.get("skipped", {}))
            print(f"resuming {out} from frame {start}/{n_total} ({n_kf} keyframes so far)", file=sys.stderr)
        camera = {"K": K.tolist(), "width": int(info.width), "height": int(info.height), "frame_id": cam_frame}

        def save(next_frame: int, complete: bool) -> None:
            extra = {"build": {"bag": str(bag_path), "topics": topics, "models": models, "next_frame": next_frame,
                               "frames": n_total, "keyframes": n_kf, "complete": complete,
                               "steps_per_keyframe": a.steps_per_keyframe, "final_steps": a.final_steps},
                     "camera": camera, "views": views, "skipped": skipped}
            checkpoint.save_memory(pipe.memory, out, extra)

        bar = tqdm(total=n_total, initial=start, unit="frame", desc="build", file=sys.stderr,
                   disable=a.quiet, dynamic_ncols=True)
        next_frame, since_ckpt = start, 0
        try:
            for fr in reader.frames(slop=a.slop, start=start):
                bar.update(fr.index + 1 - next_frame)
                next_frame = fr.index + 1
                if a.max_frames and fr.index >= a.max_frames:
                    break
                try:
                    od = nearest_odom(odom, odom_t, fr.stamp, a.slop)
                    if od is None:
                        raise ValueError(f"odometry: no odometry within {a.slop} s of the frame at {fr.stamp:.3f}")
                    rgb = convert.rgb_from_image(fr.color)
                    convert.check_camera_info_size(info, rgb.shape[:2])
                    depth = convert.depth_from_image(fr.depth)
                    if depth.shape != rgb.shape[:2]:
                        raise ValueError(f"image size: colour {rgb.shape[:2]} and depth {depth.shape} differ in size")
                    T_odom_cam = convert.pose_msg_to_matrix(od.pose.pose) @ T_base_cam
                    inst = convert.instances_from_msg(fr.instances, rgb.shape[:2]) if fr.instances else []
                    took = pipe.offer_frame(fr.stamp, rgb, depth, K, T_odom_cam, inst)
                except ValueError as e:
                    cause = str(e).split(":")[0][:40]
                    if cause not in skipped:
                        bar.write(f"m3-ros: warning: skipping frames: {e}", file=sys.stderr)
                    skipped[cause] = skipped.get(cause, 0) + 1
                    continue
                if not took:
                    continue
                _wait_extracted(pipe)
                pipe.train_for(1e9, max_steps=a.steps_per_keyframe)
                n_kf += 1
                views.append((pipe.T_map_odom @ T_odom_cam).tolist())  # the keyframe's pose in the memory (map)
                since_ckpt += 1
                bar.set_postfix(keyframes=n_kf, gaussians=pipe.memory.n_gaussians)
                if since_ckpt >= a.checkpoint_every:
                    save(next_frame, complete=False)
                    since_ckpt = 0
            _wait_extracted(pipe)
            if pipe.memory.n_gaussians == 0:
                raise CliError(f"no keyframe could be built from {bag_path} (skipped: {skipped or 'none'})")
            pipe.train_for(1e9, max_steps=a.final_steps)
            save(next_frame, complete=True)
        except KeyboardInterrupt:
            if pipe.memory is not None and pipe.memory.n_gaussians > 0:
                save(next_frame, complete=False)
            bar.close()
            raise CliError(f"interrupted at frame {next_frame}/{n_total}; run the same command again to resume") from None
        finally:
            bar.close()
            pipe.close()
    finally:
        reader.close()
    s = pipe.stats()
    print(f"built {out}: {n_kf} keyframes, {s['gaussians']} Gaussians, bank rows {s['bank_rows']}, "
          f"{s['iteration']} train steps" + (f"; skipped {skipped}" if skipped else ""))
    return 0


# ---- reading a memory ------------------------------------------------------------------------------
def _load_memory(path: Path):
    from m3_ros.memory import checkpoint
    from m3_ros.memory.memory import M3Memory
    meta = checkpoint.read_meta(path)
    return meta, M3Memory.load(path)


def _camera(meta: dict, width: int | None, height: int | None, fovy: float):
    """K, width, height: the bag's camera (scaled to --width/--height) or a pinhole of --fovy."""
    from m3_ros.geometry import scale_intrinsics
    cam = meta.get("extra", {}).get("camera")
    if cam:
        K, w0, h0 = np.array(cam["K"], dtype=np.float64), int(cam["width"]), int(cam["height"])
        w, h = width or w0, height or h0
        if (w, h) != (w0, h0):
            K = scale_intrinsics(K, w / w0, h / h0)
        return K, w, h
    w, h = width or 320, height or 240
    f = (h / 2.0) / np.tan(np.radians(fovy) / 2.0)
    return np.array([[f, 0, (w - 1) / 2.0], [0, f, (h - 1) / 2.0], [0, 0, 1]]), w, h


def _best_view(meta: dict, mem, point: np.ndarray, K: np.ndarray, w: int, h: int) -> np.ndarray:
    """A stored keyframe pose that sees point nearest the image centre, else a look-at view of it."""
    from m3_ros.geometry import look_at, project
    best, best_d = None, np.inf
    for T in meta.get("extra", {}).get("views", []):
        T = np.asarray(T, dtype=np.float64)
        uv, z = project(point[None], K, T)
        if z[0] <= 0.05:
            continue
        d = float(np.hypot(uv[0, 0] - w / 2, uv[0, 1] - h / 2))
        if d < best_d and 0 <= uv[0, 0] < w and 0 <= uv[0, 1] < h:
            best, best_d = T, d
    if best is not None:
        return best
    centre = mem.means.numpy().mean(axis=0)
    away = point - centre
    away[2] = 0.0
    away = away / (np.linalg.norm(away) + 1e-9)
    return look_at(point + 0.8 * away + np.array([0.0, 0.0, 0.5]), point)


def cmd_query(a: argparse.Namespace) -> int:
    from m3_ros.grounding import validate_query
    if a.top_k < 1:
        raise CliError(f"--top-k must be >= 1, got {a.top_k}")
    q = validate_query(a.text, MAX_QUERY_CHARS)
    meta, _ = _load_memory(Path(a.dir))  # fail fast on a bad directory, before the models load
    models = sorted(meta.get("models", {}))
    pipe = _pipeline(models)
    try:
        pipe.load_memory(a.dir)
        res = pipe.ground(q, a.top_k)
        if a.png:
            from PIL import Image

            from m3_ros.viz import heatmap
            K, w, h = _camera(meta, None, None, 60.0)
            T = _best_view(meta, pipe.memory, np.asarray(res.points[0]), K, w, h)
            rel = pipe.relevance_map(q, T, K, w, h)
            rgb = (np.clip(pipe.memory.render(T, K, w, h)["rgb"], 0, 1) * 255).astype(np.uint8)
            Image.fromarray(np.concatenate([rgb, heatmap(rel)], axis=1)).save(a.png)
    finally:
        pipe.close()
    frame = meta.get("extra", {}).get("frame_id", "odom")
    points = [[float(x) for x in p] for p in res.points]
    scores = [float(s) for s in res.scores]
    if a.json:
        print(json.dumps({"frame_id": frame, "points": points, "scores": scores, "model": res.model}))
    else:
        print(f"'{q}' ({res.model}, frame {frame}):")
        for i, (p, s) in enumerate(zip(points, scores), 1):
            print(f"  {i}. x={p[0]:+.3f} y={p[1]:+.3f} z={p[2]:+.3f}  score {s:.3f}")
        if a.png:
            print(f"relevance image: {a.png}")
    return 0


def cmd_render(a: argparse.Namespace) -> int:
    from PIL import Image

    from m3_ros.geometry import pose_to_matrix
    meta, mem = _load_memory(Path(a.dir))
    pose = np.asarray(a.pose, dtype=np.float64)
    if not np.all(np.isfinite(pose)) or abs(np.linalg.norm(pose[3:]) - 1.0) > 1e-2:
        raise CliError(f"--pose needs finite x y z and a unit quaternion qx qy qz qw, got {a.pose}")
    K, w, h = _camera(meta, a.width, a.height, a.fovy)
    T_world_cam = pose_to_matrix(pose[:3], pose[3:] / np.linalg.norm(pose[3:]))
    out = mem.render(T_world_cam, K, w, h)
    rgb = (np.clip(out["rgb"], 0, 1) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(a.out)
    print(f"rendered {w}x{h} from {a.dir} to {a.out} ({float((out['alpha'] > 0.5).mean()):.0%} of pixels covered)")
    return 0


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cmd_info(a: argparse.Namespace) -> int:
    path = Path(a.dir)
    meta, mem = _load_memory(path)
    extra = meta.get("extra", {})
    b = extra.get("build", {})
    info = {
        "path": str(path), "format_version": meta["format_version"],
        "models": {m: {"rows": len(mem.banks[m]) if m in mem.banks else 0,
                       "dim": mem.banks[m].dim if m in mem.banks else None,
                       "channels": s.channels}
                   for m, s in mem.cfg.models.items()},
        "gaussians": mem.n_gaussians,
        "frames": int(b.get("keyframes", meta.get("keyframes", 0))),
        "iteration": mem.iteration,
        "size_bytes": _dir_size(path),
        "bag": b.get("bag"), "complete": b.get("complete"),
    }
    if a.json:
        print(json.dumps(info))
    else:
        print(f"memory {path} (format version {info['format_version']}, {info['size_bytes'] / 1e6:.2f} MB)")
        print(f"  Gaussians: {info['gaussians']}, keyframes: {info['frames']}, train steps: {info['iteration']}")
        for m, d in info["models"].items():
            print(f"  model {m}: {d['rows']} bank rows (dim {d['dim']}), {d['channels']} query channels")
        if info["bag"]:
            print(f"  built from {info['bag']}" + ("" if info["complete"] else " (incomplete: build resumes)"))
    return 0


# ---- argparse --------------------------------------------------------------------------------------
def _topics_help() -> str:
    from m3_ros.cli.bag import DEFAULT_TOPICS
    return ("remap topics as KEY=TOPIC (keys and defaults: "
            + ", ".join(f"{k}={v}" for k, v in DEFAULT_TOPICS.items()) + ")")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="m3-ros", description="Offline tools for the M3 spatial memory.")
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("record-sim", help="record a rosbag2 of the simulated robot's walk")
    r.add_argument("--scene", required=True, help="scene name, generated family (table, two_tables, room) or YAML path")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--sensors", choices=["ideal", "realistic"], default="ideal")
    r.add_argument("--out", required=True, help="bag directory to create")
    r.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    r.add_argument("--rate", type=float, default=5.0, help="camera frames per sim second")
    r.add_argument("--clock-rate", type=float, default=20.0, help="clock / odom / tf messages per sim second")
    r.add_argument("--width", type=int, default=0, help="camera width (0 = the scene's)")
    r.add_argument("--height", type=int, default=0, help="camera height (0 = the scene's)")
    r.add_argument("--depth-encoding", choices=["32FC1", "16UC1"], default="32FC1")
    r.add_argument("--max-frames", type=int, default=0, help="stop after this many camera frames (0 = the whole walk)")
    r.add_argument("--linger", type=float, default=1.0, help="sim seconds recorded after the walk ends")
    r.add_argument("--topics", nargs="*", default=[], metavar="KEY=TOPIC", help=_topics_help())
    r.set_defaults(func=cmd_record_sim)

    b = sub.add_parser("build", help="build a memory from a rosbag2 (mcap or sqlite3); resumes if interrupted")
    b.add_argument("--bag", required=True)
    b.add_argument("--out", required=True, help="memory directory (created, or resumed)")
    b.add_argument("--topics", nargs="*", default=[], metavar="KEY=TOPIC", help=_topics_help())
    b.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="foundation models (missing weights: skipped)")
    b.add_argument("--camera-mount", type=float, nargs=7, metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
                   help="base_link -> camera optical frame, when the bag has neither the mount topic nor tf_static")
    b.add_argument("--slop", type=float, default=0.05, help="s, colour/depth/odometry matching tolerance")
    b.add_argument("--steps-per-keyframe", type=int, default=30, help="train steps after each keyframe")
    b.add_argument("--final-steps", type=int, default=200, help="train steps after the last keyframe")
    b.add_argument("--checkpoint-every", type=int, default=5, help="keyframes between checkpoints")
    b.add_argument("--max-frames", type=int, default=0, help="read at most this many colour frames (0 = all)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_build)

    q = sub.add_parser("query", help="ground a text query in a memory")
    q.add_argument("dir")
    q.add_argument("text")
    q.add_argument("--top-k", type=int, default=1)
    q.add_argument("--json", action="store_true", help="print one JSON object: frame_id, points, scores, model")
    q.add_argument("--png", help="save the relevance image (rendered view | relevance) here")
    q.set_defaults(func=cmd_query)

    v = sub.add_parser("render", help="render the memory's colours from a camera pose")
    v.add_argument("dir")
    v.add_argument("--pose", type=float, nargs=7, required=True, metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
                   help="optical camera (REP-103: z forward, x right, y down) in the memory frame, ROS quaternion")
    v.add_argument("--out", default="render.png")
    v.add_argument("--width", type=int, default=0, help="0 = the bag camera's (else 320)")
    v.add_argument("--height", type=int, default=0, help="0 = the bag camera's (else 240)")
    v.add_argument("--fovy", type=float, default=60.0, help="vertical field of view when the memory has no camera")
    v.set_defaults(func=cmd_render)

    i = sub.add_parser("info", help="models, bank rows, Gaussians, frames, size, format version")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("M3_ROS_LOG", "WARNING"), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    a = parser().parse_args(argv)
    debug = bool(os.environ.get("M3_ROS_DEBUG"))
    try:
        return int(a.func(a) or 0)
    except (CliError, ValueError, OSError) as e:  # CheckpointError and BagError are ValueErrors
        if debug:
            raise
        print(f"m3-ros: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("m3-ros: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the one place that turns an unexpected failure into a line, not a traceback
        if debug:
            raise
        print(f"m3-ros: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
              "(M3_ROS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

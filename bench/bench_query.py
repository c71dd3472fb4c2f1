"""Query latency (idle, while training, 20 concurrent clients), relevance-map speed and error, and
grounding accuracy of the view / gaussians / render modes on targets in view.

Builds one memory with the same ``MemoryPipeline`` the memory node drives, fed by ``SimWorld``
frames of a generated ``table`` scene with realistic sensors (depth noise, odometry drift,
dropped frames, noisy detector), then measures. Queries are the **dev** phrasings of
config/phrasings.yaml (tuning happened on these; the test phrasings are never read here),
skipping any that is ambiguous in the scene.

Concurrency is measured with threads calling ``MemoryPipeline.ground`` directly (no DDS), the
node's service callbacks call the same method from its executor threads.

    .venv/bin/python bench/bench_query.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import in_fresh_process, machine_header, table, time_ms, write_report  # noqa: E402
from m3_ros.geometry import invert, project  # noqa: E402
from m3_ros.grounding import GroundingConfig  # noqa: E402
from m3_ros.pipeline import SWITCH_INTERVAL_S, MemoryPipeline, PipelineConfig  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def build_memory(scene_name: str, seed: int, extra_train_s: float, max_frames: int):
    """Walk the scene once, offering every frame, training between frames; returns the pipeline,
    the queries with their targets (odom frame), a few walk cameras and a summary line."""
    from m3_ros.sim.generate import resolve_scene
    from m3_ros.sim.library import load_phrasing_records, referents
    from m3_ros.sim.world import SimWorld

    # models first (the other order crashed until SimWorld imported triton before EGL, 2026-12-07)
    pipe = MemoryPipeline(PipelineConfig(models=["dinov2_s", "minilm_labels"]))
    pipe.load()
    scene = resolve_scene(scene_name, seed)
    t0 = time.monotonic()
    cameras, seen, n = [], [], 0
    with SimWorld(scene, seed=seed, sensors="realistic") as world:
        while not world.walk_done and n < max_frames:
            world.advance(0.2)
            f = world.render()
            n += 1
            if f.dropped:
                continue
            taken = pipe.offer_frame(f.stamp, f.rgb, f.depth, f.K, f.T_odom_cam, world.oracle_instances(f))
            pipe.train_for(0.15)
            while taken and not pipe.idle():  # the same keyframes on every run and machine
                pipe.train_for(0.05)
            if n % 10 == 0:  # the camera in the memory's frame (map: refined odometry), as the robot has it
                cameras.append((pipe.T_map_odom @ f.T_odom_cam, f.K.copy(), f.rgb.shape[1], f.rgb.shape[0],
                                f.depth.copy()))
                seen.append(_visible_objects(world, f))
        while not pipe.idle():
            pipe.train_for(0.05)
        pipe.train_for(extra_train_s, max_steps=100000)
        cameras.append((pipe.T_map_odom @ f.T_odom_cam, f.K.copy(), f.rgb.shape[1], f.rgb.shape[0],
                        f.depth.copy()))  # the current camera, with its measured depth
        seen.append(_visible_objects(world, f))
        # truth into the memory's frame as the robot holds it now: the final odometry error, then its
        # map -> odom estimate (the memory lives in map with refine_poses; as eval/suite.py judges)
        T_map_world = pipe.T_map_odom @ f.T_odom_base @ invert(f.T_world_base)
        truth = {o.name: (T_map_world[:3, :3] @ o.aabb_center + T_map_world[:3, 3]) for o in world.objects()}
    keys = [(o.name, o.library) for o in scene.objects]
    records = load_phrasing_records("dev")
    queries = []
    for name, key in keys:
        for ph in records.get(key, []):
            if referents(ph, key, keys) == [name]:  # unambiguous in this scene
                queries.append((ph.text, name))
    st = pipe.stats()
    line = (f"- scene `{scene_name}` seed {seed}, realistic sensors: {n} frames in {time.monotonic() - t0:.0f} s "
            f"wall, then {extra_train_s:.0f} s more training; memory {st['keyframes']} keyframes, {st['gaussians']} "
            f"Gaussians, bank rows {st['bank_rows']}, {st['iteration']} train steps; {len(queries)} unambiguous dev "
            f"phrasings over {len({q[1] for q in queries})} objects")
    return pipe, queries, truth, cameras, seen, line


def _visible_objects(world, frame) -> dict[str, int]:
    """Pixels of each object in the frame's ground-truth segmentation (what the camera really sees)."""
    ids, counts = np.unique(frame.segmentation, return_counts=True)
    px = dict(zip(ids.tolist(), counts.tolist()))
    return {b.name: int(px.get(b.seg_id, 0)) for b in world.bodies}


_SERVICE = ThreadPoolExecutor(1, thread_name_prefix="service")
"""Where this script's single caller asks, as memory_node's executor thread does (the pipeline sets a
query thread's torch threads to PipelineConfig.query_threads; it leaves the main thread alone)."""


def timed(pipe: MemoryPipeline, q: str) -> float:
    def ask() -> float:
        t0 = time.perf_counter()
        try:
            pipe.ground(q)
        except ValueError:  # a refused query is an answer too; its latency counts
            pass
        return (time.perf_counter() - t0) * 1e3
    return ask() if threading.current_thread() is not threading.main_thread() else _SERVICE.submit(ask).result()


def twenty_clients(pipe: MemoryPipeline, texts: list[str], rounds: int) -> tuple[list[float], "Trainer"]:
    """Rounds of 20 threads released together by a barrier while a Trainer runs; each call's ms."""
    lat, lock = [], threading.Lock()
    with Trainer(pipe) as tr:
        time.sleep(0.5)
        for rnd in range(rounds):
            start = threading.Barrier(20)

            def client(i: int) -> None:
                start.wait()
                ms = timed(pipe, texts[(i + rnd) % len(texts)])
                with lock:
                    lat.append(ms)
            ts = [threading.Thread(target=client, args=(i,)) for i in range(20)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            time.sleep(0.5)
    return lat, tr


class Trainer:
    """train_for in a loop on its own thread (the node's train timer), counting steps."""

    def __init__(self, pipe: MemoryPipeline):
        self.pipe, self.steps, self.stop = pipe, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.steps += self.pipe.train_for(0.2)

    def __enter__(self) -> "Trainer":
        self.t0 = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.wall = time.monotonic() - self.t0


def section_latency(pipe: MemoryPipeline, queries: list[str], quick: bool) -> tuple[list[str], dict]:
    pipe.cfg.grounding = GroundingConfig(mode="gaussians")
    rng = np.random.default_rng(0)
    # idle: the pool three times; the first pass asks each text for the first time (text encoder runs)
    cold = [timed(pipe, q) for q in queries]
    warm = [timed(pipe, q) for q in list(queries) * 2]
    idle = cold + warm
    # idle training rate, for reference
    s0 = pipe.stats()["iteration"]
    t0 = time.monotonic()
    pipe.train_for(3.0 if quick else 10.0, max_steps=100000)
    idle_rate = (pipe.stats()["iteration"] - s0) / (time.monotonic() - t0)
    # one person asking while training: a query every 0.1-0.4 s
    train_lat = []
    with Trainer(pipe) as tr:
        time.sleep(0.5)
        for _ in range(40 if quick else 120):
            train_lat.append(timed(pipe, queries[int(rng.integers(len(queries)))]))
            time.sleep(float(rng.uniform(0.1, 0.4)))
    one_rate = tr.steps / tr.wall
    # 20 clients at once while training, 3 rounds
    clients, tr2 = twenty_clients(pipe, queries, rounds=3)
    rows = [["idle, all (first asks included)", len(idle), pct(idle, 50), pct(idle, 95), max(idle)],
            ["idle, first ask of each text", len(cold), pct(cold, 50), pct(cold, 95), max(cold)],
            ["idle, repeated texts", len(warm), pct(warm, 50), pct(warm, 95), max(warm)],
            ["one client while training", len(train_lat), pct(train_lat, 50), pct(train_lat, 95), max(train_lat)],
            ["20 concurrent clients while training", len(clients), pct(clients, 50), pct(clients, 95), max(clients)]]
    lines = ["## Query latency (gaussians mode, `MemoryPipeline.ground`, threads, no DDS)", ""]
    lines += table(["load", "calls", "p50 ms", "p95 ms", "max ms"], rows)
    lines += ["", f"- training: {idle_rate:.1f} steps/s alone, {one_rate:.1f} steps/s with one client asking every "
              f"0.1-0.4 s, {tr2.steps / tr2.wall:.1f} steps/s during the 20-client rounds (a train step already "
              "running finishes; no new step starts while a query runs).",
              "- 20 clients: 3 rounds of 20 threads released together by a barrier; each call's own latency."]
    return lines, {"query_p50_ms": pct(idle, 50), "query_p95_ms": pct(idle, 95),
                   "query_p95_training_ms": pct(train_lat, 95),
                   "clients20_p95_ms": pct(clients, 95)}


def _synthetic_case(t: int, fitted: bool):
    """(snapshot, text [D]) of bench_memory's synthetic memory with a t-row bank (W_m fitted or not)."""
    from bench_memory import D, fit_synthetic_memory, synthetic_bank, synthetic_memory
    spread = 16 if fitted else D
    mem = synthetic_memory(20000, 160, 120, t, "cpu", spread_dims=spread)
    if fitted:
        fit_synthetic_memory(mem)
    text = synthetic_bank(t, spread_dims=spread)[3] + 0.3 * torch.randn(D, generator=torch.Generator().manual_seed(2))
    return mem.snapshot(), text


def _synthetic_all_cores_ms(t: int, fitted: bool) -> float:
    """The synthetic relevance map timed on every core in a process of its own (in_fresh_process)."""
    import bench_raster
    torch.set_num_threads(os.cpu_count() or 1)
    snap, text = _synthetic_case(t, fitted)
    K = bench_raster.intrinsics(160, 120)
    return time_ms(lambda: snap.relevance("dinov2_s", text, np.eye(4), K, 160, 120), repeats=5)


def _relevance_case(snap, model: str, text: torch.Tensor, camera: tuple, fresh: tuple | None = None) -> list:
    """[relevance ms, render ms, ms on every core, levels, median/p99/max |err| against full decoding] on one
    view; fresh (t, fitted): a synthetic case, whose every-core time is taken in a fresh process."""
    T, K, w, h = camera
    out = snap.render_raw(T, K, w, h, models=[model])
    q = out["queries"][model]
    dec = snap.decode(model, q.reshape(-1, q.shape[-1]))
    ref = F.cosine_similarity(dec, F.normalize(text.float(), dim=0)[None], dim=-1).reshape(h, w).numpy()
    rel = snap.relevance(model, text, T, K, w, h)
    hit = rel["alpha"] >= 0.01
    err = np.abs(rel["relevance"][hit] - ref[hit])
    st: dict = {}
    snap.index(model, text).relevance_image(q, torch.from_numpy(hit), snap.cfg.relevance_max_err,
                                            snap.cfg.relevance_tile, stats=st)
    ms = time_ms(lambda: snap.relevance(model, text, T, K, w, h), repeats=5)
    render = time_ms(lambda: snap.render_raw(T, K, w, h, models=[model]), repeats=5)
    if fresh is not None:  # the synthetic case again in a process holding nothing else (see section_relevance)
        ms_all = in_fresh_process(_synthetic_all_cores_ms, *fresh)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the same map on every core (nothing else running)
        ms_all = time_ms(lambda: snap.relevance(model, text, T, K, w, h), repeats=5)
        torch.set_num_threads(threads)
    n = max(1, sum(st.values()))
    levels = " / ".join(f"{100 * st[k] / n:.0f}" for k in ("level1", "shared", "level2", "level3"))
    return [ms, render, ms_all, levels, float(np.median(err)), float(np.percentile(err, 99)), float(err.max())]


def section_relevance(pipe: MemoryPipeline, queries: list[str], cameras: list) -> tuple[list[str], dict]:
    """Relevance maps at 160x120 against full decoding: bench_memory's synthetic 1k/5k-row banks
    (untrained W_m, and a 5k bank with W_m fitted), and the walked memory (its current camera)."""
    import bench_raster
    from bench_memory import D
    rows, res = [], {}
    threads = torch.get_num_threads()
    if pipe.cfg.query_threads:  # timed as the pipeline answers: at its query threads
        torch.set_num_threads(pipe.cfg.query_threads)
    for t, fitted in ((1000, False), (5000, False), (5000, True)):
        snap, text = _synthetic_case(t, fitted)
        r = _relevance_case(snap, "dinov2_s", text, (np.eye(4), bench_raster.intrinsics(160, 120), 160, 120),
                            fresh=(t, fitted))
        name = "W_m fitted, spread in 16 dims" if fitted else "untrained W_m"
        rows.append([f"synthetic, {t} rows ({name})"] + r)
        res[(t, fitted)] = r
    snap = pipe.memory.snapshot()
    T, K, w, h = cameras[-1][:4]
    K = K.copy()
    K[:2] *= 160 / w  # same pixel convention: focal lengths and principal point scale together
    g = torch.Generator().manual_seed(0)
    bank = snap.banks["dinov2_s"]
    for i in range(3):  # a visual query: a stored DINOv2 row, perturbed
        row = bank.rows[int(torch.randint(len(bank), (1,), generator=g))]
        text = row + 0.3 * row.norm() / D ** 0.5 * torch.randn(D, generator=g)
        rows.append([f"walked memory, dinov2_s ({len(bank)} rows), visual query {i}"] +
                    _relevance_case(snap, "dinov2_s", text, (T, K, 160, 120)))
    for qtext in queries[:3]:
        rows.append([f"walked memory, minilm_labels ({len(snap.banks['minilm_labels'])} rows), '{qtext}'"] +
                    _relevance_case(snap, "minilm_labels", pipe._embed(qtext), (T, K, 160, 120)))
    lines = ["## Relevance map (160x120) against full decoding", "",
             f"- torch intra-op threads: {torch.get_num_threads()} (PipelineConfig.query_threads, the count a "
             f"query's thread computes with); the column 'ms at {os.cpu_count()} threads' times the same map on "
             "every core with nothing else running (RESULT relevance_ms_all_cores): for the synthetic banks in a "
             "process of its own, since this one holds the pipeline's threads, more than cores, and libgomp then "
             "stops spinning between parallel regions, so each small torch op wakes its team by futex (the 5000-row "
             "bank took 55.8 ms on every core in this process, 2026-12-06); for the walked memory in this process", ""]
    torch.set_num_threads(threads)
    lines += table(["bank", "relevance ms", "of which render ms", f"ms at {os.cpu_count()} threads",
                    "pixels at level 1/2s/2/3 %", "median |err|", "p99 |err|", "max |err|"], rows)
    lines += ["", f"- error: |relevance map - cosine of the fully decoded feature| over pixels with alpha >= 0.01; "
              f"the map guarantees at most relevance_max_err = {snap.cfg.relevance_max_err} per pixel "
              "(RelevanceIndex.relevance_image: per-pixel bounds, exact decoding where a bound is looser).",
              "- levels: 1 block bounds (banks over 1024 rows), 2s a leader pixel's weights shared with the "
              "pixels within 0.02 of it in query space, widened by what that distance can change (banks over "
              "512 rows), 2 exact weights with a spectral norm bound, 3 full decoding.",
              "- the untrained synthetic banks are 60 clusters of rows with spread in all 384 dims under the "
              "untrained W_m: attention spreads over hundreds of rows. The fitted bank has the same spread in "
              "16 shared dims, W_m and the queries fitted (bench_memory.fit_synthetic_memory: 200 Adam steps of "
              "cross-entropy of each row's logits); its own row then takes ~0.75 of a query's weight, the rest "
              "still spreads over hundreds of rows, so level 1 cannot hold it either. The ~14-px regions' "
              "borders (~40 % of the pixels) blend queries and are answered per pixel; the walked memory's "
              "attention is peaked and its banks are small.",
              "- RESULT relevance_ms / relevance_max_err: the untrained 5000-row bank (the worst case); "
              "relevance_fitted_ms: the fitted one; relevance_ms_all_cores: the untrained one on every core."]
    return lines, {"relevance_ms": res[(5000, False)][0], "relevance_max_err": res[(5000, False)][6],
                   "relevance_fitted_ms": res[(5000, True)][0], "relevance_ms_all_cores": res[(5000, False)][2]}


def in_view(point: np.ndarray, camera: tuple, max_depth: float = 2.5) -> bool:
    T, K, w, h = camera[:4]
    uv, z = project(point[None], K, T)
    return bool(0.1 < z[0] < max_depth and 0 <= uv[0, 0] < w and 0 <= uv[0, 1] < h)


MIN_SEEN_PX = 30
"""A target is visible when the ground-truth segmentation holds at least this many of its pixels (320x240;
a priori: a lego brick 1.5 m away covers about 30)."""


def section_accuracy(pipe: MemoryPipeline, queries: list[tuple[str, str]], truth: dict, cameras: list,
                     seen: list[dict]) -> tuple[list[str], dict]:
    """Grounding error on targets in view of each camera: the box centre projects into the image at
    0.1-2.5 m and the simulator's segmentation shows the object (MIN_SEEN_PX); the cases whose centre
    projects but which the camera does not see (occluded, or only a sliver at the border) are
    reported apart."""
    modes = {"view": GroundingConfig(mode="view"), "gaussians": GroundingConfig(mode="gaussians"),
             "render": GroundingConfig(mode="render")}
    rows, errs, times = [], {m: [] for m in modes}, {m: [] for m in modes}
    cases = [(q, name, ci, seen[ci].get(name, 0) >= MIN_SEEN_PX) for ci, cam in enumerate(cameras)
             for q, name in queries if in_view(truth[name], cam)]
    for mode, gcfg in modes.items():
        pipe.cfg.grounding = gcfg
        for q, name, ci, vis in cases:
            t0 = time.perf_counter()
            try:
                res = pipe.ground(q, camera=cameras[ci])
                err = 100 * float(np.linalg.norm(res.points[0] - truth[name]))
            except ValueError:
                err = float("inf")
            times[mode].append((time.perf_counter() - t0) * 1e3)
            errs[mode].append(err)
            rows.append([mode, ci, name, seen[ci].get(name, 0), q, f"{err:.1f}", f"{times[mode][-1]:.0f}",
                         "yes" if err <= 5 else "no"])
    vis = np.array([c[3] for c in cases], dtype=bool)
    summary = []
    for m in modes:
        e = np.array(errs[m])
        for label, sel in (("visible", vis), ("centre in frame, not visible", ~vis)):
            if sel.any():
                summary.append([m, label, int(sel.sum()), f"{np.median(e[sel]):.1f}", f"{np.mean(e[sel] <= 5):.2f}",
                                f"{np.median(np.array(times[m])[sel]):.0f}"])
    lines = ["## Grounding on targets in view (dev phrasings)", "",
             f"- {len(cameras)} cameras along the walk (every 10th frame and the final one: 'the current camera'); a "
             f"target is in view when its box centre projects into the image at 0.1-2.5 m and the simulator's "
             f"segmentation shows at least {MIN_SEEN_PX} of its pixels; the RESULT figures are over these. gaussians "
             "and render modes ignore the camera; they answer the same cases for comparison.",
             "- error = distance from the grounded point to the centre of the object's axis-aligned box, in the "
             "memory's map frame (the truth through the final odometry error and map -> odom); inf = refused.", ""]
    lines += table(["mode", "target", "cases", "median error cm", "within 5 cm", "median ms"], summary)
    lines += ["", "<details><summary>every case</summary>", ""]
    lines += table(["mode", "camera", "object", "object px", "query", "error cm", "ms", "within 5 cm"], rows)
    lines += ["", "</details>"]
    return lines, {f"{m}_within5": float(np.mean(np.array(errs[m])[vis] <= 5)) if vis.any() else float("nan")
                   for m in modes}


# ---- profile (--profile): where a query's time goes, idle / while training / 20 clients ----------
class _Probe:
    """Inclusive wall and thread-CPU time per wrapped function and per thread role."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stats: dict[tuple[str, str], list[float]] = {}  # (role, label) -> [calls, wall, cpu]
        self.local = threading.local()
        self.undo: list = []

    def role(self) -> str:
        if threading.current_thread().name.startswith("m3-train"):  # the pipeline's training thread
            return "train"
        return getattr(self.local, "role", "query")

    def wrap(self, owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)
        probe = self

        def wrapped(*a, **kw):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                with probe.lock:
                    s = probe.stats.setdefault((probe.role(), label), [0, 0.0, 0.0])
                    s[0] += 1
                    s[1] += dt
                    s[2] += dc
        setattr(owner, attr, wrapped)
        self.undo.append((owner, attr, fn))

    def restore(self) -> None:
        for owner, attr, fn in reversed(self.undo):
            setattr(owner, attr, fn)

    def reset(self) -> None:
        with self.lock:
            self.stats.clear()

    def rows(self, per: dict[str, int]) -> list[list[object]]:
        out = []
        for (role, label), (n, wall, cpu) in sorted(self.stats.items(), key=lambda kv: (kv[0][0], -kv[1][1])):
            k = max(per.get(role, 1), 1)
            out.append([role, label, n, f"{1e3 * wall / k:.1f}", f"{1e3 * cpu / k:.1f}", f"{1e3 * (wall - cpu) / k:.1f}"])
        return out


def _gil_probe(stop: threading.Event, out: list[float]) -> None:
    """Lateness of a 1 ms sleep: how long this thread waited to get the GIL back (or a core)."""
    while not stop.is_set():
        t0 = time.perf_counter()
        time.sleep(0.001)
        out.append((time.perf_counter() - t0) * 1e3 - 1.0)


def _load_cached(path: str):
    """Pipeline around a pickled M3Memory (built once by --save-memory), MiniLM loaded for text."""
    import copyreg
    import pickle
    copyreg.pickle(type(threading.RLock()), lambda _: (threading.RLock, ()))
    copyreg.pickle(type(threading.Lock()), lambda _: (threading.Lock, ()))
    with open(path, "rb") as f:
        d = pickle.load(f)
    from m3_ros.foundation import FoundationConfig, load_models
    pipe = MemoryPipeline(PipelineConfig(models=["minilm_labels"]), models=load_models(FoundationConfig(models=["minilm_labels"])))
    pipe.load()
    pipe.memory = d["mem"]
    return pipe, d["queries"], d["truth"], d["cameras"], d["seen"], d["line"]


def _save_cached(path: str, pipe, queries, truth, cameras, seen, line) -> None:
    import copyreg
    import pickle
    copyreg.pickle(type(threading.RLock()), lambda _: (threading.RLock, ()))
    copyreg.pickle(type(threading.Lock()), lambda _: (threading.Lock, ()))
    with open(path, "wb") as f:
        pickle.dump({"mem": pipe.memory, "queries": queries, "truth": truth, "cameras": cameras, "seen": seen, "line": line}, f)


def section_profile(pipe: MemoryPipeline, texts: list[str], walk: str) -> list[str]:
    G = sys.modules["m3_ros.grounding.ground"]  # the package re-exports a function of the same name
    import m3_ros.grounding.rendered as Gr
    import m3_ros.memory.memory as Mm
    import m3_ros.memory.snapshot as S
    import m3_ros.pipeline as P
    pr = _Probe()
    for owner, attr, label in [
            (MemoryPipeline, "ground", "pipeline.ground (whole call)"), (MemoryPipeline, "_embed", "text embedding"),
            (P, "ground", "grounding.ground"), (Gr, "verify", "rendered.verify (rendering)"),
            (Gr, "render_points", "rendered.render_points"), (Gr, "baseline_score", "rendered.baseline_score"),
            (G, "_ranked_regions", "ground._ranked_regions (clustering)"), (G, "otsu_threshold", "ground.otsu_threshold"),
            (Gr, "views_seeing", "rendered.views_seeing"),
            (S.MemorySnapshot, "gaussian_relevance", "snapshot.gaussian_relevance"),
            (S.MemorySnapshot, "query_norms", "snapshot.query_norms"),
            (S.MemorySnapshot, "means_tree", "snapshot.means_tree"), (S.MemorySnapshot, "relevance", "snapshot.relevance"),
            (S.MemorySnapshot, "render_raw", "snapshot.render_raw (rasterize)"),
            (S.MemorySnapshot, "decode", "snapshot.decode"),
            (S.AttentionCache, "get", "AttentionCache.get"), (S.AttentionCache, "_compute", "AttentionCache._compute"),
            (Mm.M3Memory, "train_step", "M3Memory.train_step (whole)"), (Mm.M3Memory, "_publish", "M3Memory._publish"),
            (Mm.M3Memory, "_capture", "M3Memory._capture")]:
        pr.wrap(owner, attr, label)
    pipe.cfg.grounding = GroundingConfig(mode="gaussians")
    for q in texts:  # warm the text cache: the profile is about repeated texts
        timed(pipe, q)
    lines = ["# Query path profile", ""] + machine_header() + [
        f"- load before the run: {os.getloadavg()[0]:.2f} (1 min average; 2 cores shared with other engineers' jobs)",
        walk, "",
        "Per scenario: inclusive wall and thread-CPU ms per query (role `query`) or per train step (role `train`);",
        "wall - cpu is time the thread waited: for the GIL, for a core, or on a lock.", ""]

    def scenario(name: str, run) -> None:
        pr.reset()
        gil: list[float] = []
        stop = threading.Event()
        g = threading.Thread(target=_gil_probe, args=(stop, gil), daemon=True)
        g.start()
        lat, steps = run()
        stop.set()
        g.join()
        lines.extend([f"## {name}", "",
                      f"- {len(lat)} queries: p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms, max {max(lat):.1f} ms; "
                      f"{steps} train steps; 1 ms sleep overshoot (GIL / core wait) p50 {pct(gil, 50):.1f} ms, "
                      f"p99 {pct(gil, 99):.1f} ms, max {max(gil):.1f} ms", ""])
        lines.extend(table(["role", "function", "calls", "wall ms / call-unit", "cpu ms", "waited ms"],
                           pr.rows({"query": len(lat), "train": max(steps, 1)})))
        lines.append("")
        print("\n".join(lines[-12:]), flush=True)

    def idle():
        return [timed(pipe, q) for q in texts * 2], 0

    def training_only():
        with Trainer(pipe) as tr:
            time.sleep(4.0)
        return [0.0], tr.steps

    def one_client():
        rng = np.random.default_rng(0)
        lat = []
        with Trainer(pipe) as tr:
            time.sleep(0.5)
            for _ in range(25):
                lat.append(timed(pipe, texts[int(rng.integers(len(texts)))]))
                time.sleep(float(rng.uniform(0.1, 0.4)))
        return lat, tr.steps

    def clients20():
        lat, tr = twenty_clients(pipe, texts, rounds=2)
        return lat, tr.steps

    _orig_run = Trainer._run

    def run_as_train(self):
        pr.local.role = "train"
        _orig_run(self)
    Trainer._run = run_as_train
    try:
        scenario("idle (repeated texts)", idle)
        scenario("training alone (4 s, no queries)", training_only)
        scenario("one client while training (a query every 0.1-0.4 s)", one_client)
        scenario("20 concurrent clients while training (2 rounds)", clients20)
    finally:
        Trainer._run = _orig_run
        pr.restore()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads of the process (default 0: torch's default, as memory_node runs); "
                         "queries run at PipelineConfig.query_threads on their own threads either way")
    ap.add_argument("--scene", default="table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true",
                    help="instead of the benchmark: per-function times of the query path idle, while training and "
                         "with 20 clients -> bench/results/query_profile.md")
    ap.add_argument("--memory-cache", default="",
                    help="pickle of the walked memory: written when missing, reused when present (development only)")
    a = ap.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as memory_node runs
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    if a.profile:
        if a.memory_cache and Path(a.memory_cache).exists():
            pipe, queries, truth, cameras, seen, walk = _load_cached(a.memory_cache)
        else:
            pipe, queries, truth, cameras, seen, walk = build_memory(a.scene, a.seed, 5.0, max_frames=120)
            if a.memory_cache:
                _save_cached(a.memory_cache, pipe, queries, truth, cameras, seen, walk)
        lines = section_profile(pipe, [q for q, _ in queries], walk)
        pipe.close()
        (Path(__file__).resolve().parent / "results" / "query_profile.md").write_text("\n".join(lines) + "\n")
        return
    pipe, queries, truth, cameras, seen, walk = build_memory(a.scene, a.seed, 5.0 if a.quick else 20.0,
                                                       max_frames=120 if a.quick else 10_000)
    texts = [q for q, _ in queries]
    rel_lines, rel_res = section_relevance(pipe, texts, cameras)
    lat_lines, lat_res = section_latency(pipe, texts, a.quick)
    acc_lines, acc_res = section_accuracy(pipe, queries, truth, cameras, seen)
    pipe.close()
    lines = machine_header() + [
        f"- 1-min load average at the start / end: {load0:.1f} / {os.getloadavg()[0]:.1f} (2 cores: other work "
        "inflates every latency).",
        "", walk, f"- total wall {time.monotonic() - t_start:.0f} s", "",
        *lat_lines, "", *rel_lines, "", *acc_lines]
    res = {**lat_res, **rel_res, "view_within5": acc_res["view_within5"],
           "gaussians_within5": acc_res["gaussians_within5"], "render_within5": acc_res["render_within5"]}
    write_report("query", "Query latency, relevance maps and view-mode grounding", lines, res)


if __name__ == "__main__":
    main()

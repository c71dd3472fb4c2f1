"""The thin orchestrator: frames -> keyframes -> features -> memory -> grounding (no ROS).

Nodes, the demo and the benchmarks drive this one class; none of them touches the
memory's internals.

Threads: ``offer_frame`` runs on the caller's thread and only hands work to the
feature worker; ``train_for`` (the node's train timer) moves extracted keyframes into
the memory and trains; ``ground`` and ``relevance_map`` may run on any number of threads at
once. Queries read the memory's last published snapshot and take no lock a train step holds
(reader/writer: see m3_ros/memory/snapshot.py); while any query runs, ``train_for`` starts no
new step, so queries share the CPU with at most the one step already running, and that step runs
on a training thread of lower OS priority (``train_nice``).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from m3_ros.grounding import GroundingConfig, GroundingResult, ground, relevance_image, validate_query
from m3_ros.grounding.contrast import query_embeddings
from m3_ros.grounding.live import LiveConfig, LiveTarget, LiveView, refine_in_view, still_views
from m3_ros.stream import KeyframeSelector, KeyframeSelectorConfig
from m3_ros.tracking import DriftTracker, TrackerConfig
from m3_ros.types import Instance, Keyframe

log = logging.getLogger("m3_ros.pipeline")


@dataclass
class PipelineConfig:
    models: list[str] = field(default_factory=lambda: ["clip", "dinov2_s", "minilm_labels"])
    """Foundation models to load (missing weights: skipped with a log line)."""
    channels: dict[str, int] = field(default_factory=lambda: {"clip": 16, "siglip": 32, "dinov2_s": 16, "minilm_labels": 16})
    """Principal-query channels per model. Dev (2026-12-05, bench/dev_sweep.py --channels, room seeds 1-3,
    realistic, memory seed 0, 80 dev phrasings): minilm_labels at 32 gave 0.57 within 5 cm against 0.66 at
    16, although at 16 a room's ~28 label rows exceed the query space (4 of room 3's could not be singled
    out by a least-squares query); not kept."""
    thetas: dict[str, float] = field(default_factory=lambda: {"clip": 0.80, "siglip": 0.85, "dinov2_s": 0.75, "minilm_labels": 1.0})
    """Memory-bank similarity threshold per model (reference values)."""
    keyframes: KeyframeSelectorConfig = field(default_factory=KeyframeSelectorConfig)
    """When a frame becomes a keyframe."""
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    """How text is turned into points."""
    live: LiveConfig = field(default_factory=LiveConfig)
    """The last metre before a grasp: the answer found again in the latest frames (refine_in_view)."""
    max_depth: float = 2.5
    """Depth beyond this (m) is dropped before it reaches the memory: far walls and floor cost
    Gaussians and training time but matter neither for grounding nor for grasping."""
    max_pending: int = 4
    """Keyframes waiting for feature extraction at most; newer ones are dropped while full."""
    text_cache: int = 256
    """Text embeddings of this many recent distinct texts (queries and their colour swaps) are kept (a repeated
    question skips the text encoder)."""
    queries_first: bool = True
    """Training starts no new step while a query runs (the step already running finishes)."""
    train_nice: int = 5
    """Train steps run on the pipeline's own training thread, this much nicer than the process
    (Linux: niceness is per thread), so the OS gives query threads the CPU first while a step that
    was already running finishes; 0 = the same priority. bench_query.py --profile: while training,
    a query's wall time was mostly waiting for a core shared with the step."""
    train_max_wait_s: float = 1.0
    """A train step waits at most this long behind other work: once no step has finished for this many
    seconds, the next one runs at the process's priority (on the ingest thread) instead of the niced
    training thread, so that a busy node still learns (priority aging). Under 20 clients the niced
    thread alone took 10-21 steps in 40 s, with gaps of 4-8 s (test_autosave_load); 1 s is a priori."""
    query_threads: int = 1
    """Torch intra-op threads of a thread answering ``ground`` or ``relevance_map`` (set per thread, so
    training, feature extraction and other callers keep the process's count; not on the main thread,
    e.g. an offline script's); 0 = leave as is.
    bench_query.py --quick on the table scene, the process at torch's default (2 threads on 2 cores):
    p95 while training 112 ms with queries at 2 threads, 10.5 ms at 1 (measured, not traced; most likely
    a query's and a train step's OpenMP teams contending for the 2 cores); the relevance map alone is faster
    at 2 (47 vs 70 ms)."""
    memory_overrides: dict = field(default_factory=dict)
    """Extra MemoryConfig fields (name -> value)."""
    foundation_overrides: dict = field(default_factory=dict)
    """Extra FoundationConfig fields (name -> value), e.g. clip_checkpoint."""
    refine_poses: bool = True
    """Refine each keyframe's odometry pose by depth-to-map ICP and keep ``T_map_odom``; the memory
    then lives in ``map``. Off: the memory lives in ``odom`` and ``T_map_odom`` stays the identity.
    On by default: bench/bench_drift.py (dev walks, realistic sensors) takes the mean keyframe
    camera error from 12.3 to 4.5 cm on room seeds 1-5 and from 9.8 to 7.9 cm on two_tables
    seeds 1-3, where seed 3 gets worse (12.6 -> 18.6), and where objects land (object cm) from
    15.1 to 4.0 and 17.7 to 4.2 cm: see bench/results/drift*.md."""
    tracking: TrackerConfig = field(default_factory=TrackerConfig)
    """Drift correction (ICP, reference map); it takes the depth uncut and cuts at its own ``max_depth``."""


SWITCH_INTERVAL_S = 0.0005
"""GIL switch interval (s) for a process that trains and answers on several threads (memory_node sets it,
bench_query too; Python's default is 5 ms). Torch releases the GIL around every op; a train step is ~1000
ops, and at 5 ms each waited for the executor's Python thread under 20 clients (test_autosave_load)."""


class MemoryPipeline:
    """Owns the foundation models, the feature worker, the keyframe selector and the memory."""

    def __init__(self, cfg: PipelineConfig, models: dict | None = None):
        self.cfg = cfg
        self._models = models
        self._worker = None
        self._text_model = None
        self.memory = None
        self.selector = KeyframeSelector(cfg.keyframes)
        self.tracker = DriftTracker(cfg.tracking)
        self._ready_kf: deque[Keyframe] = deque()
        self._in_flight = 0
        # which memory keyframes belong to: reset() and load_memory() raise it under _swap_lock and _lock,
        # so a keyframe offered before either (its pose in the old map) never reaches the new memory
        self._epoch = 0
        self._lock = threading.Lock()
        # Swapping the memory (load, reset) happens under this; queries and training only read
        # self.memory once, so they never wait on it.
        self._swap_lock = threading.Lock()
        self._queries = 0  # queries running now
        self._no_queries = threading.Condition()
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._texts_lock = threading.Lock()
        self._camera: tuple | None = None  # latest (T_world_cam, K, width, height, depth) offered
        # the latest frames offered (T_odom_cam, K, depth, instances), oldest first (refine_in_view)
        self._live: deque[tuple] = deque(maxlen=max(1, cfg.live.frames))
        self._trainer = None  # ThreadPoolExecutor(1): the training thread (see train_nice)
        self._ingester = None  # ThreadPoolExecutor(1): keyframe ingestion at the process's priority
        self._ingester_lock = threading.Lock()
        self._train_threads = torch.get_num_threads()  # the training thread's, whatever queries set later
        self._inflight: dict[tuple, Future] = {}  # ground() calls being answered now, by question
        self._inflight_lock = threading.Lock()
        self._trainer_lock = threading.Lock()
        self._next_index = 0
        self._last_step = time.monotonic()  # when the last train step finished (see train_max_wait_s)
        self.urgent_steps = 0  # steps that ran at the process's priority because training had waited
        self.paused = False  # no train step starts while True (keyframes are still ingested)
        self.first_keyframe_wall: float | None = None
        self.load_error: str | None = None
        self._loaded = threading.Event()

    # ---- set-up -----------------------------------------------------------------
    def load(self) -> None:
        """Load the models (seconds) and build an empty memory. Call off the executor."""
        try:
            from m3_ros.foundation import FeatureWorker, FoundationConfig, grounding_text_model, load_models
            if self._models is None:
                self._models = load_models(FoundationConfig(models=list(self.cfg.models), **self.cfg.foundation_overrides))
            if not self._models:
                raise RuntimeError(f"none of the models {self.cfg.models} could be loaded")
            self._worker = FeatureWorker(self._models)
            try:
                self._text_model = grounding_text_model(self._models)
            except (ValueError, RuntimeError) as e:
                log.warning("no text model for grounding: %s", e)
            self.memory = self._new_memory()
        except Exception as e:  # reported to the node; the node stays up and says why
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("pipeline failed to load: %s", self.load_error)
            raise
        finally:
            self._loaded.set()

    def _new_memory(self):
        from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
        # region models give piecewise-constant maps: bilinear sampling would blend two labels
        slots = {name: ModelSlot(channels=int(self.cfg.channels.get(name, 16)),
                                 theta=float(self.cfg.thetas.get(name, 0.8)),
                                 sample_mode="nearest" if model.kind == "regions" else "bilinear")
                 for name, model in self._models.items()}
        return M3Memory(MemoryConfig(models=slots, **self.cfg.memory_overrides))

    @property
    def ready(self) -> bool:
        return self.memory is not None

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models) if self._models else []

    def model(self, name: str):
        """The loaded foundation model ``name`` (KeyError if it is not loaded)."""
        if not self._models or name not in self._models:
            raise KeyError(f"model {name!r} is not loaded (loaded: {self.model_names})")
        return self._models[name]

    @property
    def text_model(self):
        """The model whose text embeddings ground queries (None before load())."""
        return self._text_model

    @property
    def text_model_name(self) -> str | None:
        return self._text_model.name if self._text_model is not None else None

    # ---- streaming ----------------------------------------------------------------
    @property
    def T_map_odom(self) -> np.ndarray:
        """[4, 4] copy of the drift correction: memory frame (``map``) <- odometry frame."""
        return self.tracker.T_map_odom

    def offer_frame(self, stamp: float, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray,
                    T_world_cam: np.ndarray, instances: list[Instance] | None = None) -> bool:
        """Consider one synchronised RGB-D frame; True if it became a keyframe.

        ``T_world_cam`` [4, 4] is the odometry's camera pose (``T_odom_cam``). With ``refine_poses``
        a keyframe's pose becomes ``T_map_odom @ T_odom_cam`` refined by ICP against the earlier
        keyframes, and ``T_map_odom`` takes the correction.
        """
        if not self.ready:
            return False
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
        if depth.shape != rgb.shape[:2]:
            raise ValueError(f"depth {depth.shape} does not match colour {rgb.shape[:2]}")
        T_odom_cam = np.array(T_world_cam, dtype=np.float64)
        T_map_cam = self.tracker.predict(T_odom_cam) if self.cfg.refine_poses else T_odom_cam
        depth_full = depth  # the tracker cuts at its own max_depth: far walls hold its yaw
        depth = np.where(np.isfinite(depth) & (depth <= self.cfg.max_depth), depth, 0.0).astype(np.float32)
        # view mode grounds what this camera sees: its pose and its measured depth
        self._camera = (T_map_cam, np.array(K, dtype=np.float64), int(rgb.shape[1]), int(rgb.shape[0]), depth)
        with self._lock:  # read by refine_in_view from query threads
            self._live.append((T_odom_cam, np.array(K, dtype=np.float64), depth, list(instances or [])))
        if not np.any(depth > 0):
            raise ValueError(f"depth image has no valid pixel within {self.cfg.max_depth} m")
        with self._lock:
            if self._in_flight >= self.cfg.max_pending:
                return False
            if not self.selector.consider(stamp, T_map_cam):
                return False
            index = self._next_index  # never reused: the feature worker caches by it
            self._next_index += 1
            self._in_flight += 1
            epoch = self._epoch
            if self.first_keyframe_wall is None:
                self.first_keyframe_wall = time.monotonic()
        if self.cfg.refine_poses:  # ICP (~0.1 s) outside self._lock: the worker's callbacks take it
            T_map_cam, res = self.tracker.track(depth_full, K, T_odom_cam)
            if not res.accepted:
                log.debug("keyframe %d pose not refined: %s", index, res.reason)
        kf = Keyframe(index=index, stamp=stamp, rgb=rgb, depth=depth, K=K,
                      T_world_cam=T_map_cam, instances=list(instances or []))
        fut = self._worker.submit(kf.index, rgb, kf.instances)

        def done(f, kf=kf):
            try:
                kf.features = f.result()
                with self._lock:
                    if epoch == self._epoch:
                        self._ready_kf.append(kf)
                    else:
                        log.info("keyframe %d dropped: offered before the memory was reset or loaded", kf.index)
            except Exception as e:  # a failed extraction loses one keyframe, not the node
                log.error("feature extraction failed for keyframe %d: %s", kf.index, e)
            finally:
                with self._lock:
                    self._in_flight -= 1
        fut.add_done_callback(done)
        return True

    def train_for(self, budget_s: float, max_steps: int = 1000) -> int:
        """Ingest one extracted keyframe (every waiting one when ``max_steps`` is 0), then train until
        ``budget_s`` is spent, at least one step when ``max_steps`` > 0; returns steps.

        The work runs on the pipeline's training thread (see ``train_nice``); the caller waits for it.
        """
        if not self.ready:
            return 0
        if self.cfg.train_nice <= 0:
            return self._train_for(budget_s, max_steps)
        self._start_ingester()
        with self._trainer_lock:
            if self._trainer is None:
                self._trainer = ThreadPoolExecutor(1, thread_name_prefix="m3-train", initializer=self._nicer)
            trainer = self._trainer
        return trainer.submit(self._train_for, budget_s, max_steps).result()

    def _ingest(self, mem, kf) -> None:
        """mem.add_keyframe(kf) at the process's priority, on the ingest thread when training is niced.

        Ingesting holds the memory's lock; on the niced training thread, under 20 concurrent clients, one
        keyframe took 7 s (clean-clone CI: no train step and an autosave waiting 6.6 s meanwhile). New
        places becoming queryable is not background work; the train steps stay niced."""
        ingester = self._ingester
        if self.cfg.train_nice <= 0 or ingester is None:
            mem.add_keyframe(kf)
            return
        ingester.submit(mem.add_keyframe, kf).result()

    def _start_ingester(self) -> None:
        """Start the ingest thread from the calling thread: a thread takes the priority of the thread that
        makes it, and the training thread is niced."""
        with self._ingester_lock:  # not _trainer_lock: close() holds that while the trainer finishes
            if self._ingester is None:
                self._ingester = ThreadPoolExecutor(1, thread_name_prefix="m3-ingest", initializer=torch.set_num_threads,
                                                    initargs=(self._train_threads,))
                self._ingester.submit(lambda: None).result()  # the pool makes its thread at the first submit

    def _nicer(self) -> None:
        """Lower the calling (training) thread's priority by cfg.train_nice (a per-thread value on Linux) and
        give it the process's torch threads (a query thread's count is the default of threads made after it)."""
        torch.set_num_threads(self._train_threads)
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.cfg.train_nice))
        except (AttributeError, OSError) as e:  # not Linux, or not permitted: train at the same priority
            log.info("training thread keeps its priority: %s", e)

    def _train_for(self, budget_s: float, max_steps: int) -> int:
        t0 = time.monotonic()
        with self._swap_lock:
            mem, epoch = self.memory, self._epoch
        # A call that may train ingests one waiting keyframe, then steps: ingesting every waiting one
        # first took seconds on a loaded machine (about 1 s each) and training made no step at all
        # while 20 clients asked (test_autosave_load). An ingest-only call (max_steps 0) takes them all.
        while True:
            with self._lock:  # a reset since mem was read: its keyframes are for the new memory
                kf = self._ready_kf.popleft() if self._ready_kf and epoch == self._epoch else None
            if kf is None:
                break
            self._ingest(mem, kf)
            if max_steps > 0:
                break
        steps = 0
        if mem.n_gaussians == 0 or self.paused or max_steps == 0:
            self._last_step = time.monotonic()  # no step is wanted: nothing waits for one
            return 0
        # the first step is taken even when ingesting used up the budget: with keyframes arriving
        # all the time, every call ran out of budget in add_keyframe and training stopped
        while steps < max_steps and not self.paused and (steps == 0 or time.monotonic() - t0 < budget_s):
            # the first step of every call runs regardless, so back-to-back queries cannot starve
            # training (test_autosave_load: 20 clients stopped it completely)
            if self.cfg.queries_first and steps > 0:
                with self._no_queries:
                    if not self._no_queries.wait_for(lambda: self._queries == 0,
                                                     timeout=max(0.0, budget_s - (time.monotonic() - t0))):
                        break
            self._step(mem)
            steps += 1
        return steps

    def _step(self, mem) -> None:
        """One train step on this (niced) thread, or on the ingest thread once training has waited longer
        than cfg.train_max_wait_s: a niced thread can lose the CPU and the GIL to busier threads for
        seconds (see train_max_wait_s)."""
        ingester = self._ingester
        if (self.cfg.train_nice > 0 and ingester is not None
                and time.monotonic() - self._last_step > self.cfg.train_max_wait_s):
            ingester.submit(mem.train_step).result()
            self.urgent_steps += 1
        else:
            mem.train_step()
        self._last_step = time.monotonic()

    def pause_training(self, paused: bool) -> None:
        """Stop (or resume) train steps; on stopping, return once a step already running has finished,
        so that the iteration count stands still from then on (on the training thread, train_nice > 0)."""
        self.paused = bool(paused)
        if self.paused:
            self.train_for(0.0, max_steps=0)  # queued behind the training thread's running call

    def idle(self) -> bool:
        """True when no keyframe is waiting for extraction or ingestion."""
        with self._lock:
            return self._in_flight == 0 and not self._ready_kf

    # ---- queries ------------------------------------------------------------------
    @contextmanager
    def _query(self):
        """Marks a running query (training starts no new step meanwhile, see queries_first)."""
        with self._no_queries:
            self._queries += 1
        try:
            yield
        finally:
            with self._no_queries:
                self._queries -= 1
                if self._queries == 0:
                    self._no_queries.notify_all()

    def _query_thread(self) -> None:
        """This thread computes with cfg.query_threads intra-op threads (OpenMP's count is per thread) and
        keeps that count afterwards: setting it back and forth per call would also clear oneDNN's global
        primitive cache, which the feature extractor's convolutions use. The main thread is left alone:
        its count would become the process's. (Any thread's count is the default of threads created
        after it, so the training and feature threads set theirs when they start.)"""
        n = self.cfg.query_threads
        if n > 0 and torch.get_num_threads() != n and threading.current_thread() is not threading.main_thread():
            torch.set_num_threads(n)

    def _embed(self, q: str) -> torch.Tensor:
        """Text embedding [d] of a normalised query, from the cache when it was asked recently."""
        return self._embed_many([q])[0]

    def _embed_many(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings [n, d]: the cached ones looked up, the others encoded in one call and cached."""
        found: dict[str, torch.Tensor] = {}
        with self._texts_lock:
            for t in texts:
                if t in self._texts:
                    self._texts.move_to_end(t)
                    found[t] = self._texts[t]
        todo = list(dict.fromkeys(t for t in texts if t not in found))
        if todo:
            found.update(zip(todo, self._text_model.encode_text(todo)))
            with self._texts_lock:
                for t in todo:
                    self._texts[t] = found[t]
                while len(self._texts) > self.cfg.text_cache:
                    self._texts.popitem(last=False)
        return torch.stack([found[t] for t in texts])

    def _query_embeddings(self, q: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embedding [d], its colour swaps' [k, d] or None: grounding.contrast) of a normalised query."""
        if self.cfg.grounding.colour_contrast == "off":
            return self._embed(q), None
        return query_embeddings(self._embed_many, q)

    def _query_memory(self):
        """The memory to query, checked: ValueError while loading, without a text model, or empty."""
        if not self.ready:
            raise ValueError("memory is not ready: models are still loading"
                             + (f" (load failed: {self.load_error})" if self.load_error else ""))
        if self._text_model is None:
            raise ValueError(f"no text model among the loaded models {self.model_names}")
        with self._swap_lock:
            mem = self.memory
        if mem.n_gaussians == 0:
            raise ValueError("memory is empty: no keyframe has been added yet")
        return mem

    def ground(self, query: str, top_k: int = 1, camera: tuple | None = None) -> GroundingResult:
        """Text -> GroundingResult in the memory frame. ValueError for bad queries / empty memory.

        Runs on the memory's last published snapshot: never waits for a train step, and any number
        of threads may ground at once. View mode renders from ``camera`` (T_world_cam [4, 4], K [3, 3],
        width, height[, measured depth [height, width]]), by default the latest frame offered (with its depth). Callers asking the same question (same
        normalised text, top_k and grounding settings) while it is being answered on the same snapshot
        share that one answer (the same GroundingResult object: read it, do not edit it), or its error.
        """
        q = validate_query(query, self.cfg.grounding.max_query_chars)
        mem = self._query_memory()
        self._query_thread()
        with self._query():
            snap = mem.snapshot()
            gcfg = self.cfg.grounding
            if gcfg.mode == "view":  # answers depend on the camera: not shared
                emb, contrast = self._query_embeddings(q)
                return ground(snap, emb, self._text_model.name, gcfg, top_k,
                              camera=camera if camera is not None else self._camera, contrast=contrast)
            # The same question on the same snapshot has the same answer: a caller that finds it
            # already being answered waits for that answer instead of computing it again.
            key = (q, int(top_k), repr(gcfg), id(snap), snap.version)
            with self._inflight_lock:
                fut = self._inflight.get(key)
                owner = fut is None
                if owner:
                    fut = self._inflight[key] = Future()
            if not owner:
                return fut.result()
            try:
                emb, contrast = self._query_embeddings(q)
                res = ground(snap, emb, self._text_model.name, gcfg, top_k, contrast=contrast)
                fut.set_result(res)
                return res
            except BaseException as e:
                fut.set_exception(e)
                raise
            finally:
                with self._inflight_lock:
                    del self._inflight[key]

    def live_views(self) -> list[LiveView]:
        """The latest frames offered from where the robot stands now (LiveConfig.frames, still_views),
        oldest first, each placed in map through the current ``map -> odom``."""
        with self._lock:
            frames = list(self._live)
        T_map_odom = self.T_map_odom
        return [LiveView(depth=frames[i][2], K=frames[i][1], T_map_cam=T_map_odom @ frames[i][0], instances=frames[i][3])
                for i in still_views([f[0] for f in frames], self.cfg.live)]

    def refine_in_view(self, target: np.ndarray) -> tuple[LiveTarget | None, str]:
        """The memory's answer target [3] (map) found again in live_views(): the detector region whose
        label names what the memory holds there, and its depth (grounding/live.py, cfg.live); (None, why)
        where not."""
        feature = self.feature_at(target)  # the same errors as ground(): loading, no text model, empty memory
        views = self.live_views()
        if not views:
            return None, "no camera frame has been seen yet"
        return refine_in_view(target, feature, views, self._embed_many, self.cfg.live)

    def feature_at(self, point: np.ndarray) -> torch.Tensor:
        """[d] the memory's feature at point [3] (map) in the text model's space: the mean decoded feature
        of the cfg.live.answer_gaussians Gaussians nearest it (opacity >= grounding.min_opacity)."""
        mem = self._query_memory()
        snap = mem.snapshot()
        model = self._text_model.name
        tree, keep = snap.means_tree(self.cfg.grounding.min_opacity)
        k = min(self.cfg.live.answer_gaussians, len(keep))
        if k == 0:
            raise ValueError("no Gaussian of the memory is opaque enough to say what is at the answer")
        _, idx = tree.query(np.asarray(point, dtype=np.float64).reshape(3), k=k)
        rows = torch.from_numpy(keep[np.atleast_1d(idx)])
        return snap.decode(model, snap.queries[model][rows].float()).mean(0)

    def relevance_map(self, query: str, T_world_cam: np.ndarray, K: np.ndarray, width: int,
                      height: int) -> np.ndarray:
        """Relevance [height, width] of a text query rendered from one camera pose (NaN = nothing)."""
        q = validate_query(query, self.cfg.grounding.max_query_chars)
        try:
            mem = self._query_memory()
        except ValueError as e:
            raise ValueError(f"memory is not ready for queries: {e}") from e
        self._query_thread()
        with self._query():
            emb = self._embed(q)
            return relevance_image(mem.snapshot(), self._text_model.name, emb, (T_world_cam, K, width, height),
                                   self.cfg.grounding)

    def stats(self) -> dict:
        if not self.ready:
            return {"keyframes": 0, "gaussians": 0, "bank_rows": {}, "iteration": 0,
                    "last_loss": float("nan"), "train_time_s": 0.0}
        return self.memory.stats()

    # ---- persistence ---------------------------------------------------------------
    def save(self, path: str) -> None:
        if not self.ready:
            raise ValueError("nothing to save: models are still loading")
        self.memory.save(path)

    def load_memory(self, path: str) -> None:
        if not self.ready:
            raise ValueError("models are still loading; try again")
        from m3_ros.memory.memory import M3Memory
        mem = M3Memory.load(path)
        missing = set(mem.banks) - set(self._models)
        if missing:
            raise ValueError(f"memory at {path} needs models {sorted(missing)} that are not loaded")
        with self._swap_lock:  # running train steps and queries finish on the memory they hold
            self.memory = mem
            self._new_epoch()
        if self.cfg.refine_poses:
            # later keyframes align with what the loaded memory saw (it is stored in map);
            # T_map_odom stays: odometry that restarted elsewhere is not relocalised here
            self.tracker.set_reference([(kf.depth, kf.K, kf.T_world_cam) for kf in mem.keyframes])

    def reset(self) -> None:
        """Forget the memory, the keyframe selector's history and the drift correction (map = odom again).
        Keyframes offered before the call, extracted or not, never reach the new memory."""
        self.selector.reset()
        self.tracker.reset()  # first: a frame offered meanwhile is still of the old epoch, so dropped
        with self._swap_lock:
            if self.ready:
                self.memory = self._new_memory()
            self._new_epoch()
        self._camera = None  # its pose is in the old map
        self.first_keyframe_wall = None

    def _new_epoch(self) -> None:
        """Keyframes offered so far belong to the old memory (call under _swap_lock)."""
        with self._lock:
            self._epoch += 1
            self._ready_kf.clear()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
        with self._trainer_lock:
            if self._trainer is not None:
                self._trainer.shutdown(wait=True)
                self._trainer = None
        with self._ingester_lock:
            if self._ingester is not None:
                self._ingester.shutdown(wait=True)
                self._ingester = None

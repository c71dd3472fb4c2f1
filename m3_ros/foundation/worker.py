"""Feature extraction off the ROS executor: one background thread, cached per keyframe key."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from m3_ros.foundation.base import FeatureModel, check_rgb
from m3_ros.types import FeatureMap, Instance


@dataclass
class ModelTiming:
    """Extraction time statistics of one model."""

    frames: int = 0
    """Frames extracted (cache hits not counted)."""
    total_ms: float = 0.0
    """Summed extraction wall time."""
    last_ms: float = 0.0
    """Wall time of the most recent extraction."""

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.frames if self.frames else 0.0


class FeatureWorker:
    """Runs every model's `extract` on a background thread; results cached per key (keyframe index).

    Models are called from the worker thread only, so they need no locking of their own.
    """

    def __init__(self, models: dict[str, FeatureModel], cache_size: int = 64):
        if not models:
            raise ValueError("FeatureWorker needs at least one model")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.models = dict(models)
        self.cache_size = cache_size
        # the extraction thread fixes its torch threads to the count at construction: a count set on
        # another thread later (a query's, PipelineConfig.query_threads) is the default of new threads
        threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3_features",
                                        initializer=torch.set_num_threads, initargs=(threads,))
        self._lock = threading.Lock()
        self._cache: OrderedDict[object, Future] = OrderedDict()  # key -> done or pending future
        self._timing = {name: ModelTiming() for name in self.models}

    def _run(self, rgb: np.ndarray, instances: list[Instance] | None) -> dict[str, FeatureMap]:
        out: dict[str, FeatureMap] = {}
        for name, model in self.models.items():
            t0 = time.perf_counter()
            out[name] = model.extract(rgb, instances)
            ms = (time.perf_counter() - t0) * 1e3
            with self._lock:
                t = self._timing[name]
                t.frames += 1
                t.total_ms += ms
                t.last_ms = ms
        return out

    def submit(self, key: object, rgb: np.ndarray,
               instances: list[Instance] | None = None) -> Future:
        """Future of {model name: FeatureMap} for this key; the cached (or in-flight) one when the key was seen.

        A failed extraction is not cached, so a later submit with the same key retries.
        """
        check_rgb(rgb)
        with self._lock:
            fut = self._cache.get(key)
            if fut is not None:
                self._cache.move_to_end(key)
                return fut
            # copy: the caller may reuse its image buffer while the worker runs
            fut = self._pool.submit(self._run, rgb.copy(), list(instances) if instances else None)
            self._cache[key] = fut
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        fut.add_done_callback(lambda f, k=key: self._forget_failed(k, f))
        return fut

    def _forget_failed(self, key: object, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            with self._lock:
                if self._cache.get(key) is fut:
                    del self._cache[key]

    def cached(self, key: object) -> dict[str, FeatureMap] | None:
        """The finished features for key, or None (not submitted, evicted, pending or failed)."""
        with self._lock:
            fut = self._cache.get(key)
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        return fut.result()

    def stats(self) -> dict[str, ModelTiming]:
        """Per-model extraction timing (copies)."""
        with self._lock:
            return {k: ModelTiming(v.frames, v.total_ms, v.last_ms) for k, v in self._timing.items()}

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker thread; pending extractions are cancelled when wait is False."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

"""FeatureWorker (background extraction, per-key cache, timings) and the registry's config handling."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from m3_ros.foundation import FeatureModel, FeatureWorker, FoundationConfig, load_models
from m3_ros.types import FeatureMap


class CountingDense(FeatureModel):
    """A real (if trivial) feature model: mean colour per 8x8 cell; counts its calls and threads."""

    name = "cell_colour"
    dim = 3
    kind = "dense"

    def __init__(self, fail_first: bool = False):
        self.calls = 0
        self.threads: set[str] = set()
        self.fail_first = fail_first

    def extract(self, rgb, instances=None):
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.fail_first and self.calls == 1:
            raise RuntimeError("first extraction fails")
        x = torch.from_numpy(rgb).float().permute(2, 0, 1)[None]
        f = torch.nn.functional.avg_pool2d(x, 8)[0].permute(1, 2, 0)
        return FeatureMap(self.name, f.contiguous(), rgb.shape[:2])


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (32, 48, 3), dtype=np.uint8)


def test_worker_caches_per_key_and_runs_off_thread():
    model = CountingDense()
    worker = FeatureWorker({"cell_colour": model}, cache_size=2)
    try:
        a = worker.submit(0, _img(0)).result(timeout=30)
        again = worker.submit(0, _img(99)).result(timeout=30)  # same key: cached, image not re-read
        assert again is a and model.calls == 1
        assert a["cell_colour"].features.shape == (4, 6, 3)
        torch.testing.assert_close(a["cell_colour"].features[0, 0],
                                   torch.from_numpy(_img(0)[:8, :8].reshape(-1, 3)).float().mean(0))
        worker.submit(1, _img(1)).result(timeout=30)
        worker.submit(2, _img(2)).result(timeout=30)  # evicts key 0 (cache_size 2)
        assert worker.cached(0) is None and worker.cached(2) is not None
        worker.submit(0, _img(0)).result(timeout=30)
        assert model.calls == 4
        assert threading.current_thread().name not in model.threads
        st = worker.stats()["cell_colour"]
        assert st.frames == 4 and st.total_ms > 0 and st.mean_ms > 0
    finally:
        worker.shutdown()


def test_failed_extraction_is_not_cached():
    model = CountingDense(fail_first=True)
    worker = FeatureWorker({"cell_colour": model})
    try:
        with pytest.raises(RuntimeError, match="fails"):
            worker.submit(7, _img(7)).result(timeout=30)
        assert worker.cached(7) is None
        assert "cell_colour" in worker.submit(7, _img(7)).result(timeout=30)
    finally:
        worker.shutdown()


def test_worker_validates_input():
    with pytest.raises(ValueError, match="at least one model"):
        FeatureWorker({})
    worker = FeatureWorker({"cell_colour": CountingDense()})
    try:
        with pytest.raises(ValueError, match="uint8"):
            worker.submit(0, np.zeros((4, 4), dtype=np.uint8))
    finally:
        worker.shutdown()


def test_unknown_model_name_is_an_error():
    with pytest.raises(ValueError, match="clipp"):
        load_models(FoundationConfig(models=["clipp"]))


def test_real_models_through_worker(dinov2, label_model, tabletop):
    worker = FeatureWorker({"dinov2_s": dinov2, "minilm_labels": label_model})
    try:
        out = worker.submit(3, tabletop.rgb, tabletop.instances).result(timeout=120)
        assert out["dinov2_s"].features.shape == (17, 23, 384)
        assert out["minilm_labels"].features.shape == (60, 80, 384)
        assert set(worker.stats()) == {"dinov2_s", "minilm_labels"}
    finally:
        worker.shutdown()

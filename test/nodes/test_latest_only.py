"""LatestOnly (nodes/common.py): the memory node's markers and relevance image, for the newest query only."""
import threading
import time

from m3_ros.nodes.common import LatestOnly


def test_a_burst_is_served_once_with_its_newest_arguments_and_the_period_holds():
    calls: list[tuple[float, int]] = []
    first = threading.Event()
    release = threading.Event()

    def slow(i: int) -> None:
        calls.append((time.monotonic(), i))
        first.set()
        release.wait(10)

    w = LatestOnly(slow, lambda: 0.3, "test-outputs")
    try:
        w.submit(0)
        assert first.wait(10)  # the first call starts at once: nothing ran before it
        for i in range(1, 21):  # twenty more while it runs: only the newest is kept
            w.submit(i)
        release.set()
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # nothing else may follow
        assert [i for _, i in calls] == [0, 20]
        assert calls[1][0] - calls[0][0] >= 0.3 - 1e-3
    finally:
        w.close()


def test_an_error_is_reported_and_the_next_call_still_runs():
    errors, done = [], threading.Event()

    def fn(x: int) -> None:
        if x == 0:
            raise ValueError("no camera yet")
        done.set()

    w = LatestOnly(fn, lambda: 0.0, "test-outputs", errors.append)
    try:
        w.submit(0)
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        w.submit(1)
        assert done.wait(10)
        assert len(errors) == 1 and "no camera" in str(errors[0])
    finally:
        w.close()
    assert not w._thread.is_alive()

"""Test-wide settings: every run gets its own ROS domain, discovery stays on loopback."""
import os
import random
import threading

import pytest

# Set before any rclpy import so in-process nodes and spawned node processes share it.
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 200))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def while_held():
    """while_held(lock, fn) -> (fn returned within 5 s while another thread held lock, its result or None):
    for readers that must not wait for a lock a long computation holds."""
    def run(lock, fn):
        held, release, got = threading.Event(), threading.Event(), []

        def holder():
            with lock:
                held.set()
                release.wait(30)
        t = threading.Thread(target=holder)
        t.start()
        assert held.wait(10)
        reader = threading.Thread(target=lambda: got.append(fn()))
        reader.start()
        reader.join(5)
        answered = not reader.is_alive()
        release.set()
        t.join(10)
        reader.join(10)
        return answered, (got[0] if got else None)
    return run

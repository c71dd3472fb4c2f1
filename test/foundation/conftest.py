"""Shared fixtures of the foundation tests: the real offline models and one rendered table-top frame."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tabletop import TabletopFrame, render_tabletop  # noqa: E402

from m3_ros.foundation.config import FoundationConfig  # noqa: E402


@pytest.fixture(scope="session")
def tabletop() -> TabletopFrame:
    return render_tabletop()


@pytest.fixture(scope="session")
def dinov2():
    from m3_ros.foundation.dinov2 import load_dinov2
    return load_dinov2(FoundationConfig())


@pytest.fixture(scope="session")
def label_model():
    from m3_ros.foundation.labels import load_label_model
    return load_label_model(FoundationConfig())


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted in a test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts

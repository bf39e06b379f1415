"""Fixtures of the CARLA tests."""

import socket

import pytest


@pytest.fixture
def refused_port():
    """A loopback port nobody listens on (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

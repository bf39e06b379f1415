"""The server pool: host parsing, retries, dropping and NoCarlaServerError with the real client on loopback."""

import logging
import socket
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the CARLA Python client is not installed (pip install 'lts_jax[carla]')")

from simulators.carla import (  # noqa: E402
    CarlaPool,
    CarlaSession,
    CarlaSimulator,
    NoCarlaServerError,
    RenderConfig,
    SceneError,
    find_no_server_error,
    parse_hosts,
)
from simulators.carla.testing import FakeSession, FakeTraffic, make_scene  # noqa: E402

TIMEOUT = 0.3  # seconds per RPC: the dead servers below fail within this


@pytest.fixture
def silent_port():
    """A listener that accepts connections and never answers."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(ls.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield ls.getsockname()[1]
    ls.close()
    for c in held:
        c.close()


def _real_session(host, port):
    return CarlaSession(host, port, RenderConfig(4, 6, timeout_s=TIMEOUT))


def test_parse_hosts():
    assert parse_hosts("a:2000, b.example:2002") == [("a", 2000), ("b.example", 2002)]
    assert parse_hosts(["localhost:2000"]) == [("localhost", 2000)]
    assert parse_hosts("[::1]:2000") == [("::1", 2000)]
    for bad, entry in [
        ("a:2000,b", "'b'"),
        ("a:0", "'a:0'"),
        ("a:70000", "'a:70000'"),
        (":2000", "':2000'"),
        ("a:2000,,b:1", "''"),
        ("a:x", "'a:x'"),
    ]:
        with pytest.raises(ValueError, match=entry):
            parse_hosts(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_hosts("a:1,a:1")
    with pytest.raises(ValueError, match="empty"):
        parse_hosts(" ")


def test_all_dead_servers_raise_naming_the_hosts(refused_port, silent_port, caplog):
    hosts = [f"127.0.0.1:{refused_port}", f"127.0.0.1:{silent_port}"]
    pool = CarlaPool(hosts, _real_session, timeout_s=TIMEOUT, max_retries=1, backoff_s=0.05)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(NoCarlaServerError) as info:
        pool.render([make_scene(), make_scene(road_length=12)])
    elapsed = time.monotonic() - t0
    err = info.value
    assert err.hosts == hosts
    for h in hosts:
        assert h in str(err)
        assert "time-out" in err.errors[h]  # the client's own timeout message, per host
    assert pool.alive_hosts == [] and pool.fatal_error is err
    # 2 attempts (1 + max_retries) of ~TIMEOUT each, servers in parallel, plus one back-off.
    assert elapsed < 4 * TIMEOUT + 0.05 + 2.0
    assert sum("dropping CARLA server" in r.getMessage() for r in caplog.records) == 2
    assert sum("attempt 2 of 2" in r.getMessage() for r in caplog.records) == 2
    # Later calls fail at once.
    t0 = time.monotonic()
    with pytest.raises(NoCarlaServerError):
        pool.render([make_scene()])
    assert time.monotonic() - t0 < 0.1


def test_dead_servers_are_dropped_and_the_live_one_renders_everything(refused_port, silent_port, caplog):
    FakeSession.calls.clear()

    def session_fn(host, port):
        if port == 1:  # the one live "server"; slow enough that every server gets a scene
            return FakeSession(host, port, delay_s=0.05)
        return _real_session(host, port)

    hosts = f"127.0.0.1:{refused_port},localhost:1,127.0.0.1:{silent_port}"
    pool = CarlaPool(hosts, session_fn, timeout_s=TIMEOUT, max_retries=1, backoff_s=0.01)
    scenes = [make_scene(road_length=n) for n in range(8, 19)]
    with caplog.at_level(logging.WARNING):
        out = pool.render(scenes)
    assert [int(r["image"][0, 0, 0]) for r in out] == list(range(8, 19))  # order kept
    assert pool.alive_hosts == ["localhost:1"]
    assert pool.fatal_error is None
    assert sum("dropping CARLA server" in r.getMessage() for r in caplog.records) == 2
    assert sorted(n for _, n in FakeSession.calls) == list(range(8, 19))


def test_flaky_server_is_retried_with_backoff():
    attempts = []

    class Flaky(FakeSession):
        def render(self, scene):
            attempts.append(time.monotonic())
            if len(attempts) <= 2:
                raise RuntimeError("time-out of 300ms while waiting for the simulator")
            return super().render(scene)

    pool = CarlaPool("h:1", lambda h, p: Flaky(h, p), max_retries=2, backoff_s=0.05)
    out = pool.render([make_scene()])
    assert len(out) == 1 and len(attempts) == 3 and pool.alive_hosts == ["h:1"]
    gaps = np.diff(attempts)
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # backoff_s * 2**attempt


def test_scene_error_is_not_a_server_failure():
    pool = CarlaPool("h:1", lambda h, p: _ValidatingSession(), max_retries=3, backoff_s=0.0)
    with pytest.raises(SceneError, match="road_length|num_blocks"):
        pool.render([make_scene(road_length=30)])
    assert pool.alive_hosts == ["h:1"]


class _ValidatingSession(FakeSession):
    def __init__(self):
        super().__init__("h", 1)

    def render(self, scene):
        from simulators.carla.session import validate_scene

        validate_scene(scene)
        return super().render(scene)


def test_connect_drops_dead_servers(refused_port):
    pool = CarlaPool(
        f"127.0.0.1:{refused_port},live:1",
        lambda h, p: FakeSession(h, p) if p == 1 else _real_session(h, p),
        timeout_s=TIMEOUT,
        max_retries=0,
        backoff_s=0.0,
    )
    assert pool.connect() == ["live:1"]


def test_error_crosses_the_jitted_bridge(refused_port):
    """Inside jit the error arrives wrapped by JAX; find_no_server_error recovers it."""
    pool = CarlaPool(f"127.0.0.1:{refused_port}", _real_session, timeout_s=TIMEOUT, max_retries=0, backoff_s=0.0)
    sim = CarlaSimulator(None, 4, 6, traffic=FakeTraffic(), pool=pool)
    psi = jnp.zeros((2, sim.spec.dim))
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(Exception) as info:
        jax.block_until_ready(jax.jit(jax.vmap(lambda k, p: sim.sample(k, p, 3)))(keys, psi))
    err = find_no_server_error(info.value, sim)
    assert isinstance(err, NoCarlaServerError) and err is sim.fatal_error
    assert f"127.0.0.1:{refused_port}" in str(err)
    assert find_no_server_error(ValueError("unrelated"), sim) is None
    # Without the simulator, the error is rebuilt from the text.
    assert isinstance(find_no_server_error(info.value), NoCarlaServerError)

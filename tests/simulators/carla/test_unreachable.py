"""Unreachable CARLA servers on loopback, without a CARLA server or client (issue 15.4): a refused connection
fails in well under a second, a silent listener within the pool's timeout_s for all its attempts together."""

import socket
import threading
import time

import pytest

from simulators.carla import CarlaPool, CarlaSimulator, NoCarlaServerError
from simulators.carla.pool import ServerUnreachable, probe


class Listener:
    """A loopback listener that accepts connections and answers every request with ``reply`` (None: silent)."""

    def __init__(self, reply: bytes | None = None, port: int = 0):
        self.reply, self.received, self.held = reply, [], []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.reply is not None:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            self.received.append(conn.recv(64))
            conn.sendall(self.reply)
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def silent_port():
    listener = Listener(reply=None)
    yield listener.port
    listener.close()


def never(host, port):
    raise AssertionError("no session is opened for a server that did not answer the probe")


def test_probe_refused_at_once_silent_within_its_time_answering_passes(refused_port, silent_port):
    t0 = time.monotonic()
    with pytest.raises(ServerUnreachable, match="refused the connection") as err:
        probe("127.0.0.1", refused_port, 30.0)
    assert err.value.refused and time.monotonic() - t0 < 0.5
    t0 = time.monotonic()
    with pytest.raises(ServerUnreachable, match="did not answer within 0.4 s") as err:
        probe("127.0.0.1", silent_port, 0.4)
    assert not err.value.refused and 0.35 < time.monotonic() - t0 < 1.5
    server = Listener(reply=b"\x94\x01\x00\xc0\xa60.9.16")
    try:
        probe("127.0.0.1", server.port, 5.0)
        assert server.received == [b"\x94\x00\x00\xa7version\x90"]  # msgpack-rpc: the server's version call
    finally:
        server.close()


def test_refused_server_is_dropped_in_about_a_second_with_the_default_retries(refused_port):
    """Issue 15.4: three 30 s time-outs (and 3 s of back-off) even for a refused connection."""
    host = f"127.0.0.1:{refused_port}"
    pool = CarlaPool(host, never, timeout_s=30.0, max_retries=2, backoff_s=1.0, probe_fn=probe)
    t0 = time.monotonic()
    with pytest.raises(NoCarlaServerError, match="refused the connection") as err:
        pool.render([{"road_length": 8}])
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed
    assert err.value.hosts == [host] and pool.alive_hosts == []
    t0 = time.monotonic()
    with pytest.raises(NoCarlaServerError):
        CarlaPool(host, never, probe_fn=probe).connect()
    assert time.monotonic() - t0 < 1.0


def test_silent_server_is_dropped_within_one_timeout(silent_port, refused_port):
    hosts = f"127.0.0.1:{silent_port},127.0.0.1:{refused_port}"
    pool = CarlaPool(hosts, never, timeout_s=1.2, max_retries=2, backoff_s=1.0, probe_fn=probe)
    t0 = time.monotonic()
    with pytest.raises(NoCarlaServerError) as err:
        pool.connect()
    elapsed = time.monotonic() - t0
    assert 1.0 < elapsed < 1.2 + 0.6, elapsed  # the three attempts share the 1.2 s
    assert "did not answer" in err.value.errors[f"127.0.0.1:{silent_port}"]
    assert "refused" in err.value.errors[f"127.0.0.1:{refused_port}"]


def test_the_carla_simulator_probes_its_servers(refused_port):
    sim = CarlaSimulator(f"127.0.0.1:{refused_port}", 24, 80, timeout_s=5.0)
    assert sim.pool.probe_fn is probe and sim.describe()["timeout_s"] == 5.0
    t0 = time.monotonic()
    with pytest.raises(NoCarlaServerError, match="Start the servers"):
        sim.connect()
    assert time.monotonic() - t0 < 1.0

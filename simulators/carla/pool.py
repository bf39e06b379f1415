"""A pool of CARLA servers that renders many scenes at once. Host-only, not jittable.

``CarlaPool.render(scenes)`` spreads the scenes over the live servers, one
thread per server (a CARLA client talks to one server and each server renders
one scene at a time). Each scene gets ``1 + max_retries`` attempts on a server,
with exponential back-off (``backoff_s * 2**attempt``) and a fresh connection
after every failure; every RPC and every wait for a camera frame is limited to
``timeout_s``. A server that fails all attempts on a scene is dropped for the
rest of the pool's life (with a warning) and its scene goes to the others. When
no server is left, :class:`NoCarlaServerError` names every host and its last
error.

Connecting: before a session is opened the pool checks that the server answers
(``probe_fn``, :func:`probe` for real servers: a TCP connection and one
msgpack-rpc call, no CARLA client needed). A refused connection (nothing
listens) fails at once and is retried after short back-offs
(:data:`REFUSED_BACKOFF_S`), so a dead host is known in well under a second; a
silent one (a listener that never answers) is given ``timeout_s`` for all its
connection attempts together, so it is dropped within one ``timeout_s``.

Contract with the experiment driver: the simulator's host function runs inside
the jitted policy step, so JAX re-raises this error wrapped (a JaxRuntimeError
whose text contains ``NoCarlaServerError``). The driver catches exceptions around
the step, asks :func:`find_no_server_error` whether one is this error, and if so
saves a checkpoint of the last completed iteration, logs the message and exits
cleanly (the experiments: exit status 3); a resumed run redoes the interrupted
iteration with the same keys.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from lts_jax.run.errors import SimulatorUnavailable
from simulators.carla.session import SceneError

# Back-off before retrying a refused connection (doubling per retry): nothing listens there, so waiting the
# full back-off of a failed render would only delay the verdict.
REFUSED_BACKOFF_S = 0.1
# A msgpack-rpc request [type 0, id 0, "version", []]: the CARLA server's version call (carla.Client's first).
_VERSION_REQUEST = b"\x94\x00\x00\xa7version\x90"


class ServerUnreachable(ConnectionError):
    """A CARLA server did not answer the pool's probe: ``refused`` (nothing listens) or silent (no answer
    within the time given)."""

    def __init__(self, message: str, refused: bool):
        super().__init__(message)
        self.refused = refused


def probe(host: str, port: int, timeout_s: float) -> None:
    """Checks that a CARLA server answers at ``host:port`` within ``timeout_s``, without the CARLA client.

    Opens a TCP connection (refused at once when nothing listens) and sends one msgpack-rpc call of the
    server's ``version`` function; any answer proves a live server (a listener that never answers is not
    one). Raises ServerUnreachable naming the address. Host-only.
    """
    address = f"{host}:{port}"
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.settimeout(max(timeout_s - (time.monotonic() - t0), 0.01))
            conn.sendall(_VERSION_REQUEST)
            if not conn.recv(1):
                raise ServerUnreachable(f"{address} closed the connection without answering", refused=False)
    except ServerUnreachable:
        raise
    except ConnectionRefusedError:
        raise ServerUnreachable(f"{address} refused the connection (no server listens there)", refused=True) from None
    except TimeoutError:
        raise ServerUnreachable(
            f"{address} accepted the connection but did not answer within {timeout_s:.3g} s", refused=False
        ) from None
    except OSError as e:  # no route, unknown host name, reset
        raise ServerUnreachable(f"{address}: {e.strerror or e}", refused=False) from None


class NoCarlaServerError(SimulatorUnavailable):
    """Every CARLA server of the pool has been dropped.

    Attributes:
      hosts: the pool's hosts, ``"host:port"``.
      errors: ``{host: last error text}``.
    """

    def __init__(self, hosts: Sequence[str], errors: dict[str, str] | None = None):
        self.hosts = list(hosts)
        self.errors = dict(errors or {})
        detail = "; ".join(f"{h}: {self.errors.get(h, 'dropped')}" for h in self.hosts)
        super().__init__(
            f"NoCarlaServerError: no CARLA server left; all of {', '.join(self.hosts)} failed ({detail}). "
            "Start the servers (simulators/carla/README.md) and resume the run from its checkpoint."
        )


def find_no_server_error(exc: BaseException, simulator: Any = None) -> NoCarlaServerError | None:
    """The NoCarlaServerError behind ``exc``, or None.

    ``exc`` may be the error itself, have it in its cause/context chain, or be
    JAX's wrapper of a host-callback failure, which carries only text; then the
    simulator's (or pool's) recorded error is returned, or a new one rebuilt from
    the text's host list when no simulator is given.
    """
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, NoCarlaServerError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    if "NoCarlaServerError" not in str(exc):
        return None
    pool = getattr(simulator, "pool", simulator)
    recorded = getattr(pool, "fatal_error", None)
    if isinstance(recorded, NoCarlaServerError):
        return recorded
    return NoCarlaServerError(getattr(pool, "hosts", ["<unknown hosts>"]), {"*": str(exc).splitlines()[0]})


def parse_hosts(hosts: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"a:2000,b:2002"`` or ``["a:2000", ...]`` -> [("a", 2000), ...].

    Raises ValueError naming the bad entry: empty, no port, a port outside
    1..65535, or a duplicate.
    """
    entries = [h.strip() for h in hosts.split(",")] if isinstance(hosts, str) else [str(h).strip() for h in hosts]
    if not entries or all(not e for e in entries):
        raise ValueError(f"carla_hosts is empty ({hosts!r}); expected host:port[,host:port...], e.g. localhost:2000")
    out: list[tuple[str, int]] = []
    for entry in entries:
        host, sep, port = entry.rpartition(":")
        if not entry or not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                f"carla_hosts entry {entry!r} (in {hosts!r}) is not host:port with a port in 1..65535; "
                "expected e.g. localhost:2000,localhost:2002"
            )
        if host.startswith("[") and host.endswith("]"):  # [::1]:2000
            host = host[1:-1]
        if (host, int(port)) in out:
            raise ValueError(f"carla_hosts entry {entry!r} appears twice in {hosts!r}")
        out.append((host, int(port)))
    return out


@dataclasses.dataclass
class _Server:
    host: str
    port: int
    session: Any = None
    alive: bool = True
    last_error: str = ""
    scenes_rendered: int = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class CarlaPool:
    """Renders scenes on several CARLA servers concurrently. Not jittable.

    Args:
      hosts: ``"host:port,..."`` or a list of ``"host:port"``.
      session_fn: ``session_fn(host, port) -> session`` with ``session.render(scene)
        -> dict`` and ``session.close()``; connects (may raise). Typically
        ``lambda h, p: CarlaSession(h, p, config)``.
      timeout_s: the limit of every RPC (the sessions enforce it), and of all the connection attempts to one
        server together (the probe: a silent server is dropped within it).
      max_retries: further attempts on the same server after a scene fails.
      backoff_s: sleep before retry i is ``backoff_s * 2**i`` (a refused connection: REFUSED_BACKOFF_S instead).
      probe_fn: ``probe_fn(host, port, timeout_s)`` run before each session is opened, raising when the
        server does not answer (:func:`probe` for real servers); None: none (fake sessions).
    """

    def __init__(
        self,
        hosts: str | Sequence[str],
        session_fn: Callable[[str, int], Any],
        *,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        probe_fn: Callable[[str, int, float], None] | None = None,
    ):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_s < 0 or timeout_s <= 0:
            raise ValueError(f"need backoff_s >= 0 and timeout_s > 0, got {backoff_s}, {timeout_s}")
        self.servers = [_Server(h, p) for h, p in parse_hosts(hosts)]
        self.hosts = [s.name for s in self.servers]
        self.session_fn = session_fn
        self.probe_fn = probe_fn
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.fatal_error: NoCarlaServerError | None = None

    @property
    def alive_hosts(self) -> list[str]:
        return [s.name for s in self.servers if s.alive]

    def _no_server(self) -> NoCarlaServerError:
        self.fatal_error = NoCarlaServerError(self.hosts, {s.name: s.last_error for s in self.servers})
        return self.fatal_error

    def _drop(self, server: _Server) -> None:
        server.alive = False
        self._close(server)
        logging.warning(
            "dropping CARLA server %s after %d failed attempts (last error: %s); %d server(s) left: %s",
            server.name,
            self.max_retries + 1,
            server.last_error,
            len(self.alive_hosts),
            self.alive_hosts,
        )

    @staticmethod
    def _close(server: _Server) -> None:
        session, server.session = server.session, None
        if session is not None:
            try:
                session.close()
            except Exception as e:  # noqa: BLE001 - best effort on a failing server
                logging.info("closing %s: %s", server.name, e)

    def _open(self, server: _Server, deadline: float, attempts_left: int) -> None:
        """Probes the server (its share of the time to ``deadline``) and opens its session."""
        if self.probe_fn is not None:
            wait = max((deadline - time.monotonic()) / max(attempts_left, 1), 0.05)
            self.probe_fn(server.host, server.port, wait)
        server.session = self.session_fn(server.host, server.port)

    def _backoff(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait before retry ``attempt + 1``: none after a silent probe (its wait was the back-off),
        short after a refused connection, else ``backoff_s * 2**attempt``."""
        if isinstance(error, ServerUnreachable):
            return min(self.backoff_s, REFUSED_BACKOFF_S) * 2**attempt if error.refused else 0.0
        return self.backoff_s * 2**attempt

    def _attempt(self, server: _Server, scene: Any) -> tuple[bool, Any]:
        """(True, result) or (False, None) after all attempts failed; SceneError propagates."""
        deadline = None  # all the connection attempts to this server share one timeout_s
        for attempt in range(self.max_retries + 1):
            try:
                if server.session is None:
                    deadline = deadline or time.monotonic() + self.timeout_s
                    self._open(server, deadline, self.max_retries + 1 - attempt)
                result = server.session.render(scene)
                server.scenes_rendered += 1
                return True, result
            except SceneError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure of a remote server counts
                server.last_error = f"{type(e).__name__}: {e}"
                logging.warning(
                    "CARLA server %s failed (attempt %d of %d): %s",
                    server.name,
                    attempt + 1,
                    self.max_retries + 1,
                    server.last_error,
                )
                self._close(server)
                if attempt < self.max_retries:
                    time.sleep(self._backoff(e, attempt))
        return False, None

    def _work(self, server: _Server, scenes, todo: list[int], results: list, done: list, errors: list, lock) -> None:
        """One server's thread: takes scenes from ``todo`` until it is empty, an error occurs or the server drops."""
        while True:
            with lock:
                if not todo or errors:
                    return
                i = todo.pop()
            try:
                ok, result = self._attempt(server, scenes[i])
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                with lock:
                    errors.append(e)
                return
            if not ok:
                self._drop(server)
                return  # the scene stays pending for the next round
            results[i], done[i] = result, True

    def render(self, scenes: Sequence[Any]) -> list[Any]:
        """Renders every scene; results in the order of ``scenes``.

        Raises:
          NoCarlaServerError: when every server has been dropped (also on every
            later call).
          SceneError: a scene could not be placed (not a server failure).
        """
        results: list[Any] = [None] * len(scenes)
        done = [False] * len(scenes)
        pending = list(range(len(scenes)))
        while pending:
            live = [s for s in self.servers if s.alive]
            if not live:
                raise self._no_server()
            todo = list(reversed(pending))
            errors: list[BaseException] = []
            lock = threading.Lock()
            threads = [
                threading.Thread(
                    target=self._work,
                    args=(s, scenes, todo, results, done, errors, lock),
                    name=f"carla-{s.name}",
                    daemon=True,
                )
                for s in live
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            pending = [i for i in pending if not done[i]]
        return results

    def connect(self) -> list[str]:
        """Connects every live server concurrently (a server that fails 1 + max_retries times is dropped).

        Lets a driver find dead servers, and have the atlas generated, before the
        first iteration. Returns the live hosts; raises NoCarlaServerError if none.
        """

        def work(server: _Server) -> None:
            deadline = time.monotonic() + self.timeout_s
            for attempt in range(self.max_retries + 1):
                try:
                    if server.session is None:
                        self._open(server, deadline, self.max_retries + 1 - attempt)
                    return
                except Exception as e:  # noqa: BLE001 - any failure of a remote server counts
                    server.last_error = f"{type(e).__name__}: {e}"
                    logging.warning(
                        "connecting to CARLA server %s failed (attempt %d of %d): %s",
                        server.name,
                        attempt + 1,
                        self.max_retries + 1,
                        server.last_error,
                    )
                    if attempt < self.max_retries:
                        time.sleep(self._backoff(e, attempt))
            self._drop(server)

        threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in self.servers if s.alive]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not self.alive_hosts:
            raise self._no_server()
        return self.alive_hosts

    def close(self) -> None:
        """Closes every session (the servers go back to asynchronous mode)."""
        for s in self.servers:
            self._close(s)

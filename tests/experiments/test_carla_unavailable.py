"""car_count --simulator=carla when the servers go away (issue 15.4): the search's iterations and the rendering of
the validation and test sets take the same retry-then-clean-stop path: exit 3, the last good checkpoint kept,
the message saying how to resume; the same command resumes once the servers are back. Loopback only: the
"server" is a listener that answers the pool's probe, the rendering a FakeSession (no CARLA needed)."""

import time

import pytest

from experiments import car_count
from experiments.lib import car_count as lib
from lts_jax.run import checkpoint
from simulators.carla import simulator as carla_simulator
from simulators.carla.testing import FakeSession
from tests.conftest import LinearCountTask
from tests.simulators.carla.test_unreachable import Listener

FLAGS = [
    "--simulator=carla", "--height=24", "--width=80", "--num_iterations=3", "--num_candidates=2",
    "--dataset_size=2", "--mtm_epochs=1", "--val_size=4", "--test_size=4", "--test_every=0",
    "--reference_iterations=0", "--final_window=1", "--checkpoint_every=1", "--noprogress", "--carla_timeout=1",
]  # fmt: skip


class Servers:
    """One loopback "CARLA server": a listener answering the probe while up; its sessions render FakeSession
    images and fail (ConnectionError) once it is down, or after ``fail_after`` renders."""

    def __init__(self):
        self.listener = Listener(reply=b"\x94\x01\x00\xc0\xa60.9.16")
        self.port, self.renders, self.fail_after = self.listener.port, 0, None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def down(self):
        self.listener.close()
        self.listener = None

    def up(self):
        self.listener = Listener(reply=b"\x94\x01\x00\xc0\xa60.9.16", port=self.port)

    def session(self, host, port, config):
        servers, inner = self, FakeSession(host, port, config.height, config.width)

        class Session:
            def render(self, scene):
                servers.renders += 1
                if servers.fail_after is not None and servers.renders > servers.fail_after:
                    servers.down()
                    servers.fail_after = None
                if servers.listener is None:
                    raise ConnectionError("the server went away")
                return inner.render(scene)

            def close(self):
                inner.close()

        return Session()


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow  # three in-process runs of car_count (about 40 s on 2 loaded cores)
def test_lost_servers_stop_cleanly_with_exit_3_and_the_same_command_resumes(tmp_path, cli, monkeypatch):
    servers = Servers()
    monkeypatch.setattr(carla_simulator, "CarlaSession", servers.session)
    monkeypatch.setattr(lib, "make_task", lambda cfg, h, w: LinearCountTask())
    workdir = tmp_path / "cc"
    args = [f"--workdir={workdir}", f"--carla_hosts={servers.hosts}", *FLAGS]

    # the server goes away during iteration 2: the iterations' path
    servers.fail_after = 4 + 4 + 2 * 2 * 2  # validation, test, 2 iterations of K x M
    status, err = cli(car_count.main, *args)
    assert status == 3, err[-3000:]
    assert "refused the connection" in err and "re-run the same command to resume" in err
    assert f"last good checkpoint, {workdir / 'checkpoints' / '2'}, is kept" in err
    assert checkpoint.list_steps(workdir / "checkpoints") == [1, 2]
    before = files(workdir)

    # still down: now the validation and test sets cannot be rendered; the same path, nothing changed
    t0 = time.monotonic()
    status, err = cli(car_count.main, *args)
    assert status == 3 and "re-run the same command to resume" in err, err[-3000:]
    assert time.monotonic() - t0 < 30
    after = files(workdir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) <= {k for k in after if k.startswith("events.out.tfevents")}

    # back up: the same command resumes from checkpoint 2 and finishes
    servers.up()
    status, err = cli(car_count.main, *args)
    assert status == 0, err[-3000:]
    assert checkpoint.list_steps(workdir / "checkpoints")[-1] == 3
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and lines[:2] == before["metrics.jsonl"].decode().splitlines()  # rows 0, 1 kept as they were


@pytest.mark.parametrize("what", ["refused", "silent"])
def test_unreachable_servers_before_any_work_exit_3_fast(tmp_path, cli, what):
    listener = Listener(reply=None) if what == "silent" else None
    if listener is None:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    else:
        port = listener.port
    try:
        t0 = time.monotonic()
        status, err = cli(car_count.main, f"--workdir={tmp_path / 'w'}", f"--carla_hosts=127.0.0.1:{port}", *FLAGS)
        elapsed = time.monotonic() - t0
    finally:
        if listener is not None:
            listener.close()
    assert status == 3, err[-3000:]
    assert ("refused the connection" if what == "refused" else "did not answer within") in err
    assert "Start the servers and re-run the same command to resume" in err
    assert "Traceback" not in err
    assert elapsed < 60, elapsed  # the scene sampler compiles first; the servers' verdict takes ~0.3 s / 1 s

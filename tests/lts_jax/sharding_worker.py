"""The subprocess side of tests/lts_jax/test_sharding.py: runs with several (forced CPU) devices or as one
process of a jax.distributed run, so that the pytest process keeps its single device.

    python -m tests.lts_jax.sharding_worker CASE OUT_DIR [PROCESS_ID PORT]

Each case asserts what it checks and exits non-zero (with the traceback) when a check fails; it writes
what the test compares across processes as JSON under OUT_DIR.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax import lts, parallel, run
from lts_jax.host import host_renderer
from lts_jax.search import policy
from lts_jax.simulator import Field, SceneSimulatorBase
from simulators import gmm
from tests.conftest import LogisticTask

TOL = dict(rtol=2e-5, atol=2e-6)


class HostRenderedGMM(SceneSimulatorBase):
    """The GMM toy whose 'renderer' runs on the host (NumPy) through the bridge; records every call's scenes."""

    def __init__(self):
        self.gmm = gmm.GMMSimulator(1)
        self.spec = self.gmm.spec
        self.outputs = {"x": Field((2,), np.float32), "y": Field((), np.int32)}
        self.calls: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.render = host_renderer(self.render_host, self.outputs)

    def sample_scenes(self, key, psi, num):
        return self.gmm.sample(key, psi, num)

    def render_host(self, scenes):
        with self._lock:
            self.calls.append(np.array(scenes["x"]))
        return {"x": 0.5 * scenes["x"] + 1.0, "y": scenes["y"]}


def setup(num_devices: int, K: int = 8, M: int = 8, **kw):
    sim = HostRenderedGMM()
    task = LogisticTask(steps_per_epoch=3)
    pol = policy.GaussianPolicy(sim.spec, learning_rate=0.1)
    config = lts.LTSConfig(num_candidates=K, dataset_size=M, num_devices=num_devices, **kw)
    return sim, task, pol, config


def data(seed: int, num: int = 32):
    return jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(seed, num))


def assert_close(a, b, what: str) -> None:
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=what, **TOL)


def assert_equal(a, b, what: str) -> None:
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=what)


def check_shard_calls(calls: list[np.ndarray], full: np.ndarray, n: int) -> None:
    """``calls`` (any order: the devices call from their own threads) are the n equal candidate blocks of
    ``full``, the one-device call's scenes in candidate-major order."""
    assert len(calls) == n, [c.shape for c in calls]
    blocks = np.split(full, n)
    found = sorted(i for c in calls for i, b in enumerate(blocks) if b.shape == c.shape and np.allclose(b, c, **TOL))
    assert found == list(range(n)), (found, [c.shape for c in calls])


def run_steps(make, n: int, iterations: int = 2):
    sim, task, pol, config = setup(n, retain_mtm=True, keep_best_mtm=True)
    step = make(config, sim, task, pol)
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())
    val, test = lts.replicate(config, data(1)), lts.replicate(config, data(2))
    history, calls = [], []
    for i in range(iterations):
        state, metrics = step(state, jax.random.key(10 + i), val, test)
        jax.block_until_ready(metrics)
        history.append(metrics)
        calls.append(list(sim.calls))
        sim.calls.clear()
    return state, history, calls


def case_steps(out: Path) -> None:
    """make_step and make_split_step on 4 devices equal their one-device runs; the host renderer is called
    once per device with that device's candidates; state and metrics come back replicated."""
    assert jax.device_count() == 4, jax.devices()
    mesh = parallel.candidate_mesh(4)
    for name, make in (("make_step", lts.make_step), ("make_split_step", lts.make_split_step)):
        s1, h1, c1 = run_steps(make, 1)
        s4, h4, c4 = run_steps(make, 4)
        for i, (m1, m4) in enumerate(zip(h1, h4)):
            assert set(m1) == set(m4), (name, set(m1) ^ set(m4))
            for k in m1:
                assert_close(m1[k], m4[k], f"{name} iteration {i}: {k}")
            assert len(c1[i]) == 1 and c1[i][0].shape == (8 * 8, 2), (name, [c.shape for c in c1[i]])
            check_shard_calls(c4[i], c1[i][0], 4)
        assert_close(s1, s4, f"{name}: state")
        rep = parallel.replicated_sharding(mesh)
        for leaf in jax.tree_util.tree_leaves((s4, h4[-1])):
            assert leaf.sharding == rep, (name, leaf.sharding)
    # Uneven K is refused before any work, naming K and the device count.
    try:
        lts.LTSConfig(num_candidates=6, num_devices=4)
    except ValueError as e:
        assert "num_candidates = 6" in str(e) and "num_devices = 4" in str(e), e
    else:
        raise AssertionError("K = 6 on 4 devices was accepted")
    (out / "steps.json").write_text(json.dumps({"ok": True}))


def case_resume(out: Path) -> None:
    """A checkpoint written on 4 devices restores on 1 and continues, and the other way round: bitwise
    equal to the same run without the checkpoint in between, and close to the run on one mesh."""
    assert jax.device_count() == 4, jax.devices()
    built = {}
    for n in (1, 4):
        sim, task, pol, config = setup(n, retain_mtm=True)
        built[n] = (sim, task, pol, config, lts.make_step(config, sim, task, pol))
    val = data(1)
    base_key = jax.random.key(7)

    def fresh(n):
        sim, task, pol, config, _ = built[n]
        return lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())

    def loop(n, state, stop):
        return lts.run_loop(built[n][4], state, base_key, stop, lts.replicate(built[n][3], val))

    def search(n, workdir, stop):
        sim, _, _, config, step = built[n]
        return run.run_search(
            step, fresh(n), base_key, stop, lts.replicate(config, val), workdir=workdir, spec=sim.spec,
            progress=False, tensorboard=False, figures=False, handle_signals=False, checkpoint_every=0,
        )  # fmt: skip

    for first, then in ((4, 1), (1, 4)):
        workdir = out / f"resume_{first}_to_{then}"
        run.prepare_workdir(workdir, config={"case": "resume"})
        half, _ = search(first, workdir, 2)
        resumed, history = search(then, workdir, 4)
        assert [row["step"] for row in history] == [0, 1, 2, 3], history
        assert run.checkpoint.list_steps(workdir / run.CHECKPOINT_DIR) == [2, 4]
        handed_over = half if then == 4 else jax.device_put(half, jax.devices()[0])
        reference = loop(then, handed_over, 4)  # the same devices, the state handed over in memory
        assert_equal(resumed, reference, f"{first} -> {then} devices: resumed vs in memory")
        assert_close(resumed, loop(first, fresh(first), 4), f"{first} -> {then} devices: resumed vs {first} devices")
        # The restored arrays take the layout of the target (this run's devices).
        want = parallel.replicated_sharding(parallel.candidate_mesh(4)) if then == 4 else None
        for leaf in jax.tree_util.tree_leaves(resumed):
            assert (leaf.sharding == want) if want else len(leaf.devices()) == 1, leaf.sharding
    (out / "resume.json").write_text(json.dumps({"ok": True}))


def case_distributed(out: Path, process_id: int, port: int) -> None:
    """One of two processes of a jax.distributed run on loopback: a quick run_search with the candidates
    split over both processes' devices; only process 0 writes the run's files."""
    started = run.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, timeout_s=60)
    assert started and jax.process_count() == 2 and jax.process_index() == process_id
    assert run.distributed.is_main_process() == (process_id == 0)
    sim, task, pol, config = setup(jax.device_count(), K=4)
    step = lts.make_split_step(config, sim, task, pol)
    workdir = run.prepare_workdir(out / "run", config={"case": "distributed", "num_iterations": 3})
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())
    state, history = run.run_search(
        step, state, jax.random.key(7), 3, lts.replicate(config, data(1)), workdir=workdir, spec=sim.spec,
        progress=False, handle_signals=False, checkpoint_every=2,
    )  # fmt: skip
    if run.distributed.is_main_process():
        run.write_json(workdir / "results.json", {"rewards": [row["rewards"] for row in history]})
    # Each process rendered only its own candidates: K / 2 x M scenes per call, one call per iteration.
    calls = [c.shape for c in sim.calls]
    (out / f"process{process_id}.json").write_text(
        json.dumps({"rewards": [row["rewards"] for row in history], "calls": calls, "iteration": int(state.iteration)})
    )


def main(argv: list[str]) -> None:
    case, out = argv[1], Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if case == "distributed":
        case_distributed(out, int(argv[3]), int(argv[4]))
    else:
        {"steps": case_steps, "resume": case_resume}[case](out)


if __name__ == "__main__":
    main(sys.argv)

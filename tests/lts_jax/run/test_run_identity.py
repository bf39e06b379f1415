"""The run's identity inside its checkpoints (issue 15.2): the configuration and a fingerprint of the simulator,
task and search go with every checkpoint; a resume is checked against them even without flags.txt (which is
written again from the checkpoint); a checkpoint of another shape is named as such, not as corruption; the
newest ``keep`` checkpoints are all that stay, also after a resume that saved nothing."""

import functools
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from experiments import common
from lts_jax import lts, run
from lts_jax.run import checkpoint
from lts_jax.run.metrics import TIMING_COLUMNS
from lts_jax.search import policy
from simulators import gmm
from tests.conftest import LogisticTask

FLAGS = {"workdir": "/x", "seed": 0, "num_iterations": 4, "num_candidates": 4, "progress": True}
MANAGEMENT = {"workdir", "progress"}


@functools.cache
def setup(num_gaussians: int = 1, num_candidates: int = 4):
    sim = gmm.GMMSimulator(num_gaussians)
    task = LogisticTask(steps_per_epoch=2)
    pol = policy.GaussianPolicy(sim.spec, learning_rate=0.1)
    config = lts.LTSConfig(num_candidates=num_candidates, dataset_size=16, train_strategy="loop")
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 32))
    step = lts.make_step(config, sim, task, pol)
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())
    return step, state, val, sim.spec


def search(workdir: Path, num_iterations=4, stop_after=None, flags=FLAGS, setup_args=(), **kw):
    """prepare_workdir with ``flags``, then run_search (stopped after ``stop_after`` iterations: Interrupted)."""
    step, state, val, spec = setup(*setup_args)
    run.prepare_workdir(workdir, config={**flags, "num_iterations": num_iterations}, ignore=MANAGEMENT)
    done = []
    options = dict(progress=False, checkpoint_every=1, handle_signals=False, figures=False, tensorboard=False)
    options.update(kw)
    return run.run_search(
        step, state, jax.random.key(9), num_iterations, val, workdir=workdir, spec=spec,
        extra_hooks=[lambda i, s, m: done.append(i)],
        should_stop=(lambda: stop_after is not None and len(done) >= stop_after), **options,
    )  # fmt: skip


def rows(history):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in history]


def test_every_checkpoint_holds_the_configuration_and_fingerprint(tmp_path):
    search(tmp_path, num_iterations=2)
    for step in (1, 2):
        meta = checkpoint.read_meta(tmp_path / "checkpoints" / str(step))
        assert meta["iteration"] == step and meta["num_iterations"] == 2
        assert meta["config"] == {**run.read_config(tmp_path), "num_iterations": "2"}
        assert meta["config"]["num_candidates"] == "4"
        assert meta["fingerprint"]["simulator"] == {"name": "gmm", "num_gaussians": 1}
        assert meta["fingerprint"]["search"]["name"] == "lts" and "dim=8" in meta["fingerprint"]["search"]["spec"]
        assert meta["fingerprint"]["task"]["class"].endswith("LogisticTask")
        assert meta["fingerprint"]["lts"]["num_candidates"] == 4
        assert meta["layout"]["search.params.mean"] == "float32[8]"


def test_lost_flags_txt_another_configuration_is_refused_and_flags_txt_rebuilt(tmp_path):
    """Issue 15.2: without flags.txt a resume with K = 2 went on from K = 4's checkpoint, mixing two runs."""
    reference = tmp_path / "reference"
    ref_state, ref_history = search(reference)
    work = tmp_path / "run"
    with pytest.raises(run.Interrupted):
        search(work, stop_after=2)
    (work / "flags.txt").unlink()
    before = {p.relative_to(work): p.read_bytes() for p in work.rglob("*") if p.is_file()}

    with pytest.raises(run.WorkdirError) as err:
        run.prepare_workdir(work, config={**FLAGS, "num_candidates": 2}, ignore=MANAGEMENT)
    assert err.value.differences == [("num_candidates", "4", "2")]
    shown = common.user_message(err.value)
    assert "--num_candidates: 4 in the run, now 2" in shown and str(work / "checkpoints" / "2") in shown
    # flags.txt is back, with the run's own settings; nothing else changed
    assert run.read_config(work)["num_candidates"] == "4"
    after = {p.relative_to(work): p.read_bytes() for p in work.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if str(k) != "flags.txt"} == before

    # the run's own configuration resumes it, exactly as the uninterrupted run
    (work / "flags.txt").unlink()
    state, history = search(work)
    assert rows(history) == rows(ref_history)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert run.read_config(work) == run.read_config(reference)


def test_another_simulator_task_or_search_is_refused_listing_what_differs(tmp_path):
    ident = {"simulator": {"name": "gmm", "num_gaussians": 1, "hosts": "a:1"}, "task": {"class": "T"}}
    with pytest.raises(run.Interrupted):
        search(tmp_path, stop_after=1, identity=ident)
    other = {"simulator": {"name": "gmm", "num_gaussians": 3, "hosts": "b:2"}, "task": {"class": "T"}}
    with pytest.raises(run.WorkdirError) as err:
        search(tmp_path, identity=other)
    assert err.value.differences == [("simulator.num_gaussians", "1", "3")]  # hosts may change
    assert "simulator.num_gaussians: 1 in the run, now 3" in str(err.value)
    # a volatile entry alone (the CARLA hosts) resumes
    search(tmp_path, identity={**ident, "simulator": {**ident["simulator"], "hosts": "c:3"}})


def test_checkpoint_of_another_shape_is_named_not_corrupt(tmp_path, caplog):
    """Issue 15.2: orbax's "set strict=False" advice and the checkpoint reported as corrupt."""
    with pytest.raises(run.Interrupted):
        search(tmp_path, stop_after=2, setup_args=(2,))  # 2 Gaussians per class: psi of dim 16
    (tmp_path / "flags.txt").unlink()
    for step in (1, 2):  # also for a checkpoint without a layout in its meta (written before it had one)
        meta_file = tmp_path / "checkpoints" / str(step) / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        if step == 1:
            del meta["layout"]
        del meta["config"]  # the shape alone tells
        meta_file.write_text(json.dumps(meta))
    absl_logging.get_absl_logger().addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            with pytest.raises(checkpoint.LayoutMismatch) as err:
                search(tmp_path, setup_args=(1,))
            shutil_free = checkpoint.list_steps(tmp_path / "checkpoints")
            (tmp_path / "checkpoints" / "2").rename(tmp_path / "checkpoints" / "2.hidden")
            with pytest.raises(checkpoint.LayoutMismatch) as old:
                search(tmp_path, setup_args=(1,))
    finally:
        absl_logging.get_absl_logger().removeHandler(caplog.handler)
    msg = common.user_message(err.value)
    assert "holds the state of another configuration" in msg and "strict" not in msg
    assert "search.params.mean: float32[16] in the checkpoint, float32[8] now" in msg
    assert "--overwrite" in msg and "--workdir" in msg
    assert "search.params.mean: [16] in the checkpoint, [8] now" in str(old.value)  # from orbax's own metadata
    assert shutil_free == [1, 2] and not (tmp_path / "checkpoints_corrupt").exists()  # nothing moved aside
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("Event loop is closed" in m or "strict" in m or "Traceback" in m for m in noise), noise


def test_keep_holds_after_a_resume_that_saved_nothing(tmp_path):
    """Issue 15.6: keep=3 left four checkpoints (and a crashed save's temporary directory stayed)."""
    with pytest.raises(run.Interrupted):
        search(tmp_path, stop_after=4, num_iterations=6, keep_checkpoints=5)
    assert checkpoint.list_steps(tmp_path / "checkpoints") == [1, 2, 3, 4]
    (tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1234").mkdir()  # a save cut short by kill -9
    with pytest.raises(run.Interrupted):
        search(tmp_path, stop_after=0, num_iterations=6, keep_checkpoints=3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3", "4"]

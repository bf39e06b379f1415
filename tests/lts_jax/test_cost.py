"""Cost accounting (issue 17.3): examples generated, MTM optimiser steps, simulator / training / wall seconds per
iteration and summed over a run, continued across a resume; results.json's "cost"; cost.png."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.lib import common, gmm_toy
from lts_jax import lts, run
from lts_jax.search import policy
from lts_jax.tasks import TaskBase
from lts_jax.tasks.trainer import TrainState
from simulators import gmm
from tests.conftest import LogisticTask

K, M, XI = 3, 16, 2


class SteppingLogistic(LogisticTask):
    """LogisticTask whose state counts its gradient steps (as the shared trainer's TrainState does)."""

    def init(self, key):
        return {**super().init(key), "steps": jnp.zeros((), jnp.int32)}

    def train(self, state, data, key, epochs):
        trained = super().train({"w": state["w"]}, data, key, epochs)
        return {**trained, "steps": state["steps"] + self.steps_per_epoch * epochs}

    def optimizer_steps(self, state):
        return state["steps"]


class SlowTwoStageGMM:
    """The GMM as a scene simulator for make_split_step whose host-level rendering takes ``delay_s``."""

    def __init__(self, delay_s: float):
        self.sim = gmm.GMMSimulator(1)
        self.spec, self.delay_s = self.sim.spec, delay_s

    def sample(self, key, psi, num):
        return self.sim.sample(key, psi, num)

    def sample_scenes(self, key, psi, num):
        return self.sim.sample(key, psi, num)

    def render_batches(self, flat):
        time.sleep(self.delay_s)
        return flat


def _setup(retain_mtm=True):
    task = SteppingLogistic()
    config = lts.LTSConfig(num_candidates=K, dataset_size=M, mtm_epochs=XI, retain_mtm=retain_mtm)
    pol = policy.GaussianPolicy(gmm.GMMSimulator(1).spec, learning_rate=0.1)
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 32))
    return task, config, pol, val


def _search(workdir, step, state, num_iterations, val, **kwargs):
    workdir.mkdir(exist_ok=True)
    return run.run_search(step, state, jax.random.key(5), num_iterations, val, workdir=workdir,
                          spec=gmm.GMMSimulator(1).spec, progress=False, **kwargs)  # fmt: skip


def test_optimizer_steps_default():
    """The base counts the shared trainer's TrainState.step; any other state (a host SVM's data) took none."""
    state = TrainState(params={}, opt_state=(), step=jnp.array(7, jnp.int32), train_loss=jnp.array(0.0))
    assert int(TaskBase().optimizer_steps(state)) == 7
    assert int(TaskBase().optimizer_steps({"x": jnp.zeros(3)})) == 0


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_counters_of_a_run_and_its_resume(tmp_path):
    """Per iteration: K x M examples and (K + AMTM) x steps; the running sums equal i + 1 times them, the wall
    total is the sum of the iterations' time_s; a run stopped after 2 iterations and resumed continues its
    sums instead of restarting them (and matches an uninterrupted run's counters)."""
    task, config, pol, val = _setup()
    step = lts.make_step(config, gmm.GMMSimulator(1), task, pol)
    fresh = lts.init_state(config, task, pol, jax.random.key(0), pol.spec.zeros())
    per_step = (K + 1) * task.steps_per_epoch * XI

    _, whole = _search(tmp_path / "whole", step, fresh, 4, val)
    for i, row in enumerate(whole):
        assert row["cost_images"] == K * M and row["cost_images_total"] == K * M * (i + 1)
        assert row["cost_mtm_steps"] == per_step and row["cost_mtm_steps_total"] == per_step * (i + 1)
        np.testing.assert_allclose(row["cost_wall_s_total"], sum(r["time_s"] for r in whole[: i + 1]))
        assert "cost_sim_s" not in row  # the fused step cannot tell sampling from training
    assert (tmp_path / "whole" / "cost.png").stat().st_size > 5000

    calls = []
    with pytest.raises(run.Interrupted):
        _search(tmp_path / "resumed", step, fresh, 4, val, should_stop=lambda: calls.append(0) or len(calls) > 2)
    assert len(run.read_metrics(tmp_path / "resumed")) == 2
    _, resumed = _search(tmp_path / "resumed", step, fresh, 4, val)
    on_disk = run.read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in on_disk] == [0, 1, 2, 3] and resumed == on_disk
    for key in ("cost_images_total", "cost_mtm_steps_total"):
        assert [r[key] for r in resumed] == [r[key] for r in whole], key
    times = [r["time_s"] for r in resumed]
    np.testing.assert_allclose([r["cost_wall_s_total"] for r in resumed], np.cumsum(times))

    totals = run.cost_totals(resumed)
    assert totals["iterations"] == 4 and totals["images"] == 4 * K * M and totals["mtm_steps"] == 4 * per_step
    assert totals["sim_s"] is None and totals["train_s"] is None
    np.testing.assert_allclose(totals["wall_s"], sum(times))


def test_split_step_measures_simulator_and_training_seconds(tmp_path):
    """make_split_step times sampling + rendering (a renderer that sleeps 50 ms) apart from the rest of the step;
    both are logged per iteration and summed; the step's other metrics are those of the fused step."""
    task, config, pol, val = _setup(retain_mtm=False)
    source = SlowTwoStageGMM(0.05)
    step = lts.make_split_step(config, source, task, pol)
    assert isinstance(step, lts.SplitStep) and step.clock.take() == {}
    state = lts.init_state(config, task, pol, jax.random.key(0), pol.spec.zeros())
    _, rows = _search(tmp_path, step, state, 2, val, figures=False)
    for i, row in enumerate(rows):
        assert 0.05 <= row["cost_sim_s"] < row["time_s"] and row["cost_train_s"] >= 0
        assert row["cost_sim_s"] + row["cost_train_s"] <= row["time_s"] + 1e-6
        np.testing.assert_allclose(row["cost_sim_s_total"], sum(r["cost_sim_s"] for r in rows[: i + 1]))
        assert row["cost_mtm_steps"] == K * task.steps_per_epoch * XI and row["cost_images"] == K * M
    cost = common.cost(rows, eval_images=64)
    assert cost["images"] == 2 * K * M + 64 and cost["search_images"] == 2 * K * M and cost["eval_images"] == 64
    np.testing.assert_allclose(cost["sim_s"], sum(r["cost_sim_s"] for r in rows))
    assert cost["train_s"] > 0 and "split step" in cost["timing"]


def test_results_json_cost_of_an_experiment(tmp_path):
    """gmm_toy's results.json carries the run's cost: K x M x iterations examples plus its validation and test
    sets, no optimiser steps (the SVM is fitted on the host), the wall time only (fused step)."""
    cfg = gmm_toy.GmmToyConfig(num_iterations=3, num_candidates=2, dataset_size=20, val_size=40, test_size=50,
                               eval_repeats=1, progress=False)  # fmt: skip
    cost = gmm_toy.train_and_evaluate(cfg, tmp_path, figures=False)["cost"]
    assert cost["search_images"] == 3 * 2 * 20 and cost["images"] == 3 * 2 * 20 + 90 and cost["iterations"] == 3
    assert cost["mtm_steps"] == 0 and cost["sim_s"] is None and cost["wall_s"] > 0 and "fused" in cost["timing"]
    both = common.cost_of_runs({"a": cost, "b": cost, "failed": None}, eval_images=90)
    assert both["search_images"] == 2 * cost["search_images"] and both["images"] == both["search_images"] + 90
    assert both["sim_s"] is None and set(both["by_run"]) == {"a", "b"}

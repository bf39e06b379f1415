"""Library misuse is a named error at the call that is wrong (issue 15.7), and non-finite values are refused
or named (issue 15.3): at validation (variances, learning rates) and when they reach a host task through the
bridge (lts.NonFiniteError naming the iteration, not scikit-learn's traceback from inside the callback)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import lts, run
from lts_jax.host import HostSimulator
from lts_jax.optim import make_optimizer
from lts_jax.search.policy import GaussianPolicy
from lts_jax.simulator import Field
from lts_jax.tasks.svm import SVMTask
from simulators import gmm

SIM = gmm.GMMSimulator(1)
SPEC = SIM.spec
CONFIG = lts.LTSConfig(num_candidates=2, dataset_size=10)
VAL = gmm.sample_real(1, 20)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GaussianPolicy(SPEC, variance=float("inf")), "policy variance must be finite, got inf"),
        (lambda: GaussianPolicy(SPEC, learning_rate=float("inf")), "learning rate must be finite, got inf"),
        (lambda: GaussianPolicy(SPEC, max_std=float("inf")), "max_std must be finite, got inf"),
        (lambda: make_optimizer("adam", float("inf")), "learning rate must be finite, got inf"),
        (lambda: make_optimizer("sgd", 0.1, grad_clip=float("inf")), "grad_clip must be finite, got inf"),
    ],
)
def test_infinite_variances_and_rates_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_candidates": 2.5}, r"num_candidates = 2.5 is out of range; accepted: an integer >= 1"),
        ({"dataset_size": 2.5}, r"dataset_size = 2.5 is out of range; accepted: an integer >= 1"),
        ({"num_candidates": True}, r"num_candidates = True is out of range"),
        ({"mtm_epochs": -1}, r"mtm_epochs = -1 is out of range; accepted: an integer >= 0"),
    ],
)
def test_lts_config_takes_integers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lts.LTSConfig(**kwargs)
    assert lts.LTSConfig(num_candidates=np.int64(4)).num_candidates == 4


def test_make_step_names_a_missing_or_misplaced_argument():
    task, pol = SVMTask(10), GaussianPolicy(SPEC)
    for args, match in (
        ((CONFIG, SIM, None, pol), r"make_step\(config, simulator, task, search\): task must be a Task"),
        ((CONFIG, task, SIM, pol), r"simulator must be a Simulator \(spec, sample\), got SVMTask"),
        ((CONFIG, SIM, pol, task), r"task must be a Task \(init, train, evaluate\), got GaussianPolicy"),
        ((SIM, CONFIG, task, pol), r"config must be an lts.LTSConfig, got GMMSimulator"),
        ((CONFIG, SIM, task, None), r"search must be a search strategy"),
    ):
        with pytest.raises(TypeError, match=match):
            lts.make_step(*args)


def test_search_checks_its_arguments():
    """Already refused since the search base (StrategyBase): psi0 of another dimension, rewards of another count."""
    pol = GaussianPolicy(SPEC)
    with pytest.raises(ValueError, match=r"psi0 must be \[8\]"):
        pol.init(jax.random.key(0), jnp.zeros(SPEC.dim + 1))
    state = pol.init(jax.random.key(0), jnp.zeros(SPEC.dim))
    with pytest.raises(ValueError, match=r"rewards must be \[3\], one per row of psi, got \[2\]"):
        pol.tell(state, jnp.zeros((3, SPEC.dim)), jnp.zeros(2))


def run_steps(task, val=VAL, num_iterations=1, sim=SIM):
    pol = GaussianPolicy(SPEC)
    step = lts.make_step(CONFIG, sim, task, pol)
    state = lts.init_state(CONFIG, task, pol, jax.random.key(0), SPEC.zeros())
    return lts.run_loop(step, state, jax.random.key(1), num_iterations, val)


def test_svm_task_names_bad_data_before_the_host_is_called():
    """Missing keys or 3-D points gave a KeyError or scikit-learn's traceback from inside the callback."""
    with pytest.raises(ValueError, match=r"evaluation data lacks \['y'\]; it needs x \[N, 2\] and y \[N\]"):
        run_steps(SVMTask(10), val={"x": VAL["x"]})
    with pytest.raises(ValueError, match=r"evaluation data must be x \[N, 2\] and y \[N\].*got x \[20, 3\]"):
        run_steps(SVMTask(10), val={"x": np.zeros((20, 3), np.float32), "y": VAL["y"]})
    with pytest.raises(ValueError, match=r"SVMTask\(train_size=5\) got a training set of 10 examples"):
        run_steps(SVMTask(5))


def test_run_loop_refuses_a_negative_number_of_iterations():
    with pytest.raises(ValueError, match=r"num_iterations = -1 is out of range; accepted: an integer >= 0"):
        run_steps(SVMTask(10), num_iterations=-1)


def test_non_finite_data_reaching_the_host_task_names_the_iteration(tmp_path):
    """Issue 15.3: NaN points reached scikit-learn inside the callback: a 100-line traceback, no iteration."""
    calls = []

    def sample_fn(seeds, psi, num):  # a host simulator whose second call goes wrong
        calls.append(len(seeds))
        rng = np.random.default_rng(len(calls))
        x = rng.normal(size=(len(seeds), num, 2)).astype(np.float32)
        if len(calls) >= 2:
            x[:, 0, 0] = np.nan
        return {"x": x, "y": np.tile(np.arange(num) % 2, (len(seeds), 1)).astype(np.int32)}

    sim = HostSimulator(SPEC, sample_fn, {"x": Field((2,), np.float32), "y": Field((), np.int32)})
    pol = GaussianPolicy(SPEC)
    task = SVMTask(10)
    step = lts.make_step(CONFIG, sim, task, pol)
    state = lts.init_state(CONFIG, task, pol, jax.random.key(0), SPEC.zeros())
    with pytest.raises(lts.NonFiniteError, match=r"^iteration 1: non-finite "):
        run.run_search(step, state, jax.random.key(1), 3, VAL, workdir=tmp_path, spec=SPEC, progress=False,
                       handle_signals=False, figures=False)  # fmt: skip
    assert run.checkpoint.list_steps(tmp_path / "checkpoints") == [1]  # the last good iteration is kept

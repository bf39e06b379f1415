"""The Task protocol as declared: the base's defaults, what the library's tasks declare, what the step reads."""

import jax
import jax.numpy as jnp
import pytest

from lts_jax import lts, parallel
from lts_jax.search import FixedSearch
from lts_jax.tasks import Task, TaskBase
from lts_jax.tasks.counting import CountingTask
from lts_jax.tasks.segmentation import SegmentationTask
from lts_jax.tasks.svm import SVMTask
from lts_jax.tasks.trainer import TrainState
from simulators import gmm


def test_base_defaults():
    task = TaskBase()
    assert task.required_strategy is None and task.preferred_strategy is None
    assert task.train_metrics({"w": jnp.zeros(3)}) == {}
    assert parallel.strategy_for(task, "loop") == "loop"
    with pytest.raises(AttributeError):
        task.data_keys  # noqa: B018 (no default: every task names what it reads)


@pytest.mark.parametrize(
    "task, keys, required, preferred",
    [
        (CountingTask(16, 16), ("image", "counts"), None, None),
        (SegmentationTask("fcn_small", 16, 32), ("image", "label"), None, "map"),
        (SVMTask(4), ("x", "y"), "vmap", None),
    ],
    ids=["counting", "segmentation", "svm"],
)
def test_library_tasks_declare_the_protocol(task, keys, required, preferred):
    assert isinstance(task, TaskBase)
    for member in ("init", "train", "evaluate", "train_metrics"):
        assert callable(getattr(task, member))
    assert task.data_keys == keys
    assert task.required_strategy == required and task.preferred_strategy == preferred


def test_train_metrics_of_the_trainer_tasks():
    state = TrainState(params={}, opt_state=(), step=jnp.zeros((), jnp.int32), train_loss=jnp.array(0.25))
    assert SegmentationTask("fcn_small", 16, 32).train_metrics(state) == {"loss": state.train_loss}
    # The counting task logs nothing of training (its metrics.jsonl keys stay as they were).
    assert CountingTask(16, 16).train_metrics(state) == {}


def test_step_logs_declared_train_metrics(logistic_task):
    """make_step logs the candidates' mean of what train_metrics returns, as train_<name>, and nothing for the
    base's default."""

    class WithNorm(type(logistic_task)):
        def train_metrics(self, state):
            return {"w_norm": jnp.linalg.norm(state["w"])}

    sim = gmm.GMMSimulator(1)
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 16))
    config = lts.LTSConfig(num_candidates=2, dataset_size=8, train_strategy="vmap")
    strategy = FixedSearch(sim.spec)
    for task, expected in ((logistic_task, set()), (WithNorm(), {"train_w_norm"})):
        t: Task = task
        state = lts.init_state(config, t, strategy, jax.random.key(0), sim.spec.zeros())
        _, metrics = lts.make_step(config, sim, t, strategy)(state, jax.random.key(1), val)
        assert {k for k in metrics if k.startswith("train_")} == expected

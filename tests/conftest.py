"""Fixtures shared across the test tree (tiny shapes; each compiles in well under a second).

Compilation is much of the suite's time: the session shares compiled programs through JAX's persistent
compilation cache in a fresh temporary directory (so a run starts cold). The experiments' tests build the
same programs again and again (a new simulator, task or jitted lambda per run); each is compiled once per
session instead. Set up here, at import, because JAX decides whether to use the cache at its first
compilation. (LLVM's optimisations off, ``--xla_backend_optimization_level=0``, halves compile times but
doubles the run time of the training tests: measured, no net gain, so XLA's defaults stay.)
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from lts_jax.tasks import TaskBase
from lts_jax.tasks.counting import l1_per_type

# One cache per test run: the process that starts pytest makes it (and removes it at exit) and hands it to
# pytest-xdist's workers, which it spawns after importing this file, through the environment; so the workers
# share what either compiled.
_SHARED = "LTS_TEST_COMPILE_CACHE"
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_SHARED):
    COMPILE_CACHE = os.environ[_SHARED]
else:
    COMPILE_CACHE = tempfile.mkdtemp(prefix="lts_jax_test_compile_cache_")
    atexit.register(shutil.rmtree, COMPILE_CACHE, ignore_errors=True)
    os.environ[_SHARED] = COMPILE_CACHE
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
# ... every program, also in the experiments' subprocesses and under --compile_cache_dir (lib/traffic.py)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

# The real data sets (KITTI semantics, CamVid) live outside the repository: ../shared/data from its root, or
# wherever LTS_DATA_DIR says.
DATA_DIR_VARIABLE = "LTS_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_data_dir(name: str) -> str:
    """The directory of the real data set ``name`` (e.g. ``"kitti_semantics"``, ``"camvid"``) under $LTS_DATA_DIR
    (default ``../shared/data`` from the repository root); skips the calling test when it is not there."""
    base = os.environ.get(DATA_DIR_VARIABLE) or str(DEFAULT_DATA_DIR)
    path = os.path.join(base, name)
    if not os.path.isdir(path):
        pytest.skip(
            f"real data {name!r} not found at {path}: set {DATA_DIR_VARIABLE} to the directory that holds it "
            f"(default {DEFAULT_DATA_DIR})"
        )
    return path


class LogisticTask(TaskBase):
    """A tiny pure-JAX task: logistic regression on 2-D points (the GMM toy's ``x``, ``y``), full-batch GD.

    ``steps_per_epoch`` gradient steps of size 0.5 per epoch; reward = accuracy.
    """

    data_keys = ("x", "y")

    def __init__(self, steps_per_epoch: int = 5):
        self.steps_per_epoch = steps_per_epoch

    def init(self, key):
        return {"w": 0.01 * jax.random.normal(key, (3,))}

    def train(self, state, data, key, epochs):
        x = jnp.concatenate([data["x"], jnp.ones((data["x"].shape[0], 1))], 1)
        y = data["y"].astype(jnp.float32)

        def loss(w):
            return jnp.mean(jax.nn.softplus(x @ w) - y * (x @ w))

        def body(w, _):
            return w - 0.5 * jax.grad(loss)(w), None

        w, _ = jax.lax.scan(body, state["w"], None, length=self.steps_per_epoch * epochs)
        return {"w": w}

    def evaluate(self, state, data):
        x = jnp.concatenate([data["x"], jnp.ones((data["x"].shape[0], 1))], 1)
        acc = jnp.mean(((x @ state["w"]) > 0) == (data["y"] == 1))
        return {"reward": acc, "accuracy": acc}


@pytest.fixture
def logistic_task():
    """A :class:`LogisticTask` (5 steps per epoch); ``type(logistic_task)(steps_per_epoch=n)`` for others."""
    return LogisticTask()


class LinearCountTask(TaskBase):
    """Counts per car type as a linear function of an image's mean colour, fitted by a few gradient steps on the
    L1 error; reward = -L1 (the counting task's metric). It compiles in a second, so a test that runs it over a
    traffic-shaped simulator (``image``, ``counts``) is about the simulator's and the step's path, not the CNN."""

    data_keys = ("image", "counts")

    def init(self, key):
        return {"w": 0.01 * jax.random.normal(key, (4, 5))}

    def _features(self, images):
        x = images.astype(jnp.float32).mean(axis=(1, 2)) / 255.0
        return jnp.concatenate([x, jnp.ones((x.shape[0], 1))], axis=1)

    def train(self, state, data, key, epochs):
        x, y = self._features(data["image"]), data["counts"].astype(jnp.float32)
        rates = 0.5 + 0.01 * jax.random.normal(key, (epochs,))  # uses the key, as a shuffling task would

        def body(w, rate):
            return w - rate * jax.grad(lambda w: jnp.mean(jnp.abs(x @ w - y)))(w), None

        w, _ = jax.lax.scan(body, state["w"], rates)
        return {"w": w}

    def evaluate(self, state, data):
        per_type = l1_per_type(self._features(data["image"]) @ state["w"], data["counts"])
        return {"reward": -jnp.mean(per_type), "l1": jnp.mean(per_type), "l1_per_type": per_type}


@pytest.fixture
def count_task():
    """A :class:`LinearCountTask`."""
    return LinearCountTask()

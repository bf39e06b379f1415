"""An RBF-kernel SVM main task model (paper section 4.1), fitted on the host.

scikit-learn's SVC cannot run inside jit, so the task's state is simply its
training set (a pytree of arrays) and :meth:`SVMTask.evaluate` fits and scores
on the host through the bridge (:func:`lts_jax.host.host_call`). Under
``vmap`` over K candidates the bridge makes ONE host call that fits all K SVMs
(in a thread pool: libsvm releases the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.svm import SVC

from lts_jax.host import host_call
from lts_jax.tasks.base import TaskBase


def fit_svc(x: np.ndarray, y: np.ndarray, C: float = 1.0, gamma: float | str = "scale") -> SVC:
    """An RBF SVC fitted on x [N, 2], y [N]. Host only, not jittable."""
    return SVC(kernel="rbf", C=C, gamma=gamma).fit(np.asarray(x, np.float64), np.asarray(y))


class SVMTask(TaskBase):
    """RBF-SVM classification; reward = accuracy on the evaluation data.

    Args:
      train_size: M, the size of the training sets the state holds (static shapes).
      C, gamma: SVC hyper-parameters.
      threads: host threads fitting the K SVMs of one call (default: CPU count).
    """

    # The bridge must see all K candidates at once.
    required_strategy = "vmap"
    data_keys = ("x", "y")

    def __init__(self, train_size: int, C: float = 1.0, gamma: float | str = "scale", threads: int | None = None):
        if train_size < 2:
            raise ValueError(f"train_size must be >= 2 (one example per class), got {train_size}")
        self.train_size = int(train_size)
        self.C = float(C)
        self.gamma = gamma
        self.threads = threads or os.cpu_count() or 1
        self.host_calls = 0  # how many times the host fitted (tests check one call per iteration)

    def init(self, key: jax.Array) -> dict[str, jax.Array]:
        del key
        return {"x": jnp.zeros((self.train_size, 2), jnp.float32), "y": jnp.zeros((self.train_size,), jnp.int32)}

    def train(self, state, data, key, epochs: int):
        """The state is the training set itself: data x [train_size, 2], y [train_size] (checked when traced)."""
        del state, key, epochs  # an SVM is fitted in one go, at evaluation, on the host
        x, y = _points(data, "training data")
        if x.shape[0] != self.train_size:
            raise ValueError(
                f"SVMTask(train_size={self.train_size}) got a training set of {x.shape[0]} examples; "
                f"train_size must be the data set size (LTSConfig.dataset_size)"
            )
        return {"x": x, "y": y}

    def _fit_score(self, train_x, train_y, eval_x, eval_y):
        """Host side. A candidate whose data holds NaN or inf gets a NaN reward (scikit-learn would raise inside
        the callback): the driver then stops with lts.NonFiniteError naming the iteration."""
        self.host_calls += 1

        def one(b):
            if not (np.all(np.isfinite(train_x[b])) and np.all(np.isfinite(eval_x[b]))):
                return float("nan")
            clf = fit_svc(train_x[b], train_y[b], self.C, self.gamma)
            return float(np.mean(clf.predict(np.asarray(eval_x[b], np.float64)) == eval_y[b]))

        with ThreadPoolExecutor(max_workers=min(self.threads, len(train_x))) as pool:
            acc = np.array(list(pool.map(one, range(len(train_x)))), np.float32)
        return {"reward": acc, "accuracy": acc}

    def evaluate(self, state, data) -> dict[str, jax.Array]:
        """Accuracy on data x [N, 2], y [N] (checked when traced, before the host is called)."""
        x, y = _points(data, "evaluation data")
        shapes = {"reward": jax.ShapeDtypeStruct((), jnp.float32), "accuracy": jax.ShapeDtypeStruct((), jnp.float32)}
        return host_call(self._fit_score, shapes, state["x"], state["y"], x, y)


def _points(data, what: str) -> tuple[jax.Array, jax.Array]:
    """(x [N, 2], y [N]) of ``data``; ValueError naming what is missing or misshapen."""
    missing = [k for k in SVMTask.data_keys if k not in data]
    if missing:
        raise ValueError(f"SVMTask: the {what} lacks {missing}; it needs x [N, 2] and y [N], has {sorted(data)}")
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    if x.ndim != 2 or x.shape[1] != 2 or y.shape != x.shape[:1]:
        raise ValueError(
            f"SVMTask: the {what} must be x [N, 2] and y [N] (2-D points), got x {list(x.shape)}, y {list(y.shape)}"
        )
    return x, y

"""Orbax checkpoints of the run state: round trip, retention, corrupt fallback, failed writes."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import lts
from lts_jax.run import checkpoint
from lts_jax.search import policy
from simulators import gmm


def make_state(iteration: int, seed: int = 0) -> lts.LTSState:
    """An LTSState with a policy (Adam state, baseline, Best), an AMTM and a best MTM."""
    spec = gmm.make_spec(1)
    pol = policy.GaussianPolicy(spec, learning_rate=0.1)
    search = pol.init(jax.random.key(0), jax.random.normal(jax.random.key(seed), (spec.dim,)))
    psi = jax.random.normal(jax.random.key(seed + 1), (4, spec.dim))
    search, _ = pol.tell(search, psi, jnp.arange(4.0) + seed)
    return lts.LTSState(
        iteration=jnp.array(iteration, jnp.int32),
        search=search,
        amtm={"w": jnp.full((3,), float(seed))},
        best_mtm={"w": jnp.arange(3.0) * seed},
        best_mtm_reward=jnp.array(0.5 * seed, jnp.float32),
        best_mtm_iteration=jnp.array(seed, jnp.int32),
    )


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def corrupt(path):
    """Garbles every file of a checkpoint directory (a disk error, a copy cut short)."""
    for f in path.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")


def test_round_trip_is_exact_and_keeps_the_newest(tmp_path):
    target = make_state(0)
    with checkpoint.Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
        states = {s: make_state(s, seed=s) for s in (2, 4, 6)}
        for s, st in states.items():
            assert ckpt.save(st, {"num_iterations": 10}) == tmp_path / "ckpt" / str(s)
        assert ckpt.steps() == [4, 6] and ckpt.latest_step() == 6
        state, meta = ckpt.restore_latest(target)
    assert meta["iteration"] == 6 and meta["num_iterations"] == 10
    assert_trees_equal(state, states[6])
    assert isinstance(state, lts.LTSState)
    assert checkpoint.list_steps(tmp_path / "ckpt") == [4, 6]
    assert checkpoint.Checkpointer(tmp_path / "none").restore_latest(target) is None


def test_corrupt_latest_falls_back_with_a_warning(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        for s in (2, 4):
            ckpt.save(make_state(s, seed=s))
    corrupt(tmp_path / "ckpt" / "4")
    warnings = []
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        state, _ = ckpt.restore_latest(make_state(0), warn=warnings.append)
        assert int(state.iteration) == 2
        assert ckpt.steps() == [2]
        # the corrupt one is kept aside, and the step can be written again
        assert (tmp_path / "ckpt_corrupt" / "4").is_dir()
        ckpt.save(make_state(4, seed=4))
        assert ckpt.steps() == [2, 4]
    assert_trees_equal(state, make_state(2, seed=2))
    assert any(str(tmp_path / "ckpt" / "4") in w and "falling back" in w for w in warnings), warnings


def test_all_corrupt_is_an_error_naming_every_path(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        for s in (1, 2):
            ckpt.save(make_state(s))
    for s in (1, 2):
        corrupt(tmp_path / "ckpt" / str(s))
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        with pytest.raises(checkpoint.CheckpointError) as err:
            ckpt.restore_latest(make_state(0), warn=lambda m: None)
    msg = str(err.value)
    assert str(tmp_path / "ckpt" / "1") in msg and str(tmp_path / "ckpt" / "2") in msg
    assert checkpoint.list_steps(tmp_path / "ckpt") == [1, 2]  # nothing moved or deleted


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(make_state(2, seed=2))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", full)
    with pytest.raises(checkpoint.CheckpointError, match="could not write checkpoint .*ckpt/4.*No space left"):
        ckpt.save(make_state(4))
    monkeypatch.undo()
    ckpt.close()
    with checkpoint.Checkpointer(tmp_path / "ckpt") as again:
        state, _ = again.restore_latest(make_state(0))
    assert_trees_equal(state, make_state(2, seed=2))


def test_restore_checks_the_iteration(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(make_state(3))
    (tmp_path / "ckpt" / "3").rename(tmp_path / "ckpt" / "5")
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        with pytest.raises(checkpoint.CheckpointError, match="holds iteration 3"):
            ckpt.restore(make_state(0), 5)

"""Car counting (paper 4.3, appendices C-E): the metric, the split step, car_count and its sweep end to end.

The end-to-end tests run the experiments in subprocesses with tiny images (24x80) and networks and share
one persistent compilation cache, so the renderer is compiled once for the module.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import car_count_sweep
from lts_jax import lts
from lts_jax.params import ParamSpec, bernoulli, categorical
from lts_jax.search import policy
from lts_jax.simulator import Field, SceneSimulatorBase
from lts_jax.tasks import TaskBase
from lts_jax.tasks.counting import CountingTask, l1_per_type

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = dict(features=(4, 8, 8, 8), hidden=8)
# Tiny sizes on top of the quick flagfile: the quick flagfile's knobs, a test's cost.
TINY_FLAGS = [
    "--height=24", "--width=80", "--num_iterations=3", "--num_candidates=2", "--dataset_size=8", "--mtm_epochs=1",
    "--val_size=16", "--test_size=16", "--test_every=2", "--reference_iterations=2", "--final_window=2",
    "--mtm_features=4,8,8,8", "--mtm_hidden=8", "--mtm_batch_size=8", "--render_chunk=16", "--noprogress",
]  # fmt: skip


def _run(args, cache_dir, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    # Compile fast: XLA's CPU optimisations only cost compile time at these sizes.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    cmd = [sys.executable, "-m", *args, f"--compile_cache_dir={cache_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


# ----- the metric ----------------------------------------------------------------------------------------------
def test_counting_metric_is_l1_averaged_over_types():
    """Issue 5's definition, against NumPy: loss = metric = mean over types of the mean |pred - count|;
    reward = -metric; predictions are not rounded."""
    rng = np.random.default_rng(0)
    task = CountingTask(16, 32, batch_size=4, eval_batch_size=8, **TINY_NET)
    state = jax.jit(task.init)(jax.random.key(0))
    images = rng.integers(0, 256, (11, 16, 32, 3), dtype=np.uint8)
    counts = rng.integers(0, 5, (11, 5)).astype(np.int32)
    data = {"image": jnp.asarray(images), "counts": jnp.asarray(counts)}
    pred = np.asarray(jax.jit(task.predict)(state, data["image"]), np.float64)
    l1_types = np.abs(pred - counts).mean(axis=0)
    metrics = jax.jit(task.evaluate)(state, data)
    np.testing.assert_allclose(metrics["l1_per_type"], l1_types, rtol=1e-5)
    np.testing.assert_allclose(metrics["reward"], -l1_types.mean(), rtol=1e-5)
    loss = jax.jit(task.loss_fn)(state.params, task.prepare(data["image"]), data["counts"], jnp.ones(11))
    np.testing.assert_allclose(loss, l1_types.mean(), rtol=1e-5)
    # Masked examples (the padding of a short minibatch) do not count.
    w = (rng.random(11) < 0.6).astype(np.float32)
    ref = (np.abs(pred - counts) * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(l1_per_type(jnp.asarray(pred), jnp.asarray(counts), jnp.asarray(w)), ref, rtol=1e-5)


# ----- the split step equals lts.make_step ------------------------------------------------------------------------
class BoxesSimulator(SceneSimulatorBase):
    """A cheap scene simulator in the traffic simulator's shape: scenes are car slots of 5 types,
    rendering paints each present car as a coloured box; counts per type."""

    height, width = 16, 16
    outputs = {
        "image": Field((16, 16, 3), np.uint8),
        "counts": Field((5,), np.int32),
        "label": Field((16, 16), np.uint8),
    }

    def __init__(self):
        self.spec = ParamSpec([bernoulli("car_presence"), categorical("car_type", 5)])

    def sample_scenes(self, key, psi, num):
        raw = self.spec.split(psi)
        k1, k2 = jax.random.split(key)
        present = jax.random.logistic(k1, (num, 8)) < raw["car_presence"][0]
        kind = jax.random.categorical(k2, raw["car_type"], shape=(num, 8))
        return {"present": present, "kind": kind}

    def render(self, scenes):
        present, kind = scenes["present"], scenes["kind"]
        colour = (kind[..., None] + 1) * 40 * present[..., None]  # [n, 8, 1]
        image = jnp.zeros((present.shape[0], 16, 16, 3), jnp.uint8)
        image = image + jnp.repeat(colour, 2, axis=1)[:, :, None, :].astype(jnp.uint8)  # slot b -> rows 2b, 2b+1
        counts = jnp.stack([jnp.sum(present & (kind == t), axis=1) for t in range(5)], axis=1).astype(jnp.int32)
        return {"image": image, "counts": counts, "label": image[..., 0]}


class LinearCountTask(TaskBase):
    """Counts as a linear function of the image's mean colour, fitted by a few gradient steps on L1; cheap to
    compile, so the test is about the step's orchestration, not the CNN."""

    data_keys = ("image", "counts")

    def init(self, key):
        return {"w": 0.01 * jax.random.normal(key, (4, 5))}

    def _features(self, images):
        x = images.astype(jnp.float32).mean(axis=(1, 2)) / 255.0
        return jnp.concatenate([x, jnp.ones((x.shape[0], 1))], axis=1)

    def train(self, state, data, key, epochs):
        x, y = self._features(data["image"]), data["counts"].astype(jnp.float32)
        noise = 0.01 * jax.random.normal(key, (epochs,))  # uses the key, as a shuffling task would

        def body(w, n):
            return w - (0.5 + n) * jax.grad(lambda w: jnp.mean(jnp.abs(x @ w - y)))(w), None

        w, _ = jax.lax.scan(body, state["w"], noise)
        return {"w": w}

    def evaluate(self, state, data):
        per_type = l1_per_type(self._features(data["image"]) @ state["w"], data["counts"])
        return {"reward": -jnp.mean(per_type), "l1": jnp.mean(per_type), "l1_per_type": per_type}


def test_split_step_equals_lts_make_step():
    """Same keys, same metrics, same state as Algorithm 1's one-jit step (AMTM and test data included)."""
    sim = BoxesSimulator()
    task = LinearCountTask()
    pol = policy.GaussianPolicy(sim.spec, learning_rate=0.1)
    config = lts.LTSConfig(num_candidates=3, dataset_size=6, mtm_epochs=2, retain_mtm=True, train_strategy="map")
    val = sim.sample_dataset(jax.random.key(10), sim.spec.zeros(), 12)
    test = sim.sample_dataset(jax.random.key(11), sim.spec.zeros(), 7)
    np.testing.assert_array_equal(val["counts"], sim.sample(jax.random.key(10), sim.spec.zeros(), 12)["counts"])
    fused = lts.make_step(config, sim, task, pol)
    split = lts.make_split_step(config, sim, task, pol, programs=lts.Programs())
    s0 = lts.init_state(config, task, pol, jax.random.key(0), np.full(sim.spec.dim, 0.3, np.float32))
    a, b = s0, s0
    for i in range(2):
        key = jax.random.fold_in(jax.random.key(1), i)
        a, ma = fused(a, key, val, test)
        b, mb = split(b, key, val, test)
        assert set(ma) == set(mb)
        for k in ma:
            np.testing.assert_allclose(np.asarray(mb[k]), np.asarray(ma[k]), rtol=2e-5, atol=2e-6, err_msg=k)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-5, atol=2e-6)


# ----- flags ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, flag",
    [
        (["--mtm_lr=-1"], "mtm_lr"),
        (["--mtm_loss=l3"], "mtm_loss"),
        (["--search=fixed", "--fixed_params=final"], "final_from"),
        (["--simulator=carla"], "carla_hosts"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(tmp_path, cache_dir, args, flag):
    proc = _run(["experiments.car_count", f"--workdir={tmp_path / 'w'}", *args], cache_dir, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--{flag}" in proc.stderr
    assert not (tmp_path / "w").exists()  # validated before any work


# ----- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_car_count_quick_flagfile_tiny(tmp_path, cache_dir):
    workdir = tmp_path / "cc"
    flagfile = ROOT / "experiments/flags/car_count_quick.flags"
    proc = _run(["experiments.car_count", f"--flagfile={flagfile}", f"--workdir={workdir}", *TINY_FLAGS], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((workdir / "results.json").read_text())
    assert r["experiment"] == "car_count" and r["simulator"]["name"] == "traffic"
    assert r["simulator"]["height"] == 24 and r["simulator"]["width"] == 80
    assert set(r["test_reward"]) >= {"lts", "lts_amtm", "psi_real"}
    assert all(np.isfinite(v) and v <= 0 for v in r["test_reward"].values())
    assert len(r["val_reward_curve"]) == 3 and r["test_reward_curve"]["step"] == [0, 2]
    assert len(r["psi_raw"]) == 35 and set(r["psi"]) >= {"car_type", "weather", "car_presence"}
    assert set(r["logits"]["car_type"]) == {"sedan", "hatchback", "suv", "van", "pickup"}
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    for row in rows:  # Figure 7's logits are logged every iteration
        assert len(row["params"]["car_type"]["logits"]) == 5 and len(row["params"]["weather"]["logits"]) == 4
        assert "amtm_val_reward" in row and "reward_mean" in row
    assert (workdir / "car_count.png").stat().st_size > 5000


@pytest.mark.slow
def test_sweep_tiny_figures_and_resume(tmp_path, cache_dir):
    workdir, summary_dir = tmp_path / "sweep", tmp_path / "summary"
    # One xi and one M: every sub-run shares the compiled training program (the figure code is under test).
    args = ["experiments.car_count_sweep", "--scale=tiny", f"--workdir={workdir}", f"--summary_dir={summary_dir}",
            "--xi_values=1", "--m_values=8", "--noprogress"]  # fmt: skip
    proc = _run(args, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((summary_dir / "sweep_results.json").read_text())
    expected = {"psi_real", "lts_random", "lts_adversarial", "lts_adversarial_crowded", "random_params", "final_params",
                "lts_seed1"}  # fmt: skip
    assert set(s["runs"]) == expected
    assert all(v["status"] == "done" for v in s["runs"].values()), {k: v.get("error") for k, v in s["runs"].items()}
    assert s["big"]["M8"]["status"] == "done" and s["big"]["psi_real"]["test_l1"] > 0
    a = s["analysis"]
    assert set(a["final_test_reward"]) == expected and a["psi_real_reward"]["test"] < 0
    assert "lts_beats_random_params" in a["targets"]
    for name in ("fig4.png", "fig5.png", "fig7.png", "fig8.png", "fig9.png"):
        assert (summary_dir / name).stat().st_size > 10_000, name
    assert "| comparison |" in (summary_dir / "sweep_table.md").read_text()
    # Re-running resumes: finished sub-runs are reused, not recomputed.
    proc = _run(args, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s2 = json.loads((summary_dir / "sweep_results.json").read_text())
    assert all(v.get("reused") for v in s2["runs"].values())
    assert s2["analysis"]["final_test_reward"] == a["final_test_reward"]
    # --redraw needs only the summary directory (e.g. experiments/results/...): figures come back from the JSON.
    (summary_dir / "fig5.png").unlink()
    proc = _run(["experiments.car_count_sweep", "--redraw", f"--summary_dir={summary_dir}"], cache_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (summary_dir / "fig5.png").stat().st_size > 10_000


def test_sweep_summary_survives_failed_runs(tmp_path):
    """The analysis, table and figures are drawn from whatever finished; failed or missing runs are n/a."""
    curve = {"step": [0, 1, 2], "reward": [-0.9, -0.8, -0.75]}
    done = {
        "status": "done", "iterations": 3, "val_reward_curve": [-0.9, -0.8, -0.7], "test_reward_curve": curve,
        "amtm_test_reward_curve": curve, "final_test_reward": -0.75, "final_amtm_test_reward": -0.75,
        "logits": {"step": [0, 1, 2], "car_type": {"sedan": [0, 1, 2]}, "weather": {"fog": [0, -1, -2]}},
    }  # fmt: skip
    summary = {
        "plan": {"xi_values": [1, 3], "m_values": [20, 50], "big_size": 100, "big_epochs": 1,
                 "config": {"mtm_epochs": 3, "dataset_size": 50}},
        "runs": {"psi_real": done, "lts_random": done, "random_params": {"status": "failed", "error": "boom"}},
        "big": {"M50": {"status": "done", "val_l1": 0.7, "test_l1": 0.8}},
    }  # fmt: skip
    written = car_count_sweep.finish(summary, tmp_path)
    assert {p.name for p in written} >= {"sweep_results.json", "fig4.png", "fig8.png"}
    t = summary["analysis"]["targets"]
    assert t["lts_within_5pct_of_psi_real"]["ok"] and "lts_beats_random_params" not in t
    assert "n/a" in (tmp_path / "sweep_table.md").read_text()


def test_budget_stops_after_share_and_min_iterations(tmp_path):
    """A sub-run's share of the budget starts after its first iteration; it never stops before min_iterations."""
    import time

    budget = car_count_sweep.Budget(total_s=0.05, t0=time.perf_counter(), min_iterations=3)
    stop = budget.stopper(work=1.0, remaining_work=2.0, workdir=tmp_path)  # share: ~0.025 s
    metrics = tmp_path / "metrics.jsonl"
    assert not stop()  # no iteration yet
    metrics.write_text("{}\n")
    assert not stop()  # the share starts now
    time.sleep(0.06)
    assert not stop()  # share spent, but only 1 of 3 iterations
    metrics.write_text("{}\n" * 3)
    assert stop()
    assert car_count_sweep.Budget(0.0, time.perf_counter(), 1).stopper(1.0, 1.0, tmp_path) is None  # no budget


# ----- the CARLA backend through the split step ------------------------------------------------------------------
class FlakySession:
    """FakeSession that fails every render after the first ``ok`` renders (all sessions together)."""

    renders = 0

    def __init__(self, host, port, ok):
        from simulators.carla.testing import FakeSession

        self.inner, self.ok = FakeSession(host, port, 16, 16), ok

    def render(self, scene):
        FlakySession.renders += 1
        if FlakySession.renders > self.ok:
            raise ConnectionError("server went away")
        return self.inner.render(scene)

    def close(self):
        self.inner.close()


def test_carla_renderer_and_lost_servers(tmp_path):
    """Data sets rendered host-level (sample_dataset, the split step's path) match sample under jit; when every
    server is gone the run stops with SimulatorUnavailable naming the hosts (the pool's error crossed the
    bridge), and the last good iteration is checkpointed."""
    from experiments import car_count
    from lts_jax.run import checkpoint
    from simulators.carla import CarlaPool, CarlaSimulator
    from simulators.carla.testing import FakeSession, FakeTraffic

    traffic = FakeTraffic()
    pool = CarlaPool("a:1", lambda h, p: FakeSession(h, p, 16, 16))
    good = CarlaSimulator(None, 16, 16, traffic=traffic, pool=pool, keep=("image", "counts"))
    psi = jnp.zeros(traffic.spec.dim)
    ours = good.sample_dataset(jax.random.key(3), psi, 6)
    bridge = jax.jit(lambda k: good.sample(k, psi, 6))(jax.random.key(3))
    np.testing.assert_array_equal(ours["counts"], bridge["counts"])
    np.testing.assert_array_equal(ours["image"], bridge["image"])

    FlakySession.renders = 0
    pool = CarlaPool("a:1,b:2", lambda h, p: FlakySession(h, p, ok=12 + 2 * 4), max_retries=0, backoff_s=0.0)
    sim = CarlaSimulator(None, 16, 16, traffic=traffic, pool=pool, keep=("image", "counts"))
    val, test = sim.sample_dataset(jax.random.key(1), psi, 6), sim.sample_dataset(jax.random.key(2), psi, 6)  # 12
    ctx = car_count.Context(sim, LinearCountTask(), lts.Programs(), val, test, {"name": "traffic"})
    cfg = car_count.Config(progress=False, log_every=0, checkpoint_every=0)
    config = lts.LTSConfig(num_candidates=2, dataset_size=2, mtm_epochs=1)  # 4 renders per iteration: 2 succeed
    pol = policy.GaussianPolicy(traffic.spec)
    with pytest.raises(car_count.SimulatorUnavailable, match="a:1"):
        car_count.run_search(cfg, config, pol, np.zeros(traffic.spec.dim, np.float32), tmp_path, ctx,
                             jax.random.key(0), num_iterations=5, test_every=0)  # fmt: skip
    assert checkpoint.list_steps(tmp_path / "checkpoints")[-1] == 2
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2

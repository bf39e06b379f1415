"""Car counting (paper 4.3, appendices C-E): the metric, car_count and its sweep end to end, in-process.

The end-to-end tests run the library functions (and the quick flagfile through the command's main) with tiny
images (24x80) and networks; they share their compiled programs (tests/conftest.py's compilation cache).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import car_count
from experiments import car_count_sweep as car_count_sweep_cli
from experiments.lib import car_count as lib
from experiments.lib import car_count_sweep
from lts_jax import lts, run
from lts_jax.search import policy
from lts_jax.tasks.counting import CountingTask, l1_per_type
from tests.conftest import LinearCountTask
from tests.experiments.conftest import FLAGFILES

TINY_NET = dict(features=(4, 8, 8, 8), hidden=8)
# Tiny sizes on top of the quick flagfile: the quick flagfile's knobs, a test's cost.
TINY_FLAGS = [
    "--height=24", "--width=80", "--num_iterations=3", "--num_candidates=2", "--dataset_size=8", "--mtm_epochs=1",
    "--val_size=16", "--test_size=16", "--test_every=2", "--reference_iterations=2", "--final_window=2",
    "--mtm_features=4,8,8,8", "--mtm_hidden=8", "--mtm_context=0", "--nomtm_position", "--mtm_batch_size=8",
    "--render_chunk=16", "--noprogress",
]  # fmt: skip


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


# ----- flags ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, flag",
    [
        (["--mtm_lr=-1"], "mtm_lr"),
        (["--mtm_loss=l3"], "mtm_loss"),
        (["--mtm_features=4,x"], "mtm_features"),
        (["--search=fixed", "--fixed_params=final"], "final_from"),
        (["--search=fixed", "--fixed_params=final", "--final_from=/nowhere"], "final_from"),
        (["--simulator=carla"], "carla_hosts"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(tmp_path, cli, args, flag):
    status, err = cli(car_count.main, f"--workdir={tmp_path / 'w'}", *args)
    assert status == 2 and f"--{flag}" in err, err[-2000:]
    assert not (tmp_path / "w").exists()  # validated before any work


# ----- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_car_count_quick_flagfile_tiny(tmp_path, cli):
    workdir = tmp_path / "cc"
    flagfile = FLAGFILES / "car_count_quick.flags"
    status, err = cli(car_count.main, f"--flagfile={flagfile}", f"--workdir={workdir}", *TINY_FLAGS)
    assert status == 0, err[-3000:]
    r = json.loads((workdir / "results.json").read_text())
    assert r["experiment"] == "car_count" and r["simulator"]["name"] == "traffic"
    assert r["simulator"]["height"] == 24 and r["simulator"]["width"] == 80
    given = dict(
        line[2:].split("=", 1) for line in flagfile.read_text().splitlines() if line.startswith("--") and "=" in line
    )
    assert r["config"]["mtm_lr"] == float(given["mtm_lr"]) and r["config"]["seed"] == int(given["seed"])  # the file's
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
    assert run.read_config(workdir)["mtm_features"] == "['4', '8', '8', '8']"  # flags.txt as before
    # the render chunk changes only how fast a run goes: the same run, already complete
    status, err = cli(car_count.main, f"--flagfile={flagfile}", f"--workdir={workdir}", *TINY_FLAGS,
                      "--render_chunk=8")  # fmt: skip
    assert status == 0 and "already complete" in err, err[-2000:]


@pytest.mark.slow
def test_sweep_tiny_figures_and_resume(tmp_path, cli):
    workdir, summary_dir = tmp_path / "sweep", tmp_path / "summary"
    # One xi and one M: every sub-run shares the compiled training program (the figure code is under test).
    cfg = car_count_sweep.scaled("tiny", xi_values=(1,), m_values=(8,), progress=False, summary_dir=str(summary_dir))
    lines = []
    s = car_count_sweep.train_and_evaluate(cfg, workdir, log=lines.append)
    on_disk = json.loads((summary_dir / "sweep_results.json").read_text())
    assert on_disk["analysis"] == json.loads(json.dumps(s["analysis"]))
    expected = {"psi_real", "lts_random", "lts_adversarial", "lts_adversarial_crowded", "random_params", "final_params",
                "lts_seed1"}  # fmt: skip
    assert set(s["runs"]) == expected
    assert all(v["status"] == "done" for v in s["runs"].values()), {k: v.get("error") for k, v in s["runs"].items()}
    assert s["big"]["M8"]["status"] == "done" and s["big"]["psi_real"]["test_l1"] > 0
    assert (workdir / "runs" / "lts_random" / "subrun.json").is_file() and (workdir / "big" / "M8").is_dir()
    a = s["analysis"]
    assert set(a["final_test_reward"]) == expected and a["psi_real_reward"]["test"] < 0
    assert "lts_beats_random_params" in a["targets"]
    for name in ("fig4.png", "fig5.png", "fig7.png", "fig8.png", "fig9.png"):
        assert (summary_dir / name).stat().st_size > 10_000, name
    assert "| comparison |" in (summary_dir / "sweep_table.md").read_text()
    # Re-running reuses the finished sub-runs (their configuration matches), nothing is recomputed.
    s2 = car_count_sweep.train_and_evaluate(cfg, workdir, log=lines.append)
    assert all(v.get("reused") for v in s2["runs"].values()) and all(v.get("reused") for v in s2["big"].values())
    assert s2["analysis"]["final_test_reward"] == a["final_test_reward"]
    # Another configuration of the sub-runs is refused before any work, naming the setting.
    with pytest.raises(run.WorkdirError) as err:
        car_count_sweep.train_and_evaluate(dataclasses.replace(cfg, num_iterations=4), workdir, log=lines.append)
    assert {d[0] for d in err.value.differences} == {"num_iterations"}
    # --redraw needs only the summary directory (e.g. experiments/results/...): figures come back from the JSON.
    (summary_dir / "fig5.png").unlink()
    status, err = cli(car_count_sweep_cli.main, "--redraw", f"--summary_dir={summary_dir}")
    assert status == 0, err[-3000:]
    assert (summary_dir / "fig5.png").stat().st_size > 10_000


def test_sweep_scales_and_flags(cli, tmp_path):
    """--scale presets the sizes, flags given explicitly win; the quick scale is SweepConfig's defaults."""
    assert car_count_sweep.scaled("quick") == car_count_sweep.SweepConfig()
    paper = car_count_sweep.scaled("paper")
    assert (paper.height, paper.num_iterations, paper.m_values, paper.compute_dtype) == (96, 300, (20, 50, 100, 200),
                                                                                         "bfloat16")  # fmt: skip
    status, err = cli(car_count_sweep_cli.main, f"--workdir={tmp_path / 'w'}", "--scale=huge")
    assert status == 2 and "--scale=huge is out of range; accepted: tiny | quick | paper" in err
    status, err = cli(car_count_sweep_cli.main, f"--workdir={tmp_path / 'w'}", "--only=lts_random,nope")
    assert status == 2 and "--only=lts_random,nope is out of range" in err
    status, err = cli(car_count_sweep_cli.main, "--redraw", f"--summary_dir={tmp_path / 'none'}")
    assert status == 2 and "--redraw: " in err and "sweep_results.json does not exist" in err


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


@pytest.mark.slow
def test_carla_renderer_and_lost_servers(tmp_path):
    """Data sets rendered host-level (sample_dataset, the split step's path) match sample under jit; when every
    server is gone the run stops with SimulatorUnavailable naming the hosts (the pool's error crossed the
    bridge), and the last good iteration is checkpointed."""
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
    ctx = lib.Context(sim, LinearCountTask(), lts.Programs(), val, test, {"name": "traffic"})
    # 4 renders per iteration: 2 succeed
    cfg = lib.CarCountConfig(num_candidates=2, dataset_size=2, mtm_epochs=1, retain_mtm=False,
                             candidates_from_amtm=False, common_sim_key=False, progress=False, log_every=0,
                             checkpoint_every=0)  # fmt: skip
    pol = policy.GaussianPolicy(traffic.spec)
    with pytest.raises(lib.SimulatorUnavailable, match="a:1"):
        lib.run_search(cfg, pol, np.zeros(traffic.spec.dim, np.float32), tmp_path, ctx, jax.random.key(0),
                       num_iterations=5, test_every=0)  # fmt: skip
    assert checkpoint.list_steps(tmp_path / "checkpoints")[-1] == 2
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2

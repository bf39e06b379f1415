"""Run management: resume equals an uninterrupted run, workdir semantics, failures, progress, figures, signals."""

import errno
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common
from lts_jax import lts, run
from lts_jax.run import checkpoint, files, tensorboard
from lts_jax.run.metrics import TIMING_COLUMNS
from lts_jax.search import policy
from simulators import gmm
from tests.conftest import LogisticTask

ROOT = Path(__file__).resolve().parents[3]
N = 6  # iterations of the reference run; checkpoints every 2


@functools.cache
def setup():
    """(step, initial state, val data, spec): LTS with AMTM and best-MTM, so the whole LTSState is exercised."""
    sim = gmm.GMMSimulator(1)
    task = LogisticTask(steps_per_epoch=3)
    pol = policy.GaussianPolicy(sim.spec, learning_rate=0.1)
    config = lts.LTSConfig(
        num_candidates=4, dataset_size=32, train_strategy="loop", retain_mtm=True, keep_best_mtm=True
    )
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 64))
    step = lts.make_step(config, sim, task, pol)
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())
    return step, state, val, sim.spec


def search_run(workdir, num_iterations=N, **kw):
    step, state, val, spec = setup()
    options = dict(progress=False, checkpoint_every=2, handle_signals=False, figures=False)
    options.update(kw)
    return run.run_search(
        step, state, jax.random.key(9), num_iterations, val, workdir=Path(workdir), spec=spec, **options
    )


def rows(history):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in history]


def assert_same_run(workdir, reference_dir, state, reference_state):
    la, ta = jax.tree_util.tree_flatten(state)
    lb, tb = jax.tree_util.tree_flatten(reference_state)
    assert ta == tb
    for a, b in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
    assert rows(run.read_metrics(workdir)) == rows(run.read_metrics(reference_dir))
    steps = [r["step"] for r in run.read_metrics(workdir)]
    assert steps == list(range(len(steps)))
    ours, ref = tensorboard.read_scalars(workdir), tensorboard.read_scalars(reference_dir)
    assert set(ours) == set(ref)
    for tag in ref:
        if tag not in TIMING_COLUMNS:
            assert ours[tag] == ref[tag], tag


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    state, history = search_run(workdir)
    assert len(history) == N and checkpoint.list_steps(workdir / "checkpoints") == [2, 4, 6]
    return workdir, state


def test_stop_then_resume_equals_uninterrupted(tmp_path, reference):
    ref_dir, ref_state = reference
    seen = []
    with pytest.raises(run.Interrupted) as stop:
        search_run(tmp_path, extra_hooks=[lambda i, s, m: seen.append(i)], should_stop=lambda: len(seen) >= 3)
    assert stop.value.iteration == 3 and stop.value.checkpoint == tmp_path / "checkpoints" / "3"
    assert checkpoint.list_steps(tmp_path / "checkpoints") == [2, 3]
    assert len(run.read_metrics(tmp_path)) == 3
    state, history = search_run(tmp_path)
    assert [r["step"] for r in history] == list(range(N))
    assert_same_run(tmp_path, ref_dir, state, ref_state)


def test_sigint_stops_after_the_iteration_with_a_checkpoint(tmp_path, reference, capsys):
    ref_dir, ref_state = reference
    before = signal.getsignal(signal.SIGINT)

    def interrupt(i, state, metrics):
        if i == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C during iteration 2

    with pytest.raises(run.Interrupted) as stop:
        search_run(tmp_path, extra_hooks=[interrupt], handle_signals=True)
    assert stop.value.signum == signal.SIGINT and stop.value.iteration == 3
    assert "SIGINT received" in capsys.readouterr().err
    assert checkpoint.list_steps(tmp_path / "checkpoints") == [2, 3]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    state, _ = search_run(tmp_path)
    assert_same_run(tmp_path, ref_dir, state, ref_state)


def test_killed_between_checkpoints_resumes_exactly(tmp_path, reference):
    ref_dir, ref_state = reference
    shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
    # As if killed during iteration 5 after metrics line 5 was half written: checkpoint 6 never happened.
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "reward_m')
    state, history = search_run(tmp_path)
    assert len(history) == N
    assert_same_run(tmp_path, ref_dir, state, ref_state)
    assert len(tensorboard.event_files(tmp_path)) == 2  # one per session; the reader purges the repeats


def test_corrupt_latest_checkpoint_falls_back(tmp_path, reference, caplog):
    ref_dir, ref_state = reference
    shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    for f in (tmp_path / "checkpoints" / "4").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    with caplog.at_level("WARNING"):
        state, _ = search_run(tmp_path)
    text = caplog.text
    assert str(tmp_path / "checkpoints" / "4") in text and "falling back" in text
    assert (tmp_path / "checkpoints_corrupt" / "4").is_dir()
    assert_same_run(tmp_path, ref_dir, state, ref_state)


def test_extend_a_finished_run(tmp_path, reference):
    ref_dir, ref_state = reference
    search_run(tmp_path, num_iterations=4)
    run.write_json(tmp_path / "results.json", {"experiment": "test"})
    with pytest.raises(run.RunComplete):
        search_run(tmp_path, num_iterations=4)
    state, _ = search_run(tmp_path, num_iterations=N)
    assert (tmp_path / "results.previous.json").exists() and not (tmp_path / "results.json").exists()
    assert_same_run(tmp_path, ref_dir, state, ref_state)


def test_full_disk_while_logging_keeps_the_checkpoint(tmp_path, reference, monkeypatch):
    ref_dir, ref_state = reference
    real_open = open
    appended = []

    class FullFile(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            appended.append(path)
            if len(appended) > 3:
                return FullFile()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", fake_open, raising=False)
    with pytest.raises(run.StorageError, match=r"metrics.jsonl: no space left on device"):
        search_run(tmp_path)
    monkeypatch.undo()
    assert checkpoint.list_steps(tmp_path / "checkpoints") == [2]
    state, _ = search_run(tmp_path)
    assert_same_run(tmp_path, ref_dir, state, ref_state)


def test_failed_checkpoint_write_stops_the_run(tmp_path, monkeypatch):
    search_run(tmp_path, num_iterations=2)
    monkeypatch.setattr(
        checkpoint.ocp.CheckpointManager, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "checkpoints" / "4")):
        search_run(tmp_path, num_iterations=4)
    assert checkpoint.list_steps(tmp_path / "checkpoints") == [2]


# ----- workdir and stored configuration (no computation) -------------------------------------------------
FLAGS = {"workdir": "/x", "seed": 0, "num_iterations": 10, "policy_lr": 0.2, "progress": True, "retain_mtm": False}
MANAGEMENT = {"workdir", "progress"}  # settings that may differ (experiments: lib.common.RUN_MANAGEMENT)


def prepare(path, config=FLAGS, **kw):
    return run.prepare_workdir(path, config=config, ignore=MANAGEMENT, **kw)


def fake_run(path: Path, iterations: int, finished: bool):
    """A workdir as a run leaves it: flags.txt, metrics lines, a checkpoint directory, maybe results.json."""
    prepare(path)
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in range(iterations)))
    (path / "checkpoints" / str(iterations)).mkdir(parents=True)
    if finished:
        (path / "results.json").write_text('{"experiment": "x"}\n')


def test_mismatched_config_is_refused_with_a_list(tmp_path):
    fake_run(tmp_path, 4, finished=False)
    changed = {**FLAGS, "policy_lr": 0.3, "retain_mtm": True, "progress": False, "workdir": "/elsewhere"}
    with pytest.raises(run.WorkdirError) as err:
        prepare(tmp_path, changed)
    assert err.value.differences == [("policy_lr", "0.2", "0.3"), ("retain_mtm", "False", "True")]
    msg = str(err.value)  # the library names parameters ...
    assert "  policy_lr: 0.2 in the run, now 0.3" in msg and "  retain_mtm: False in the run, now True" in msg
    assert "pass overwrite=True to start over" in msg and "--" not in msg.replace(str(tmp_path), "")
    assert "progress" not in msg and "workdir:" not in msg  # settings in ``ignore`` may differ
    # ... and experiments name them as flags
    shown = common.user_message(err.value)
    assert "--policy_lr: 0.2 in the run, now 0.3" in shown and f"--workdir {tmp_path} holds a run" in shown
    assert "pass --overwrite to start over" in shown
    # with nothing ignored, every difference counts
    with pytest.raises(run.WorkdirError) as err:
        run.prepare_workdir(tmp_path, config={**FLAGS, "progress": False})
    assert err.value.differences == [("progress", "True", "False")]
    # raising num_iterations is fine; lowering below the completed iterations is not
    prepare(tmp_path, {**FLAGS, "num_iterations": 20, "progress": False})
    assert "--num_iterations=20" in (tmp_path / "flags.txt").read_text()
    assert run.read_config(tmp_path)["num_iterations"] == "20"
    with pytest.raises(run.WorkdirError, match="num_iterations=3 is lower than the 4 iterations") as err:
        prepare(tmp_path, {**FLAGS, "num_iterations": 3})
    assert "pass --num_iterations>=4, or --overwrite to start over" in common.user_message(err.value)


def test_finished_run_is_never_overwritten_silently(tmp_path):
    fake_run(tmp_path, 10, finished=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(run.RunComplete, match="already holds this finished run") as err:
        prepare(tmp_path)
    assert err.value.iterations == 10
    assert "Pass a larger --num_iterations to extend it, or --overwrite" in common.user_message(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # extending moves the old results aside until the new ones are written
    prepare(tmp_path, {**FLAGS, "num_iterations": 12})
    assert (tmp_path / "results.previous.json").exists() and not (tmp_path / "results.json").exists()
    # overwrite starts over: the run's files are gone, others stay
    (tmp_path / "notes.txt").write_text("mine")
    prepare(tmp_path, {**FLAGS, "policy_lr": 1.0}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.txt", "notes.txt"]


def test_unusable_workdir_names_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(run.WorkdirError, match=f"workdir {tmp_path / 'file'} exists and is not a directory") as err:
        run.prepare_workdir(tmp_path / "file")
    assert common.user_message(err.value).startswith(f"--workdir {tmp_path / 'file'} exists")
    with pytest.raises(run.WorkdirError, match=f"workdir {tmp_path / 'file' / 'sub'} is not writable") as err:
        run.prepare_workdir(tmp_path / "file" / "sub")
    assert "--workdir" in common.user_message(err.value)  # composed after the except clause that caught the OSError


def test_sync_metrics_refuses_missing_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    with pytest.raises(run.WorkdirError, match="holds 2 iterations, but the checkpoint is at iteration 3") as err:
        run.sync_metrics(tmp_path, 3)
    assert str(err.value).endswith("restore the file or pass overwrite=True to start over")
    assert [r["step"] for r in run.sync_metrics(tmp_path, 1)] == [0]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'


# ----- progress -----------------------------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_on_a_terminal():
    out = FakeTerminal()
    show = run.Progress(4, stream=out)
    for i in range(4):
        show(i, None, {"reward_mean": 0.5 + i / 10, "best_reward": 0.9, "time_s": 0.01})
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")
    last = text.split("\r")[-1]
    for part in ("iter 4/4", "reward 0.8000", "best 0.9000", "it/s", "ETA 0:00"):
        assert part in last


def test_progress_quiet_without_terminal_or_when_disabled():
    plain = io.StringIO()
    show = run.Progress(100, stream=plain, log_every=0)
    for i in range(5):
        show(i, None, {"reward_mean": 0.1})
    assert plain.getvalue() == ""
    logged = io.StringIO()
    show = run.Progress(100, stream=logged, log_every=2)
    for i in range(5):
        show(i, None, {"reward_mean": 0.1})
    assert "\r" not in logged.getvalue() and logged.getvalue().count("\n") == 3  # iterations 0, 2, 4
    off = FakeTerminal()
    show = run.Progress(100, stream=off, enabled=False, log_every=1)
    show(0, None, {})
    show.message("resumed")
    assert off.getvalue() == ""


# ----- figures ------------------------------------------------------------------------------------------------
def test_generic_figures_and_plot_redraw(tmp_path, reference):
    ref_dir, _ = reference
    shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
    from experiments.lib import plot

    written = plot.redraw(tmp_path)
    assert {p.name for p in written} == {"rewards.png", "params.png", "cost.png"}  # cost.png: the cost columns
    for p in written:
        assert p.stat().st_size > 10_000
    with pytest.raises(plot.PlotError, match="metrics.jsonl does not exist"):
        plot.redraw(tmp_path / "nowhere")


# ----- the experiment as a process: SIGTERM, resume, flags, already complete, plot --------------------------
GMM_ARGS = [
    "--num_iterations=200",
    "--num_candidates=4",
    "--dataset_size=40",
    "--val_size=100",
    "--test_size=100",
    "--eval_repeats=1",
    "--checkpoint_every=1000",  # so the only checkpoint before the end is the one the signal makes
    "--log_every=100",
]


def run_gmm_toy(workdir, *extra, timeout=240):
    cmd = [sys.executable, "-m", "experiments.gmm_toy", f"--workdir={workdir}", *GMM_ARGS, *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_rerun_resumes(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.gmm_toy", f"--workdir={workdir}", *GMM_ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted: stopped by SIGTERM" in err and "Traceback" not in err
    assert "Re-run the same command to resume." in err
    steps = checkpoint.list_steps(workdir / "checkpoints")
    done = metrics.read_text().count("\n")
    assert steps == [done] and 3 <= done < 200
    assert not (workdir / "results.json").exists()

    # a different flag is refused (exit 2, the flag named), nothing changes
    other = run_gmm_toy(workdir, "--policy_lr=0.5", timeout=120)
    assert other.returncode == 2 and "--policy_lr: 0.2 in the run, now 0.5" in other.stderr
    assert checkpoint.list_steps(workdir / "checkpoints") == [done]

    # the same command resumes and finishes
    again = run_gmm_toy(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed {workdir} at iteration {done}/200" in again.stderr
    history = run.read_metrics(workdir)
    assert [r["step"] for r in history] == list(range(200))
    results = json.loads((workdir / "results.json").read_text())
    assert results["iterations"] == 200 and len(results["psi_raw"]) == 16
    assert checkpoint.list_steps(workdir / "checkpoints") == [done, 200]
    for png in ("figure2.png", "reward.png", "rewards.png", "params.png"):
        assert (workdir / png).exists()

    # the figure registry finds the experiment's redraw function (experiments.plot calls it)
    from experiments.lib import gmm_toy, plot

    assert plot.experiment_figures_fn(workdir) is gmm_toy.draw_figures_from_workdir

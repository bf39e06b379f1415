"""Reliability, replayed (issue 15): kill -9 at several points (between checkpoints, mid-checkpoint, mid-way
through a metrics line), a corrupt newest checkpoint, a truncated metrics.jsonl, a foreign checkpoint, a lost
flags.txt, a full disk, bad flags and unreachable CARLA servers, against the quick flagfiles with tiny sizes.
Each case checks that nothing already written is lost (the files before are the files after, where they
should be) and that a resumed run ends exactly as an uninterrupted one.

The failing commands run as real processes (tests/reliability/inject.py puts the failure at its point), all at
once, after an uninterrupted reference run in this process has filled the compilation cache they share; the
resumes run in this process. Loopback only, no CARLA server; about a minute on 2 loaded CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from absl import flags

from experiments import common, gmm_toy
from experiments.lib import gmm_toy as gmm_toy_lib
from lts_jax import run
from lts_jax.run import checkpoint, plots
from lts_jax.run.metrics import TIMING_COLUMNS

# Real processes (kill -9, full disks, CARLA timeouts) against the quick flagfiles: the whole suite runs them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GMM = [
    f"--flagfile={ROOT / 'experiments' / 'flags' / 'gmm_toy_quick.flags'}", "--num_iterations=6",
    "--num_candidates=2", "--dataset_size=20", "--val_size=20", "--test_size=20", "--eval_repeats=1",
    "--checkpoint_every=2", "--keep_checkpoints=2", "--noprogress", "--log_every=0",
]  # fmt: skip
CAR_COUNT = [
    f"--flagfile={ROOT / 'experiments' / 'flags' / 'car_count_quick.flags'}", "--height=24", "--width=80",
    "--num_iterations=2", "--num_candidates=2", "--dataset_size=2", "--val_size=2", "--test_size=2",
    "--mtm_features=4,4,4,4", "--mtm_hidden=4", "--noprogress", "--simulator=carla", "--carla_timeout=2",
]  # fmt: skip
KILLED = -9  # Popen's return code of a process killed by SIGKILL


def in_process(main_fn, *argv: str) -> tuple[int, str]:
    """An experiment's main as its command runs it, in this process: (exit status, what it printed on stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["experiment", *argv])
        with contextlib.redirect_stderr(err):
            common.run_main(main_fn)(["experiment"])
        status = 0
    except SystemExit as e:
        status = e.code or 0
    finally:
        flags.FLAGS.unparse_flags()
    return status, err.getvalue()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rows(workdir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in run.read_metrics(workdir)]


def messages(stderr: str) -> list[str]:
    """What a user reads on stderr: without absl's log lines (``I1201 12:00:00.000 ...``)."""
    return [line for line in stderr.splitlines() if line.strip() and not (line[:1] in "IWEF" and line[1:5].isdigit())]


@pytest.fixture(scope="module")
def quiet_figures():
    """The figures are not what is tested here; they cost seconds per run."""
    mp = pytest.MonkeyPatch()
    mp.setattr(gmm_toy_lib, "draw_figures_from_workdir", lambda workdir: [])
    mp.setattr(plots, "run_figures", lambda *a, **k: None)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def cases(tmp_path_factory, quiet_figures):
    """The reference run (in this process), then every failing command at once; their workdirs and outputs."""
    base = tmp_path_factory.mktemp("reliability")
    status, err = in_process(gmm_toy.main, *GMM, f"--workdir={base / 'reference'}")
    assert status == 0, err
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip
    plan = {
        "after_iteration": ("gmm_toy", GMM, {"LTS_KILL_AT": "after_iteration:2"}),
        "in_checkpoint": ("gmm_toy", GMM, {"LTS_KILL_AT": "in_checkpoint:4"}),
        "in_metrics": ("gmm_toy", GMM, {"LTS_KILL_AT": "in_metrics:4"}),
        # files beyond 2.5 kB fail (as on a full disk): the first checkpoint's, before metrics.jsonl's
        "full_disk": ("gmm_toy", [*GMM, "--checkpoint_every=1"], {"LTS_FILE_SIZE_LIMIT": "2500"}),
        "bad_flag": ("gmm_toy", [*GMM, "--num_iterations=abc"], {}),
        "carla_refused": ("car_count", [*CAR_COUNT, f"--carla_hosts=127.0.0.1:{port}"], {}),
    }
    procs = {}
    for name, (command, args, extra) in plan.items():
        procs[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.inject", command, *args, f"--workdir={base / name}"],
                cwd=ROOT, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ),
            time.monotonic(),
        )  # fmt: skip
    out = {"base": base}
    for name, (proc, t0) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = {"status": proc.returncode, "stderr": stderr, "stdout": stdout, "wall_s": time.monotonic() - t0}
        if (base / name).is_dir():  # as the failure left it, for the cases that start from it
            shutil.copytree(base / name, base / f"{name}.as_left")
    return out


def resume(workdir: Path, *extra: str) -> tuple[int, str]:
    return in_process(gmm_toy.main, *GMM, f"--workdir={workdir}", *extra)


def assert_same_as_reference(workdir: Path, reference: Path):
    assert rows(workdir) == rows(reference)
    ours, ref = (json.loads((d / "results.json").read_text()) for d in (workdir, reference))
    assert ours["psi_raw"] == ref["psi_raw"] and ours["test_accuracy"] == ref["test_accuracy"]
    assert checkpoint.list_steps(workdir / "checkpoints") == [4, 6]  # keep_checkpoints=2
    assert not [p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()]  # no temporary dirs


def kept_lines(before: dict[str, bytes], workdir: Path, n: int) -> None:
    """The first ``n`` metrics lines (those of the checkpointed iterations) are byte for byte as they were."""
    old = before["metrics.jsonl"].decode().splitlines(keepends=True)[:n]
    assert (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)[:n] == old


@pytest.mark.parametrize(
    "case, checkpoints, lines, restored",
    [
        ("after_iteration", [2], 3, 2),  # killed between checkpoints: row 2 is beyond checkpoint 2
        ("in_checkpoint", [2], 4, 2),  # killed while writing checkpoint 4: its temporary directory is left
        ("in_metrics", [2, 4], 4, 4),  # killed half-way through row 4: a truncated metrics.jsonl
    ],
)
def test_kill_9_then_the_same_command_resumes_exactly(cases, case, checkpoints, lines, restored):
    c, workdir = cases[case], cases["base"] / case
    assert c["status"] == KILLED, c["stderr"][-3000:]
    assert checkpoint.list_steps(workdir / "checkpoints") == checkpoints
    text = (workdir / "metrics.jsonl").read_text()
    assert text.count("\n") == lines and (case != "in_metrics" or not text.endswith("\n"))
    if case == "in_checkpoint":
        assert any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())
    before = files(workdir)
    status, err = resume(workdir)
    assert status == 0, err
    kept_lines(before, workdir, restored)
    assert (workdir / "flags.txt").read_bytes() == before["flags.txt"]
    assert_same_as_reference(workdir, cases["base"] / "reference")


def test_corrupt_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(cases):
    workdir = cases["base"] / "corrupt"
    shutil.copytree(cases["base"] / "in_metrics.as_left", workdir)
    for f in (workdir / "checkpoints" / "4").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    garbled = files(workdir / "checkpoints" / "4")
    before = files(workdir)
    status, err = resume(workdir)
    assert status == 0, err
    assert files(workdir / "checkpoints_corrupt" / "4") == garbled  # set aside, not deleted
    kept_lines(before, workdir, 2)
    assert_same_as_reference(workdir, cases["base"] / "reference")


def test_lost_flags_txt_and_foreign_checkpoints_are_refused_touching_nothing(cases):
    workdir = cases["base"] / "foreign"
    shutil.copytree(cases["base"] / "after_iteration.as_left", workdir)
    (workdir / "flags.txt").unlink()
    before = files(workdir)
    # another configuration: refused by the configuration stored in the checkpoint; flags.txt written again
    status, err = resume(workdir, "--num_gaussians=1", "--num_candidates=4")
    assert (
        status == 2 and "--num_gaussians: 2 in the run, now 1" in err and "--num_candidates: 2 in the run, now 4" in err
    )
    after = files(workdir)
    assert "--num_gaussians=2" in after.pop("flags.txt").decode() and after == before
    # a checkpoint that does not record its configuration (written before it did): refused by its shape
    (workdir / "flags.txt").unlink()
    meta = workdir / "checkpoints" / "2" / "meta" / "metadata"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "config"}))
    before = files(workdir)
    status, err = resume(workdir, "--num_gaussians=1")
    assert status == 2 and "holds the state of another configuration" in err, err
    assert "strict" not in err and "Traceback" not in err
    assert files(workdir) == before and not (workdir / "checkpoints_corrupt").exists()
    # the run's own configuration still resumes it, exactly
    status, err = resume(workdir)
    assert status == 0, err
    assert_same_as_reference(workdir, cases["base"] / "reference")


def test_full_disk_stops_with_one_message_and_the_run_resumes(cases):
    c, workdir = cases["full_disk"], cases["base"] / "full_disk"
    assert c["status"] == 1, c["stderr"][-3000:]
    shown = messages(c["stderr"])  # the command's own progress lines, then one error: the last line
    assert [line for line in shown if line.startswith("error:")] == shown[-1:], shown
    assert shown[-1].startswith(f"error: could not write checkpoint {workdir / 'checkpoints'}")
    assert "File too large" in shown[-1] and "Traceback" not in c["stderr"]
    assert checkpoint.list_steps(workdir / "checkpoints") == [] and len(run.read_metrics(workdir)) >= 1
    status, err = resume(workdir)  # with --checkpoint_every=2, a run-management setting that may differ
    assert status == 0, err
    assert run.read_config(workdir)["checkpoint_every"] == "2"
    assert_same_as_reference(workdir, cases["base"] / "reference")


def test_bad_flag_exits_2_in_one_line(cases):
    c = cases["bad_flag"]
    assert c["status"] == 2 and messages(c["stderr"]) == [
        "error: flag --num_iterations=abc: invalid literal for int() with base 10: 'abc' (--help lists the flags)"
    ]
    assert not (cases["base"] / "bad_flag").exists()


def test_unreachable_carla_server_exits_3_saying_how_to_resume(cases):
    c = cases["carla_refused"]
    assert c["status"] == 3, c["stderr"][-3000:]
    assert "refused the connection" in c["stderr"] and "re-run the same command to resume" in c["stderr"]
    assert "Traceback" not in c["stderr"]
    shown = messages(c["stderr"])
    errors = [i for i, line in enumerate(shown) if line.startswith("error: ")]
    assert len(errors) == 1 and shown[errors[0]].startswith("error: NoCarlaServerError: no CARLA server left")
    assert len(shown) - errors[0] <= 2, shown  # the error, then how to resume
    assert c["wall_s"] < 120

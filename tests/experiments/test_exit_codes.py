"""One exit-status table for every command (issue 15.5, 15.6; experiments/common.py, README.md "Exit status"):
0 done, 2 configuration or input (absl's own flag errors included: one line, no help text), 3 a simulator that
stayed unavailable, 130/143 interrupted, 1 anything else."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from absl import app, flags

from experiments import car_count, common, gmm_table2, gmm_toy, kitti_seg
from lts_jax import lts, run
from tests.experiments.conftest import FLAGFILES, ROOT

COMMANDS = sorted(p for p in (ROOT / "experiments").glob("*.py") if p.name not in ("__init__.py", "common.py"))
GMM_TINY = [f"--flagfile={FLAGFILES / 'gmm_toy_quick.flags'}", "--num_iterations=2", "--num_candidates=2",
            "--dataset_size=20", "--val_size=20", "--test_size=20", "--eval_repeats=1", "--noprogress"]  # fmt: skip


def test_the_table_is_the_documented_one():
    assert common.EXIT_STATUS == {
        "done": 0, "error": 1, "configuration": 2, "simulator_unavailable": 3, "SIGINT": 130, "SIGTERM": 143,
    }  # fmt: skip
    for doc in ("README.md", "WORKSPACE.md"):
        text = (ROOT / doc).read_text()
        for status in ("0", "1", "2", "3", "130 / 143"):
            assert f"| {status} |" in text, (doc, status)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p.stem)
def test_every_command_runs_through_common_main(path):
    """absl's own errors (unknown flag, a value of the wrong type, a missing flagfile) exit 2 only where the
    command's flags are parsed by common.parse_flags: every command's ``__main__`` is ``common.main(main)``."""
    tree = ast.parse(path.read_text())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert len(blocks) == 1 and [ast.unparse(s) for s in blocks[0].body] == ["common.main(main)"], path


@pytest.fixture
def reset_flags():
    flags.FLAGS.unparse_flags()
    yield
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "arg, shown",
    [
        ("--bogus=1", "Unknown command line flag 'bogus'"),
        ("--num_iterations=abc", "flag --num_iterations=abc: invalid literal for int()"),
        ("--flagfile=/nonexistent/x.flags", "Unable to open flagfile"),
    ],
)
def test_absl_flag_errors_exit_2_in_one_line(arg, shown, reset_flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        common.parse_flags(["gmm_toy", arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and shown in err, err


def command(module: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def messages(stderr: str) -> list[str]:
    """The lines a user reads: stderr without absl's log lines (``I1201 12:00:00.000 ...``)."""
    return [line for line in stderr.splitlines() if line.strip() and not (line[:1] in "IWEF" and line[1:5].isdigit())]


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_usage_errors_are_one_line_in_a_real_process_and_help_prints_help(tmp_path):
    """Issue 15.5/15.6: absl's errors exited 1; a usage error printed 25-73 lines of help before the message."""
    for args, shown in (
        (["--bogus=1"], "error: Unknown command line flag 'bogus'"),
        ([f"--workdir={tmp_path / 'w'}", "--num_candidates=0"], "error: --num_candidates=0 is out of range"),
    ):
        proc = command("gmm_toy", *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(messages(proc.stderr)) == 1 and messages(proc.stderr)[0].startswith(shown), proc.stderr
        assert proc.stdout == ""
    proc = command("gmm_toy", "--help")
    assert proc.returncode == 0 and "Gaussian-mixture" in proc.stdout
    assert "--num_gaussians: Gaussians per class" in proc.stdout and "--workdir: Directory" in proc.stdout
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, shown",
    [
        (["--policy_variance=inf"], "--policy_variance=inf is out of range; accepted: a finite float"),
        (["--policy_lr=inf"], "--policy_lr=inf is out of range; accepted: a finite float"),
        (["--policy_lr=nan"], "--policy_lr=nan is out of range"),
        (["--retain_mtm"], "--retain_mtm is out of range"),
    ],
)
def test_non_finite_settings_are_refused_before_work(tmp_path, cli, args, shown):
    """Issue 15.3: --policy_variance=inf and learning rates of inf passed validation."""
    status, err = cli(gmm_toy.main, f"--workdir={tmp_path / 'w'}", *args)
    assert status == 2 and shown in err, err[-2000:]
    assert not (tmp_path / "w").exists()


def test_a_workdir_name_too_long_exits_2(tmp_path, cli):
    status, err = cli(gmm_toy.main, f"--workdir={tmp_path / ('x' * 300)}")
    assert status == 2 and "--workdir" in err and "File name too long" in err, err[-2000:]


def test_gmm_table2_checks_its_flags_and_sub_runs_before_work(tmp_path, cli):
    """Issue 15.1/15.5: --seeds=a was a raw traceback (exit 1); --num_candidates=0 ran a whole sweep."""
    for args, shown in (
        (["--seeds=a"], "--seeds=a is out of range; accepted: a comma-separated list of integers"),
        (["--num_candidates=0"], "--num_candidates=0 is out of range"),
        (["--dataset_size=1"], "--dataset_size=1 is out of range"),
    ):
        status, err = cli(gmm_table2.main, f"--workdir={tmp_path / 'w'}", *args)
        assert status == 2 and err.strip().splitlines()[-1].startswith(f"error: {shown}"), err[-2000:]
        assert not (tmp_path / "w").exists()


def test_final_from_names_its_path_once(tmp_path, cli):
    missing = tmp_path / "nowhere"
    status, err = cli(car_count.main, f"--workdir={tmp_path / 'w'}", "--search=fixed", "--fixed_params=final",
                      f"--final_from={missing}")  # fmt: skip
    assert status == 2 and err.count(str(missing)) == 1, err


@pytest.mark.parametrize(
    "error, status, shown",
    [
        (lts.NonFiniteError("iteration 3: non-finite rewards = [nan]"), 1, "error: iteration 3: non-finite rewards"),
        (run.StorageError("cannot write /w/metrics.jsonl: no space left on device"), 1, "no space left"),
        (run.SimulatorUnavailable("NoCarlaServerError: no CARLA server left"), 3, "re-run the same command"),
        (run.WorkdirError("another configuration"), 2, "error: another configuration"),
        (KeyboardInterrupt(), 130, "Re-run the same command to resume"),
        (run.Interrupted("stopped by SIGTERM", 15, 4, None, 10), 143, "interrupted: stopped by SIGTERM"),
    ],
)
def test_run_main_maps_each_outcome_to_its_status(error, status, shown, capsys, reset_flags):
    def main_fn():
        raise error

    with pytest.raises(SystemExit) as exit_:
        common.run_main(main_fn)(["cmd"])
    err = capsys.readouterr().err
    assert exit_.value.code == status and shown in err and "Traceback" not in err, err


def test_a_configuration_or_input_error_leaves_no_new_workdir_behind(tmp_path, cli):
    """Issue 15.6: a KITTI data error (found after the workdir was prepared) left a flags.txt in a new workdir."""
    from experiments.lib import common as lib_common
    from experiments.lib.gmm_toy import GmmToyConfig

    def main_fn():
        lib_common.prepare_workdir(GmmToyConfig(), common.workdir())
        raise app.UsageError("bad input file /data/x.png", exitcode=2)

    status, err = cli(main_fn, f"--workdir={tmp_path / 'new'}")
    assert status == 2 and "bad input file" in err and not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    status, _ = cli(main_fn, f"--workdir={tmp_path / 'mine'}")
    assert status == 2 and sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_corrupt_kitti_image_exits_2_naming_it_and_leaves_no_workdir(tmp_path, cli):
    import shutil

    from tests.conftest import real_data_dir

    data = tmp_path / "kitti"
    shutil.copytree(real_data_dir("kitti_semantics"), data)
    bad = sorted((data / "training" / "image_2").iterdir())[0]
    bad.write_bytes(b"not a png")
    status, err = cli(kitti_seg.main, f"--flagfile={FLAGFILES / 'kitti_seg_quick.flags'}", f"--kitti_dir={data}",
                      f"--workdir={tmp_path / 'w'}", "--height=24", "--width=80", "--noprogress")  # fmt: skip
    assert status == 2 and bad.name in err, err[-2000:]
    assert not (tmp_path / "w").exists()


def test_simulator_unavailable_behind_the_host_bridge_exits_3(capsys, reset_flags):
    """The pool's error crosses jax.pure_callback as text only; run_main still finds it."""

    class JaxRuntimeError(RuntimeError):
        pass

    def main_fn():
        raise JaxRuntimeError(
            "INTERNAL: CpuCallback error calling callback: Traceback (most recent call last):\n  File ...\n"
            "simulators.carla.pool.NoCarlaServerError: NoCarlaServerError: no CARLA server left; all of "
            "127.0.0.1:9 failed"
        )

    with pytest.raises(SystemExit) as exit_:
        common.run_main(main_fn)(["cmd"])
    err = capsys.readouterr().err
    assert exit_.value.code == 3 and err.startswith("error: NoCarlaServerError: no CARLA server left; all of 127")


def test_help_lists_a_commands_flags(reset_flags, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", gmm_toy)
    monkeypatch.setitem(common._DEFINED_BY, "__main__", list(common._DEFINED_BY["experiments.gmm_toy"]))
    with pytest.raises(SystemExit) as exit_:
        common.parse_flags(["gmm_toy", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("Paper section 4.1") and "--svm_c: C of the RBF SVM." in out
    assert Path(gmm_toy.__file__).stem == "gmm_toy"

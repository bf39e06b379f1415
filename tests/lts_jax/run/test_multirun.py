"""MultiRun: named sub-runs reused only with a matching configuration, failures isolated, the summary kept."""

import json
import signal

import numpy as np
import pytest

from experiments import common
from lts_jax import run
from lts_jax.run import multirun

CONFIG = {"seed": 0, "num_iterations": 3, "sizes": (4, 8), "policy": {"lr": 0.1, "decay": 0.9}, "progress": True}


class Work:
    """A sub-run's ``fn``: counts its calls, writes a file, returns a result with NumPy values."""

    def __init__(self, fail: BaseException | None = None):
        self.calls, self.fail = [], fail

    def __call__(self, path):
        self.calls.append(path)
        (path / "out.txt").write_text("work")
        if self.fail is not None:
            raise self.fail
        return {"value": np.float32(len(self.calls)), "curve": np.arange(3)}


def summary(path):
    return json.loads(path.read_text())


def test_finished_sub_run_is_reused_with_the_same_config(tmp_path):
    work = Work()
    multi = run.MultiRun(tmp_path, tmp_path / "summary.json")
    entry = multi.run("a", CONFIG, work)
    assert entry["status"] == "done" and not entry["reused"] and entry["wall_s"] >= 0
    assert entry["result"] == {"value": 1.0, "curve": [0, 1, 2]}  # as it reads back from JSON
    assert work.calls == [tmp_path / "a"] and (tmp_path / "a" / "out.txt").exists()
    record = json.loads((tmp_path / "a" / multirun.RECORD_FILE).read_text())
    assert record["status"] == "done" and record["config"]["sizes"] == [4, 8]
    assert summary(tmp_path / "summary.json")["runs"]["a"]["status"] == "done"

    again = run.MultiRun(tmp_path, tmp_path / "summary.json")
    assert again.check("a", CONFIG) == "reuse"
    entry = again.run("a", {**CONFIG, "sizes": [4, 8]}, work)  # tuples and lists are the same setting
    assert entry["status"] == "done" and entry["reused"] and entry["result"]["value"] == 1.0
    assert len(work.calls) == 1  # not run again
    assert again.check("b", CONFIG) == "new"


def test_other_config_is_refused_naming_the_settings(tmp_path):
    run.MultiRun(tmp_path).run("a", CONFIG, Work())
    before = sorted(p.name for p in (tmp_path / "a").iterdir())
    multi = run.MultiRun(tmp_path)
    changed = {**CONFIG, "num_iterations": 5, "policy": {"lr": 0.2, "decay": 0.9}, "new": 1}
    with pytest.raises(run.WorkdirError) as err:
        multi.run("a", changed, Work())
    assert err.value.differences == [("new", None, "1"), ("num_iterations", "3", "5"), ("policy.lr", "0.1", "0.2")]
    msg = str(err.value)
    assert "holds the sub-run 'a' with a different configuration" in msg
    assert "  num_iterations: 3 in the run, now 5" in msg and "  new: (absent) in the run, now 1" in msg
    assert "pass overwrite=True to start over" in msg
    shown = common.user_message(err.value)  # what an experiment prints
    assert "  --policy.lr: 0.1 in the run, now 0.2" in shown and "pass --overwrite to start over" in shown
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == before and "a" not in multi.entries
    with pytest.raises(run.WorkdirError):
        multi.check("a", changed)


def test_ignored_settings_may_differ(tmp_path):
    work = Work()
    run.MultiRun(tmp_path).run("a", CONFIG, work)
    multi = run.MultiRun(tmp_path, ignore={"progress", "policy"})
    entry = multi.run("a", {**CONFIG, "progress": False, "policy": {"lr": 9}}, work)
    assert entry["reused"] and len(work.calls) == 1


def test_rerun_policy_starts_a_different_config_over(tmp_path):
    run.MultiRun(tmp_path).run("a", CONFIG, Work())
    (tmp_path / "a" / "stale.txt").write_text("old")
    multi = run.MultiRun(tmp_path, on_mismatch="rerun")
    assert multi.check("a", {**CONFIG, "seed": 1}) == "rerun"
    work = Work()
    entry = multi.run("a", {**CONFIG, "seed": 1}, work)
    assert entry["status"] == "done" and not entry["reused"] and len(work.calls) == 1
    assert not (tmp_path / "a" / "stale.txt").exists()  # the old sub-run's files are gone
    assert json.loads((tmp_path / "a" / multirun.RECORD_FILE).read_text())["config"]["seed"] == 1


def test_overwrite_starts_every_sub_run_over(tmp_path):
    run.MultiRun(tmp_path).run("a", CONFIG, Work())
    (tmp_path / "a" / "stale.txt").write_text("old")
    work = Work()
    entry = run.MultiRun(tmp_path, overwrite=True).run("a", CONFIG, work)
    assert not entry["reused"] and len(work.calls) == 1 and not (tmp_path / "a" / "stale.txt").exists()


def test_unrecorded_files_are_refused_and_kept(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text("{}")  # e.g. another program's run
    for on_mismatch in ("refuse", "rerun"):
        with pytest.raises(run.WorkdirError, match="holds files but no sub-run record"):
            run.MultiRun(tmp_path, on_mismatch=on_mismatch).run("a", CONFIG, Work())
    assert (tmp_path / "a" / "results.json").read_text() == "{}"
    (tmp_path / "b").mkdir()  # an empty directory is a new sub-run
    assert run.MultiRun(tmp_path).run("b", CONFIG, Work())["status"] == "done"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / multirun.RECORD_FILE).write_text("{not json")
    with pytest.raises(run.WorkdirError, match="is not a sub-run record"):
        run.MultiRun(tmp_path).check("c", CONFIG)


def test_a_failing_sub_run_is_isolated_and_retried(tmp_path):
    multi = run.MultiRun(tmp_path, tmp_path / "summary.json")
    failing = Work(fail=ValueError("bad psi"))
    entry = multi.run("bad", CONFIG, failing)
    assert entry["status"] == "failed" and entry["error"] == "ValueError: bad psi"
    assert "Traceback" in entry["traceback"] and "bad psi" in entry["traceback"]
    assert multi.run("good", CONFIG, Work())["status"] == "done"  # the others go on
    written = summary(tmp_path / "summary.json")["runs"]
    assert written["bad"]["status"] == "failed" and written["good"]["status"] == "done"
    assert multi.failures() == {"bad": "ValueError: bad psi"}
    with pytest.raises(run.SubRunsFailed, match="1 of 2 sub-runs failed") as err:
        multi.raise_failures()
    assert err.value.failures == {"bad": "ValueError: bad psi"} and "bad: ValueError: bad psi" in str(err.value)
    # the same configuration again retries the failed one in the same directory (it may resume there)
    again = run.MultiRun(tmp_path)
    assert again.check("bad", CONFIG) == "resume"
    work = Work()
    assert again.run("bad", CONFIG, work)["status"] == "done" and work.calls == [tmp_path / "bad"]
    again.raise_failures()  # nothing failed in this session


def test_results_that_are_not_json_are_a_failure(tmp_path):
    multi = run.MultiRun(tmp_path)
    assert multi.run("a", CONFIG, lambda path: {"x": object()})["error"].startswith("TypeError")
    assert multi.run("b", CONFIG, lambda path: [1, 2])["error"].startswith("TypeError")


def test_interruptions_propagate_after_recording(tmp_path):
    multi = run.MultiRun(tmp_path, tmp_path / "summary.json")
    stop = run.Interrupted("stopped by SIGTERM", signal.SIGTERM, 2, None, 5)
    with pytest.raises(run.Interrupted):
        multi.run("a", CONFIG, Work(fail=stop))
    assert summary(tmp_path / "summary.json")["runs"]["a"]["status"] == "interrupted"
    assert run.MultiRun(tmp_path).check("a", CONFIG) == "resume"
    with pytest.raises(KeyboardInterrupt):  # never caught
        run.MultiRun(tmp_path).run("a", CONFIG, Work(fail=KeyboardInterrupt()))


def test_skips_summary_fn_and_names(tmp_path):
    def summary_fn(entries):
        return {"plan": "p", "done": [n for n, e in entries.items() if e["status"] == "done"], "runs": dict(entries)}

    multi = run.MultiRun(tmp_path, tmp_path / "out" / "summary.json", summary_fn=summary_fn)
    multi.run("a", CONFIG, Work())
    multi.skip("b", "time budget spent")
    written = summary(tmp_path / "out" / "summary.json")
    assert written["plan"] == "p" and written["done"] == ["a"]
    skipped = {"status": "skipped", "reason": "time budget spent", "wall_s": pytest.approx(0, abs=1)}
    assert written["runs"]["b"] == skipped
    assert list(multi.entries) == ["a", "b"] and multi.summary() == written
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="ran already"):
        multi.run("a", CONFIG, Work())
    for bad in ("", ".", "..", "x/y", ".hidden"):
        with pytest.raises(ValueError, match="not a plain directory name"):
            multi.run(bad, CONFIG, Work())
    with pytest.raises(ValueError, match="on_mismatch"):
        run.MultiRun(tmp_path, on_mismatch="ignore")

"""What a run tells the person watching it: phases with durations, "compiling" instead of an ETA that includes
compilation, a rounded closing table, no backend INFO noise (warnings kept)."""

from __future__ import annotations

import io
import logging

from lts_jax.run import progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_first_iteration_says_compiling_and_the_eta_leaves_it_out(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    show = progress.Progress(11, stream=out, log_every=1)
    show.start(0)
    clock.now = 30.0  # the first iteration compiled for 30 s
    show(0, None, {"reward_mean": 0.5, "best_reward": 0.6, "time_s": 30.0})
    for i in range(1, 3):
        clock.now += 1.0  # then 1 s per iteration
        show(i, None, {"reward_mean": 0.5, "best_reward": 0.6, "time_s": 1.0})
    lines = out.getvalue().splitlines()
    assert lines[0] == "iter 0/11  compiling the step and running iteration 1 ..."
    assert "first iteration 30 s (compiling included)" in lines[1] and "ETA" not in lines[1]
    assert lines[-1].endswith("1.00 it/s  ETA 0:08")  # 8 iterations left at 1 s each, not (30 + 2) / 3 s each


def test_a_resumed_run_says_compiling_at_its_iteration():
    out = io.StringIO()
    progress.Progress(10, stream=out, log_every=5).start(4)
    assert out.getvalue() == "iter 4/10  compiling the step and running iteration 5 ...\n"
    quiet = io.StringIO()
    progress.Progress(10, stream=quiet, log_every=0).start(0)  # no terminal, no log lines: nothing
    assert quiet.getvalue() == ""


def test_phase_announces_and_times(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    with progress.phase("car_count", "rendering the validation and test sets", stream=out):
        clock.now = 75.0
    assert out.getvalue().splitlines() == [
        "car_count: rendering the validation and test sets ...",
        "car_count: rendering the validation and test sets: done in 1 min 15 s",
    ]


def test_table_is_rounded_and_outputs_listed():
    table = progress.format_table(
        {"lts": {"test": -0.506123681863149, "n": 12000}, "psi_real": {"test": -0.3764}},
        [("test reward", "test"), ("images", "n")],
    )
    assert table.splitlines() == [
        "          test reward  images",
        "--------  -----------  ------",
        "lts       -0.506       12,000",
        "psi_real  -0.376       -",
    ]
    text = progress.outputs({"results": "w/results.json", "figures": ["w/a.png", "w/b.png"], "none": None})
    assert text == "results: w/results.json\nfigures:\n  w/a.png\n  w/b.png"


def test_backend_info_is_quiet_but_warnings_show(caplog):
    logger = logging.getLogger("jax._src.xla_bridge")
    old = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        progress.quiet_backend_logs()
        with caplog.at_level(logging.INFO):
            logger.info("Unable to initialize backend 'tpu': ...")
            logger.warning("a real warning")
        assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["a real warning"]
    finally:
        logger.setLevel(old)

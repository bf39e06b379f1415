"""The K candidates sharded over devices (lts_jax.parallel, lts.LTSConfig(num_devices=...)) and over processes
(lts_jax.run.distributed). Each multi-device test runs tests/lts_jax/sharding_worker.py in a subprocess with
4 forced CPU devices (or as two jax.distributed processes), so that this process keeps its one device."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lts_jax import lts, parallel
from lts_jax.run import distributed

ROOT = Path(__file__).resolve().parents[2]


def worker_env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return env


def start(case: str, out: Path, *args, devices: int = 4) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lts_jax.sharding_worker", case, str(out), *map(str, args)],
        cwd=ROOT,
        env=worker_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"worker timed out:\n{output[-6000:]}")
    assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{output[-6000:]}"
    return output


@pytest.mark.slow
def test_sharded_steps_equal_one_device_and_host_renderer_per_device(tmp_path):
    """make_step and make_split_step on 4 devices == on 1 (metrics, state); the host renderer is called once per
    device with that device's K / 4 candidates' scenes; state and metrics come back replicated."""
    finish(start("steps", tmp_path))
    assert json.loads((tmp_path / "steps.json").read_text()) == {"ok": True}


@pytest.mark.slow
def test_resume_across_mesh_sizes_is_exact(tmp_path):
    """A checkpoint of run_search on 4 devices restores on 1 and continues (and 1 -> 4), equal to the run
    with the state handed over in memory."""
    finish(start("resume", tmp_path))
    assert json.loads((tmp_path / "resume.json").read_text()) == {"ok": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_writes_one_set_of_results(tmp_path):
    """Two jax.distributed processes on loopback (one CPU device each) run a quick run_search with the
    K = 4 candidates split over them: one metrics.jsonl, one TensorBoard file, one results.json, orbax
    checkpoints; both processes agree, and each rendered only its own candidates."""
    port = free_port()
    procs = [start("distributed", tmp_path, i, port, devices=1) for i in range(2)]
    try:
        outputs = [finish(p, timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert outputs
    workdir = tmp_path / "run"
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    results = json.loads((workdir / "results.json").read_text())
    assert (workdir / "rewards.png").exists() and (workdir / "flags.txt").exists()
    assert not list(workdir.glob(".write_test*"))
    per_process = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    for p in per_process:
        assert p["iteration"] == 3
        assert p["rewards"] == results["rewards"] == [r["rewards"] for r in rows]
        assert p["calls"] == [[2 * 8, 2]] * 3  # K / 2 candidates x M = 8 scenes, once per iteration


def test_uneven_candidates_and_missing_devices_are_refused():
    with pytest.raises(ValueError, match=r"num_candidates = 6 \(K\) is not divisible by num_devices = 4"):
        lts.LTSConfig(num_candidates=6, num_devices=4)
    with pytest.raises(ValueError, match="num_devices = 0 is out of range"):
        lts.LTSConfig(num_candidates=4, num_devices=0)
    with pytest.raises(ValueError, match=r"num_devices = 2 is out of range; accepted: 1 \.\. 1"):
        parallel.candidate_mesh(2)
    config = lts.LTSConfig(num_candidates=4, num_devices=1)
    assert lts.mesh_for(config) is None and lts.replicate(config, {"a": 1}) == {"a": 1}


def test_distributed_settings(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() is False  # nothing says "several processes": a single-process run
    assert distributed.initialize(num_processes=1) is False
    assert distributed.is_main_process() and distributed.any_process(True) and not distributed.any_process(False)
    distributed.sync("test")
    with pytest.raises(ValueError, match="process_id = 2 is out of range; accepted: 0 .. 1"):
        distributed.initialize("127.0.0.1:1", 2, 2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r"\['coordinator', 'process_id'\] missing"):
        distributed.initialize()

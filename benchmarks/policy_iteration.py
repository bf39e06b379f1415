r"""Wall time of one complete policy iteration, split by phase, against K and the device count.

    PYTHONPATH=. python benchmarks/policy_iteration.py --out=policy_iteration.json
    # several GPUs: K = 8..64 on 1, 2, 4, 8 devices, car counting, then segmentation
    PYTHONPATH=. python benchmarks/policy_iteration.py --num_candidates=8,16,32,64 --num_devices=1,2,4,8 \
        --out=$OUT/pi_devices.json
    PYTHONPATH=. python benchmarks/policy_iteration.py --task=segmentation --num_candidates=8,16,32,64 \
        --num_devices=1,2,4,8 --out=$OUT/pi_seg_devices.json
    # CPU, forced host devices (runs and reports; the times mean nothing: the "devices" share the cores)
    XLA_FLAGS=--xla_force_host_platform_device_count=4 PYTHONPATH=. python benchmarks/policy_iteration.py \
        --num_candidates=8 --num_devices=1,2,4 --dataset_size=16 --val_size=16 --height=24 --width=80 --repeats=2

The default configuration is issue 4's: K = 8 candidates, M = 100 images each at 96x320, xi = 1
epoch of the counting CNN (batch 32), 200 validation images, REINFORCE update. ``--task=segmentation``
trains the segmentation task instead (``--seg_model``, fcn_small by default) on image + label. The
simulator renders only the outputs the task reads (``sim.select(task.data_keys)``, as the experiments do).

For every K of ``--num_candidates`` and every device count of ``--num_devices`` (``LTSConfig(num_devices=n)``:
the K candidates split over n devices; pairs where n does not divide K, or more devices than JAX sees,
are skipped with a note) it reports:

- ``step``: the real thing, ``lts.make_step``'s one jitted iteration (ask, render K x M,
  train K MTMs, evaluate them on D_val, tell), median over repeats, and the images/s it makes
  (K x M / step);
- with ``--phases``, each phase jitted alone on the same inputs, sharded like the step: ``render``
  (sample + render K x M images), ``train`` (K trainings from one initialisation), ``evaluate``
  (K models on the validation images), ``update`` (ask + tell, replicated). Their sum exceeds ``step``
  a little (separate dispatches, no fusion across phases).

Writes JSON with the device, the configurations and the milliseconds (``results``: one entry per
(K, devices); the top-level ``step_ms`` / ``phase_ms`` are the first entry's, as before).
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from lts_jax import lts, parallel
from lts_jax.search import policy
from simulators.traffic import TrafficSimulator

TASK = flags.DEFINE_enum("task", "counting", ["counting", "segmentation"], "Main task model.")
KS = flags.DEFINE_list("num_candidates", ["8"], "K; a comma-separated list sweeps it, e.g. 8,16,32,64.")
DEVICES = flags.DEFINE_list(
    "num_devices", ["1"], "Device counts to sweep, e.g. 1,2,4,8 ('all': every device JAX sees)."
)
M = flags.DEFINE_integer("dataset_size", 100, "M.")
EPOCHS = flags.DEFINE_integer("mtm_epochs", 1, "xi.")
VAL = flags.DEFINE_integer("val_size", 200, "Validation images.")
HEIGHT = flags.DEFINE_integer("height", 96, "Image height.")
WIDTH = flags.DEFINE_integer("width", 320, "Image width.")
DTYPE = flags.DEFINE_string("compute_dtype", "bfloat16", "MTM compute dtype: float32 or bfloat16.")
STRATEGY = flags.DEFINE_string("train_strategy", "auto", "Executor strategy for training.")
SEG_MODEL = flags.DEFINE_string("seg_model", "fcn_small", "Segmentation model (--task=segmentation).")
SEG_BATCH = flags.DEFINE_integer("seg_batch_size", 8, "Segmentation training batch (--task=segmentation).")
PHASES = flags.DEFINE_bool("phases", True, "Also time each phase alone.")
REPEATS = flags.DEFINE_integer("repeats", 20, "Timed repeats (median reported).")
OUT = flags.DEFINE_string("out", None, "JSON output path.")


def timed(fn, *args, repeats: int) -> float:
    """Median milliseconds of ``fn(*args)`` (compiled and warmed up first)."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_task():
    if TASK.value == "counting":
        from lts_jax.tasks.counting import CountingTask

        return CountingTask(HEIGHT.value, WIDTH.value, compute_dtype=DTYPE.value)
    from lts_jax.tasks.segmentation import SegmentationTask

    return SegmentationTask(
        SEG_MODEL.value, HEIGHT.value, WIDTH.value, batch_size=SEG_BATCH.value, compute_dtype=DTYPE.value
    )


def device_counts() -> list[int]:
    counts = [jax.device_count() if n.strip() == "all" else int(n) for n in DEVICES.value]
    return list(dict.fromkeys(counts))  # "1,all" on one device: once


def bench(sim, task, k: int, n: int, val) -> dict:
    """One (K, devices) configuration: the step and (with --phases) its phases."""
    pol = policy.GaussianPolicy(sim.spec)
    config = lts.LTSConfig(
        num_candidates=k, dataset_size=M.value, mtm_epochs=EPOCHS.value, train_strategy=STRATEGY.value, num_devices=n
    )
    mesh = lts.mesh_for(config)
    val = lts.replicate(config, val)
    step = lts.make_step(config, sim, task, pol)
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.initial("random", jax.random.key(2)))

    # The full step: time consecutive iterations (state threads through, as in a run).
    t_compile = time.perf_counter()
    state, _ = step(state, jax.random.key(10), val)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t_compile
    times = []
    for i in range(REPEATS.value + 2):
        t0 = time.perf_counter()
        state, metrics = step(state, jax.random.key(11 + i), val)
        jax.block_until_ready(metrics["rewards"])
        times.append((time.perf_counter() - t0) * 1e3)
    step_ms = statistics.median(times[2:])
    train_strategy = parallel.strategy_for(task, config.train_strategy, "train")
    eval_strategy = parallel.strategy_for(task, config.eval_strategy, "evaluate")
    result = {
        "K": k,
        "num_devices": n,
        "train_strategy": train_strategy,
        "eval_strategy": eval_strategy,
        "step_ms": step_ms,
        "images_per_s": k * M.value / (step_ms / 1e3),
        "first_step_s_incl_compile": compile_s,
    }
    if not PHASES.value:
        return result

    # Phases alone, sharded over the same devices as the step.
    m = M.value
    psi = pol.ask(jax.random.key(3), state.search, k)
    render = jax.jit(
        parallel.over_candidates(
            lambda keys, psi: jax.vmap(sim.sample, in_axes=(0, 0, None))(keys, psi, m), mesh, (0, 0)
        )
    )
    keys = jax.random.split(jax.random.key(4), k)
    keys, psi = parallel.replicate((keys, psi), mesh)
    data = render(keys, psi)

    def train_all(data, key):
        def one(d, kk):
            return task.train(task.init(key), d, kk, EPOCHS.value)

        return parallel.run_candidates(one, train_strategy, data, jax.random.split(key, k), mesh=mesh)

    train = jax.jit(train_all)
    key5, key6, key7 = parallel.replicate((jax.random.key(5), jax.random.key(6), jax.random.key(7)), mesh)
    mtms = train(data, key5)
    evaluate = jax.jit(
        lambda mt, v: parallel.run_candidates(
            task.evaluate, eval_strategy, mt, v, in_axes=(0, None), phase="evaluate", mesh=mesh
        )
    )

    def update(s, key):
        p = pol.ask(key, s, k)
        return pol.tell(s, p, -jnp.sum(p**2, -1))

    update = jax.jit(update)
    reps = REPEATS.value
    result["phase_ms"] = {
        "render": timed(render, keys, psi, repeats=reps),
        "train": timed(train, data, key6, repeats=reps),
        "evaluate": timed(evaluate, mtms, val, repeats=reps),
        "update": timed(update, state.search, key7, repeats=reps),
    }
    return result


def main(argv):
    del argv
    task = make_task()
    sim = TrafficSimulator(HEIGHT.value, WIDTH.value).select(task.data_keys)
    val = sim.sample_dataset(jax.random.key(1), sim.preset("val"), VAL.value)
    val = {key: val[key] for key in task.data_keys}
    device = jax.devices()[0]
    forced = device.platform == "cpu" and jax.device_count() > 1
    note = (
        "CPU with forced host devices: every 'device' shares the same cores, so these times say nothing "
        "about scaling; they only show that the sharded programs run"
        if forced
        else None
    )
    results, skipped = [], []
    print(
        f"device {device.platform}:{getattr(device, 'device_kind', '')} x {jax.device_count()}  task={TASK.value} "
        f"M={M.value} xi={EPOCHS.value} val={VAL.value} {HEIGHT.value}x{WIDTH.value} {DTYPE.value}"
    )
    if note:
        print(f"NOTE: {note}")
    header = (
        f"{'K':>4} {'devices':>7} {'step ms':>9} {'images/s':>10}  {'render':>8} {'train':>8} {'eval':>8} {'update':>8}"
    )
    print(header)
    for k in [int(x) for x in KS.value]:
        for n in device_counts():
            if n > jax.device_count() or k % n:
                why = f"K={k} on {n} devices: " + (
                    "more devices than JAX sees" if n > jax.device_count() else "n does not divide K"
                )
                skipped.append(why)
                print(f"skipped {why}")
                continue
            r = bench(sim, task, k, n, val)
            results.append(r)
            ph = r.get("phase_ms", {})
            cells = "".join(
                f" {ph[p]:>8.2f}" if p in ph else f" {'-':>8}" for p in ("render", "train", "evaluate", "update")
            )
            print(f"{k:>4} {n:>7} {r['step_ms']:>9.2f} {r['images_per_s']:>10,.0f} {cells}   "
                  f"(first step incl. compile {r['first_step_s_incl_compile']:.1f} s)", flush=True)  # fmt: skip
    first = results[0] if results else {}
    report = {
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "note": note,
        "config": {
            "task": TASK.value,
            "M": M.value,
            "xi": EPOCHS.value,
            "val_size": VAL.value,
            "image": [HEIGHT.value, WIDTH.value],
            "compute_dtype": DTYPE.value,
            "seg_model": SEG_MODEL.value if TASK.value == "segmentation" else None,
        },
        "results": results,
        "skipped": skipped,
        # The first configuration's figures, where the single-configuration report had them.
        "step_ms": first.get("step_ms"),
        "phase_ms": first.get("phase_ms"),
        "first_step_s_incl_compile": first.get("first_step_s_incl_compile"),
        "target_ms_h100": 50.0,
    }
    if OUT.value:
        with open(OUT.value, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    app.run(main)

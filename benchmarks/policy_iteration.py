r"""Wall time of one complete car-counting policy iteration, split by phase.

    PYTHONPATH=. python benchmarks/policy_iteration.py --out=policy_iteration.json

The configuration of issue 4: K = 8 candidates, M = 100 images each at 96x320,
xi = 1 epoch of the counting CNN (batch 32), 200 validation images, REINFORCE
update. Reported:

- ``step``: the real thing, ``lts.make_step``'s one jitted iteration (ask, render K x M,
  train K MTMs, evaluate them on D_val, tell), median over repeats;
- the phases, each jitted alone on the same inputs: ``render`` (sample + render K x M
  images), ``train`` (K trainings from one initialisation), ``evaluate`` (K models on
  200 validation images), ``update`` (ask + tell). Their sum exceeds ``step`` a little
  (separate dispatches, no fusion across phases).

Writes JSON with the device name, the configuration and the milliseconds.
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
from lts_jax.tasks.counting import CountingTask
from simulators.traffic import TrafficSimulator

K = flags.DEFINE_integer("num_candidates", 8, "K.")
M = flags.DEFINE_integer("dataset_size", 100, "M.")
EPOCHS = flags.DEFINE_integer("mtm_epochs", 1, "xi.")
VAL = flags.DEFINE_integer("val_size", 200, "Validation images.")
HEIGHT = flags.DEFINE_integer("height", 96, "Image height.")
WIDTH = flags.DEFINE_integer("width", 320, "Image width.")
DTYPE = flags.DEFINE_string("compute_dtype", "bfloat16", "MTM compute dtype: float32 or bfloat16.")
STRATEGY = flags.DEFINE_string("train_strategy", "auto", "Executor strategy for training.")
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


def main(argv):
    del argv
    sim = TrafficSimulator(HEIGHT.value, WIDTH.value)
    task = CountingTask(HEIGHT.value, WIDTH.value, compute_dtype=DTYPE.value)
    pol = policy.GaussianPolicy(sim.spec)
    config = lts.LTSConfig(
        num_candidates=K.value, dataset_size=M.value, mtm_epochs=EPOCHS.value, train_strategy=STRATEGY.value
    )
    val = jax.jit(sim.sample, static_argnums=2)(jax.random.key(1), jnp.asarray(sim.preset("val")), VAL.value)
    val = {"image": val["image"], "counts": val["counts"]}
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

    # Phases alone.
    Kn, Mn = K.value, M.value
    psi = pol.ask(jax.random.key(3), state.search, Kn)
    render = jax.jit(lambda keys, psi: jax.vmap(sim.sample, in_axes=(0, 0, None))(keys, psi, Mn))
    keys = jax.random.split(jax.random.key(4), Kn)
    data = render(keys, psi)
    train_strategy = parallel.strategy_for(task, config.train_strategy, "train")
    eval_strategy = parallel.strategy_for(task, config.eval_strategy, "evaluate")

    def train_all(data, key):
        def one(d, k):
            return task.train(task.init(key), d, k, EPOCHS.value)

        return parallel.run_candidates(one, train_strategy, data, jax.random.split(key, Kn))

    train = jax.jit(train_all)
    mtms = train(data, jax.random.key(5))
    evaluate = jax.jit(
        lambda m, v: parallel.run_candidates(task.evaluate, eval_strategy, m, v, in_axes=(0, None), phase="evaluate")
    )

    def update(s, key):
        p = pol.ask(key, s, Kn)
        return pol.tell(s, p, -jnp.sum(p**2, -1))

    update = jax.jit(update)
    reps = REPEATS.value
    phases = {
        "render": timed(render, keys, psi, repeats=reps),
        "train": timed(train, data, jax.random.key(6), repeats=reps),
        "evaluate": timed(evaluate, mtms, val, repeats=reps),
        "update": timed(update, state.search, jax.random.key(7), repeats=reps),
    }
    device = jax.devices()[0]
    result = {
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "jax": jax.__version__,
        "config": {
            "K": Kn,
            "M": Mn,
            "xi": EPOCHS.value,
            "val_size": VAL.value,
            "image": [HEIGHT.value, WIDTH.value],
            "compute_dtype": DTYPE.value,
            "train_strategy": train_strategy,
            "eval_strategy": eval_strategy,
        },
        "step_ms": step_ms,
        "first_step_s_incl_compile": compile_s,
        "phase_ms": phases,
        "target_ms_h100": 50.0,
    }
    print(f"device {result['device']}  K={Kn} M={Mn} xi={EPOCHS.value} val={VAL.value} {HEIGHT.value}x{WIDTH.value}")
    print(f"{'phase':<10}{'ms':>10}")
    print(f"{'step':<10}{step_ms:>10.2f}   (one jitted policy iteration; target <= 50 ms on one H100)")
    for name, ms in phases.items():
        print(f"{name:<10}{ms:>10.2f}")
    print(f"first step incl. compilation: {compile_s:.1f} s")
    if OUT.value:
        with open(OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)

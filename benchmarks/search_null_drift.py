r"""Does a search configuration turn noise into drift, learn with signal, and leave a plateau? (issue 13.3/13.4)

    PYTHONPATH=. python benchmarks/search_null_drift.py --out=search_null_drift.json      # ~4 min on 2 busy CPU cores

Over the traffic simulator's spec (``simulators.traffic.scene.make_spec()``: road length 11-way, car type 5-way,
weather 4-way, car and house presence), K = 8 candidates, every configuration of ``CONFIGS`` on three synthetic
rewards, ``--seeds`` seeds each (one vmapped lax.scan per configuration and reward):

- ``null``: pure noise, R ~ N(0, 0.01^2) (about the spread of K car-counting rewards), from psi_real (the ``val``
  preset). Everything the center does is drift: reported at 300 and ``--iterations`` iterations as the mean
  |change| of the centred logits (``drift300``, ``drift``), the largest total-variation distance of a block from
  its start (``tv``), the least probability any category reached (``min_p``) and in how many seeds some category
  fell below 1% (``collapsed``).
- ``signal``: R = -sum_blocks TV(p_block(psi), p_block(psi_real)) + N(0, 0.01^2) from the neutral psi (uniform);
  reported: the mean over seeds of that TV sum after 100 and 300 iterations and at the end (``sig100``,
  ``sig300``, ``sig``; start 0.75, 0 is psi_real).
- ``plateau``: minus the same distance rounded to steps of 0.25 (rewards of nearby candidates often tie exactly)
  from the ``adversarial`` preset (one road length, car type and weather, the others at logits of -10, like
  car counting's adversarial start); reported: the TV sum at the end (``plat``, start 3.93).
- ``flat``: the same rounded to steps of 1 (every batch of the start ties): ``flat``, the TV sum at the end.

Writes JSON: the configurations, every number, the device and jax version.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lts_jax import search
from lts_jax.search import diagnostics
from simulators.traffic import scene

ITERATIONS = flags.DEFINE_integer("iterations", 1000, "Iterations per run.")
SEEDS = flags.DEFINE_integer("seeds", 10, "Seeds per configuration and reward.")
K = flags.DEFINE_integer("num_candidates", 8, "Candidates per iteration (K).")
NOISE = flags.DEFINE_float("noise", 0.01, "Std of the reward noise.")
ONLY = flags.DEFINE_list("only", [], "Run only these configuration labels.")
OUT = flags.DEFINE_string("out", None, "JSON output path.")

PAPER = {"learning_rate": 0.2}  # what the car-counting and GMM flagfiles use: Adam, raw advantages, EMA baseline
# (label, strategy name, options)
CONFIGS = [
    ("paper: adam 0.2 raw ema", "lts", PAPER),
    ("adam 0.05 (library default)", "lts", {}),
    ("adam 0.02", "lts", {"learning_rate": 0.02}),
    ("sgd 0.2", "lts", {**PAPER, "optimizer": "sgd"}),
    ("adam 0.2 clip 1", "lts", {**PAPER, "grad_clip": 1.0}),
    ("adam 0.2 batch_mean", "lts", {**PAPER, "baseline": "batch_mean"}),
    ("adam 0.2 antithetic", "lts", {**PAPER, "antithetic": True}),
    ("adam 0.2 learn_variance", "lts", {**PAPER, "learn_variance": True}),
    ("adam 0.2 normalized", "lts", {**PAPER, "advantages": "normalized"}),
    ("adam 0.2 centered_rank", "lts", {**PAPER, "advantages": "centered_rank"}),
    ("adam 0.2 floor 0.01", "lts", {**PAPER, "prob_floor": 0.01}),
    ("sgd 0.02 normalized", "lts", {"optimizer": "sgd", "learning_rate": 0.02, "advantages": "normalized"}),
    ("sgd 0.05 centered_rank", "lts", {"optimizer": "sgd", "learning_rate": 0.05, "advantages": "centered_rank"}),
    ("adam 0.01 centered_rank", "lts", {"learning_rate": 0.01, "advantages": "centered_rank"}),
    ("adam 0.02 centered_rank", "lts", {"learning_rate": 0.02, "advantages": "centered_rank"}),
    ("adam 0.02 rank + ties", "lts", {"learning_rate": 0.02, "advantages": "centered_rank", "tie_std_growth": 1.5}),
    ("adam 0.02 rank + floor", "lts", {"learning_rate": 0.02, "advantages": "centered_rank", "prob_floor": 0.01}),
    ("RECOMMENDED", "lts", search.policy.RECOMMENDED),
    ("openes", "openes", {}),
    ("snes", "snes", {}),
    ("cma_es", "cma_es", {}),
    ("pgpe", "pgpe", {}),
]


def total_variation(spec, psi, target):
    """sum over the learnable categorical/Bernoulli blocks of TV(p_block(psi), p_block(target)); psi [..., dim]."""
    d, q = spec.distributions(psi), spec.distributions(target)
    total = 0.0
    for b in spec.blocks:
        if b.frozen or b.kind == "gaussian":
            continue
        diff = jnp.abs(d[b.name]["probs"] - q[b.name]["probs"])
        total = total + (jnp.sum(diff, -1) if b.kind == "bernoulli" else 0.5 * jnp.sum(diff, -1))
    return total


def main(argv):
    del argv
    spec = scene.make_spec()
    real, neutral, adversarial = spec.preset("val"), spec.zeros(), spec.preset("adversarial")
    noise = NOISE.value
    rewards = {
        "null": (real, diagnostics.noise_reward(noise)),
        "signal": (
            neutral,
            lambda k, psi: -total_variation(spec, psi, real) + noise * jax.random.normal(k, psi.shape[:1]),
        ),
        "plateau": (adversarial, lambda k, psi: -jnp.round(4.0 * total_variation(spec, psi, real)) / 4.0),
        "flat": (adversarial, lambda k, psi: -jnp.round(total_variation(spec, psi, real))),
    }
    start_tv = {name: float(total_variation(spec, psi0, real)) for name, (psi0, _) in rewards.items()}
    T, early = ITERATIONS.value, min(300, ITERATIONS.value)
    rows = []
    print(
        f"| {'configuration':<28} | drift{early} | drift | tv   | min_p  | collapsed | sig100 | sig{early} | sig  | "
        "plat | flat |"
    )
    print("|" + "---|" * 11)
    for label, name, options in CONFIGS:
        if ONLY.value and label not in ONLY.value:
            continue
        strategy = search.make(name, spec, **options)
        t0 = time.perf_counter()
        row = {"label": label, "strategy": name, "options": options}
        for reward_name, (psi0, reward_fn) in rewards.items():
            centers, _ = diagnostics.trajectories(
                strategy, psi0, reward_fn, num_candidates=K.value, iterations=T, seeds=SEEDS.value
            )
            if reward_name == "null":
                report = diagnostics.drift_report(spec, centers, at=(early,))
                row["null"] = report
            else:
                tv = np.asarray(total_variation(spec, centers, real))  # [seeds, T + 1]
                row[reward_name] = {
                    "tv_at": {str(t): float(tv[:, t].mean()) for t in sorted({min(100, T), early, T})},
                    "tv_per_seed": tv[:, -1].tolist(),
                }
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        n, s = row["null"], row["signal"]["tv_at"]
        plat, flat = row["plateau"]["tv_at"][str(T)], row["flat"]["tv_at"][str(T)]
        print(
            f"| {label:<28} | {n['drift_at'][early]:5.2f} | {n['drift']:5.2f} | {n['tv_max']:4.2f} | "
            f"{n['min_prob']:.4f} | {n['collapsed_seeds']:2d}/{SEEDS.value} | {s[str(min(100, T))]:4.2f} | "
            f"{s[str(early)]:4.2f} | {s[str(T)]:4.2f} | {plat:4.2f} | {flat:4.2f} |   ({row['seconds']:.0f} s)",
            flush=True,
        )
    device = jax.devices()[0]
    result = {
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "jax": jax.__version__,
        "config": {"iterations": T, "seeds": SEEDS.value, "num_candidates": K.value, "noise": noise},
        "start_tv": start_tv,
        "rows": rows,
    }
    if OUT.value:
        with open(OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)

"""Does the counting model learn more than the count prior? And do weather and car types matter to it?

Paper section 4.3 only carries its point when a main task model trained on simulated images counts
clearly better than a predictor that ignores the image: otherwise a candidate's reward only says how
close its count distribution is to psi_real's. This benchmark trains counting CNNs on large data sets
and sets their test L1 beside the constant predictors:

- ``prior``: each car type's median training count, for every image (the best constant for L1);
- ``zero``: no car anywhere.

Two tables:

1. ``--models`` x ``--defs``: CNN formulations (``name:key=value,...`` over lts_jax.models.counting.CountingCNN
   options plus ``loss`` and ``lr``) against count definitions (what counts as a visible car, see
   :func:`visible_counts`), all trained on ``--train_size`` images of psi_real (the traffic simulator's
   ``val`` preset), tested on ``--test_size`` other psi_real images.
2. ``--variants``: the first model and definition trained on data of ONE weather / ONE car type / psi_real
   (natural values replacing psi_real's blocks), each over ``--seeds`` seeds, tested on psi_real.

Every combination of a table trains at once (``jax.vmap`` over combinations: the same minibatch order,
per-combination labels, images and initial weights), one compiled program per model formulation.

    PYTHONPATH=. python benchmarks/counting_signal.py --out=/tmp/signal.json            # GPU, a few minutes
    PYTHONPATH=. python benchmarks/counting_signal.py --train_size=400 --test_size=200 --epochs=1 \\
        --out=/tmp/signal_cpu.json                                                        # CPU smoke size
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lts_jax.models.counting import CountingCNN, to_patch_order
from simulators.traffic import layout as L
from simulators.traffic.render import _F, _W, CAR_SHAPES, WEATHER_TABLE
from simulators.traffic.simulator import TrafficSimulator

DEFAULT_MODELS = (
    "default:context=2,position=1",
    "ctx1:context=1,position=1",
    "ctx2_huber:context=2,position=1,loss=huber",
    "ctx2_wide:context=2,position=1,features=32/64/128/128,hidden=256",
    "dens_mse:head=density,context=2,position=1,norm=1,loss=mse",
    "paper_cnn:context=0",
)
DEFAULT_DEFS = ("renderer",)
DEFAULT_VARIANTS = ("val", "clear:weather=clear", "fog:weather=fog", "sedan:car_type=sedan", "van:car_type=van")
# The rule before issue 13 (10 pixels, occlusion only) for comparison: ``--defs=renderer,10px``.


# ----- count definitions -------------------------------------------------------------------------------------
def bbox_area(cars: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """Pixels [N, B] of the image-clipped bounding box of each car's unoccluded projection (its body box)."""
    f = L.KITTI_FX_OVER_WIDTH * width
    cx, cy = 0.5 * width, L.KITTI_CY_OVER_HEIGHT * height
    t = cars["type"]
    hl, hw, roof = (CAR_SHAPES[t, _F[k]] for k in ("half_length", "half_width", "roof"))
    c, s = np.cos(cars["heading"]), np.sin(cars["heading"])
    us, vs = [], []
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            x = cars["x"] + c * sx * hw + s * sz * hl
            d = np.maximum(cars["z"] - s * sx * hw + c * sz * hl - L.CAMERA_Z, 0.5)
            for y in (0.0, 1.0):
                us.append(cx + f * (x - L.CAMERA_X) / d)
                vs.append(cy - f * (y * roof - cars["camera_height"][:, None]) / d)
    us, vs = np.stack(us), np.stack(vs)
    du = np.clip(us.max(0), 0, width) - np.clip(us.min(0), 0, width)
    dv = np.clip(vs.max(0), 0, height) - np.clip(vs.min(0), 0, height)
    return np.maximum(du, 0) * np.maximum(dv, 0)


def visible_counts(cars: dict[str, np.ndarray], definition: str, height: int, width: int) -> np.ndarray:
    """float32 [N, 5] counts per car type under ``definition``: "+"-joined conditions on each present car.

    ``renderer``: the renderer's own ``counts`` (simulators/traffic/visibility.py's rule). Else:
    ``Ppx``: at least P visible pixels (P at 96x320, scaled with the image area); ``shareS``: visible pixels
    at least S of its unoccluded projection's bounding box; ``fogT``: fog / haze transmittance
    exp(-distance / fog distance) at its distance at least T.
    """
    if definition == "renderer":
        return cars["counts"].astype(np.float32)
    keep = cars["present"].copy()
    pix = cars["pixels"]
    for cond in definition.split("+"):
        if cond.endswith("px"):
            keep &= pix >= float(cond[:-2]) * height * width / (96 * 320)
        elif cond.startswith("share"):
            keep &= pix >= float(cond[5:]) * np.maximum(bbox_area(cars, height, width), 1.0)
        elif cond.startswith("fog"):
            fog_d = WEATHER_TABLE[:, _W["fog_d"]][cars["weather"]]
            keep &= np.exp(-(cars["z"] - L.CAMERA_Z) / fog_d) >= float(cond[3:])
        else:
            raise ValueError(f"unknown condition {cond!r} in count definition {definition!r}")
    onehot = cars["type"][..., None] == np.arange(len(L.CAR_TYPES))
    return (keep[..., None] & onehot).sum(1).astype(np.float32)


# ----- data ---------------------------------------------------------------------------------------------------
def render_set(sim: TrafficSimulator, psi: np.ndarray, num: int, seed: int, chunk: int = 1000):
    """(images uint8 [num, H, W, 3] on the device, per-car host arrays [num, B]) from ``psi``."""

    @jax.jit
    def one(key):
        scenes = sim.sample_scenes(key, jnp.asarray(psi), chunk)
        out = sim.render(scenes)
        ids = jnp.arange(1, L.MAX_BLOCKS + 1, dtype=jnp.int32)
        pixels = jnp.sum((out["instance"][..., None] == ids).astype(jnp.int32), axis=(1, 2))
        return out["image"], pixels, scenes, out["counts"]

    images, rows = [], []
    for i in range(-(-num // chunk)):
        img, pixels, sc, counts = one(jax.random.fold_in(jax.random.key(seed), i))
        images.append(img)
        sc = jax.device_get(sc)
        rows.append({
            "pixels": np.asarray(pixels), "present": sc["car_present"], "type": sc["car_type"],
            "x": sc["car_pos"][..., 0], "z": sc["car_pos"][..., 1], "heading": sc["car_heading"],
            "camera_height": sc["camera_height"], "weather": sc["weather"], "counts": np.asarray(counts),
        })  # fmt: skip
    cars = {k: np.concatenate([r[k] for r in rows])[:num] for k in rows[0]}
    cars["weather"] = np.repeat(cars["weather"][:, None], L.MAX_BLOCKS, axis=1)
    return jnp.concatenate(images)[:num], cars


def parse_model(text: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``name:key=value,...`` -> (name, CountingCNN kwargs, training kwargs: loss, lr)."""
    name, _, rest = text.partition(":")
    model, train = {}, {"loss": "l1", "lr": 1e-3}
    for item in filter(None, rest.split(",")):
        k, v = item.split("=")
        if k in ("loss",):
            train[k] = v
        elif k == "lr":
            train[k] = float(v)
        elif k == "features":
            model[k] = tuple(int(x) for x in v.split("/"))
        elif k in ("position", "norm"):
            model[k] = bool(int(v))
        elif k in ("context", "hidden"):
            model[k] = int(v)
        else:
            model[k] = v
    return name, model, train


def parse_variant(text: str, spec) -> tuple[str, np.ndarray]:
    """``name:block=label,...`` -> (name, psi_real with each named block set to that one label)."""
    name, _, rest = text.partition(":")
    values = {}
    for item in filter(None, rest.split(",")):
        block, label = item.split("=")
        values[block] = {label: 1.0}
    base = spec.preset("val")
    return name, (spec.from_natural(values, base=base) if values else base)


# ----- training -----------------------------------------------------------------------------------------------
LOSSES = {
    "l1": lambda e: jnp.abs(e),
    "mse": lambda e: e**2,
    "huber": lambda e: optax.huber_loss(e, delta=1.0),
}


def train_combinations(model_kw, train_kw, images, set_index, labels, test_images, test_labels, seeds, args):
    """Trains C models at once (vmap): combination c reads images[set_index[c]] with labels[c] [N, 5] and
    initial weights from seeds[c]; test_labels: [C, N_test, 5] (host). Returns (per-epoch test L1 [epochs][C],
    seconds of training after the first epoch (which holds the compilation), image-passes timed)."""
    levels = len(model_kw.get("features", (16, 32, 64, 128)))
    model = CountingCNN(**model_kw)
    opt = optax.adam(train_kw["lr"])
    loss_of = LOSSES[train_kw["loss"]]
    prep = jax.jit(lambda x: to_patch_order(x, levels))
    images = jnp.stack([prep(s) for s in images])  # [V, N, ...] patch order, uint8
    test_x = prep(test_images)
    n = images.shape[1]
    steps = n // args.batch
    set_index, labels = jnp.asarray(set_index), jnp.asarray(labels)

    def init(seed):
        params = model.init(jax.random.key(seed), test_x[:1])["params"]
        return params, opt.init(params)

    params, opt_state = jax.jit(jax.vmap(init))(jnp.asarray(seeds))

    # Data go in as arguments: captured by the closure they would be baked into the program as constants
    # (gigabytes: over XLA's 2 GB protobuf limit).
    @jax.jit
    def epoch(params, opt_state, key, images, set_index, labels):
        perm = jax.random.permutation(key, n)[: steps * args.batch].reshape(steps, args.batch)

        def one(p, o, v, y, idx):
            def loss(p):
                return jnp.mean(loss_of(model.apply({"params": p}, images[v, idx]) - y[idx]))

            g = jax.grad(loss)(p)
            u, o = opt.update(g, o, p)
            return optax.apply_updates(p, u), o

        def body(carry, idx):
            p, o = carry
            return jax.vmap(one, in_axes=(0, 0, 0, 0, None))(p, o, set_index, labels, idx), None

        (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), perm)
        return params, opt_state

    chunk = max(c for c in range(1, min(250, test_x.shape[0]) + 1) if test_x.shape[0] % c == 0)

    @jax.jit
    def predict(params, test_x):
        def one(p):
            x = test_x.reshape(-1, chunk, *test_x.shape[1:])
            return jax.lax.map(lambda xb: model.apply({"params": p}, xb), x).reshape(-1, 5)

        return jax.vmap(one)(params)

    curve, t_first, t0 = [], None, time.perf_counter()
    for e in range(args.epochs):
        key = jax.random.fold_in(jax.random.key(args.seed), e)
        params, opt_state = epoch(params, opt_state, key, images, set_index, labels)
        pred = np.asarray(predict(params, test_x))  # [C, N_test, 5]
        curve.append(np.abs(pred - test_labels).mean(axis=(1, 2)).tolist())
        if e == 0:
            t_first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    timed_epochs = args.epochs - 1 if args.epochs > 1 else 1
    return curve, (total - t_first) if args.epochs > 1 else total, steps * args.batch * timed_epochs * len(seeds)


def constant_l1(train_labels: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
    return {
        "prior": float(np.abs(test_labels - np.median(train_labels, axis=0)).mean()),
        "zero": float(np.abs(test_labels).mean()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--train_size", type=int, default=40000)
    p.add_argument("--test_size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=";".join(DEFAULT_MODELS), help="';'-separated name:key=value,... specs")
    p.add_argument("--defs", default=",".join(DEFAULT_DEFS))
    p.add_argument("--seeds", type=int, default=1, help="initial-weight seeds per cell of table 1")
    p.add_argument("--variants", default=";".join(DEFAULT_VARIANTS), help="table 2 ('' skips it)")
    p.add_argument("--variant_seeds", type=int, default=3)
    p.add_argument("--variant_model", default=None, help="model spec of table 2 (default: the first of --models)")
    p.add_argument("--variant_def", default=None, help="count definition of table 2 (default: the first of --defs)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    H, W = args.height, args.width
    sim = TrafficSimulator(H, W)
    spec = sim.spec
    t0 = time.perf_counter()
    train_images, train_cars = render_set(sim, spec.preset("val"), args.train_size, seed=1)
    test_images, test_cars = render_set(sim, spec.preset("val"), args.test_size, seed=2)
    jax.block_until_ready((train_images, test_images))
    render_s = time.perf_counter() - t0
    print(f"rendered {args.train_size} + {args.test_size} images in {render_s:.1f} s on {jax.devices()[0].device_kind}")
    defs = [d for d in args.defs.split(",") if d]
    models = [parse_model(m) for m in args.models.split(";") if m]
    result: dict[str, Any] = {
        "benchmark": "counting_signal",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "args": vars(args),
        "render_s": render_s,
        "table1": [],
        "table2": [],
    }
    # Table 1: every definition x seed of a model in one program.
    labels = {d: visible_counts(train_cars, d, H, W) for d in defs}
    test_labels = {d: visible_counts(test_cars, d, H, W) for d in defs}
    baselines = {d: constant_l1(labels[d], test_labels[d]) for d in defs}
    for d in defs:
        c = test_labels[d]
        print(f"  {d:28s} cars counted per test image {c.sum(1).mean():.2f}; constant predictors: "
              f"prior L1 {baselines[d]['prior']:.3f}, zero L1 {baselines[d]['zero']:.3f}")  # fmt: skip
    combos = [(d, s) for d in defs for s in range(args.seeds)]
    print(f"\n{'model':12s} {'definition':28s} {'test L1':>8s} {'prior':>6s} {'ratio':>6s}  curve")
    for name, model_kw, train_kw in models:
        try:
            # test L1 per combination: evaluate against each combination's own test labels
            curve, secs, passes = _run_table1(model_kw, train_kw, train_images, test_images, labels, test_labels,
                                              combos, args)  # fmt: skip
        except Exception as e:  # one bad formulation never costs the others
            print(f"{name}: failed: {type(e).__name__}: {e}")
            result["table1"].append({"model": name, "error": f"{type(e).__name__}: {e}"})
            continue
        for ci, (d, s) in enumerate(combos):
            final = curve[-1][ci]
            row = {
                "model": name, "model_kwargs": model_kw, "train": train_kw, "definition": d, "seed": s,
                "test_l1": final, "test_l1_curve": [c[ci] for c in curve], **{f"{k}_l1": v for k, v in
                baselines[d].items()}, "ratio_to_prior": final / baselines[d]["prior"],
                "images_per_s": passes / secs if secs else None,
            }  # fmt: skip
            result["table1"].append(row)
            print(f"{name:12s} {d:28s} {final:8.3f} {baselines[d]['prior']:6.3f} {row['ratio_to_prior']:6.2f}  "
                  + " ".join(f"{c[ci]:.3f}" for c in curve))  # fmt: skip
        _write(result, args.out)
    # Table 2: one definition, one model, one training set per variant, seeds.
    variants = [parse_variant(v, spec) for v in args.variants.split(";") if v]
    if variants:
        vname, vmodel, vtrain = parse_model(args.variant_model) if args.variant_model else models[0]
        vdef = args.variant_def or defs[0]
        print(f"\ntable 2: model {vname}, definition {vdef}, {args.variant_seeds} seeds; tested on psi_real")
        sets, set_labels = [], []
        for i, (name, psi) in enumerate(variants):
            imgs, cars = (train_images, train_cars) if name == "val" else render_set(sim, psi, args.train_size, 10 + i)
            sets.append(imgs)
            set_labels.append(visible_counts(cars, vdef, H, W))
        combos2 = [(v, s) for v in range(len(variants)) for s in range(args.variant_seeds)]
        curve, _, _ = train_combinations(
            vmodel, vtrain, sets, [v for v, _ in combos2], np.stack([set_labels[v] for v, _ in combos2]),
            test_images, np.stack([test_labels.get(vdef, visible_counts(test_cars, vdef, H, W))] * len(combos2)),
            [s for _, s in combos2], args,
        )  # fmt: skip
        base = constant_l1(set_labels[0], test_labels.get(vdef, visible_counts(test_cars, vdef, H, W)))
        print(f"{'trained on':12s} {'test L1 mean':>12s} {'std':>6s}  seeds   (prior {base['prior']:.3f}, zero "
              f"{base['zero']:.3f})")  # fmt: skip
        for v, (name, psi) in enumerate(variants):
            vals = [curve[-1][ci] for ci, (vv, _) in enumerate(combos2) if vv == v]
            row = {"variant": name, "psi": spec.describe(psi), "test_l1": vals, "mean": float(np.mean(vals)),
                   "std": float(np.std(vals)), "model": vname, "definition": vdef}  # fmt: skip
            result["table2"].append({**row, **{f"{k}_l1": x for k, x in base.items()}})
            print(f"{name:12s} {np.mean(vals):12.3f} {np.std(vals):6.3f}  " + " ".join(f"{x:.3f}" for x in vals))
        _write(result, args.out)


def _run_table1(model_kw, train_kw, train_images, test_images, labels, test_labels, combos, args):
    lab = np.stack([labels[d] for d, _ in combos])
    tl = np.stack([test_labels[d] for d, _ in combos])
    return train_combinations(model_kw, train_kw, [train_images], [0] * len(combos), lab, test_images, tl,
                              [s for _, s in combos], args)  # fmt: skip


def _write(result: dict[str, Any], path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])

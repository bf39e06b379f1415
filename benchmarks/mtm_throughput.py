"""Images/s of main-task-model (MTM) training for K candidates: the counting CNN.

Measures, side by side in one process on one device:

- ``dispatch``: the loop a user would write: one jitted training step per
  (minibatch, candidate), dispatched from Python;
- each executor strategy of :mod:`lts_jax.parallel` (``vmap``, ``map``, ``loop``,
  ``map:B``, ``auto``): the K scanned trainings inside one jit;
- ``bigbatch``: for scale, ONE model trained on batches of K x batch images (the
  same images per step; what a single large training reaches);

for each model formulation (``--convs``), compute dtype and K. Reported: images/s,
ms per step, achieved TFLOP/s (analytic matrix-product FLOPs of the training
step; XLA's cost analysis of one step alongside) and the fraction of the
device's peak. Timing: ``block_until_ready``, compilation and one warm-up call
excluded, median of ``--repeats`` calls of ``--steps`` minibatch steps each.

Example (H100, a few minutes)::

    PYTHONPATH=. python benchmarks/mtm_throughput.py --out=/tmp/mtm.json

CPU-sized::

    PYTHONPATH=. python benchmarks/mtm_throughput.py --ks=1,8 --steps=3 --repeats=3 --out=/tmp/mtm_cpu.json

Also ``--eval_strategies``: evaluation of K models on a shared validation set.
``--profile_dir``: a jax.profiler trace of one call of the first strategy of the
first configuration.

Against the device count (``--num_devices=1,2,4,8``): the K trainings split over
n devices (``lts_jax.parallel.run_candidates(..., mesh=candidate_mesh(n))``, each
device running ``--device_strategy`` on its K / n candidates, data generated
sharded), for each task of ``--device_tasks`` (``counting``: the CNN above at
``--height`` x ``--width``; ``segmentation``: ``--seg_model`` at ``--seg_height`` x
``--seg_width``, batch ``--seg_batch``) and each K of ``--ks`` (pairs where n does
not divide K are skipped), timed round-robin over the device counts; reported:
images/s and the speed-up over one device. This replaces the strategy rows::

    PYTHONPATH=. python benchmarks/mtm_throughput.py --num_devices=1,2,4,8 --ks=8,16,32,64 \
        --device_tasks=counting,segmentation --dtypes=bfloat16 --out=$OUT/mtm_devices.json
    # CPU, forced host devices (runs and reports; the numbers mean nothing there)
    XLA_FLAGS=--xla_force_host_platform_device_count=4 PYTHONPATH=. python benchmarks/mtm_throughput.py \
        --num_devices=1,2,4 --ks=8 --steps=2 --repeats=2 --height=32 --width=64 --seg_height=32 --seg_width=64 \
        --device_tasks=counting,segmentation --dtypes=float32
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from lts_jax import parallel
from lts_jax.tasks import trainer
from lts_jax.tasks.counting import CountingTask

# Dense peak FLOP/s by device-name fragment (datasheet figures; "float32" is the non-tensor-core rate:
# XLA runs float32 matrix products on GPUs as TF32 on tensor cores by default, so a float32 row can exceed it).
PEAKS = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 51e12, "tf32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12, "tf32": 494e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12, "tf32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12, "tf32": 156e12},
}


def device_peak(device_kind: str, dtype: str) -> float | None:
    for name, peaks in PEAKS.items():
        if name.lower() in device_kind.lower():
            return peaks[dtype]
    return None


def interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Times every callable in ``fns`` round-robin ``repeats`` times, so that drift and noise on a shared
    machine fall on all of them alike. Returns ({name: first-call seconds}, {name: [seconds per call]});
    each callable's first call (compilation) and one warm-up call are excluded from the list."""
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
        print(f"#   {name}: first call (compilation) {first[name]:.1f}s", flush=True)
        jax.block_until_ready(fn())  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return first, times


def make_data(key: jax.Array, k: int, m: int, height: int, width: int):
    """Random pixels and counts, generated on the device (the compute does not depend on the values)."""
    k1, k2 = jax.random.split(key)
    return {
        "image": jax.random.bits(k1, (k, m, height, width, 3), jnp.uint8),
        "counts": jax.random.randint(k2, (k, m, 5), 0, 6, jnp.int32),
    }


def model_options(args) -> dict:
    """The counting CNN's context layers and position embedding, where given (else CountingTask's defaults)."""
    out = {}
    if getattr(args, "context", None) is not None:
        out["context"] = args.context
    if getattr(args, "position", None) is not None:
        out["position"] = bool(args.position)
    return out


def xla_flops_per_image(task: CountingTask, batch: int) -> float | None:
    """XLA's cost-analysis FLOPs of one training step, per image (None if unavailable)."""
    state = task.init(jax.random.key(0))
    x = task.prepare(jnp.zeros((batch, task.height, task.width, 3), jnp.uint8))
    y = jnp.zeros((batch, task.num_types), jnp.int32)
    w = jnp.ones((batch,), jnp.float32)
    try:
        cost = jax.jit(task.train_step).lower(state, x, y, w).compile().cost_analysis()
        if isinstance(cost, list | tuple):
            cost = cost[0]
        return float(cost["flops"]) / batch
    except Exception:  # cost analysis is best effort; some backends return nothing
        return None


class BarrierTask(CountingTask):
    """Variant ``@barrier``: an optimization barrier between the minibatch gather and the model, so that the
    uint8 -> float conversion can fuse into the first layer's matrix products (which read uint8) instead of
    the gather writing a float copy of the batch. Results are identical."""

    def train_step(self, state, inputs, counts, weights):
        return super().train_step(state, jax.lax.optimization_barrier(inputs), counts, weights)


def resolved_name(strategy: str) -> str:
    base, at, variant = strategy.partition("@")
    if base in ("dispatch", "bigbatch"):
        return strategy
    return parallel.resolve(base, phase="train") + at + variant


def dataset_size(args) -> int:
    return args.dataset_size or args.batch * args.steps


def build_train(args, conv: str, dtype: str, k: int, strategy: str, data, keys):
    """A callable running one timed unit (one epoch over ``dataset_size`` examples for each of K candidates),
    and its jitted function (for HLO dumps; None for ``dispatch``). States are threaded from call to call.

    ``strategy`` is an executor strategy, ``dispatch`` or ``bigbatch``, optionally with ``@variant``:
    ``@barrier`` (:class:`BarrierTask`) or ``@unrollN`` (the training scan unrolled N steps).
    """
    strategy, _, variant = strategy.partition("@")
    b, m = args.batch, dataset_size(args)
    unroll = int(variant[len("unroll") :]) if variant.startswith("unroll") else args.unroll
    cls = BarrierTask if variant == "barrier" else CountingTask
    if variant and variant != "barrier" and not variant.startswith("unroll"):
        raise ValueError(f"unknown variant {variant!r}")
    common = dict(features=args.features, hidden=args.hidden, conv=conv, compute_dtype=dtype, unroll=unroll,
                  **model_options(args))  # fmt: skip
    task = cls(args.height, args.width, batch_size=b, **common)
    s = trainer.batching(m, b)[0]
    states = jax.vmap(task.init)(jax.random.split(jax.random.key(0), k))

    if strategy == "dispatch":
        inputs = [task.prepare(data["image"][i]) for i in range(k)]
        counts = [data["counts"][i] for i in range(k)]
        idx, weights = trainer.schedule(jax.random.key(2), m, 1, b)
        idx, weights = list(idx), list(weights)
        step = jax.jit(lambda st, x, y, i, w: task.train_step(st, x[i], y[i], w)[0], donate_argnums=0)
        box = [jax.tree_util.tree_map(lambda a, i=i: a[i], states) for i in range(k)]

        def fn():
            for j in range(s):
                for i in range(k):
                    box[i] = step(box[i], inputs[i], counts[i], idx[j], weights[j])
            return box

        return fn, None

    if strategy == "bigbatch":
        big = cls(args.height, args.width, batch_size=k * b, **common)
        pooled = jax.tree_util.tree_map(lambda x: x.reshape(k * m, *x.shape[2:]), data)
        train = jax.jit(lambda st, d, key: big.train(st, d, key, 1), donate_argnums=0)
        box = [big.init(jax.random.key(0))]

        def fn():
            box[0] = train(box[0], pooled, keys[0])
            return box[0]

        return fn, (train, (box[0], pooled, keys[0]))

    train = jax.jit(
        lambda st, d, ks: parallel.run_candidates(
            lambda s_, d_, k_: task.train(s_, d_, k_, 1), strategy, st, d, ks, phase="train"
        ),
        donate_argnums=0,
    )
    box = [states]

    def fn():
        box[0] = train(box[0], data, keys)
        return box[0]

    return fn, (train, (states, data, keys))


def bench_train_group(args, conv: str, dtype: str, k: int, strategies, rng, profile_dir=None) -> list[dict]:
    """All strategies for one (conv, dtype, K), timed round-robin on the same data."""
    m = dataset_size(args)
    steps = trainer.batching(m, args.batch)[0]
    data = make_data(jax.random.fold_in(rng, k), k, m, args.height, args.width)
    keys = jax.random.split(jax.random.key(1), k)
    fns, errors, jitted = {}, {}, {}
    for strategy in strategies:
        try:
            fns[strategy], jitted[strategy] = build_train(args, conv, dtype, k, strategy, data, keys)
        except Exception as e:  # one failing configuration must not lose the others
            errors[strategy] = f"{type(e).__name__}: {e}"[:500]
    first, times = {}, {}
    try:
        first, times = interleaved(fns, args.repeats)
    except Exception:  # retry one by one to find the failing one (e.g. out of memory)
        for name, fn in fns.items():
            try:
                f, t = interleaved({name: fn}, args.repeats)
                first.update(f)
                times.update(t)
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"[:500]
    if profile_dir and strategies[0] in times:
        name = strategies[0]
        try:
            with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
                jax.block_until_ready(fns[name]())
            if jitted[name] is not None:
                fn, fargs = jitted[name]
                with open(os.path.join(profile_dir, "hlo_optimized.txt"), "w") as f:
                    f.write(fn.lower(*fargs).compile().as_text())
        except Exception as e:
            print(f"# profiling failed: {type(e).__name__}: {e}", flush=True)

    flops_per_image = CountingTask(
        args.height, args.width, features=args.features, hidden=args.hidden, conv=conv, **model_options(args)
    ).flops_per_image()
    peak = device_peak(jax.devices()[0].device_kind, dtype)
    out = []
    for strategy in strategies:
        base = {"phase": "train", "conv": conv, "dtype": dtype, "K": k, "strategy": strategy}
        if strategy in errors or strategy not in times:
            out.append({**base, "error": errors.get(strategy, "not timed")})
            continue
        med = statistics.median(times[strategy])
        flops = flops_per_image * k * m / med
        out.append(
            {
                **base,
                "resolved": resolved_name(strategy),
                "images_per_s": k * m / med,
                "step_ms": 1e3 * med / steps,
                "tflops": flops / 1e12,
                "peak_fraction": flops / peak if peak else None,
                "first_call_s": first[strategy],
                "times_s": times[strategy],
            }
        )
    return out


def bench_eval_group(args, conv: str, dtype: str, k: int, strategies, rng) -> list[dict]:
    task = CountingTask(
        args.height,
        args.width,
        features=args.features,
        hidden=args.hidden,
        conv=conv,
        compute_dtype=dtype,
        eval_batch_size=args.eval_batch,
        **model_options(args),
    )
    val = jax.tree_util.tree_map(
        lambda x: x[0], make_data(jax.random.fold_in(rng, 10_000 + k), 1, args.val_size, args.height, args.width)
    )
    states = jax.vmap(task.init)(jax.random.split(jax.random.key(0), k))
    fns = {}
    for strategy in strategies:
        ev = jax.jit(
            lambda st, d, strategy=strategy: parallel.run_candidates(
                task.evaluate, strategy, st, d, in_axes=(0, None), phase="evaluate"
            )
        )
        fns[strategy] = lambda ev=ev: ev(states, val)
    first, times = interleaved(fns, args.repeats)
    out = []
    for strategy in strategies:
        med = statistics.median(times[strategy])
        out.append(
            {
                "phase": "evaluate",
                "conv": conv,
                "dtype": dtype,
                "K": k,
                "strategy": strategy,
                "resolved": parallel.resolve(strategy, phase="evaluate"),
                "images_per_s": k * args.val_size / med,
                "ms": 1e3 * med,
                "first_call_s": first[strategy],
                "times_s": times[strategy],
            }
        )
    return out


def make_seg_data(key: jax.Array, k: int, m: int, height: int, width: int):
    """Random pixels and Cityscapes label IDs of the simulator's classes (the compute does not depend on them)."""
    from lts_jax.tasks.segmentation import CLASS_IDS

    k1, k2 = jax.random.split(key)
    ids = jnp.asarray(CLASS_IDS, jnp.uint8)
    return {
        "image": jax.random.bits(k1, (k, m, height, width, 3), jnp.uint8),
        "label": ids[jax.random.randint(k2, (k, m, height, width), 0, len(CLASS_IDS))],
    }


def device_task(args, name: str, dtype: str):
    """(task, height, width, batch, data_fn) of a --device_tasks entry."""
    if name == "counting":
        task = CountingTask(
            args.height, args.width, batch_size=args.batch, features=args.features, hidden=args.hidden,
            compute_dtype=dtype, **model_options(args),
        )  # fmt: skip
        return task, args.height, args.width, args.batch, make_data
    if name == "segmentation":
        from lts_jax.tasks.segmentation import SegmentationTask

        task = SegmentationTask(
            args.seg_model, args.seg_height, args.seg_width, batch_size=args.seg_batch, augment=False,
            compute_dtype=dtype,
        )  # fmt: skip
        return task, args.seg_height, args.seg_width, args.seg_batch, make_seg_data
    raise ValueError(f"unknown --device_tasks entry {name!r}; choose counting or segmentation")


def bench_devices_group(args, name: str, dtype: str, k: int, counts, rng) -> list[dict]:
    """MTM training of K candidates split over each device count of ``counts``, timed round-robin."""
    task, height, width, batch, data_fn = device_task(args, name, dtype)
    m = args.dataset_size or batch * args.steps
    strategy = parallel.strategy_for(task, args.device_strategy, "train")
    fns = {}
    for n in counts:
        mesh = parallel.candidate_mesh(n)
        cand = parallel.candidate_sharding(mesh)
        data = jax.jit(lambda key: data_fn(key, k, m, height, width), out_shardings=cand)(jax.random.fold_in(rng, k))
        states = jax.jit(jax.vmap(task.init), out_shardings=cand)(jax.random.split(jax.random.key(0), k))
        keys = parallel.shard(jax.random.split(jax.random.key(1), k), mesh)
        train = jax.jit(
            lambda st, d, ks, mesh=mesh: parallel.run_candidates(
                lambda s_, d_, k_: task.train(s_, d_, k_, 1), strategy, st, d, ks, phase="train", mesh=mesh
            ),
            donate_argnums=0,
        )
        box = [states]

        def fn(box=box, train=train, data=data, keys=keys):
            box[0] = train(box[0], data, keys)
            return box[0]

        fns[n] = fn
    first, times = interleaved(fns, args.repeats)
    medians = {n: statistics.median(times[n]) for n in counts}
    one = medians.get(1)
    return [
        {
            "phase": "train_devices",
            "task": name,
            "dtype": dtype,
            "K": k,
            "num_devices": n,
            "strategy": strategy,
            "images_per_s": k * m / medians[n],
            "speedup_vs_1_device": one / medians[n] if one else None,
            "first_call_s": first[n],
            "times_s": times[n],
        }
        for n in counts
    ]


def run_device_sweep(args, report, save) -> None:
    total = jax.device_count()
    forced = jax.default_backend() == "cpu" and total > 1
    if forced:
        report["note"] = (
            "CPU with forced host devices: every 'device' shares the same cores, so images/s say nothing "
            "about scaling; the sweep only shows that the sharded programs run"
        )
        print(f"# NOTE: {report['note']}", flush=True)
    rng = jax.random.key(12345)
    for name in args.device_tasks:
        for dtype in args.dtypes:
            for k in args.ks:
                counts = [n for n in args.num_devices if n <= total and k % n == 0]
                for n in sorted(set(args.num_devices) - set(counts)):
                    why = "more devices than JAX sees" if n > total else "n does not divide K"
                    print(f"{name:12s} {dtype:9s} K={k:<3d} devices={n}: skipped ({why})")
                    report.setdefault("skipped", []).append({"task": name, "K": k, "num_devices": n, "why": why})
                if not counts:
                    continue
                for r in bench_devices_group(args, name, dtype, k, counts, rng):
                    report["results"].append(r)
                    up = f"{r['speedup_vs_1_device']:.2f}x" if r["speedup_vs_1_device"] else "n/a"
                    print(
                        f"{name:12s} {dtype:9s} K={k:<3d} devices={r['num_devices']:<2d} {r['strategy']:6s} "
                        f"{r['images_per_s']:>11,.0f} img/s  speed-up vs 1 device {up}  "
                        f"first call {r['first_call_s']:.1f}s",
                        flush=True,
                    )
                save()


def csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ks", type=csv(int), default=[1, 8, 32])
    p.add_argument("--strategies", type=csv(str), default=["dispatch", "loop", "map", "vmap", "auto", "bigbatch"])
    p.add_argument("--dtypes", type=csv(str), default=["float32", "bfloat16"])
    p.add_argument("--convs", type=csv(str), default=["patch"])
    p.add_argument("--eval_strategies", type=csv(str), default=[])
    p.add_argument("--steps", type=int, default=20, help="minibatch steps per timed call (data set = steps x batch)")
    p.add_argument(
        "--dataset_size", type=int, default=0, help="M per candidate (one epoch per call); overrides --steps"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--features", type=csv(int), default=[16, 32, 64, 128])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--context", type=int, default=None, help="3x3 context layers (default: CountingTask's)")
    p.add_argument("--position", type=int, default=None, help="1/0: position embedding (default: CountingTask's)")
    p.add_argument("--unroll", type=int, default=1)
    p.add_argument("--val_size", type=int, default=200)
    p.add_argument("--eval_batch", type=int, default=256)
    p.add_argument("--max_loop_k", type=int, default=32, help="skip 'loop' (K copies compiled) above this K")
    p.add_argument("--max_dispatch_k", type=int, default=64, help="skip 'dispatch' above this K")
    p.add_argument("--skip", type=csv(str), default=[], help="K:strategy pairs not to run, e.g. 1:loop,1:map")
    p.add_argument("--profile_dir", default="")
    p.add_argument(
        "--num_devices", type=csv(int), default=[], help="device counts to sweep (replaces the strategy rows)"
    )
    p.add_argument("--device_tasks", type=csv(str), default=["counting"], help="counting, segmentation")
    p.add_argument("--device_strategy", default="auto", help="executor strategy on each device's candidates")
    p.add_argument("--seg_model", default="fcn_small")
    p.add_argument("--seg_height", type=int, default=96)
    p.add_argument("--seg_width", type=int, default=320)
    p.add_argument("--seg_batch", type=int, default=8)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    dev = jax.devices()[0]
    report = {
        "benchmark": "mtm_throughput",
        "device": dev.device_kind,
        "backend": jax.default_backend(),
        "num_devices": jax.device_count(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "profile_dir")},
        "auto": {ph: parallel.resolve("auto", phase=ph) for ph in parallel.PHASES},
        "flops_per_image": {},
        "results": [],
    }
    print(f"# {report['device']} ({report['backend']}), jax {jax.__version__}, auto = {report['auto']}", flush=True)

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)

    if args.num_devices:
        run_device_sweep(args, report, save)
        save()
        return

    rng = jax.random.key(12345)
    profile_dir = args.profile_dir or None
    for conv in args.convs:
        for dtype in args.dtypes:
            t = CountingTask(
                args.height, args.width, features=args.features, hidden=args.hidden, conv=conv, compute_dtype=dtype,
                **model_options(args),
            )  # fmt: skip
            fl = {"analytic": t.flops_per_image(), "xla_cost_analysis": xla_flops_per_image(t, args.batch)}
            report["flops_per_image"][f"{conv}/{dtype}"] = fl
            print(f"# {conv}/{dtype} training FLOPs per image: {fl}", flush=True)
            for k in args.ks:
                strategies = [
                    st
                    for st in args.strategies
                    if not (st == "loop" and k > args.max_loop_k)
                    and not (st == "dispatch" and k > args.max_dispatch_k)
                    and f"{k}:{st}" not in args.skip
                ]
                for r in bench_train_group(args, conv, dtype, k, strategies, rng, profile_dir) if strategies else []:
                    report["results"].append(r)
                    if "error" in r:
                        print(f"{conv:8s} {dtype:9s} K={k:<3d} {r['strategy']:9s} ERROR {r['error'][:300]}")
                    else:
                        frac = f"{100 * r['peak_fraction']:.2f}%" if r["peak_fraction"] else "n/a"
                        print(
                            f"{conv:8s} {dtype:9s} K={k:<3d} {r['strategy']:9s} {r['images_per_s']:>11,.0f} img/s "
                            f"{r['step_ms']:8.2f} ms/step {r['tflops']:7.2f} TFLOP/s ({frac} of peak) "
                            f"first call {r['first_call_s']:.1f}s"
                        )
                profile_dir = None
                save()
                sys.stdout.flush()
                if args.eval_strategies:
                    evals = [st for st in args.eval_strategies if not (st == "loop" and k > args.max_loop_k)]
                    for r in bench_eval_group(args, conv, dtype, k, evals, rng):
                        report["results"].append(r)
                        print(
                            f"{conv:8s} {dtype:9s} K={k:<3d} eval:{r['strategy']:9s} {r['images_per_s']:>11,.0f} img/s "
                            f"{r['ms']:8.2f} ms (K x {args.val_size} images)"
                        )
                    save()
                    sys.stdout.flush()

    # Summary: per configuration, every strategy relative to the best fixed one and to dispatch.
    print("\n# summary (train images/s; ratio to the best fixed strategy of the same conv/dtype/K)")
    rows = [r for r in report["results"] if r.get("phase") == "train" and "error" not in r]
    groups = {}
    for r in rows:
        groups.setdefault((r["conv"], r["dtype"], r["K"]), []).append(r)
    for (conv, dtype, k), rs in groups.items():
        fixed = [r for r in rs if r["strategy"] in ("vmap", "map", "loop") or r["strategy"].startswith("map:")]
        best = max((r["images_per_s"] for r in fixed), default=None)
        cells = []
        for r in rs:
            rel = f" ({r['images_per_s'] / best:.2f})" if best else ""
            cells.append(f"{r['strategy']}={r['images_per_s']:,.0f}{rel}")
        print(f"{conv}/{dtype}/K={k}: " + "  ".join(cells))
    save()


if __name__ == "__main__":
    main()

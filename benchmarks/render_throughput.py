r"""Throughput of the traffic simulator's pure-JAX renderer (images/s) at 96x320 and 192x640.

Times ``jax.jit(sim.sample)`` (scene sampling + rendering, the whole simulator) and,
with ``--render``, ``sim.render`` alone on pre-sampled scenes, on the default backend
(or ``--backend``), for a batch of ``--batch`` images per call, several calls after a
warm-up. Prints a table and writes JSON with the device, per-size images/s (wall
clock; also images per CPU-second of this process, which is robust to other
processes competing for the cores), compile time and peak device memory where the
backend reports it.

  python benchmarks/render_throughput.py --out=/tmp/render.json              # CPU here
  python benchmarks/render_throughput.py --out=$OUT/render.json              # GPU machine
  python benchmarks/render_throughput.py --sizes=96x320 --batch=64 --repeats=3

On a GPU the default batch is 4096 at 96x320 and 1024 at 192x640 and the run takes
about 1-2 minutes (mostly compilation); on a CPU 64 and 16.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

from absl import app, flags

# Runnable from a plain checkout too (``python benchmarks/render_throughput.py`` without installing).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_OUT = flags.DEFINE_string("out", None, "write the JSON results here")
_BACKEND = flags.DEFINE_string("backend", None, "JAX backend (cpu, gpu, tpu); default: JAX's default")
_SIZES = flags.DEFINE_list("sizes", ["96x320", "192x640"], "image sizes HxW")
_BATCH = flags.DEFINE_list("batch", None, "images per call, one per size (default: by backend and size)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per size (after one warm-up call)")
_PRESET = flags.DEFINE_string("psi", "val", "psi preset to sample scenes from")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed")
_RENDER = flags.DEFINE_bool("render", False, "also time sim.render alone (one more compilation per size)")
_LEARN_RENDERING = flags.DEFINE_bool(
    "learn_rendering", False, "the simulator with the rendering parameters in psi (zoom, blur, sensor stages run)"
)
_MATERIALIZE = flags.DEFINE_bool(
    "materialize", True, "the renderer's materialisation of shared arrays (XLA:CPU tuning); --nomaterialize to compare"
)


def _default_batch(platform_name: str, h: int, w: int) -> int:
    pixels = h * w
    if platform_name == "cpu":
        return 64 if pixels <= 96 * 320 else 16
    return 4096 if pixels <= 96 * 320 else 1024


def _peak_bytes(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory stats
        return None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", 0)) or None


def _time_calls(fn, args, repeats):
    import jax

    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp

    from simulators.traffic import TrafficSimulator

    backend = _BACKEND.value
    device = jax.devices(backend)[0] if backend else jax.devices()[0]
    platform_name = device.platform
    results = {
        "device": f"{platform_name}: {device.device_kind}",
        "num_devices": len(jax.devices(backend)) if backend else len(jax.devices()),
        "jax": jax.__version__,
        "host": platform.node(),
        "cpu_count": __import__("os").cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "psi": _PRESET.value,
        "materialize": _MATERIALIZE.value,
        "learn_rendering": _LEARN_RENDERING.value,
        "sizes": {},
    }
    batches = _BATCH.value or [None] * len(_SIZES.value)
    if len(batches) != len(_SIZES.value):
        raise app.UsageError("--batch needs one value per --sizes entry")
    print(f"device: {results['device']}  jax {jax.__version__}")
    header = f"{'size':>9} {'batch':>6} {'compile s':>10} {'sample img/s':>13} {'render img/s':>13} " \
             f"{'img/cpu-s':>10} {'peak MiB':>9}"  # fmt: skip
    print(header)
    for size, batch in zip(_SIZES.value, batches):
        h, w = (int(v) for v in size.lower().split("x"))
        n = int(batch) if batch else _default_batch(platform_name, h, w)
        sim = TrafficSimulator(h, w, materialize=_MATERIALIZE.value, learn_rendering=_LEARN_RENDERING.value)
        psi = jax.device_put(jnp.asarray(sim.preset(_PRESET.value)), device)
        key = jax.device_put(jax.random.key(_SEED.value), device)
        sample = jax.jit(lambda k, p, sim=sim, n=n: sim.sample(k, p, n))

        t0 = time.perf_counter()
        jax.block_until_ready(sample(key, psi))
        compile_s = time.perf_counter() - t0
        s_wall, s_cpu = _time_calls(sample, (key, psi), _REPEATS.value)
        r_wall = None
        if _RENDER.value:
            render = jax.jit(sim.render)
            scenes = jax.block_until_ready(jax.jit(lambda k, p, sim=sim, n=n: sim.sample_scenes(k, p, n))(key, psi))
            jax.block_until_ready(render(scenes))
            r_wall, _ = _time_calls(render, (scenes,), _REPEATS.value)
        best = min(s_wall)
        entry = {
            "batch": n,
            "compile_s": round(compile_s, 2),
            "sample_images_per_s": round(n / best, 1),
            "sample_images_per_s_median": round(n / sorted(s_wall)[len(s_wall) // 2], 1),
            "render_images_per_s": round(n / min(r_wall), 1) if r_wall else None,
            "images_per_cpu_s": round(n / min(s_cpu), 1) if platform_name == "cpu" else None,
            "peak_bytes": _peak_bytes(device),
        }
        if platform_name == "cpu":
            entry["host_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        results["sizes"][f"{h}x{w}"] = entry
        peak = entry["peak_bytes"] / 2**20 if entry["peak_bytes"] else float("nan")
        nan = float("nan")
        cpu_rate = entry["images_per_cpu_s"] if entry["images_per_cpu_s"] is not None else nan
        render_rate = entry["render_images_per_s"] if entry["render_images_per_s"] is not None else nan
        print(f"{h:>4}x{w:<4} {n:>6} {compile_s:>10.1f} {entry['sample_images_per_s']:>13.1f} "
              f"{render_rate:>13.1f} {cpu_rate:>10.1f} {peak:>9.1f}", flush=True)  # fmt: skip
    if _OUT.value:
        with open(_OUT.value, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

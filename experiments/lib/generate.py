r"""Render a data set with a run's learned simulator parameters, in KITTI's layout.

    summary = generate(GenerateConfig(out=DIR, num=40000), workdir=RUN)     # python -m experiments.generate

Reads RUN/results.json: the learned psi from "psi_raw" (else, with a warning,
the last "center" of RUN/metrics.jsonl) and the simulator from "simulator":

    "simulator": {"name": "traffic", "height": H, "width": W,
                  "learn_intersection": false, "min_visible_pixels": 10}
                  (a simulator's describe(); the last two optional). A CARLA-rendered run
                  ({"name": "carla", ...}, or the older {"name": "traffic", "renderer": "carla"})
                  is rendered here by the pure-JAX renderer of the same scene model, with a note.

Image size: results.json["simulator"]["height"/"width"], else
results.json["config"]["height"/"width"], else ``height`` / ``width``.

Traffic runs write (KITTI's data_semantics layout, which lts_jax.data.kitti reads back)::

    DIR/image_2/NNNNNN_10.png    RGB images
    DIR/semantic/NNNNNN_10.png   8-bit grayscale Cityscapes label IDs: road 7, sidewalk 8, building 11,
                                 vegetation 21, terrain 22, sky 23, car 26
    DIR/counts.jsonl             one line per example, in order:
                                 {"name": "000000_10", "counts": {"sedan": 1, ...}, "total": 3}
    DIR/generate.json            what was asked (run, psi_raw, num, chunk_size, seed, simulator)

Examples are rendered in chunks of ``chunk_size``; chunk c uses the key
fold_in(key(seed), c) and always samples a full chunk, so example i does not
depend on ``num``. A finished chunk leaves DIR/.chunks/NNNNNN.jsonl (its counts);
re-running the same command skips finished chunks (resume), and reports
"already complete" once counts.jsonl is assembled. A DIR holding anything
else (other files, or a generate.json asking for something different) is
refused unless ``overwrite``, which removes the outputs named above first.

Gaussian-mixture runs (gmm_toy; "simulator": {"name": "gmm", "num_gaussians": n})
write DIR/points.csv (columns x0, x1, label; ``num`` points, half per class) and
DIR/generate.json. Other simulators are refused with a message.

Errors name the settings through a name function (``GenerateError.render``), as lts_jax.run's do.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

import simulators
from lts_jax import run

IMAGE_DIR, LABEL_DIR, CHUNK_DIR = "image_2", "semantic", ".chunks"
MANIFEST, COUNTS, POINTS = "generate.json", "counts.jsonl", "points.csv"
SUPPORTED = ("traffic", "carla", "gmm")


class GenerateError(run.RunError, RuntimeError):
    """The request cannot be served as asked (the command exits 2); the message names the file or setting."""


class AlreadyComplete(Exception):
    """The output already holds exactly this request."""


# ----- what to render -------------------------------------------------------------------------------------------
def read_run(workdir: str | os.PathLike) -> dict[str, Any]:
    """results.json of a run, with a "psi_raw" taken from metrics.jsonl if results.json lacks it."""
    workdir = Path(workdir)
    path = workdir / "results.json"
    if not path.exists():
        raise GenerateError(f"{path} does not exist: generate needs a finished run (its results.json)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GenerateError(f"{path} is not valid JSON ({e.msg})") from e
    if "psi_raw" not in results:
        rows = [r for r in run.read_metrics(workdir) if "center" in r]
        if not rows:
            raise GenerateError(f"{path} has no 'psi_raw' and {workdir / 'metrics.jsonl'} no 'center' to fall back to")
        print(f"warning: {path} has no 'psi_raw'; using the last 'center' of metrics.jsonl", file=sys.stderr)
        results = {**results, "psi_raw": rows[-1]["center"]}
    return results


def simulator_config(results: Mapping[str, Any], height: int | None = None, width: int | None = None) -> dict:
    """``{"name", ...}`` of the run's simulator (see the module docstring for where each value comes from)."""
    sim = dict(results.get("simulator") or {})
    name = sim.get("name")
    if name is None and results.get("experiment") == "gmm_toy":
        name = "gmm"
        sim["num_gaussians"] = results.get("num_gaussians", (results.get("config") or {}).get("num_gaussians"))
    if name is None:
        raise GenerateError(
            "results.json has no 'simulator' entry naming the simulator; expected e.g. "
            '"simulator": {"name": "traffic", "height": 96, "width": 320}'
        )
    if name not in SUPPORTED:
        raise GenerateError(f"results.json's simulator {name!r} is not supported by generate; supported: {SUPPORTED}")
    sim["name"] = name
    if name in ("traffic", "carla"):
        config = results.get("config") or {}
        for key, fallback in (("height", height), ("width", width)):
            value = sim.get(key, config.get(key, fallback))
            if value is None:
                raise GenerateError(lambda p, key=key: f"results.json records no image {key}; pass {p(key)}")
            if int(value) < 1:
                raise GenerateError(f"image {key} = {value} is out of range; accepted: an integer >= 1")
            sim[key] = int(value)
    elif sim.get("num_gaussians") is None:
        raise GenerateError("results.json's gmm simulator has no 'num_gaussians'")
    return sim


def make_options(sim: Mapping[str, Any], chunk_size: int) -> dict[str, Any]:
    """``simulators.make`` options rendering the run's data here: its scene model with the pure-JAX renderer
    (one compiled renderer call per chunk of examples), or its GMM."""
    if sim["name"] == "gmm":
        return {"name": "gmm", "num_gaussians": int(sim["num_gaussians"])}
    options = {"name": "traffic", "height": sim["height"], "width": sim["width"], "render_chunk": chunk_size}
    keys = ("learn_intersection", "learn_rendering", "visibility", "min_visible_pixels")
    return options | {k: sim[k] for k in keys if sim.get(k) is not None}


def renderer_of(sim: Mapping[str, Any]) -> str | None:
    """The renderer a run drew its images with: "carla", "traffic" or None (not recorded; the GMM)."""
    return "carla" if sim["name"] == "carla" else sim.get("renderer")


_SIMULATORS: dict[tuple, Any] = {}


def _simulator(options: Mapping[str, Any]):
    # Cached, so that the compiled sampler is reused across calls in one process.
    key = tuple(sorted(options.items()))
    if key not in _SIMULATORS:
        _SIMULATORS[key] = simulators.make(**options)
    return _SIMULATORS[key]


# ----- output directory -----------------------------------------------------------------------------------------
def _outputs(out: Path) -> list[Path]:
    return [out / n for n in (IMAGE_DIR, LABEL_DIR, CHUNK_DIR, COUNTS, POINTS, MANIFEST)]


def prepare_out(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Creates ``out``, or checks that it holds this very request (resume); raises AlreadyComplete when done."""
    if out.exists() and not out.is_dir():
        raise GenerateError(lambda p: f"{p('out')} {out} exists and is not a directory")
    if overwrite:
        for p in _outputs(out):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif out.exists() and any(out.iterdir()):
        path = out / MANIFEST
        if not path.exists():
            raise GenerateError(
                lambda p: (
                    f"{p('out')} {out} is not empty and holds no {MANIFEST}; choose another {p('out')} or pass "
                    f"{p('overwrite', True)}"
                )
            )
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != manifest:
            diff = (
                sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                if isinstance(old, dict)
                else ["(unreadable)"]
            )
            raise GenerateError(
                lambda p: (
                    f"{p('out')} {out} holds a different data set ({path} differs in: {', '.join(diff)}); "
                    f"choose another {p('out')} or pass {p('overwrite', True)}"
                )
            )
        if (out / COUNTS).exists() or (out / POINTS).exists():
            raise AlreadyComplete(f"{out} already holds these {manifest['num']} examples; nothing to do")
    try:
        out.mkdir(parents=True, exist_ok=True)
        run.write_json(out / MANIFEST, manifest)
    except OSError as e:
        reason = e.strerror or str(e)  # ``e`` is unbound after the except clause; the message is composed later
        raise GenerateError(lambda p: f"{p('out')} {out} is not writable: {reason}") from e


# ----- rendering ------------------------------------------------------------------------------------------------
def example_name(i: int) -> str:
    return f"{i:06d}_10"  # KITTI's names: index, then the frame "_10" of data_semantics


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


class _ChunkProgress:
    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.stream = total, enabled, stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0, self.done0 = time.perf_counter(), None

    def __call__(self, done: int, chunk: int, chunks: int) -> None:
        if not self.enabled:
            return
        if self.done0 is None:
            self.done0, self.t0 = 0, time.perf_counter()
        rate = (done - self.done0) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        eta_s = "?" if not math.isfinite(eta) else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        line = f"chunk {chunk + 1}/{chunks}  {done}/{self.total} examples  {rate:.1f} ex/s  ETA {eta_s}"
        if self.tty:
            self.stream.write("\r" + line.ljust(80) + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def render_traffic(sim, psi: np.ndarray, out: Path, num: int, chunk_size: int, seed: int, progress: bool) -> dict:
    """Renders the chunks not yet finished; assembles counts.jsonl. Returns a summary."""
    from simulators.traffic import layout

    for d in (IMAGE_DIR, LABEL_DIR, CHUNK_DIR):
        (out / d).mkdir(exist_ok=True)
    chunks = -(-num // chunk_size)
    base = jax.random.key(seed)
    show = _ChunkProgress(num, progress)
    rendered = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:  # PNG encoding releases the GIL
        for c in range(chunks):
            marker = out / CHUNK_DIR / f"{c:06d}.jsonl"
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, num)
            if marker.exists():
                continue
            data = sim.sample_checked(jax.random.fold_in(base, c), psi, chunk_size)
            lines, jobs = [], []
            for j, i in enumerate(range(lo, hi)):
                name = example_name(i)
                jobs.append(pool.submit(_save_png, out / IMAGE_DIR / f"{name}.png", data["image"][j]))
                jobs.append(pool.submit(_save_png, out / LABEL_DIR / f"{name}.png", data["label"][j]))
                counts = [int(v) for v in data["counts"][j]]
                lines.append(
                    json.dumps({"name": name, "counts": dict(zip(layout.CAR_TYPES, counts)), "total": sum(counts)})
                )
            for job in jobs:
                job.result()  # re-raises a failed write
            # The marker last: a chunk cut short is rendered again on resume.
            run.atomic_write_text(marker, "".join(line + "\n" for line in lines))
            rendered += hi - lo
            show(hi, c, chunks)
    counts = "".join((out / CHUNK_DIR / f"{c:06d}.jsonl").read_text() for c in range(chunks))
    run.atomic_write_text(out / COUNTS, counts)
    return {"examples": num, "rendered_now": rendered, "chunks": chunks}


def render_gmm(sim, psi: np.ndarray, out: Path, num: int, seed: int) -> dict:
    data = jax.tree_util.tree_map(np.asarray, sim.sample(jax.random.key(seed), jax.numpy.asarray(psi), num))
    rows = ["x0,x1,label"] + [f"{x[0]:.7g},{x[1]:.7g},{int(y)}" for x, y in zip(data["x"], data["y"])]
    run.atomic_write_text(out / POINTS, "\n".join(rows) + "\n")
    return {"examples": num, "rendered_now": num, "chunks": 1}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """What to render: ``num`` examples into ``out`` (see the module docstring)."""

    out: str | None = None
    num: int | None = None
    chunk_size: int = 256
    seed: int = 0
    height: int | None = None  # when results.json records no image size
    width: int | None = None
    overwrite: bool = False
    progress: bool = True


def generate(cfg: GenerateConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Renders ``cfg.num`` examples with the learned psi of the run in ``workdir`` into ``cfg.out``.

    Raises GenerateError (bad request), AlreadyComplete (nothing to do), OSError / StorageError (writes).
    """
    num, chunk_size, seed = cfg.num, cfg.chunk_size, cfg.seed
    if cfg.out is None:
        raise GenerateError(lambda p: f"{p('out')} is required (the output directory)")
    if num is None or num < 1:
        raise GenerateError(lambda p: f"{p('num', num)} is out of range; accepted: an integer >= 1")
    if chunk_size < 1:
        raise GenerateError(lambda p: f"{p('chunk_size', chunk_size)} is out of range; accepted: an integer >= 1")
    results = read_run(workdir)
    sim_cfg = simulator_config(results, cfg.height, cfg.width)
    if renderer_of(sim_cfg) not in (None, "traffic"):
        # Same scene model and psi; only the renderer differs (CARLA needs servers, this does not).
        print(
            f"note: the run rendered with {renderer_of(sim_cfg)!r}; rendering with the pure-JAX renderer",
            file=sys.stderr,
        )
    options = make_options(sim_cfg, chunk_size)
    sim = _simulator(options)
    try:
        psi = sim.spec.validate(results["psi_raw"], what=f"{Path(workdir) / 'results.json'} psi_raw")
    except ValueError as e:
        raise GenerateError(str(e)) from e
    if psi.ndim != 1:
        raise GenerateError(f"psi_raw has shape {list(psi.shape)}; expected [{sim.spec.dim}]")
    out = Path(cfg.out)
    manifest = {
        "workdir": str(Path(workdir).absolute()),
        "psi_raw": [float(v) for v in psi],
        "num": int(num),
        "chunk_size": int(chunk_size) if options["name"] == "traffic" else None,
        "seed": int(seed),
        "simulator": sim_cfg,
    }
    prepare_out(out, manifest, cfg.overwrite)
    if options["name"] == "traffic":
        summary = render_traffic(sim, psi, out, num, chunk_size, seed, cfg.progress)
    else:
        summary = render_gmm(sim, psi, out, num, seed)
    return {**summary, "out": str(out), "psi": sim.spec.format(psi)}

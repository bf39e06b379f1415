"""A run's metrics: one JSON line per policy iteration in metrics.jsonl, mirrored as TensorBoard scalars.

``step`` is the iteration; ``center`` the search's current answer (raw psi)
and ``params`` its readable form (``ParamSpec.describe``). A resumed run's
file is cut back to its checkpoint first (:func:`sync_metrics`), so it never
holds duplicate or missing lines.

Cost columns (:data:`COST_COLUMNS`): the step's per-iteration ``cost_images`` (K x M examples generated),
``cost_mtm_steps`` (optimiser steps of the K MTMs and the AMTM), a split step's ``cost_sim_s`` (sampling +
rendering) and ``cost_train_s`` (the rest of the step), and the driver's ``time_s`` (the iteration's wall
time, compilation included in the first); :class:`MetricsLog` adds their running sums over the whole run
(``cost_images_total``, ..., ``cost_wall_s_total``), continued across a resume from the rows kept.
:func:`cost_totals` reads a run's totals back (results.json's "cost").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lts_jax.params import ParamSpec
from lts_jax.run import tensorboard as tb
from lts_jax.run.files import StorageError, append_line, atomic_write_text, io_message, json_default
from lts_jax.run.workdir import METRICS_FILE, WorkdirError

# per-iteration column -> its running sum over the run
COST_COLUMNS = {
    "cost_images": "cost_images_total",
    "cost_mtm_steps": "cost_mtm_steps_total",
    "cost_sim_s": "cost_sim_s_total",
    "cost_train_s": "cost_train_s_total",
    "time_s": "cost_wall_s_total",
}
# The columns that measure time: they differ between two runs of the same computation.
TIMING_COLUMNS = frozenset(
    {"time_s", "cost_sim_s", "cost_train_s", "cost_sim_s_total", "cost_train_s_total", "cost_wall_s_total"}
)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _total_before(history: list[Mapping[str, Any]], column: str, total: str) -> int | float:
    """The running sum of ``column`` over ``history``: the last row's ``total``, or the sum of the column
    (rows written before the totals existed)."""
    if history and _number(history[-1].get(total)):
        return history[-1][total]
    return sum(row[column] for row in history if _number(row.get(column)))


def cost_running_sums(row: Mapping[str, Any], history: list[Mapping[str, Any]]) -> dict[str, int | float]:
    """``{total: value}`` for every cost column of ``row``: the sums over ``history`` (the run's earlier rows,
    those of earlier sessions included) and ``row``."""
    return {
        total: _total_before(history, column, total) + row[column]
        for column, total in COST_COLUMNS.items()
        if _number(row.get(column))
    }


def cost_totals(history: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The cost of a run from its metrics rows: ``{"iterations", "images", "mtm_steps", "sim_s", "train_s",
    "wall_s"}`` (sums over the rows; None for what no row measured, e.g. sim_s / train_s of a fused step)."""
    out: dict[str, Any] = {"iterations": len(history)}
    for column, total in COST_COLUMNS.items():
        name = total.removeprefix("cost_").removesuffix("_total")
        measured = any(_number(row.get(column)) for row in history)
        out[name] = _total_before(list(history), column, total) if measured else None
    return out


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The metrics.jsonl of a run, one dict per iteration ([] when there is none).

    Raises ValueError naming the file and line when a line is not valid JSON.
    """
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg})") from e
    return out


def sync_metrics(workdir: str | os.PathLike, iteration: int, *, write: bool = True) -> list[dict[str, Any]]:
    """Cuts metrics.jsonl back to the iterations ``0 .. iteration - 1`` a checkpoint holds; returns them.

    Lines of later iterations (run after the checkpoint, run again now) and a
    partial last line (a write cut short) are removed, so a resumed run's file
    has neither duplicates nor gaps. Raises WorkdirError naming the file when
    it lacks an iteration the checkpoint has. ``write=False`` only reads (the
    processes of a multi-process run other than the main one).
    """
    path = Path(workdir) / METRICS_FILE

    def refuse(what: str) -> WorkdirError:
        return WorkdirError(
            lambda p: f"{what}; restore the file or pass {p('overwrite', True)} to start over", path=path
        )

    if not path.exists():
        if iteration > 0:
            raise refuse(f"{path} is missing, but the run's checkpoint is at iteration {iteration}")
        return []
    kept_lines, rows = [], []
    with open(path) as f:
        raw = f.read().split("\n")
    for n, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if len(rows) < iteration:
                raise refuse(
                    f"{path}: line {n} is not valid JSON; it belongs to iteration {len(rows)}, which the "
                    "checkpoint holds"
                ) from None
            break  # a partial line after the checkpoint
        step = row.get("step")
        if isinstance(step, int) and step >= iteration:
            break
        if step != len(rows):
            raise WorkdirError(f"{path}: line {n} has step {step}, expected {len(rows)}", path=path)
        rows.append(row)
        kept_lines.append(line)
    if len(rows) < iteration:
        raise refuse(f"{path} holds {len(rows)} iterations, but the checkpoint is at iteration {iteration}")
    if write and (len(kept_lines) != sum(1 for line in raw if line.strip()) or (raw and raw[-1] != "")):
        atomic_write_text(path, "".join(line + "\n" for line in kept_lines))
    return rows


def tensorboard_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one metrics row for TensorBoard: numbers, plus the readable psi as ``params/...``."""
    out = {}
    for k, v in row.items():
        if k in ("step", "iteration") or isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[k] = float(v)
    for block, desc in (row.get("params") or {}).items():
        if "prob" in desc:
            out[f"params/{block}"] = desc["prob"]
        elif "probs" in desc:
            for label, p in desc["probs"].items():
                out[f"params/{block}/{label}"] = p
        else:
            for i, (m, var) in enumerate(zip(desc.get("mean", []), desc.get("variance", []))):
                out[f"params/{block}/mean{i}"] = m
                out[f"params/{block}/variance{i}"] = var
    return out


class MetricsLog:
    """Hook: appends one JSON line per iteration to ``metrics.jsonl`` (and TensorBoard scalars).

    Per-candidate arrays (``psi``: [K, d]) are dropped to keep lines short; the
    search's current answer is logged as ``center`` (raw psi) and ``params``
    (readable); the cost columns get their running sums (``*_total``, see the module
    docstring). ``history`` holds the rows of earlier sessions of a resumed run.
    ``write=False`` keeps the rows in ``history`` only (the processes of a
    multi-process run other than the main one, which alone writes the file).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        spec: ParamSpec,
        drop: Iterable[str] = ("psi",),
        *,
        history: list[dict[str, Any]] | None = None,
        writer: tb.EventWriter | None = None,
        write: bool = True,
    ):
        self.path = Path(workdir) / METRICS_FILE
        self.spec = spec
        self.drop = set(drop)
        self.history: list[dict[str, Any]] = list(history or [])
        self.writer = writer if write else None
        self.write = write

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        row = {"step": iteration}
        row.update({k: v for k, v in metrics.items() if k not in self.drop})
        if "center" in metrics:
            row["params"] = self.spec.describe(np.asarray(metrics["center"], np.float32))
        row.update(cost_running_sums(row, self.history))
        if self.write:
            append_line(self.path, json.dumps(row, default=json_default))
        self.history.append(row)
        if self.writer is not None:
            try:
                self.writer.scalars(iteration, tensorboard_scalars(row))
                self.writer.flush()
            except OSError as e:
                raise StorageError(io_message(self.writer.path, e)) from e

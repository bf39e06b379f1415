"""A run's stored settings from the objects that configure it, so a library user writes no settings dict.

    workdir = run.prepare_run("workdirs/gmm", config, seed=0, learning_rate=0.2, simulator=sim.describe())
    state, history = run.run_search(step, state, key, 100, val, workdir=workdir, spec=sim.spec)

:func:`settings` flattens configuration objects (dataclass instances such as ``lts.LTSConfig`` or an
experiment's config, mappings) and keyword values into the ``{name: value}`` that
:func:`lts_jax.run.prepare_workdir` stores in flags.txt and compares with a run already in the workdir (a
different value: WorkdirError listing it; the same: resume; a larger ``num_iterations``: extend).
:func:`prepare_run` is prepare_workdir with those settings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lts_jax.run.workdir import prepare_workdir


def _value(value: Any) -> Any:
    # Lists as the command line writes them (experiments' flags.txt): a tuple (16, 32) is ['16', '32'].
    if isinstance(value, tuple | list):
        return [str(v) for v in value]
    return value


def settings(*configs: Any, **values: Any) -> dict[str, Any]:
    """``{name: value}`` of every field of each of ``configs`` (dataclass instances or mappings), then
    ``values``; later ones win. Raises TypeError naming an argument that is neither."""
    out: dict[str, Any] = {}
    for i, config in enumerate(configs):
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            items = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        elif isinstance(config, Mapping):
            items = dict(config)
        else:
            raise TypeError(
                f"settings: argument {i} is a {type(config).__name__}; give dataclass instances, mappings or "
                "keyword values (e.g. simulator=sim.describe())"
            )
        out.update({str(k): _value(v) for k, v in items.items()})
    out.update({k: _value(v) for k, v in values.items()})
    return out


def prepare_run(
    workdir: str | os.PathLike,
    *configs: Any,
    overwrite: bool = False,
    ignore: Iterable[str] = (),
    **values: Any,
) -> Path:
    """``prepare_workdir(workdir, overwrite=..., config=settings(*configs, **values), ignore=...)``: creates the
    workdir or checks the run in it against these settings (resume, extend, RunComplete, WorkdirError);
    returns it as a Path."""
    return prepare_workdir(workdir, overwrite=overwrite, config=settings(*configs, **values), ignore=ignore)

"""What the experiments' library halves share: configuration base classes, their checks, what they build.

A configuration is a frozen dataclass whose fields hold every default of an experiment; its fields are named
like the flags the command line defines from them (``experiments/common.py``), the shared names of WORKSPACE.md's design
included. Nothing here reads a flag: a :class:`ConfigError` names a field through a name function, as
``lts_jax.run``'s errors do (``num_iterations=0`` here, ``--num_iterations=0`` on the command line).

    cfg = GmmToyConfig(num_iterations=5)      # a subclass of SearchConfig
    validate_search(cfg)                      # ConfigError naming the field
    step = lts.make_step(lts_config(cfg), sim, task, search_strategy(cfg, sim.spec))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lts_jax import lts, parallel, run, search
from lts_jax.optim import OPTIMIZERS
from lts_jax.params import ParamSpec

SEARCHES = search.NAMES  # lts, fixed, random_params, random_search, openes, snes, cma_es, pgpe
BASELINES = ("ema", "batch_mean", "leave_one_out")
ADVANTAGES = ("raw", "normalized", "centered_rank")
# Settings that change how a run is managed, not what it computes: they may differ from a run's stored ones.
RUN_MANAGEMENT = frozenset({
    "workdir", "overwrite", "progress", "log_every", "checkpoint_every", "keep_checkpoints",
    # where a run computes (a run may resume on another device count: results agree to float tolerance)
    "num_devices", "coordinator", "num_processes", "process_id",
})  # fmt: skip


class ConfigError(run.RunError, ValueError):
    """A configuration value that cannot be used; the message names the setting (``RunError.render``)."""


def out_of_range(name: str, value: Any, accepted: str) -> ConfigError:
    return ConfigError(lambda p: f"{p(name, value)} is out of range; accepted: {accepted}")


def check(condition: bool, name: str, value: Any, accepted: str) -> None:
    """Raises ConfigError ``NAME=VALUE is out of range; accepted: ACCEPTED`` unless ``condition``."""
    if not condition:
        raise out_of_range(name, value, accepted)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How a run is managed (RUN_MANAGEMENT: re-running with other values resumes the same run)."""

    overwrite: bool = False
    progress: bool = True
    log_every: int = 10
    checkpoint_every: int = run.DEFAULT_CHECKPOINT_EVERY
    keep_checkpoints: int = run.DEFAULT_KEEP_CHECKPOINTS
    # issue 18: the K candidates over this many devices (0: every device of every process; 1: one device),
    # and the processes of a multi-host run (lts_jax/run/distributed.py; unset: from the environment)
    num_devices: int = 0  # 0: every device of the run (1: one device)
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig(RunConfig):
    """The shared settings of a search run (WORKSPACE.md, "Design"): K, M, xi, AMTM, the search and its policy.

    An experiment subclasses it and redeclares the fields whose defaults are its own.
    """

    seed: int = 0
    num_iterations: int = 100
    num_candidates: int = 8
    dataset_size: int = 100
    mtm_epochs: int = 1
    retain_mtm: bool = False
    common_sim_key: bool = False
    train_strategy: str = "auto"
    eval_strategy: str = "auto"
    search: str = "lts"
    init: str = "random"
    policy_lr: float = 0.05
    policy_optimizer: str = "adam"
    policy_variance: float = 0.05
    learn_variance: bool = False
    policy_grad_clip: float | None = None
    baseline_decay: float = 0.9
    # variance reduction and exploration of the Gaussian policy (lts_jax.search.policy; defaults: the paper's)
    policy_baseline: str = "ema"
    policy_advantages: str = "raw"
    policy_antithetic: bool = False
    policy_prob_floor: float = 0.0
    policy_tie_std_growth: float = 1.0
    policy_max_std: float = 1.0
    # evolution strategies (--search=openes|snes|cma_es|pgpe): their learning rate; None: the strategy's default
    es_lr: float | None = None
    # the K per-iteration MTMs fine-tune the AMTM (Algorithm 1's retained model; needs retain_mtm)
    candidates_from_amtm: bool = False


def validate_run(cfg: RunConfig) -> None:
    check(cfg.log_every >= 0, "log_every", cfg.log_every, "an integer >= 0")
    check(cfg.checkpoint_every >= 0, "checkpoint_every", cfg.checkpoint_every, "an integer >= 0")
    check(cfg.keep_checkpoints >= 1, "keep_checkpoints", cfg.keep_checkpoints, "an integer >= 1")
    check(cfg.num_devices >= 0, "num_devices", cfg.num_devices, "an integer >= 0 (0: every device)")
    check(cfg.num_processes is None or cfg.num_processes >= 1, "num_processes", cfg.num_processes, "an integer >= 1")
    check(cfg.process_id is None or cfg.process_id >= 0, "process_id", cfg.process_id, "an integer >= 0")


def validate_search(cfg: SearchConfig, searches: tuple[str, ...] = SEARCHES) -> None:
    """Checks the shared settings; raises ConfigError naming the first bad one and its range."""
    check(cfg.num_iterations >= 1, "num_iterations", cfg.num_iterations, "an integer >= 1")
    check(cfg.num_candidates >= 1, "num_candidates", cfg.num_candidates, "an integer >= 1")
    check(cfg.dataset_size >= 1, "dataset_size", cfg.dataset_size, "an integer >= 1")
    check(cfg.mtm_epochs >= 0, "mtm_epochs", cfg.mtm_epochs, "an integer >= 0")
    check(cfg.search in searches, "search", cfg.search, " | ".join(searches))
    check(cfg.policy_lr > 0, "policy_lr", cfg.policy_lr, "a float > 0")
    check(cfg.policy_variance > 0, "policy_variance", cfg.policy_variance, "a float > 0 (a variance)")
    check(cfg.policy_optimizer in OPTIMIZERS, "policy_optimizer", cfg.policy_optimizer, " | ".join(OPTIMIZERS))
    clip = cfg.policy_grad_clip
    check(clip is None or clip > 0, "policy_grad_clip", clip, "a float > 0, or unset")
    check(0.0 <= cfg.baseline_decay < 1.0, "baseline_decay", cfg.baseline_decay, "a float in [0, 1)")
    check(cfg.policy_baseline in BASELINES, "policy_baseline", cfg.policy_baseline, " | ".join(BASELINES))
    check(cfg.policy_advantages in ADVANTAGES, "policy_advantages", cfg.policy_advantages, " | ".join(ADVANTAGES))
    floor = cfg.policy_prob_floor
    check(0.0 <= floor < 0.2, "policy_prob_floor", floor, "a float in [0, 0.2)")
    check(cfg.policy_tie_std_growth >= 1.0, "policy_tie_std_growth", cfg.policy_tie_std_growth, "a float >= 1 (1: off)")
    check(cfg.policy_max_std > 0, "policy_max_std", cfg.policy_max_std, "a float > 0")
    check(cfg.es_lr is None or cfg.es_lr > 0, "es_lr", cfg.es_lr, "a float > 0, or unset")
    even = cfg.num_candidates % 2 == 0
    needs_even = (cfg.search == "lts" and cfg.policy_antithetic) or cfg.search in ("openes", "pgpe")
    check(even or not needs_even, "num_candidates", cfg.num_candidates,
          f"an even integer (mirrored sampling of --search={cfg.search})")  # fmt: skip
    n = cfg.num_devices  # 0 (every device) is checked against the device count when the run starts
    check(
        n == 0 or cfg.num_candidates % n == 0, "num_devices", n, f"a divisor of num_candidates = {cfg.num_candidates}"
    )
    check(cfg.retain_mtm or not cfg.candidates_from_amtm, "candidates_from_amtm", cfg.candidates_from_amtm,
          "false unless retain_mtm is set (the candidates fine-tune the AMTM)")  # fmt: skip
    check(cfg.train_strategy in parallel.STRATEGIES, "train_strategy", cfg.train_strategy, str(parallel.STRATEGIES))
    check(cfg.eval_strategy in parallel.STRATEGIES, "eval_strategy", cfg.eval_strategy, str(parallel.STRATEGIES))
    validate_run(cfg)


def init_names(spec: ParamSpec) -> list[str]:
    """What ``init`` accepts for a simulator: zeros, random and its presets."""
    return ["zeros", "random", *spec.preset_names]


def validate_init(cfg: SearchConfig, names: Iterable[str]) -> None:
    names = list(names)
    check(cfg.init in names, "init", cfg.init, " | ".join(names))


def lts_config(cfg: SearchConfig, **overrides: Any) -> lts.LTSConfig:
    """The LTSConfig of a run (K, M, xi, AMTM, executors, common simulator key); ``overrides`` win."""
    values = dict(
        num_candidates=cfg.num_candidates,
        dataset_size=cfg.dataset_size,
        mtm_epochs=cfg.mtm_epochs,
        retain_mtm=cfg.retain_mtm,
        train_strategy=cfg.train_strategy,
        eval_strategy=cfg.eval_strategy,
        common_sim_key=cfg.common_sim_key,
        candidates_from_amtm=cfg.candidates_from_amtm,
        num_devices=num_devices(cfg),
    )
    values.update(overrides)
    return lts.LTSConfig(**values)


def num_devices(cfg: SearchConfig) -> int:
    """The device count the K candidates are split over (``num_devices``; 0: every device); ConfigError naming
    ``num_devices`` when K is not a multiple of it."""
    import jax

    n = cfg.num_devices or jax.device_count()
    if n > jax.device_count():
        raise out_of_range("num_devices", n, f"at most the {jax.device_count()} devices of this run")
    if cfg.num_candidates % n:
        where = " in all; --num_devices=1 runs on one" if not cfg.num_devices else ""
        raise out_of_range("num_devices", cfg.num_devices,
                           f"a divisor of num_candidates = {cfg.num_candidates} (here {n} devices{where})")  # fmt: skip
    return n


# The Gaussian policy's options (search.make("lts", ...)) -> the SearchConfig fields that set them.
POLICY_FIELDS = {
    "variance": "policy_variance",
    "learn_variance": "learn_variance",
    "learning_rate": "policy_lr",
    "optimizer": "policy_optimizer",
    "grad_clip": "policy_grad_clip",
    "baseline": "policy_baseline",
    "baseline_decay": "baseline_decay",
    "advantages": "policy_advantages",
    "antithetic": "policy_antithetic",
    "prob_floor": "policy_prob_floor",
    "tie_std_growth": "policy_tie_std_growth",
    "max_std": "policy_max_std",
}


def policy_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """SearchConfig field values that make ``search_options(cfg, "lts")`` hold ``options`` (policy option names,
    e.g. ``search.policy.RECOMMENDED``). Raises ValueError naming an option no field sets."""
    unknown = sorted(set(options) - set(POLICY_FIELDS))
    if unknown:
        raise ValueError(f"no setting of the policy option(s) {unknown}; known: {sorted(POLICY_FIELDS)}")
    return {POLICY_FIELDS[k]: v for k, v in options.items()}


def search_options(cfg: SearchConfig, name: str) -> dict[str, Any]:
    """The keyword arguments of ``search.make(name, ...)`` that ``cfg`` sets (only the options ``name`` takes)."""
    policy = {option: getattr(cfg, field) for option, field in POLICY_FIELDS.items()}
    if name == "lts":
        return policy
    # the baselines and the evolution strategies: the exploration variance, and an ES's own learning rate
    es = {"variance": cfg.policy_variance, "grad_clip": cfg.policy_grad_clip}
    if cfg.es_lr is not None:
        es["learning_rate"] = cfg.es_lr
    accepted = search.options(name)
    return {k: v for k, v in es.items() if k in accepted}


def search_strategy(cfg: SearchConfig, spec: ParamSpec, name: str | None = None) -> search.SearchStrategy:
    """``search.make`` of ``name`` (default ``cfg.search``) with the settings of ``cfg``."""
    name = name or cfg.search
    return search.make(name, spec, **search_options(cfg, name))


def run_options(cfg: RunConfig) -> dict[str, Any]:
    """The run-management keyword arguments of ``run.run_search``."""
    return dict(
        progress=cfg.progress,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints,
    )


def cost(history: list[dict[str, Any]], *, eval_images: int = 0) -> dict[str, Any]:
    """results.json's "cost" of a run from its metrics rows (``run.cost_totals``) and the evaluation data it
    generated once (``eval_images``: validation + test examples):

        {"images": search + evaluation examples generated, "search_images": K x M per iteration summed,
         "eval_images", "mtm_steps": optimiser steps of every MTM and the AMTM, "sim_s": sampling +
         rendering, "train_s": the rest of the steps, "wall_s": the iterations' wall time (compilation
         included), "iterations", "timing": how the seconds were measured}

    ``sim_s`` / ``train_s`` are None for a fused step (``lts.make_step``: one program, only its wall time
    exists)."""
    totals = run.cost_totals(history)
    search_images = totals.pop("images") or 0
    split = totals["sim_s"] is not None
    return {
        "images": search_images + int(eval_images),
        "search_images": search_images,
        "eval_images": int(eval_images),
        **totals,
        "timing": (
            "split step: sim_s = sampling + rendering (blocked on the data), train_s = the rest of each step"
            if split
            else "fused step (one program): only the wall time is measured"
        ),
    }


def cost_of_runs(costs: Mapping[str, Mapping[str, Any] | None], *, eval_images: int = 0) -> dict[str, Any]:
    """results.json's "cost" of an experiment of several runs: the sums of the runs' :func:`cost` entries
    (``{name: cost}``; None: a run that did not finish, left out), ``eval_images`` generated once for all,
    and ``by_run``. A second counts as measured only when every run measured it."""
    done = {name: dict(c) for name, c in costs.items() if c}

    def total(key: str) -> Any:
        values = [c.get(key) for c in done.values()]
        return sum(values) if values and all(v is not None for v in values) else None

    search_images = total("search_images") or 0
    return {
        "images": search_images + int(eval_images),
        "search_images": search_images,
        "eval_images": int(eval_images),
        **{k: total(k) for k in ("iterations", "mtm_steps", "sim_s", "train_s", "wall_s")},
        "by_run": done,
    }


def record(cfg: Any, **extra: Any) -> dict[str, Any]:
    """The stored settings of a run (flags.txt, a sub-run's record): every field of ``cfg``, tuples as the
    command line writes lists (``['16', '32']``), plus ``extra``."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = [str(v) for v in value] if isinstance(value, tuple) else value
    out.update(extra)
    return out


def prepare_workdir(cfg: RunConfig, workdir: str | os.PathLike, also_ignore: Iterable[str] = ()) -> Path:
    """``run.prepare_workdir`` with the run's settings: resume, extend, "already complete" (RunComplete), or
    WorkdirError listing the settings that differ. RUN_MANAGEMENT and ``also_ignore`` (settings that change
    only how fast a run goes) may differ. Call after validation, before any work: it also starts JAX's
    distributed runtime when the run spans several processes (``coordinator`` ...; lts_jax/run/distributed.py)."""
    try:
        run.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
    except ValueError as e:
        reason = str(e)
        raise ConfigError(lambda p: f"{p('coordinator')}, {p('num_processes')}, {p('process_id')}: {reason}") from e
    return run.prepare_workdir(
        workdir,
        overwrite=cfg.overwrite,
        config=record(cfg, workdir=str(workdir)),
        ignore=RUN_MANAGEMENT | set(also_ignore),
    )


def fields_of(cls: type, cfg: Any, **overrides: Any) -> Any:
    """A ``cls`` (a base class of ``cfg``'s) with ``cfg``'s values of its fields, then ``overrides``."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
    return cls(**{**values, **overrides})


def write_summary(
    summary: dict[str, Any],
    summary_dir: str | os.PathLike,
    *,
    results_file: str,
    table_file: str,
    analyze_fn: Callable[[Mapping[str, Any]], Any],
    table_fn: Callable[[Mapping[str, Any]], str],
    figures_fn: Callable[[Mapping[str, Any], Path], list[Path]] | None = None,
) -> list[Path]:
    """A multi-run experiment's summary: ``summary["analysis"] = analyze_fn(summary)``, the JSON
    (``results_file``), the markdown table (``table_file``) and, with ``figures_fn``, the figures, all in
    ``summary_dir``; returns the paths written."""
    summary_dir = Path(summary_dir)
    summary["analysis"] = analyze_fn(summary)
    run.write_json(summary_dir / results_file, summary)
    (summary_dir / table_file).write_text(table_fn(summary))
    written = [summary_dir / results_file, summary_dir / table_file]
    if figures_fn is not None:
        written += figures_fn(summary, summary_dir)
    return written

"""The command-line half every experiment shares: flags defined from a config class, the config built back.

An experiment module (``experiments/NAME.py``) defines its flags from its configuration class, whose field
defaults are the only defaults, builds the configuration from the command line and calls one flag-free
function of ``experiments/lib/NAME.py``::

    FLAGS = common.define_flags(lib.CarCountConfig, HELP)   # one flag per field, default = the field's

    def main():
        cfg = common.config_from_flags(lib.CarCountConfig)
        lib.validate(cfg)                                  # ConfigError -> exit 2 naming the flag
        lib.train_and_evaluate(cfg, common.workdir())

    if __name__ == "__main__":
        common.main(main)                                  # absl's app.run with the exit statuses below

Flags are named like the fields (the shared names of WORKSPACE.md's design: ``--workdir --seed --num_iterations
--num_candidates --dataset_size --mtm_epochs --retain_mtm --search --policy_lr --policy_variance
--baseline_decay ...``); :data:`HELP` holds the help of the fields that several experiments share. The
library names its parameters in messages (``overwrite=True``); :func:`user_message` renders them as flags
(``--overwrite``), and :func:`run_main` maps the outcomes to exit statuses, the same for every command
(:data:`EXIT_STATUS`; README.md "Exit status"):

    0    done, or the workdir already holds this finished run (nothing touched)
    2    configuration or input: a flag out of range, an unknown flag, a value of the wrong type, a missing
         flagfile, flags that differ from the run in --workdir, an unusable workdir, a checkpoint of another
         configuration, bad input data -- one line, no help text (--help prints the help)
    3    a simulator that stayed unavailable after its retries (every CARLA server); the last good
         checkpoint is kept and re-running the same command resumes
    130  stopped by SIGINT, 143 by SIGTERM, after saving a checkpoint (the same command resumes)
    1    anything else: a non-finite value (the iteration named), a file that could not be written (the
         file named), failed sub-runs of a multi-run, a bug
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from absl import app, flags

from experiments.lib.common import ConfigError
from lts_jax import lts, parallel, run
from lts_jax.run.errors import SimulatorUnavailable

# Help of the settings several experiments share (an experiment's own are given to define_flags).
HELP = {
    # run management (lib.common.RunConfig)
    "workdir": "Directory for flags.txt, metrics.jsonl, results.json and figures.",
    "overwrite": (
        "Remove the run in --workdir (metrics, checkpoints, results) and start over. Without it a re-run resumes "
        "an unfinished run, extends a finished one when --num_iterations is raised, or reports it complete."
    ),
    "progress": "Show a progress line (live only when stderr is a terminal); --noprogress: none at all.",
    "log_every": "Without a terminal, print a progress line every N iterations (0: never).",
    "checkpoint_every": (
        "Save a checkpoint of the whole run state every N iterations (0: only at the end and when stopped)."
    ),
    "keep_checkpoints": "How many of the newest checkpoints to keep.",
    # the search (lib.common.SearchConfig)
    "seed": "Base random seed of the run (policy, data, MTM initialisation).",
    "num_iterations": "Policy iterations.",
    "num_candidates": "K: psi samples (and MTMs trained) per iteration.",
    "dataset_size": "M: examples generated per candidate per iteration.",
    "mtm_epochs": "xi: epochs of main task model training per iteration.",
    "retain_mtm": "Also train an accumulated MTM (AMTM) on every iteration's data and report it.",
    "common_sim_key": "Sample the K candidates' data with one simulator key (common random numbers).",
    "train_strategy": f"How the K MTM trainings run: {', '.join(parallel.STRATEGIES)}.",
    "eval_strategy": f"How the K MTM evaluations run: {', '.join(parallel.STRATEGIES)}.",
    "search": (
        "Search strategy: lts (REINFORCE), fixed (the --init point), random_params, random_search, or an "
        "evolution strategy: openes, snes, cma_es, pgpe (evosax)."
    ),
    "init": "Initial psi: zeros, random, or a preset name of the simulator.",
    "policy_lr": "Learning rate of the policy mean (optax).",
    "policy_optimizer": "Policy optimiser: adam, sgd or rmsprop.",
    "policy_variance": "sigma^2 of the Gaussian policy (paper: 0.05).",
    "learn_variance": "Also learn log sigma of the policy.",
    "policy_grad_clip": (
        "Clip the REINFORCE gradient's global norm to this before the optimiser (off if unset; ~ |advantage| x "
        "sqrt(learnable dims) / sigma, see the grad_norm metric). Extreme rewards are clipped anyway by the policy's "
        "guard (lts_jax/search/policy.py, outlier_mads), which warns naming the iteration."
    ),
    "baseline_decay": "EMA decay of the REINFORCE reward baseline, in [0, 1).",
    "policy_baseline": "REINFORCE baseline: ema (the paper's), batch_mean or leave_one_out.",
    "policy_advantages": (
        "Advantages of REINFORCE: raw (the paper's), normalized (by their std over K) or centered_rank (ranks in "
        "[-0.5, 0.5]: blind to the reward's scale); tied rewards give zero advantages."
    ),
    "policy_antithetic": "Mirrored sampling: the policy proposes psi = mean +- sigma eps pairs (K even).",
    "policy_prob_floor": "Keep every learnable probability of the policy's mean at least this (0: off).",
    "policy_tie_std_growth": "When all K rewards tie, grow sigma by this factor (up to --policy_max_std; 1: off).",
    "policy_max_std": "Largest sigma that --policy_tie_std_growth reaches.",
    "es_lr": "Learning rate of an evolution strategy (--search=openes|snes|cma_es|pgpe); unset: its default.",
    "num_devices": "Devices the K candidates are split over (0: every device; K must be a multiple; 1: one device).",
    "coordinator": "host:port of process 0 of a multi-host run (else JAX_COORDINATOR_ADDRESS or the cluster's).",
    "num_processes": "Processes of a multi-host run (else JAX_NUM_PROCESSES or the cluster's; unset: one).",
    "process_id": "This process's index in a multi-host run (else JAX_PROCESS_ID or the cluster's).",
    "candidates_from_amtm": (
        "The K per-iteration MTMs fine-tune the AMTM (needs --retain_mtm) instead of starting from scratch."
    ),
    # validation and test data, the MTM
    "val_size": "Validation examples drawn with the real / validation parameters.",
    "test_size": "Test examples drawn with the real / validation parameters.",
    "val_seed": "Seed of the validation set.",
    "test_seed": "Seed of the test set.",
    "test_every": "Evaluate on the test set every N iterations (0: only at the end).",
    "mtm_lr": "Learning rate of the main task models.",
    "compute_dtype": "MTM compute dtype, float32 or bfloat16 (parameters stay float32).",
    "methods": "Methods to run (experiments comparing several; see their docstrings).",
    # the traffic simulator (lib.traffic.TrafficConfig)
    "height": "Image height (the simulator's and the main task model's).",
    "width": "Image width.",
    "simulator": "Renderer of the traffic scenes: traffic (pure JAX) or carla (servers; simulators/carla/README.md).",
    "carla_hosts": "CARLA servers for --simulator=carla: host:port entries, comma separated.",
    "carla_timeout": (
        "Seconds a CARLA server may take to answer: each call, and all the connection attempts to one server "
        "together (a refused connection fails at once). A server that stays unavailable stops the run: exit 3."
    ),
    "learn_intersection": "Let the search learn the intersection type (frozen and uniform by default).",
    "render_chunk": "Images per call of the compiled renderer (one program serves every data set size).",
    "compile_cache_dir": "JAX's persistent compilation cache (reruns skip compiling the renderer); off if unset.",
    # the segmentation MTM (lib.seg.SegConfig)
    "model": "Segmentation MTM: fcn_small (CPU), resnet18, resnet50.",
    "fcn_width": "Channels of fcn_small's first level (x2, x4 deeper).",
    "batch_size": "MTM training minibatch (capped at the data set size).",
    "eval_batch_size": "Images per evaluation chunk (0: --batch_size).",
    "pretrain_lr": "Learning rate of the pretraining (0: --mtm_lr).",
    "mtm_optimizer": "Optimiser of the MTM: adam, sgd or rmsprop.",
    "augment": "Random horizontal flips and colour jitter of training batches.",
    "jitter": "Colour jitter strength (brightness/contrast/saturation), in [0, 1).",
    "init_checkpoint": "Parameters (save_params file) every MTM starts from; replaces --pretrain_images.",
    "pretrain_images": (
        "Pretrain the common starting MTM on this many simulated images (rendered M at a time, xi epochs each); "
        "0: every MTM starts from a random init."
    ),
    "pretrain_psi": "psi of the pretraining images: a preset or zeros.",
    "common_train_key": (
        "The K candidates of an iteration shuffle and augment alike (common random numbers: with --common_sim_key "
        "and a common init, their rewards then differ only through psi)."
    ),
    "run_dir": "Where the per-method runs go (metrics, checkpoints, best params); default: --workdir.",
}

WORKDIR = flags.DEFINE_string("workdir", None, HELP["workdir"])

# The exit statuses of every command (module docstring; README.md "Exit status").
EXIT_STATUS = {
    "done": 0,
    "error": 1,
    "configuration": 2,
    "simulator_unavailable": 3,
    "SIGINT": 130,
    "SIGTERM": 143,
}
HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?", "--?")
# {module name: flag names} of define_flags, so that --help lists a command's own flags
_DEFINED_BY: dict[str, list[str]] = {}

_DEFINE = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}
_FLAG_TYPES = {bool: "bool", int: "int", float: "float", str: "string", tuple: "comma separated list of strings"}


def _field_type(hint: Any) -> tuple[type, type | None]:
    """(bool | int | float | str | tuple, element type of a tuple) of a field's annotation (``X | None`` -> X)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return tuple, typing.get_args(hint)[0]
    if hint not in _DEFINE:
        raise TypeError(f"a flag cannot hold {hint!r}")
    return hint, None


def define_flags(cls: type, help: Mapping[str, str] | None = None) -> dict[str, flags.FlagHolder]:
    """Defines a flag for every field of the dataclass ``cls``: named like the field, its default the field's
    default, its help from ``help`` or :data:`HELP`. Returns ``{name: FlagHolder}``.

    Flags already defined by another experiment module of the process (tests import them all) are kept, not
    redefined: one flag per name; :func:`config_from_flags` takes the value of a flag only when it was given,
    so each experiment still gets its own defaults. Tuples are list flags (``--mtm_features=16,32``).
    """
    texts = {**HELP, **(help or {})}
    hints = typing.get_type_hints(cls)
    holders = {}
    caller = sys._getframe(1).f_globals.get("__name__", "")
    _DEFINED_BY.setdefault(caller, []).extend(f.name for f in dataclasses.fields(cls))
    for f in dataclasses.fields(cls):
        kind, _ = _field_type(hints[f.name])
        if f.name in flags.FLAGS:
            flag = flags.FLAGS[f.name]
            if flag.flag_type() != _FLAG_TYPES[kind]:
                raise TypeError(f"--{f.name} is a {flag.flag_type()} flag elsewhere, a {_FLAG_TYPES[kind]} in {cls}")
            holders[f.name] = flags.FlagHolder(flags.FLAGS, flag)
            continue
        if f.name not in texts:
            raise KeyError(f"no help text for the flag --{f.name} of {cls.__name__}")
        if kind is tuple:
            default = None if f.default is None else [str(v) for v in f.default]
            holders[f.name] = flags.DEFINE_list(f.name, default, texts[f.name])
        else:
            holders[f.name] = _DEFINE[kind](f.name, f.default, texts[f.name])
    return holders


def config_from_flags(cls: type, base: Any = None) -> Any:
    """A ``cls`` from the command line: ``base`` (default ``cls()``) with the value of every flag given
    (on the command line or in a flagfile). Raises ConfigError naming a list flag with an unusable element,
    or a float flag given as inf or nan (no setting takes one)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        flag = flags.FLAGS[f.name]
        if not flag.present:
            continue
        kind, element = _field_type(hints[f.name])
        value = flag.value
        if kind is tuple and value is not None:
            try:
                value = tuple(element(v.strip()) for v in value)
            except ValueError:
                shown = ",".join(value)
                what = "integers" if element is int else "values"
                raise ConfigError(
                    lambda p, n=f.name, s=shown, w=what: (
                        f"{p(n, s)} is out of range; accepted: a comma-separated list of {w}"
                    )
                ) from None
        if kind is float and value is not None and not math.isfinite(value):
            raise ConfigError(lambda p, n=f.name, v=value: f"{p(n, v)} is out of range; accepted: a finite float")
        values[f.name] = value
    return dataclasses.replace(cls() if base is None else base, **values)


def workdir() -> Path:
    """--workdir; a usage error (exit 2) when it is not given."""
    if not WORKDIR.value:
        raise usage_error("--workdir is required (a directory for the run's outputs)")
    return Path(WORKDIR.value)


def usage_error(message: str) -> app.UsageError:
    """An error that absl reports with usage and exit status 2."""
    return app.UsageError(message, exitcode=2)


def flag(name: str, *value: Any) -> str:
    """How the command line writes a library parameter (flags are named like the parameters).

    ``flag("workdir") == "--workdir"``, ``flag("num_iterations", 5) == "--num_iterations=5"``, and a boolean
    as absl writes it: ``flag("overwrite", True) == "--overwrite"``, ``flag("overwrite", False) == "--nooverwrite"``.
    """
    if not value:
        return f"--{name}"
    if value[0] is True:
        return f"--{name}"
    if value[0] is False:
        return f"--no{name}"
    return f"--{name}={value[0]}"


def user_message(error: BaseException) -> str:
    """A library error's message for the user: its parameters named as flags (``overwrite=True`` -> ``--overwrite``)."""
    return error.render(flag) if isinstance(error, run.RunError) else str(error)


def _command_help() -> str:
    """The help of the running command: its docstring and its own flags (define_flags of ``__main__``, flags
    defined in it directly, --workdir)."""
    main = sys.modules.get("__main__")
    names = ["workdir", *_DEFINED_BY.get("__main__", [])]
    by_module = flags.FLAGS.flags_by_module_dict()
    for key in (sys.argv[0], "__main__"):
        names += [fl.name for fl in by_module.get(key, [])]
    lines = [(getattr(main, "__doc__", None) or "").strip(), "", "Flags (--helpfull: every flag, absl's too):"]
    for name in dict.fromkeys(names):
        if name not in flags.FLAGS:
            continue
        fl = flags.FLAGS[name]
        lines.append(f"  --{name}: {fl.help}")
        lines.append(f"    (default: {fl.default_as_str or 'unset'})")
    return "\n".join(lines).strip() + "\n"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flags parser for the commands (``app.run(..., flags_parser=parse_flags)``): ``--help`` prints the
    command's help (exit 0); a flag absl cannot parse (unknown, a value of the wrong type, a missing flagfile)
    is a usage error: one line naming it, exit 2, no help text."""
    if any(arg in HELP_ARGS for arg in argv[1:]):
        sys.stdout.write(_command_help())
        sys.exit(EXIT_STATUS["done"])
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = " ".join(str(e).split())  # one line: absl's flagfile errors span several
        _usage_exit(f"{text} (--help lists the flags)")


def _usage_exit(message: str, status: int = EXIT_STATUS["configuration"]):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def main(main_fn: Callable[[], Any]) -> None:
    """Runs an experiment's command: ``app.run`` with :func:`parse_flags` and :func:`run_main`'s exit statuses."""
    app.run(run_main(main_fn), flags_parser=parse_flags)


def _workdir_snapshot() -> tuple[Path, bool, bool] | None:
    """(--workdir, whether it existed, whether it held flags.txt) before a command ran, or None without one."""
    if not flags.FLAGS.is_parsed() or not WORKDIR.value:
        return None
    path = Path(WORKDIR.value)
    try:
        return path, path.exists(), (path / run.CONFIG_FILE).exists()
    except OSError:  # a name the file system refuses: the command reports it
        return None


def _undo_new_workdir(snapshot: tuple[Path, bool, bool] | None) -> None:
    """After a configuration or input error: removes the flags.txt this command wrote from its own settings where
    there was none (and the directory, when the command created it and it is empty again). A flags.txt written
    from a checkpoint's stored configuration (the run's own) stays, and a run's files are never touched."""
    if snapshot is None:
        return
    path, existed, had_config = snapshot
    config = path / run.CONFIG_FILE
    if had_config or not config.exists() or run.checkpoint.stored_meta(path / run.CHECKPOINT_DIR) is not None:
        return
    try:
        config.unlink()
        if not existed and not any(path.iterdir()):
            path.rmdir()
    except OSError:
        pass


def _checkpoint_note(snapshot: tuple[Path, bool, bool] | None) -> str:
    """Where the last good checkpoint of the run in --workdir is, for a message."""
    if snapshot is None:
        return ""
    steps = run.checkpoint.list_steps(snapshot[0] / run.CHECKPOINT_DIR)
    if steps:
        return f" The last good checkpoint, {snapshot[0] / run.CHECKPOINT_DIR / str(steps[-1])}, is kept."
    return f" Nothing in {snapshot[0]} was lost."


def run_main(main_fn: Callable[[], Any]) -> Callable[[list[str]], None]:
    """Wraps an experiment's main: turns library errors into clear exits (the statuses of the module docstring).

    A configuration or input error (exit 2) prints one line, ``error: MESSAGE`` naming the flag, and removes
    the flags.txt it wrote into a workdir that held no run. Every other error prints its message (the flag,
    file or iteration named) without a traceback, except a bug (exit 1 with Python's traceback).
    """

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            _usage_exit(f"unexpected arguments: {' '.join(argv[1:])} (--help lists the flags)")
        run.checkpoint.quiet_orbax_logs()
        run.progress.quiet_backend_logs()  # no "Unable to initialize backend 'tpu'" line
        snapshot = _workdir_snapshot()
        try:
            main_fn()
        except (ConfigError, app.UsageError, run.WorkdirError, run.checkpoint.LayoutMismatch) as e:
            _undo_new_workdir(snapshot)
            status = getattr(e, "exitcode", None) if isinstance(e, app.UsageError) else None
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(status or EXIT_STATUS["configuration"])
        except run.RunComplete as e:
            print(f"already complete: {user_message(e)}", file=sys.stderr)
            sys.exit(EXIT_STATUS["done"])
        except run.Interrupted as e:
            print(f"interrupted: {user_message(e)}. Re-run the same command to resume.", file=sys.stderr)
            sys.exit(128 + e.signum if e.signum else EXIT_STATUS["error"])
        except KeyboardInterrupt:  # a second SIGINT: stopped at once, without saving
            print(f"interrupted at once.{_checkpoint_note(snapshot)} Re-run the same command to resume.",
                  file=sys.stderr)  # fmt: skip
            sys.exit(EXIT_STATUS["SIGINT"])
        except (lts.NonFiniteError, run.StorageError, run.CheckpointError, run.SubRunsFailed) as e:
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(EXIT_STATUS["error"])
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
            sys.exit(EXIT_STATUS["error"])
        except Exception as e:
            unavailable = _simulator_unavailable(e)
            if unavailable is None:
                raise
            print(
                f"error: {unavailable}\nstopped: the simulator stayed unavailable after its retries."
                f"{_checkpoint_note(snapshot)} Start the servers and re-run the same command to resume.",
                file=sys.stderr,
            )
            sys.exit(EXIT_STATUS["simulator_unavailable"])

    return _main


def _simulator_unavailable(e: BaseException) -> str | None:
    """The message of the error behind ``e`` saying that a simulator stayed unavailable after its retries
    (``lts_jax.run.SimulatorUnavailable``, e.g. every CARLA server of a pool failed, raised directly or through the
    host bridge, whose text alone crosses it), or None."""
    seen, cause = set(), e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, SimulatorUnavailable):
            return str(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    marker = "NoCarlaServerError:"
    for line in str(e).splitlines():
        if marker in line:
            return line[line.rindex(marker) :].strip()  # JAX's text repeats the type before it
    return None

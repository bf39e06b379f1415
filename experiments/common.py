"""Flags shared by every experiment (DESIGN.md's names) and what they build.

Experiments import this module to define the shared flags, set their own
defaults with :func:`set_defaults`, and call :func:`validate_shared` first
thing in ``main`` so bad values exit with status 2 before any work. Then
:func:`prepare_workdir` checks the workdir against a run already there
(resume, extend, "already complete", or exit 2 listing differing flags),
:func:`run_options` gives ``run.run_search`` its run-management
arguments, and :func:`run_main` maps the outcomes to exit statuses.

The library names parameters in its messages (``overwrite=True``); flags are
named like the parameters, and :func:`user_message` renders a library error
with flags (``--overwrite``) for the user.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from absl import app, flags

from lts_jax import lts, parallel, run, search
from lts_jax.params import ParamSpec
from lts_jax.search import policy

SEARCHES = ("lts", "fixed", "random_params", "random_search")
# Flags that change how a run is managed, not what it computes: they may differ from a run's flags.txt.
RUN_MANAGEMENT_FLAGS = frozenset(
    {"workdir", "overwrite", "progress", "log_every", "checkpoint_every", "keep_checkpoints"}
)

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for flags.txt, metrics.jsonl, results.json and figures.")
SEED = flags.DEFINE_integer("seed", 0, "Base random seed of the run (policy, data, MTM initialisation).")
NUM_ITERATIONS = flags.DEFINE_integer("num_iterations", 100, "Policy iterations.")
NUM_CANDIDATES = flags.DEFINE_integer("num_candidates", 8, "K: psi samples (and MTMs trained) per iteration.")
DATASET_SIZE = flags.DEFINE_integer("dataset_size", 100, "M: examples generated per candidate per iteration.")
MTM_EPOCHS = flags.DEFINE_integer("mtm_epochs", 1, "xi: epochs of main task model training per iteration.")
RETAIN_MTM = flags.DEFINE_bool(
    "retain_mtm", False, "Also train an accumulated MTM (AMTM) on every iteration's data and report it."
)
SEARCH = flags.DEFINE_string(
    "search", "lts", f"Search strategy: {', '.join(SEARCHES)} (fixed uses the --init point every iteration)."
)
INIT = flags.DEFINE_string("init", "random", "Initial psi: zeros, random, or a preset name of the simulator.")
POLICY_LR = flags.DEFINE_float("policy_lr", 0.05, "Learning rate of the policy mean (optax).")
POLICY_OPTIMIZER = flags.DEFINE_string("policy_optimizer", "adam", "Policy optimiser: adam, sgd or rmsprop.")
POLICY_VARIANCE = flags.DEFINE_float("policy_variance", 0.05, "sigma^2 of the Gaussian policy (paper: 0.05).")
LEARN_VARIANCE = flags.DEFINE_bool("learn_variance", False, "Also learn log sigma of the policy.")
POLICY_GRAD_CLIP = flags.DEFINE_float(
    "policy_grad_clip", None, "Clip the policy gradient's global norm (off if unset)."
)
BASELINE_DECAY = flags.DEFINE_float("baseline_decay", 0.9, "EMA decay of the REINFORCE reward baseline, in [0, 1).")
TRAIN_STRATEGY = flags.DEFINE_string(
    "train_strategy", "auto", f"How the K MTM trainings run: {', '.join(parallel.STRATEGIES)}."
)
EVAL_STRATEGY = flags.DEFINE_string(
    "eval_strategy", "auto", f"How the K MTM evaluations run: {', '.join(parallel.STRATEGIES)}."
)
COMMON_SIM_KEY = flags.DEFINE_bool(
    "common_sim_key", False, "Sample the K candidates' data with one simulator key (common random numbers)."
)
VAL_SIZE = flags.DEFINE_integer("val_size", 200, "Validation examples drawn with the real / validation parameters.")
TEST_SIZE = flags.DEFINE_integer("test_size", 200, "Test examples drawn with the real / validation parameters.")
VAL_SEED = flags.DEFINE_integer("val_seed", 1001, "Seed of the validation set.")
TEST_SEED = flags.DEFINE_integer("test_seed", 2002, "Seed of the test set.")
MTM_LR = flags.DEFINE_float("mtm_lr", 1e-3, "Learning rate of the main task models.")
COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", ["float32", "bfloat16"], "MTM compute dtype (parameters stay float32)."
)
METHODS = flags.DEFINE_list("methods", [], "Methods to run (experiments comparing several; see their docstrings).")
TEST_EVERY = flags.DEFINE_integer("test_every", 0, "Evaluate on the test set every N iterations (0: only at the end).")
OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Remove the run in --workdir (metrics, checkpoints, results) and start over. Without it a re-run resumes an "
    "unfinished run, extends a finished one when --num_iterations is raised, or reports it complete.",
)
PROGRESS = flags.DEFINE_bool(
    "progress", True, "Show a progress line (live only when stderr is a terminal); --noprogress: none at all."
)
LOG_EVERY = flags.DEFINE_integer(
    "log_every", 10, "Without a terminal, print a progress line every N iterations (0: never)."
)
CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every",
    run.DEFAULT_CHECKPOINT_EVERY,
    "Save a checkpoint of the whole run state every N iterations (0: only at the end and when stopped).",
)
KEEP_CHECKPOINTS = flags.DEFINE_integer(
    "keep_checkpoints", run.DEFAULT_KEEP_CHECKPOINTS, "How many of the newest checkpoints to keep."
)


def set_defaults(**defaults: Any) -> None:
    """Per-experiment defaults of shared flags (call at import of the experiment)."""
    for name, value in defaults.items():
        flags.FLAGS.set_default(name, value)


def usage_error(message: str) -> app.UsageError:
    """An error that absl reports with usage and exit status 2."""
    return app.UsageError(message, exitcode=2)


def check(condition: bool, flag: str, value: Any, accepted: str) -> None:
    if not condition:
        raise usage_error(f"--{flag}={value} is out of range; accepted: {accepted}")


def validate_shared(searches: tuple[str, ...] = SEARCHES) -> None:
    """Checks the shared flags; raises a usage error (exit 2) naming the flag and its range."""
    if not WORKDIR.value:
        raise usage_error("--workdir is required (a directory for the run's outputs)")
    check(NUM_ITERATIONS.value >= 1, "num_iterations", NUM_ITERATIONS.value, "an integer >= 1")
    check(NUM_CANDIDATES.value >= 1, "num_candidates", NUM_CANDIDATES.value, "an integer >= 1")
    check(DATASET_SIZE.value >= 1, "dataset_size", DATASET_SIZE.value, "an integer >= 1")
    check(MTM_EPOCHS.value >= 0, "mtm_epochs", MTM_EPOCHS.value, "an integer >= 0")
    check(SEARCH.value in searches, "search", SEARCH.value, " | ".join(searches))
    check(POLICY_LR.value > 0, "policy_lr", POLICY_LR.value, "a float > 0")
    check(POLICY_VARIANCE.value > 0, "policy_variance", POLICY_VARIANCE.value, "a float > 0 (a variance)")
    check(
        POLICY_OPTIMIZER.value in ("adam", "sgd", "rmsprop"),
        "policy_optimizer",
        POLICY_OPTIMIZER.value,
        "adam | sgd | rmsprop",
    )
    check(
        POLICY_GRAD_CLIP.value is None or POLICY_GRAD_CLIP.value > 0,
        "policy_grad_clip",
        POLICY_GRAD_CLIP.value,
        "a float > 0, or unset",
    )
    check(0.0 <= BASELINE_DECAY.value < 1.0, "baseline_decay", BASELINE_DECAY.value, "a float in [0, 1)")
    check(TRAIN_STRATEGY.value in parallel.STRATEGIES, "train_strategy", TRAIN_STRATEGY.value, str(parallel.STRATEGIES))
    check(EVAL_STRATEGY.value in parallel.STRATEGIES, "eval_strategy", EVAL_STRATEGY.value, str(parallel.STRATEGIES))
    check(TEST_EVERY.value >= 0, "test_every", TEST_EVERY.value, "an integer >= 0")
    check(LOG_EVERY.value >= 0, "log_every", LOG_EVERY.value, "an integer >= 0")
    check(CHECKPOINT_EVERY.value >= 0, "checkpoint_every", CHECKPOINT_EVERY.value, "an integer >= 0")
    check(KEEP_CHECKPOINTS.value >= 1, "keep_checkpoints", KEEP_CHECKPOINTS.value, "an integer >= 1")


def validate_init(spec: ParamSpec) -> None:
    allowed = ("zeros", "random", *spec.preset_names)
    check(INIT.value in allowed, "init", INIT.value, " | ".join(allowed))


def lts_config(**overrides: Any) -> lts.LTSConfig:
    values = dict(
        num_candidates=NUM_CANDIDATES.value,
        dataset_size=DATASET_SIZE.value,
        mtm_epochs=MTM_EPOCHS.value,
        retain_mtm=RETAIN_MTM.value,
        train_strategy=TRAIN_STRATEGY.value,
        eval_strategy=EVAL_STRATEGY.value,
        common_sim_key=COMMON_SIM_KEY.value,
    )
    values.update(overrides)
    return lts.LTSConfig(**values)


def make_search(name: str, spec: ParamSpec) -> search.SearchStrategy:
    """The search strategy named by ``--search``, configured from the shared flags."""
    if name == "lts":
        return policy.GaussianPolicy(
            spec,
            variance=POLICY_VARIANCE.value,
            learn_variance=LEARN_VARIANCE.value,
            learning_rate=POLICY_LR.value,
            optimizer=POLICY_OPTIMIZER.value,
            grad_clip=POLICY_GRAD_CLIP.value,
            baseline_decay=BASELINE_DECAY.value,
        )
    if name == "fixed":
        return search.FixedSearch(spec)
    if name == "random_params":
        return search.RandomParams(spec)
    if name == "random_search":
        return search.RandomSearch(spec, variance=POLICY_VARIANCE.value)
    raise usage_error(f"--search={name} is not one of {SEARCHES}")


def shared_flag_values() -> dict[str, Any]:
    """All flags defined by experiment modules and this one, for flags.txt."""
    out = {}
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        # Run with -m, an experiment's own flags are registered under its file path.
        if module.startswith("experiments") or module == "__main__" or "/experiments/" in module:
            for f in module_flags:
                out[f.name] = f.value
    return out


def run_options() -> dict[str, Any]:
    """The run-management keyword arguments of ``run.run_search`` from the shared flags."""
    return dict(
        progress=PROGRESS.value,
        log_every=LOG_EVERY.value,
        checkpoint_every=CHECKPOINT_EVERY.value,
        keep_checkpoints=KEEP_CHECKPOINTS.value,
    )


def prepare_workdir(also_ignore: Iterable[str] = ()) -> Path:
    """``run.prepare_workdir`` with --workdir, --overwrite and the resolved flags (checked against the run
    already there, then written to flags.txt). Call after validation, before any work.

    RUN_MANAGEMENT_FLAGS and ``also_ignore`` (an experiment's flags that change only how fast it runs)
    may differ from the run's."""
    return run.prepare_workdir(
        WORKDIR.value,
        overwrite=OVERWRITE.value,
        config=shared_flag_values(),
        ignore=RUN_MANAGEMENT_FLAGS | set(also_ignore),
    )


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


def run_main(main_fn: Callable[[], Any]) -> Callable[[list[str]], None]:
    """Wraps an experiment's main: turns library errors into clear exits.

    Exit status:
      0: done, or the workdir already holds this finished run (RunComplete; nothing touched).
      1: a non-finite value (names the iteration), or a file could not be written
         (StorageError, CheckpointError, OSError; the message names the path), or sub-runs failed
         (SubRunsFailed; the others finished).
      2: configuration problems (WorkdirError: flags differ from the run in the
         workdir, unusable workdir), and flag validation (usage errors).
      128 + signal (130 SIGINT, 143 SIGTERM): stopped by a signal after saving a
         checkpoint; re-running the same command resumes.
    """

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
        run.checkpoint.quiet_orbax_logs()
        try:
            main_fn()
        except run.RunComplete as e:
            print(f"already complete: {user_message(e)}", file=sys.stderr)
            sys.exit(0)
        except run.Interrupted as e:
            print(f"interrupted: {user_message(e)}. Re-run the same command to resume.", file=sys.stderr)
            sys.exit(128 + e.signum if e.signum else 1)
        except run.WorkdirError as e:
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(2)
        except (lts.NonFiniteError, run.StorageError, run.CheckpointError, run.SubRunsFailed) as e:
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
            sys.exit(1)

    return _main


def describe_flags(values: Mapping[str, Any]) -> str:
    return " ".join(f"--{k}={v}" for k, v in sorted(values.items()))

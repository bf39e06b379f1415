"""What the segmentation experiments share (paper sections 4.4 and 4.5): the MTM, its pretraining, the step.

Flags (any experiment importing this module gets them): ``--model --fcn_width --batch_size
--eval_batch_size --mtm_lr --mtm_optimizer --augment --jitter --compute_dtype --init_checkpoint
--pretrain_images --pretrain_psi --pretrain_lr --common_train_key --run_dir``.

Each experiment runs several methods (searches) with the same main task model. Every method is one
``run.run_search`` run in its own directory ``RUN_DIR/<method>/`` (metrics.jsonl, TensorBoard
events, checkpoints, ``best_params.msgpack``); the experiment's ``--workdir`` holds the summary:
flags.txt, results.json and the paper's figure. ``--run_dir`` defaults to ``--workdir``; point it
elsewhere when only the summary should travel (a GPU batch job whose output folder is copied back).

How the methods share compiled programs. The renderer is compiled once (the simulator's render_batches),
and :func:`make_step` is ``lts.make_split_step`` (the split iteration) keeping the best MTM of the run
(keep_best_mtm: its params, the validation reward that chose it, its iteration), so the training +
validation program is compiled once per (task, K, M, xi) and shared by every method; only the search's
tiny ask/tell programs are per method. Pretraining and the "real" method share one more training program
(one MTM, M images, xi epochs).

Pretraining (``--pretrain_images`` > 0). Trained from scratch on a few dozen images, an MTM's car IoU on
real images is close to noise at CPU scale, so every MTM (all methods, all candidates) starts from ONE
model pretrained on ``--pretrain_images`` images rendered with ``--pretrain_psi`` (the neutral "default"
preset: uniform categoricals, p = 0.5; no method's answer). Algorithm 1's candidates then fine-tune it
for xi epochs on their own data, so rewards measure what each psi's data adds. ``--init_checkpoint``
replaces the pretraining by a file of parameters (lts_jax.tasks.segmentation.save_params).

Fine-tuning rate. Candidates start with a fresh Adam state, whose first steps move every weight by about
the learning rate; at the pretraining rate that perturbation costs more validation IoU than any psi adds
and drowns the reward in noise. Measured on 2 CPU cores (fcn_small, 48x160, 4 fine-tuning steps from a
model pretrained at 3e-3; differences to neutral-psi data, 4 seeds of common random numbers): at 3e-3 the
noise was +-0.01-0.04 and "more cars" flipped sign between rates; at 3e-4 (``--mtm_lr``, a tenth of
``--pretrain_lr``) noise fell to +-0.001-0.01 and "fewer houses" gave a consistent +0.027 +- 0.003.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import common, traffic_common
from lts_jax import lts, run
from lts_jax.models.segmentation import MODELS
from lts_jax.optim import OPTIMIZERS, make_optimizer
from lts_jax.simulator import SceneSimulator
from lts_jax.tasks import segmentation as seg
from lts_jax.tasks.trainer import TrainState

DTYPES = ("float32", "bfloat16")
BEST_PARAMS = "best_params.msgpack"
PRETRAINED = "pretrained.msgpack"

MODEL = flags.DEFINE_enum("model", "fcn_small", list(MODELS), "Segmentation MTM: fcn_small (CPU), resnet18, resnet50.")
FCN_WIDTH = flags.DEFINE_integer("fcn_width", 16, "Channels of fcn_small's first level (x2, x4 deeper).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "MTM training minibatch (capped at the data set size).")
EVAL_BATCH_SIZE = flags.DEFINE_integer("eval_batch_size", 0, "Images per evaluation chunk (0: --batch_size).")
MTM_LR = common.MTM_LR  # the K candidates (fine-tuning) and the real method
PRETRAIN_LR = flags.DEFINE_float("pretrain_lr", 0.0, "Learning rate of the pretraining (0: --mtm_lr).")
MTM_OPTIMIZER = flags.DEFINE_enum("mtm_optimizer", "adam", list(OPTIMIZERS), "Optimiser of the MTM.")
AUGMENT = flags.DEFINE_bool("augment", True, "Random horizontal flips and colour jitter of training batches.")
JITTER = flags.DEFINE_float("jitter", 0.2, "Colour jitter strength (brightness/contrast/saturation), in [0, 1).")
COMPUTE_DTYPE = common.COMPUTE_DTYPE  # bfloat16 on GPUs
INIT_CHECKPOINT = flags.DEFINE_string(
    "init_checkpoint", None, "Parameters (save_params file) every MTM starts from; replaces --pretrain_images."
)
PRETRAIN_IMAGES = flags.DEFINE_integer(
    "pretrain_images",
    0,
    "Pretrain the common starting MTM on this many simulated images (rendered M at a time, xi epochs each); "
    "0: every MTM starts from a random init.",
)
PRETRAIN_PSI = flags.DEFINE_string("pretrain_psi", "default", "psi of the pretraining images: a preset or zeros.")
COMMON_TRAIN_KEY = flags.DEFINE_bool(
    "common_train_key",
    True,
    "The K candidates of an iteration shuffle and augment alike (common random numbers: with --common_sim_key "
    "and a common init, their rewards then differ only through psi).",
)
RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Where the per-method runs go (metrics, checkpoints, best params); default: --workdir."
)


# ----- configuration ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MTMConfig:
    """The segmentation MTM and how it is trained (everything but K, M and xi)."""

    model: str = "fcn_small"
    fcn_width: int = 16
    batch_size: int = 16
    eval_batch_size: int = 0
    learning_rate: float = 3e-4
    optimizer: str = "adam"
    augment: bool = True
    jitter: float = 0.2
    compute_dtype: str = "float32"
    init_checkpoint: str | None = None
    pretrain_images: int = 0
    pretrain_psi: str = "default"
    pretrain_lr: float = 0.0  # 0: learning_rate


def mtm_config_from_flags() -> MTMConfig:
    return MTMConfig(
        model=MODEL.value,
        fcn_width=FCN_WIDTH.value,
        batch_size=BATCH_SIZE.value,
        eval_batch_size=EVAL_BATCH_SIZE.value,
        learning_rate=MTM_LR.value,
        optimizer=MTM_OPTIMIZER.value,
        augment=AUGMENT.value,
        jitter=JITTER.value,
        compute_dtype=COMPUTE_DTYPE.value,
        init_checkpoint=INIT_CHECKPOINT.value,
        pretrain_images=PRETRAIN_IMAGES.value,
        pretrain_psi=PRETRAIN_PSI.value,
        pretrain_lr=PRETRAIN_LR.value,
    )


def validate_flags(spec) -> None:
    """The shared, traffic and segmentation flags, before any work (exit 2 naming the flag)."""
    common.validate_shared()
    traffic_common.validate()
    common.validate_init(spec)
    common.check(FCN_WIDTH.value >= 1, "fcn_width", FCN_WIDTH.value, "an integer >= 1")
    common.check(BATCH_SIZE.value >= 1, "batch_size", BATCH_SIZE.value, "an integer >= 1")
    common.check(EVAL_BATCH_SIZE.value >= 0, "eval_batch_size", EVAL_BATCH_SIZE.value, "an integer >= 0")
    common.check(MTM_LR.value > 0, "mtm_lr", MTM_LR.value, "a float > 0")
    common.check(PRETRAIN_LR.value >= 0, "pretrain_lr", PRETRAIN_LR.value, "a float >= 0 (0: --mtm_lr)")
    common.check(0.0 <= JITTER.value < 1.0, "jitter", JITTER.value, "a float in [0, 1)")
    common.check(PRETRAIN_IMAGES.value >= 0, "pretrain_images", PRETRAIN_IMAGES.value, "an integer >= 0")
    allowed = ("zeros", *spec.preset_names)
    common.check(PRETRAIN_PSI.value in allowed, "pretrain_psi", PRETRAIN_PSI.value, " | ".join(allowed))
    if INIT_CHECKPOINT.value and not os.path.isfile(INIT_CHECKPOINT.value):
        raise common.usage_error(f"--init_checkpoint={INIT_CHECKPOINT.value}: no such file")
    common.check(common.MTM_EPOCHS.value >= 1, "mtm_epochs", common.MTM_EPOCHS.value, "an integer >= 1")
    # The segmentation experiments keep each run's best MTM (Table 1's protocol); --methods, not --search,
    # picks what runs.
    common.check(not common.RETAIN_MTM.value, "retain_mtm", common.RETAIN_MTM.value, "false (not supported here)")


def make_task(
    cfg: MTMConfig, height: int, width: int, init_checkpoint: str | None = None, *, pretraining: bool = False
) -> seg.SegmentationTask:
    """The segmentation MTM; ``init_checkpoint`` (a save_params file) is where every MTM starts.

    ``pretraining``: the states it initialises train at the pretraining rate (``cfg.pretrain_lr``).
    """
    lr = (cfg.pretrain_lr or cfg.learning_rate) if pretraining else cfg.learning_rate
    return seg.SegmentationTask(
        cfg.model,
        height,
        width,
        batch_size=cfg.batch_size,
        # The rate lives in the optimiser state, so pretraining and fine-tuning at different rates share one
        # compiled training program.
        optimizer=make_optimizer(cfg.optimizer, lr, learning_rate_in_state=True),
        augment=cfg.augment,
        jitter=cfg.jitter,
        eval_batch_size=cfg.eval_batch_size or None,
        init_checkpoint=init_checkpoint,
        compute_dtype=cfg.compute_dtype,
        model_kwargs={"width": cfg.fcn_width} if cfg.model == "fcn_small" else None,
    )


def describe_mtm(cfg: MTMConfig, K: int, M: int, xi: int) -> str:
    """One line for the startup log: the MTM, the per-iteration budget and where MTMs start."""
    if cfg.init_checkpoint:
        start = f"start: {cfg.init_checkpoint}"
    elif cfg.pretrain_images:
        lr = cfg.pretrain_lr or cfg.learning_rate
        start = f"start: pretrained on {cfg.pretrain_images} simulated images (lr {lr})"
    else:
        start = "start: random init"
    return (
        f"{cfg.model} ({cfg.compute_dtype}, {cfg.optimizer} lr {cfg.learning_rate}, batch {cfg.batch_size}); "
        f"per iteration K={K} MTMs x M={M} images x xi={xi} epochs; {start}"
    )


def run_dir(workdir: Path) -> Path:
    return Path(RUN_DIR.value) if RUN_DIR.value else Path(workdir)


# ----- compiled pieces -------------------------------------------------------------------------------------
def params_state(params: Any) -> TrainState:
    """A TrainState holding only ``params`` (what evaluation reads)."""
    return TrainState(params=params, opt_state=(), step=jnp.zeros((), jnp.int32), train_loss=jnp.zeros(()))


@dataclasses.dataclass
class Pieces:
    """The compiled functions outside the search step, shared by pretraining, the real method and evaluation.

    ``train(state, data [M], key)``: xi epochs of one MTM; ``evaluate(params, data)``: the task's metrics.
    """

    task: seg.SegmentationTask
    epochs: int
    train: Callable = None
    evaluate: Callable = None

    def __post_init__(self):
        task, xi = self.task, self.epochs
        self.train = jax.jit(lambda s, d, k: task.train(s, d, k, xi))
        self.evaluate = jax.jit(lambda p, d: task.evaluate(params_state(p), d))

    def metrics(self, params: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        """JSON-ready metrics of ``params`` on ``data`` (car_iou, mean_iou, loss, class_iou by name)."""
        out = lts.to_host(self.evaluate(params, arrays(data)))
        out["class_iou"] = dict(zip(seg.CLASS_NAMES, out["class_iou"]))
        return out


def arrays(data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"image", "label"}`` of a data set (drops names and other entries before they reach jit)."""
    return {k: data[k] for k in seg.SegmentationTask.data_keys}


def best_params(state: TrainState) -> Any:
    """What a run keeps of its best MTM: the params (a third of the state; all evaluation and
    save_params need)."""
    return state.params


def init_state(config: lts.LTSConfig, task: seg.SegmentationTask, search: Any, key: jax.Array, psi0) -> lts.LTSState:
    """The state of a search run: the search's state and the best MTM so far (its params only)."""
    return lts.init_state(config, task, search, key, psi0, best_fn=best_params)


def make_step(
    config: lts.LTSConfig,
    sim: SceneSimulator,
    task: seg.SegmentationTask,
    search: Any,
    programs: lts.Programs,
) -> Callable[..., tuple[lts.LTSState, dict[str, jax.Array]]]:
    """One iteration of Algorithm 1 as cached pieces that keeps the best MTM's params.

    ``lts.make_split_step`` with ``keep_best_mtm`` (required here) and ``best_fn`` = :func:`best_params`.
    ``config.common_train_key`` makes the K candidates train with one key (the same minibatch order
    and augmentation): on a 10-image validation set that noise is as large as the effect of psi.
    """
    if config.retain_mtm or not config.keep_best_mtm:
        raise ValueError("the segmentation experiments keep the best MTM, not an AMTM: set keep_best_mtm only")
    return lts.make_split_step(config, sim, task, search, programs=programs, best_fn=best_params)


def pretrain(
    pieces: Pieces,
    sim: SceneSimulator,
    psi,
    num_images: int,
    chunk: int,
    key: jax.Array,
    log: Callable[[str], None] = print,
    init_task: seg.SegmentationTask | None = None,
) -> tuple[TrainState, float | None]:
    """One MTM trained from scratch on ``num_images`` simulated images from ``psi``.

    Rendered ``chunk`` (= M) fresh images at a time, each chunk trained on for ``pieces.epochs`` epochs,
    so the compiled training program is the one the real method uses. ``init_task`` (default: the pieces'
    task) makes the initial state, i.e. sets the learning rate. Returns (state, image-passes per second
    after the first round, i.e. without compilation; None with a single round).
    """
    k_init, k_run = jax.random.split(key)
    state = (init_task or pieces.task).init(k_init)
    rounds = max(1, math.ceil(num_images / chunk))
    t0 = t1 = time.perf_counter()
    for r in range(rounds):
        k_data, k_train = jax.random.split(jax.random.fold_in(k_run, r))
        data = sim.sample_dataset(k_data, psi, chunk)
        state = pieces.train(state, arrays(data), k_train)
        if r == 0 or (r + 1) % max(1, rounds // 4) == 0 or r + 1 == rounds:
            loss = float(state.train_loss)
            if not math.isfinite(loss):
                raise lts.NonFiniteError(f"pretraining round {r}: non-finite training loss {loss} (lower --mtm_lr)")
            elapsed = time.perf_counter() - t0
            log(f"  pretraining {r + 1}/{rounds} rounds of {chunk} images: loss {loss:.3f}  ({elapsed:.0f} s)")
        if r == 0:
            t1 = time.perf_counter()
    rate = (rounds - 1) * chunk * pieces.epochs / (time.perf_counter() - t1) if rounds > 1 else None
    return state, rate


def make_real_step(pieces: Pieces, train_data: Mapping[str, Any], num: int) -> Callable:
    """One iteration of training ONE MTM on real images (the "real" row of Table 1), keeping the best.

    Each iteration draws ``num`` (= M) images with replacement from ``train_data`` and trains the
    continuing MTM (``state.amtm``) for xi epochs on them (the same budget as one candidate of the search
    methods), then evaluates it on the validation data; ``state.best_mtm`` keeps the params with the best
    validation reward. Metrics mirror a search step (rewards [1], reward_mean, reward_max, best_reward).
    """
    train_data = {k: jnp.asarray(v) for k, v in arrays(train_data).items()}
    n = int(train_data["image"].shape[0])

    @jax.jit
    def draw(key, data):
        idx = jax.random.randint(key, (num,), 0, n)
        return jax.tree_util.tree_map(lambda x: x[idx], data)

    @jax.jit
    def keep(state, params, reward):
        better = reward > state.best_mtm_reward
        return state.replace(
            best_mtm=jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), params, state.best_mtm),
            best_mtm_reward=jnp.where(better, reward, state.best_mtm_reward),
            best_mtm_iteration=jnp.where(better, state.iteration, state.best_mtm_iteration),
        )

    def step(state: lts.LTSState, key: jax.Array, val_data, test_data=None):
        del test_data
        k_draw, k_train = jax.random.split(key)
        amtm = pieces.train(state.amtm, draw(k_draw, train_data), k_train)
        val = pieces.evaluate(amtm.params, val_data)
        state = keep(state, amtm.params, val["reward"]).replace(amtm=amtm)
        r = val["reward"]
        metrics = {
            "rewards": r[None],
            "reward_mean": r,
            "reward_max": r,
            "best_reward": state.best_mtm_reward,
            "best_mtm_iteration": state.best_mtm_iteration,
            "train_loss": amtm.train_loss,
            **{f"val_{k}": v for k, v in val.items() if k != "class_iou"},
        }
        return state.replace(iteration=state.iteration + 1), metrics

    return step


def init_real_state(task: seg.SegmentationTask, key: jax.Array) -> lts.LTSState:
    mtm = task.init(key)
    return lts.LTSState(
        iteration=jnp.zeros((), jnp.int32),
        search=None,
        amtm=mtm,
        best_mtm=mtm.params,
        best_mtm_reward=jnp.array(-jnp.inf, jnp.float32),
        best_mtm_iteration=jnp.array(-1, jnp.int32),
    )


# ----- runs ------------------------------------------------------------------------------------------------
def prepare_method_dir(path: Path, overwrite: bool, flag_values: Mapping[str, Any] | None) -> Path:
    """A method's run directory: checked against its flags.txt like the workdir (resume, mismatch)."""
    path = Path(path)
    if overwrite and path.is_dir():
        (path / BEST_PARAMS).unlink(missing_ok=True)
    return run.prepare_workdir(path, overwrite=overwrite, config=flag_values, ignore=common.RUN_MANAGEMENT_FLAGS)


def run_method(
    name: str,
    step: Callable,
    state: lts.LTSState,
    key: jax.Array,
    num_iterations: int,
    val_data: Mapping[str, Any],
    method_dir: Path,
    spec,
    run_options: Mapping[str, Any],
) -> tuple[lts.LTSState, list[dict[str, Any]]]:
    """Runs one method with run.run_search (resumable) and saves its best MTM's params."""
    del name
    state, history = run.run_search(
        step,
        state,
        key,
        num_iterations,
        {k: jnp.asarray(v) for k, v in arrays(val_data).items()},  # on the device once, not per iteration
        workdir=method_dir,
        spec=spec,
        **run_options,
    )
    seg.save_params(method_dir / BEST_PARAMS, jax.device_get(state.best_mtm))
    return state, history


def curves(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per-iteration reward curves of a run (JSON-ready): mean and max over the K candidates, best so far."""
    return {k: [float(h[k]) for h in history] for k in ("reward_mean", "reward_max", "best_reward")}


def fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table: one row per method, ``columns`` = (header, key) pairs; floats with 3 decimals."""
    headers = ["method", *(h for h, _ in columns)]
    body = []
    for name, row in rows.items():
        cells = [name]
        for _, k in columns:
            v = row.get(k)
            cells.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        body.append(cells)
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [headers, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# ----- the methods of an experiment ------------------------------------------------------------------------
def evaluate_splits(pieces: Pieces, params: Any, data: Mapping[str, Mapping]) -> dict[str, Any]:
    """car IoU, mean IoU and per-class IoU of ``params`` on the "val" and "test" entries of ``data``."""
    out: dict[str, Any] = {}
    for part in ("val", "test"):
        if part in data:
            m = pieces.metrics(params, data[part])
            out[f"{part}_car_iou"], out[f"{part}_mean_iou"] = m["car_iou"], m["mean_iou"]
            out[f"{part}_class_iou"] = m["class_iou"]
    return out


@dataclasses.dataclass
class Outcome:
    """What the methods of one experiment produced (JSON-ready except ``psi``)."""

    rows: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method -> metrics of its best MTM
    curves: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    checkpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    psi: dict[str, Any] = dataclasses.field(default_factory=dict)  # method -> the search's answer [dim]
    timing: dict[str, float] = dataclasses.field(default_factory=dict)


def starting_point(
    mtm_cfg: MTMConfig,
    pieces: Pieces,
    sim: SceneSimulator,
    spec,
    chunk: int,
    key: jax.Array,
    run_dir: Path,
    *,
    overwrite: bool,
    outcome: Outcome,
    work: int,
    log: Callable[[str], None] = print,
) -> str | None:
    """The checkpoint every MTM starts from: --init_checkpoint, the pretrained model (made or reused), or None.

    ``work``: image-passes the methods will train (for the time estimate printed after pretraining).
    """
    if mtm_cfg.init_checkpoint or not mtm_cfg.pretrain_images:
        return mtm_cfg.init_checkpoint
    path = Path(run_dir) / PRETRAINED
    if overwrite:
        path.unlink(missing_ok=True)
    if path.exists():
        log(f"  reusing the pretrained MTM {path}")
        return str(path)
    t0 = time.perf_counter()
    n = mtm_cfg.pretrain_images
    log(f"pretraining the starting MTM on {n} simulated images (psi: {mtm_cfg.pretrain_psi}) ...")
    init_task = make_task(mtm_cfg, pieces.task.height, pieces.task.width, pretraining=True)
    state, rate = pretrain(pieces, sim, spec.initial(mtm_cfg.pretrain_psi), n, chunk, key, log, init_task)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    seg.save_params(path, jax.device_get(state.params))
    outcome.timing["pretrain_s"] = time.perf_counter() - t0
    log(f"  pretraining took {fmt_time(outcome.timing['pretrain_s'])} (compilation included)")
    if rate:
        log(
            f"  MTM training runs at {rate:,.0f} image-passes/s here: the methods need about "
            f"{fmt_time(work / rate)} of training, plus rendering, validation and compilation"
        )
    return str(path)


def run_methods(
    methods: Sequence[str],
    build: Callable[[str], tuple[Callable, lts.LTSState, Any]],
    key: jax.Array,
    num_iterations: int,
    data: Mapping[str, Mapping],
    pieces: Pieces,
    spec,
    run_dir: Path,
    *,
    run_options: Mapping[str, Any],
    flag_values: Mapping[str, Any] | None,
    overwrite: bool,
    outcome: Outcome,
    partial_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> Outcome:
    """Runs each method in ``RUN_DIR/<method>/`` and evaluates its best MTM on data["val"] and data["test"].

    ``build(method) -> (step, initial state, search strategy or None)``. Every method runs with the same
    base ``key`` (common random numbers: the same MTM initialisations and scene keys per iteration).
    After each method the tables so far go to ``partial_path`` (if given), so a job killed by its time
    limit still leaves the finished methods' numbers behind.
    """
    for method in methods:
        t0 = time.perf_counter()
        method_dir = Path(run_dir) / method
        prepare_method_dir(method_dir, overwrite, flag_values)
        log(f"[{method}] {num_iterations} iterations -> {method_dir}")
        step, state, strategy = build(method)
        state, history = run_method(method, step, state, key, num_iterations, data["val"], method_dir, spec,
                                    run_options)  # fmt: skip
        row = evaluate_splits(pieces, state.best_mtm, data)
        row["best_iteration"] = int(state.best_mtm_iteration)
        row["best_val_reward_logged"] = float(state.best_mtm_reward)
        outcome.rows[method] = row
        outcome.curves[method] = curves(history)
        outcome.checkpoints[method] = str((method_dir / BEST_PARAMS).resolve())
        if strategy is not None:
            outcome.psi[method] = jax.device_get(strategy.center(state.search))
        outcome.timing[f"{method}_s"] = time.perf_counter() - t0
        log(
            f"[{method}] done in {fmt_time(outcome.timing[f'{method}_s'])}: best val car IoU {row['val_car_iou']:.3f} "
            f"(iteration {row['best_iteration']}), test car IoU {row.get('test_car_iou', float('nan')):.3f}"
        )
        if partial_path is not None:
            run.write_json(partial_path, {**metric_tables(outcome.rows), "timing": outcome.timing})
    return outcome


def metric_tables(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"val_car_iou": {method: ...}, "val_mean_iou", "test_car_iou", "test_mean_iou", "best_iteration",
    "class_iou"}`` for results.json."""
    out: dict[str, Any] = {
        f"{part}_{metric}": {m: r.get(f"{part}_{metric}") for m, r in rows.items()}
        for part in ("val", "test")
        for metric in ("car_iou", "mean_iou")
    }
    out["best_iteration"] = {m: r["best_iteration"] for m, r in rows.items() if "best_iteration" in r}
    out["class_iou"] = {m: {p: r.get(f"{p}_class_iou") for p in ("val", "test")} for m, r in rows.items()}
    return out


def late_mean_reward(curves_by_method: Mapping[str, Mapping[str, Sequence[float]]], fraction: float = 0.2):
    """{method: mean over the last ``fraction`` of iterations of the per-iteration mean reward}.

    A steadier summary than the best-of-run MTM (a maximum over many noisy candidates): what the
    method's data sets are worth on average once it has had time to learn.
    """
    out = {}
    for m, c in curves_by_method.items():
        values = c["reward_mean"]
        if values:
            n = max(1, int(round(len(values) * fraction)))
            out[m] = float(np.mean(values[-n:]))
    return out

"""The segmentation experiments' one pipeline (paper sections 4.4 and 4.5), with the data source injected.

    results = train_and_evaluate(cfg, workdir, kitti_seg.EXPERIMENT)     # an Experiment: name, source, figure

synth_seg and kitti_seg (each an :class:`Experiment`) differ in the methods they offer, their figure and
table, and where the images that judge the MTMs come from, a :class:`DataSource`: :class:`SimulatedSource`
renders validation and test images with a preset psi of the simulator (psi_val), :class:`RealSource` loads a
real data set of ``lts_jax.data.real`` (KITTI, CamVid) split, cropped and sized as its description says.
A source's ``load(sim)`` returns ``{"val", "test"[, "train"]}`` data sets (``{"image": uint8 [N, H, W, 3],
"label": uint8 [N, H, W], "names"?}``, at the simulator's image size): "val" is the reward, "test" the final
evaluation of each method's best MTM, "train" the images of the "real" method. Another real data set is one
more entry of ``lts_jax.data.real.DATASETS``.

Methods (``cfg.methods``), all for ``num_iterations`` iterations of the same K, M, xi, MTM and start:
  lts, random_params, random_search, fixed   a search strategy over the simulator (experiments.lib.common);
  val_params   a fixed search at the source's own psi (a source that renders, ``source.psi``);
  default_psi  a fixed search at the simulator's neutral "default" preset: the same fine-tuning budget with no
               search (what a search must beat);
  real         ONE MTM trained on the source's "train" images: per iteration xi epochs on M images drawn from
               them (what one candidate of the other methods gets), continuing across iterations.
For every method the MTM with the best validation reward of the run is kept ("we test the epoch with highest
validation reward"), evaluated on val and test and saved (RUN_DIR/<method>/best_params.msgpack). That model
is a maximum over N x K noisy candidates on a small validation set, so two steadier numbers go beside it:
the late mean reward (``late_mean_reward``: the mean reward of the last 20% of iterations) and, with
``fresh_images`` > 0, a FRESH MTM fine-tuned from the same start on ``fresh_images`` images of the method's
final psi and selected by nothing (:func:`fresh_models`; sub-runs RUN_DIR/fresh_<method>/; results.json's
``fresh_val_car_iou``, ``fresh_test_car_iou``, ...). With ``learn_rendering`` the learned camera and the other
rendering settings, in physical units, are results.json's ``rendering_by_method``.

Each method is a sub-run of ``run.MultiRun`` in ``RUN_DIR/<method>/`` (metrics.jsonl, TensorBoard events,
checkpoints, best_params.msgpack, subrun.json); the workdir holds flags.txt, results.json and the figure, and
results_partial.json (the finished methods' tables, rewritten after each) while the run goes on. RUN_DIR is
``cfg.run_dir`` (default: the workdir); point it elsewhere when only the summary should travel. Re-running
reuses the finished methods (same configuration), resumes an unfinished one and refuses another
configuration before any work; a failing method is recorded, the others go on, and results.json is written
only when every method finished (SubRunsFailed otherwise).

How the methods share compiled programs. The renderer is compiled once (the simulator's render_batches),
and :func:`make_step` is ``lts.make_split_step`` (the split iteration) keeping the best MTM of the run
(keep_best_mtm: its params, the validation reward that chose it, its iteration), so the training +
validation program is compiled once per (task, K, M, xi) and shared by every method; only the search's
tiny ask/tell programs are per method. Pretraining and the "real" method share one more training program
(one MTM, M images, xi epochs).

Pretraining (``pretrain_images`` > 0). Trained from scratch on a few dozen images, an MTM's car IoU on
real images is close to noise at CPU scale, so every MTM (all methods, all candidates) starts from ONE
model pretrained on ``pretrain_images`` images rendered with ``pretrain_psi`` (the neutral "default"
preset: uniform categoricals, p = 0.5; no method's answer), reported as the row "pretrained". Algorithm 1's
candidates then fine-tune it for xi epochs on their own data, so rewards measure what each psi's data adds.
``init_checkpoint`` replaces the pretraining by a file of parameters (lts_jax.tasks.segmentation.save_params).
The pretraining checkpoints like a search (RUN_DIR/pretraining/, every ``checkpoint_every`` rounds of M images
and when SIGINT/SIGTERM stops it after the round in progress: exit 130/143), and re-running the command
continues it; once RUN_DIR/pretrained.msgpack is written the checkpoints go.

Fine-tuning rate. Candidates start with a fresh Adam state, whose first steps move every weight by about
the learning rate; at the pretraining rate that perturbation costs more validation IoU than any psi adds
and drowns the reward in noise. Measured on 2 CPU cores (fcn_small, 48x160, 4 fine-tuning steps from a
model pretrained at 3e-3; differences to neutral-psi data, 4 seeds of common random numbers): at 3e-3 the
noise was +-0.01-0.04 and "more cars" flipped sign between rates; at 3e-4 (``mtm_lr``, a tenth of
``pretrain_lr``) noise fell to +-0.001-0.01 and "fewer houses" gave a consistent +0.027 +- 0.003.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from experiments.lib import common, traffic
from lts_jax import lts, run, search
from lts_jax.data import real
from lts_jax.models.segmentation import MODELS
from lts_jax.optim import OPTIMIZERS, make_optimizer
from lts_jax.simulator import SceneSimulator
from lts_jax.tasks import segmentation as seg
from lts_jax.tasks.trainer import TrainState

DTYPES = ("float32", "bfloat16")
BEST_PARAMS = "best_params.msgpack"
PRETRAINED = "pretrained.msgpack"
PRETRAINING = "pretraining"  # RUN_DIR/pretraining/<rounds done>/: checkpoints of an unfinished pretraining
PARTIAL = "results_partial.json"  # the finished methods' tables while the run goes on
FRESH_PARAMS = "fresh_params.msgpack"  # RUN_DIR/fresh_<method>/: the fresh MTM of a method's final psi
FRESH_STREAM = 14  # the fresh MTMs' key: fold_in(the seed's key, FRESH_STREAM), the same for every method
SEARCH_METHODS = ("lts", "random_params", "random_search")  # the first present gives results.json's "psi"
# Settings a method's sub-run may differ in from its stored ones: how runs are managed, how fast they go, and
# which other methods run beside it.
METHOD_IGNORE = common.RUN_MANAGEMENT | traffic.SPEED_ONLY | {"methods", "fresh_images"}


# ----- configuration ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class SegConfig(traffic.TrafficConfig):
    """A segmentation experiment: the shared and traffic settings (with these experiments' defaults), the
    methods, the MTM and how it is trained (everything but K, M and xi)."""

    methods: tuple[str, ...] = ("lts",)
    model: str = "fcn_small"
    fcn_width: int = 16
    batch_size: int = 16
    eval_batch_size: int = 0
    mtm_lr: float = 3e-4
    pretrain_lr: float = 0.0
    mtm_optimizer: str = "adam"
    augment: bool = True
    jitter: float = 0.2
    compute_dtype: str = "float32"
    init_checkpoint: str | None = None
    pretrain_images: int = 0
    pretrain_psi: str = "default"
    common_train_key: bool = True
    run_dir: str | None = None
    # rendering parameters in psi (simulators/traffic/scene.py): () none, ("all",) or the named blocks
    learn_rendering: tuple[str, ...] = ()
    # after the search: a fresh MTM fine-tuned from the start on this many images of each method's final psi
    # (0: none), tested on val and test (an evaluation that no validation reward selected)
    fresh_images: int = 0
    # shared settings, these experiments' defaults
    num_iterations: int = 10
    num_candidates: int = 4
    dataset_size: int = 16
    mtm_epochs: int = 2
    init: str = "default"
    policy_lr: float = 0.1
    policy_variance: float = 0.1
    common_sim_key: bool = True
    log_every: int = 5


@dataclasses.dataclass(frozen=True)
class MTMConfig:
    """The segmentation MTM and how it is trained: a SegConfig's MTM settings (results.json: ``mtm_*``)."""

    model: str
    fcn_width: int
    batch_size: int
    eval_batch_size: int
    learning_rate: float
    optimizer: str
    augment: bool
    jitter: float
    compute_dtype: str
    init_checkpoint: str | None
    pretrain_images: int
    pretrain_psi: str
    pretrain_lr: float  # 0: learning_rate

    # MTMConfig field -> SegConfig field, where the names differ
    RENAMED = {"learning_rate": "mtm_lr", "optimizer": "mtm_optimizer"}

    @classmethod
    def of(cls, cfg: SegConfig) -> MTMConfig:
        return cls(**{f.name: getattr(cfg, cls.RENAMED.get(f.name, f.name)) for f in dataclasses.fields(cls)})

    @classmethod
    def from_results(cls, config: Mapping[str, Any]) -> MTMConfig:
        """From results.json's "config" (its ``mtm_*`` entries; SegConfig's defaults for any it lacks)."""
        default = cls.of(SegConfig())
        return cls(**{f.name: config.get(f"mtm_{f.name}", getattr(default, f.name)) for f in dataclasses.fields(cls)})


def validate(cfg: SegConfig, methods: Sequence[str]) -> None:
    """The shared, traffic and segmentation settings, before any work; ``methods``: what the experiment offers."""
    common.validate_search(cfg)
    traffic.validate_traffic(cfg)
    spec = traffic.spec_of(cfg)
    common.validate_init(cfg, common.init_names(spec))
    ms = list(cfg.methods)
    if not ms or len(set(ms)) != len(ms) or any(m not in methods for m in ms):
        raise common.ConfigError(
            lambda p: f"{p('methods', ','.join(ms))}: give distinct methods of {', '.join(methods)}"
        )
    common.check(cfg.model in MODELS, "model", cfg.model, " | ".join(MODELS))
    common.check(cfg.fcn_width >= 1, "fcn_width", cfg.fcn_width, "an integer >= 1")
    common.check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
    common.check(cfg.eval_batch_size >= 0, "eval_batch_size", cfg.eval_batch_size, "an integer >= 0")
    common.check(cfg.mtm_lr > 0, "mtm_lr", cfg.mtm_lr, "a float > 0")
    common.check(cfg.pretrain_lr >= 0, "pretrain_lr", cfg.pretrain_lr, "a float >= 0 (0: mtm_lr)")
    common.check(cfg.mtm_optimizer in OPTIMIZERS, "mtm_optimizer", cfg.mtm_optimizer, " | ".join(OPTIMIZERS))
    common.check(0.0 <= cfg.jitter < 1.0, "jitter", cfg.jitter, "a float in [0, 1)")
    common.check(cfg.compute_dtype in DTYPES, "compute_dtype", cfg.compute_dtype, " | ".join(DTYPES))
    common.check(cfg.pretrain_images >= 0, "pretrain_images", cfg.pretrain_images, "an integer >= 0")
    common.check(cfg.fresh_images >= 0, "fresh_images", cfg.fresh_images, "an integer >= 0 (0: no fresh models)")
    allowed = ("zeros", *spec.preset_names)
    common.check(cfg.pretrain_psi in allowed, "pretrain_psi", cfg.pretrain_psi, " | ".join(allowed))
    if cfg.init_checkpoint and not os.path.isfile(cfg.init_checkpoint):
        raise common.ConfigError(lambda p: f"{p('init_checkpoint', cfg.init_checkpoint)}: no such file")
    common.check(cfg.mtm_epochs >= 1, "mtm_epochs", cfg.mtm_epochs, "an integer >= 1")
    # These experiments keep each run's best MTM (Table 1's protocol); ``methods``, not ``search``, picks what runs.
    common.check(not cfg.retain_mtm, "retain_mtm", cfg.retain_mtm, "false (not supported here)")
    common.check(cfg.simulator == "traffic", "simulator", cfg.simulator, "traffic (for now)")


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


# ----- data sources ----------------------------------------------------------------------------------------
class DataSource(Protocol):
    """Where the images that judge the MTMs come from (see the module docstring).

    ``psi``: the simulator's psi the images are drawn with (``psi(spec) -> [dim]``), for a source that
    renders them; None for real images. ``check()`` raises ConfigError or a data error before any work.
    """

    psi: Callable[[Any], np.ndarray] | None

    def check(self) -> None: ...

    def load(self, sim: SceneSimulator) -> dict[str, dict[str, Any]]: ...

    def describe(self, data: Mapping[str, Mapping[str, Any]]) -> str: ...

    def results(self, data: Mapping[str, Mapping[str, Any]], spec) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class SimulatedSource:
    """Validation and test images rendered by the simulator with its preset ``preset`` (psi_val), each with
    its own seed."""

    preset: str
    val_images: int
    test_images: int
    val_seed: int
    test_seed: int

    def psi(self, spec) -> np.ndarray:
        return spec.preset(self.preset)

    def check(self) -> None:
        common.check(self.val_images >= 1, "val_images", self.val_images, "an integer >= 1")
        common.check(self.test_images >= 1, "test_images", self.test_images, "an integer >= 1")

    def load(self, sim: SceneSimulator) -> dict[str, dict[str, Any]]:
        psi = self.psi(sim.spec)
        data = {
            "val": sim.sample_dataset(jax.random.key(self.val_seed), psi, self.val_images),
            "test": sim.sample_dataset(jax.random.key(self.test_seed), psi, self.test_images),
        }
        return jax.block_until_ready(data)

    def describe(self, data) -> str:
        n_val, n_test = (len(data[p]["image"]) for p in ("val", "test"))
        h, w = data["val"]["image"].shape[1:3]
        return (
            f"data: {n_val} val images (the reward) and {n_test} test images rendered at {h}x{w} with psi_val "
            f"(preset {self.preset!r})"
        )

    def results(self, data, spec) -> dict[str, Any]:
        return {"psi_val": spec.describe(self.psi(spec))}


@dataclasses.dataclass(frozen=True)
class RealSource:
    """Real images of a data set of ``lts_jax.data.real`` (``dataset``: "kitti" | "camvid") in ``directory``,
    split, cropped, mirrored and resized as the data set's description prescribes (real.py): its
    ``split(directory, **split_options)`` (KITTI: ``seed``, ``val_fraction``, ``test_names``; CamVid:
    ``train_from_val_sequence``). ``train_needed``: a method trains on the train split (it must not be empty)."""

    dataset: str
    directory: str
    split_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_needed: bool = False
    psi = None

    @property
    def data(self) -> real.RealDataset:
        return real.get(self.dataset)

    def split(self) -> dict[str, list[str]]:
        split = self.data.split(self.directory, **self.split_options)
        if self.train_needed and not split["train"]:
            hint = ("set train_from_val_sequence (its train frames share val's drive)" if self.dataset == "camvid"
                    else "lower the val fraction")  # fmt: skip
            raise real.DataError(f"{self.directory}: the train split is empty; {hint}")
        if not split["val"]:
            raise real.DataError(f"{self.directory}: the val split is empty; raise the val fraction")
        return split

    def check(self) -> None:
        if "val_fraction" in self.split_options:
            v = self.split_options["val_fraction"]
            common.check(0.0 < v <= 1.0, "val_fraction", v, "a float in (0, 1]")
        self.data.check_dir(self.directory)
        self.split()

    def load(self, sim: SceneSimulator) -> dict[str, dict[str, Any]]:
        return self.data.load_splits(self.directory, (sim.height, sim.width), splits=self.split())

    def describe(self, data) -> str:
        n = {p: len(data[p]["names"]) if p in data else 0 for p in ("val", "test", "train")}
        h, w = data["val"]["image"].shape[1:3]
        d = self.data
        prep = (f"rows {list(d.crop.rows(*d.file_size, (h, w)))} of {d.file_size[0]} cropped, " if d.crop else "") + (
            "mirrored, " if d.mirror else "")  # fmt: skip
        return (
            f"data: {d.title} {self.directory}: {n['val']} val images (the reward), {n['test']} test, {n['train']} "
            f"real-train; {prep}resized to {h}x{w}."
        )

    def results(self, data, spec) -> dict[str, Any]:
        size = tuple(int(x) for x in data["val"]["image"].shape[1:3])
        return {
            "split": {part: list(d["names"]) for part, d in data.items()},
            "real_data": self.data.describe(size),
            "real_dir": os.path.abspath(self.directory),
            **({"kitti_dir": os.path.abspath(self.directory)} if self.dataset == "kitti" else {}),  # older runs' key
        }


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


@struct.dataclass
class PretrainState:
    """A pretraining in progress, as checkpointed: ``iteration`` = rounds done (the Checkpointer's step)."""

    iteration: jax.Array  # [] int32
    mtm: TrainState


def pretrain(
    pieces: Pieces,
    sim: SceneSimulator,
    psi,
    num_images: int,
    chunk: int,
    key: jax.Array,
    log: Callable[[str], None] = print,
    init_task: seg.SegmentationTask | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    handle_signals: bool = True,
) -> tuple[TrainState, float | None]:
    """One MTM trained from scratch on ``num_images`` simulated images from ``psi``; resumable.

    Rendered ``chunk`` (= M) fresh images at a time, each chunk trained on for ``pieces.epochs`` epochs,
    so the compiled training program is the one the real method uses. ``init_task`` (default: the pieces'
    task) makes the initial state, i.e. sets the learning rate. Returns (state, image-passes per second
    after the first round, i.e. without compilation; None with a single round).

    With ``checkpoint_dir`` the pretraining checkpoints like a search: every ``checkpoint_every`` rounds (0: only
    when stopped) and on SIGINT/SIGTERM (``handle_signals``; after the round in progress), and a later call
    continues from the newest checkpoint there, ending with the same parameters as an uninterrupted run (round
    r's keys are ``fold_in(key, r)``). A stop raises ``run.Interrupted`` (signum, rounds done, the checkpoint).
    """
    k_init, k_run = jax.random.split(key)
    rounds = max(1, math.ceil(num_images / chunk))
    state = PretrainState(jnp.zeros((), jnp.int32), (init_task or pieces.task).init(k_init))
    meta = {"rounds": rounds, "chunk": chunk, "num_images": num_images}
    ckpt = run.checkpoint.Checkpointer(checkpoint_dir, keep=1) if checkpoint_dir is not None else None
    try:
        if ckpt is not None:
            restored = ckpt.restore_latest(state)
            if restored is not None and all(restored[1].get(k) == v for k, v in meta.items()):
                state = restored[0]
                log(f"  resuming the pretraining after round {int(state.iteration)}/{rounds} from {checkpoint_dir}")
            elif restored is not None:  # another pretraining's checkpoint (it cannot be reused): start over
                log(f"  {checkpoint_dir} holds another pretraining ({restored[1]}); starting over")
                ckpt.close()
                shutil.rmtree(checkpoint_dir)
        start = int(state.iteration)
        t0 = t1 = time.perf_counter()
        with run.StopOnSignal(handle_signals) as stop:
            for r in range(start, rounds):
                if stop.signum is not None:
                    path = ckpt.save(state, meta) if ckpt is not None else None
                    name = signal.Signals(stop.signum).name
                    where = f"; checkpoint saved to {path}" if path else ""
                    raise run.Interrupted(f"stopped by {name} during the pretraining after round {r}/{rounds}"
                                          f"{where}", stop.signum, r, path, rounds)  # fmt: skip
                k_data, k_train = jax.random.split(jax.random.fold_in(k_run, r))
                data = sim.sample_dataset(k_data, psi, chunk)
                state = PretrainState(jnp.asarray(r + 1, jnp.int32), pieces.train(state.mtm, arrays(data), k_train))
                if r == start or (r + 1) % max(1, rounds // 4) == 0 or r + 1 == rounds:
                    loss = float(state.mtm.train_loss)
                    if not math.isfinite(loss):
                        raise lts.NonFiniteError(
                            f"pretraining round {r}: non-finite training loss {loss} (lower mtm_lr)"
                        )
                    elapsed = time.perf_counter() - t0
                    log(f"  pretraining {r + 1}/{rounds} rounds of {chunk} images: loss {loss:.3f}  ({elapsed:.0f} s)")
                if ckpt is not None and checkpoint_every and (r + 1) % checkpoint_every == 0 and r + 1 < rounds:
                    ckpt.save(state, meta)
                if r == start:
                    t1 = time.perf_counter()
    finally:
        if ckpt is not None:
            ckpt.close()
    done = rounds - start
    rate = (done - 1) * chunk * pieces.epochs / (time.perf_counter() - t1) if done > 1 else None
    return state.mtm, rate


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


# ----- reporting -------------------------------------------------------------------------------------------
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


def evaluate_splits(pieces: Pieces, params: Any, data: Mapping[str, Mapping]) -> dict[str, Any]:
    """car IoU, mean IoU and per-class IoU of ``params`` on the "val" and "test" entries of ``data``."""
    out: dict[str, Any] = {}
    for part in ("val", "test"):
        if part in data:
            m = pieces.metrics(params, data[part])
            out[f"{part}_car_iou"], out[f"{part}_mean_iou"] = m["car_iou"], m["mean_iou"]
            out[f"{part}_class_iou"] = m["class_iou"]
    return out


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


def reward_figure(workdir: str | Path, filename: str, lines: Mapping[str, Sequence[float]],
                  hlines: Mapping[str, float], ylabel: str, title: str) -> list[Path]:  # fmt: skip
    """WORKDIR/filename: reward curves over iterations (``title`` gets their count; smoothed over 5 iterations
    from 50 on) with horizontal reference lines."""
    from lts_jax.run import plots  # matplotlib: only the figures need it

    n = max((len(v) for v in lines.values()), default=0)
    path = plots.reward_curves(
        dict(lines), Path(workdir) / filename, hlines=dict(hlines), ylabel=ylabel, title=f"{title} ({n} iterations)",
        smooth=5 if n >= 50 else 1,
    )  # fmt: skip
    return [path]


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


# ----- the methods -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    """What the methods of one experiment produced (JSON-ready)."""

    rows: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method -> metrics of its best MTM
    curves: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    checkpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    psi: dict[str, list] = dataclasses.field(default_factory=dict)  # method -> the search's answer [dim]
    timing: dict[str, float] = dataclasses.field(default_factory=dict)
    cost: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method -> common.cost of its run
    fresh: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method -> its fresh MTM's metrics

    def partial(self) -> dict[str, Any]:
        """results_partial.json: the tables of what finished so far."""
        return {**metric_tables(self.rows), "timing": self.timing}


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
    checkpoint_every: int = 0,
) -> str | None:
    """The checkpoint every MTM starts from: ``init_checkpoint``, the pretrained model (made or reused), or None.

    ``work``: image-passes the methods will train (for the time estimate printed after pretraining). The
    pretraining checkpoints in RUN_DIR/pretraining/ (every ``checkpoint_every`` rounds, and when a signal stops
    it: ``run.Interrupted``) and a re-run continues it; the directory goes once pretrained.msgpack is written.
    """
    if mtm_cfg.init_checkpoint or not mtm_cfg.pretrain_images:
        return mtm_cfg.init_checkpoint
    path = Path(run_dir) / PRETRAINED
    partial = Path(run_dir) / PRETRAINING  # the unfinished pretraining's checkpoints
    if overwrite:
        path.unlink(missing_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    if path.exists():
        log(f"  reusing the pretrained MTM {path}")
        return str(path)
    t0 = time.perf_counter()
    n = mtm_cfg.pretrain_images
    log(f"pretraining the starting MTM on {n} simulated images (psi: {mtm_cfg.pretrain_psi}) ...")
    init_task = make_task(mtm_cfg, pieces.task.height, pieces.task.width, pretraining=True)
    state, rate = pretrain(pieces, sim, spec.initial(mtm_cfg.pretrain_psi), n, chunk, key, log, init_task,
                           checkpoint_dir=partial, checkpoint_every=checkpoint_every)  # fmt: skip
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    seg.save_params(path, jax.device_get(state.params))
    shutil.rmtree(partial, ignore_errors=True)  # pretrained.msgpack is what the methods start from
    outcome.timing["pretrain_s"] = time.perf_counter() - t0
    log(f"  pretraining took {fmt_time(outcome.timing['pretrain_s'])} (compilation included)")
    if rate:
        log(
            f"  MTM training runs at {rate:,.0f} image-passes/s here: the methods need about "
            f"{fmt_time(work / rate)} of training, plus rendering, validation and compilation"
        )
    return str(path)


def run_method(
    method_dir: Path,
    build: Callable[[], tuple[Callable, lts.LTSState, Any]],
    key: jax.Array,
    num_iterations: int,
    data: Mapping[str, Mapping],
    pieces: Pieces,
    spec,
    *,
    config: Mapping[str, Any],
    run_options: Mapping[str, Any],
) -> dict[str, Any]:
    """One method in ``method_dir`` with run.run_search (resumable); saves its best MTM's params and returns
    what results.json needs of it: ``{"row", "curves", "checkpoint", "psi"}``."""
    run.prepare_workdir(method_dir, config=config, ignore=METHOD_IGNORE)
    step, state, strategy = build()
    state, history = run.run_search(
        step,
        state,
        key,
        num_iterations,
        {k: jnp.asarray(v) for k, v in arrays(data["val"]).items()},  # on the device once, not per iteration
        workdir=method_dir,
        spec=spec,
        **run_options,
    )
    seg.save_params(method_dir / BEST_PARAMS, jax.device_get(state.best_mtm))
    row = evaluate_splits(pieces, state.best_mtm, data)
    row["best_iteration"] = int(state.best_mtm_iteration)
    row["best_val_reward_logged"] = float(state.best_mtm_reward)
    psi = None if strategy is None else np.asarray(jax.device_get(strategy.center(state.search))).tolist()
    return {"row": row, "curves": curves(history), "checkpoint": str((method_dir / BEST_PARAMS).resolve()), "psi": psi,
            "cost": common.cost(history)}  # fmt: skip


def run_methods(
    methods: Sequence[str],
    build: Callable[[str], tuple[Callable, lts.LTSState, Any]],
    key: jax.Array,
    num_iterations: int,
    data: Mapping[str, Mapping],
    pieces: Pieces,
    spec,
    multi: run.MultiRun,
    configs: Mapping[str, Mapping[str, Any]],
    *,
    run_options: Mapping[str, Any],
    outcome: Outcome,
    log: Callable[[str], None] = print,
) -> Outcome:
    """Runs (or reuses) each method as a sub-run of ``multi`` (``RUN_DIR/<method>/``) and evaluates its best
    MTM on data["val"] and data["test"].

    ``build(method) -> (step, initial state, search strategy or None)``. Every method runs with the same
    base ``key`` (common random numbers: the same MTM initialisations and scene keys per iteration).
    ``multi``'s summary (results_partial.json) holds the tables so far after each method, so a job killed by
    its time limit still leaves the finished methods' numbers behind.
    """
    for method in methods:
        log(f"[{method}] {num_iterations} iterations -> {multi.path(method)}")
        fn = functools.partial(run_method, build=functools.partial(build, method), key=key,
                               num_iterations=num_iterations, data=data, pieces=pieces, spec=spec,
                               config=configs[method], run_options=run_options)  # fmt: skip
        entry = multi.run(method, configs[method], fn)
        outcome.timing[f"{method}_s"] = entry["wall_s"]
        if entry["status"] != "done":
            log(f"[{method}] {entry['status']}: {entry['error']}")
            continue
        result = entry["result"]
        outcome.rows[method], outcome.curves[method] = result["row"], result["curves"]
        outcome.checkpoints[method] = result["checkpoint"]
        outcome.cost[method] = result.get("cost")
        if result["psi"] is not None:
            outcome.psi[method] = result["psi"]
        multi.save()  # the tables with this method's row
        row, reused = result["row"], " (reused)" if entry["reused"] else ""
        log(
            f"[{method}] done in {fmt_time(entry['wall_s'])}{reused}: best val car IoU {row['val_car_iou']:.3f} "
            f"(iteration {row['best_iteration']}), test car IoU {row.get('test_car_iou', float('nan')):.3f}"
        )
    return outcome


def fresh_models(
    cfg: SegConfig,
    outcome: Outcome,
    sim: SceneSimulator,
    task: seg.SegmentationTask,
    pieces: Pieces,
    data: Mapping[str, Mapping],
    multi: run.MultiRun,
    configs: Mapping[str, Mapping[str, Any]],
    key: jax.Array,
    log: Callable[[str], None] = print,
) -> None:
    """For every finished method with a psi (the searches, default_psi, val_params; not real): a FRESH MTM from
    the methods' start (``task.init``) fine-tuned on ``cfg.fresh_images`` images rendered from the method's
    final psi (its search's answer), then evaluated on val and test (``outcome.fresh[method]``).

    Table 1's best-validation MTM is the maximum over N x K noisy candidates on a small validation set; this
    model is chosen by nothing, so its test score says what the method's psi is worth. Trained as the
    pretraining is (:func:`pretrain`: rounds of M fresh images, xi epochs each, at ``mtm_lr``; the same
    compiled program; keys from ``key``, the same for every method), as a sub-run ``fresh_<method>`` of
    ``multi``: checkpointed (every ``checkpoint_every`` rounds and on SIGINT/SIGTERM) and resumed by a re-run.
    """
    for method, psi in outcome.psi.items():
        name = f"fresh_{method}"
        config = {**configs[method], "fresh_model_images": cfg.fresh_images, "fresh_model_psi": list(psi)}

        def fn(directory: Path, psi=psi, name=name) -> dict[str, Any]:
            state, _ = pretrain(
                pieces, sim, np.asarray(psi, np.float32), cfg.fresh_images, cfg.dataset_size, key,
                lambda line: log(line.replace("pretraining", f"[{name}] fresh MTM", 1)), task,
                checkpoint_dir=directory / PRETRAINING, checkpoint_every=cfg.checkpoint_every,
            )  # fmt: skip
            seg.save_params(directory / FRESH_PARAMS, jax.device_get(state.params))
            shutil.rmtree(directory / PRETRAINING, ignore_errors=True)
            return evaluate_splits(pieces, state.params, data)

        log(f"[{name}] a fresh MTM on {cfg.fresh_images} images of {method}'s final psi -> {multi.path(name)}")
        entry = multi.run(name, config, fn)
        outcome.timing[f"{name}_s"] = entry["wall_s"]
        if entry["status"] != "done":
            log(f"[{name}] {entry['status']}: {entry['error']}")
            continue
        outcome.fresh[method] = entry["result"]
        r = entry["result"]
        log(f"[{name}] val car IoU {r['val_car_iou']:.3f}, test car IoU {r.get('test_car_iou', float('nan')):.3f}")
    multi.save()


def fresh_tables(fresh: Mapping[str, Mapping[str, Any]], images: int) -> dict[str, Any]:
    """results.json's ``fresh_val_car_iou``, ``fresh_test_car_iou``, ``fresh_val_mean_iou``, ``fresh_test_mean_iou``
    ({method: ...}) and ``fresh`` (how they were made); {} without fresh models."""
    if not fresh:
        return {}
    out = {f"fresh_{k}": {m: r.get(k) for m, r in fresh.items()}
           for k in ("val_car_iou", "test_car_iou", "val_mean_iou", "test_mean_iou")}  # fmt: skip
    what = ("a fresh MTM fine-tuned from the methods' start on this many images of each method's final psi "
            "(rounds of M images, xi epochs each, at mtm_lr), selected by nothing")  # fmt: skip
    out["fresh"] = {"images": images, "what": what}
    return out


def rendering_settings(spec, psi) -> dict[str, Any]:
    """The rendering settings of ``psi`` in physical units (simulators.traffic.scene.rendering_settings; the
    traffic and CARLA simulators share the spec); {} when psi has no rendering blocks."""
    from simulators.traffic import scene

    return scene.rendering_settings(spec, np.asarray(psi, np.float32))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What distinguishes one segmentation experiment from the other.

    ``name``: results.json's "experiment"; ``title``: its first log line's; ``methods``: what it offers;
    ``source_fn(cfg) -> DataSource``: where the images that judge the MTMs come from; ``figures_fn(workdir)``:
    its figure, drawn from results.json; ``table_fn(results) -> str``: the summary table logged at the end.
    """

    name: str
    title: str
    methods: tuple[str, ...]
    source_fn: Callable[[Any], DataSource]
    figures_fn: Callable[[Path], Any]
    table_fn: Callable[[Mapping[str, Any]], str]

    def validate(self, cfg: SegConfig) -> None:
        """Every setting and the source's data, before any work (ConfigError, the source's data error)."""
        validate(cfg, self.methods)
        self.source_fn(cfg).check()


def train_and_evaluate(
    cfg: SegConfig, workdir: str | Path, experiment: Experiment, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Runs every method of ``cfg.methods`` against the experiment's source of images, writes results.json and
    the figure; returns the results.

    Raises ConfigError or the source's data error (before any work), WorkdirError (the workdir or a method's
    directory holds another configuration), RunComplete, SubRunsFailed (some methods failed; the others'
    tables are in results_partial.json, and re-running retries the failed ones).
    """
    t_start = time.perf_counter()
    experiment.validate(cfg)
    source, name = experiment.source_fn(cfg), experiment.name
    if "val_params" in cfg.methods and source.psi is None:
        raise common.ConfigError(lambda p: f"{p('methods', 'val_params')}: the data source has no psi of its own")
    workdir = common.prepare_workdir(cfg, workdir, also_ignore=traffic.SPEED_ONLY)
    run_dir = Path(cfg.run_dir or workdir)
    mtm_cfg = MTMConfig.of(cfg)
    lts_cfg = common.lts_config(cfg)
    out = Outcome()
    multi = run.MultiRun(
        run_dir, workdir / PARTIAL, overwrite=cfg.overwrite, ignore=METHOD_IGNORE, summary_fn=lambda _: out.partial()
    )
    configs = {m: common.record(cfg, method=m) for m in cfg.methods}
    for m in cfg.methods:  # refuse a method directory with another configuration before any work
        multi.check(m, configs[m])

    sim = traffic.make_simulator(cfg).select(seg.SegmentationTask.data_keys)
    spec = sim.spec
    H, W = sim.height, sim.width
    K, M, xi, N = lts_cfg.num_candidates, lts_cfg.dataset_size, lts_cfg.mtm_epochs, cfg.num_iterations
    t0 = time.perf_counter()
    data = source.load(sim)
    out.timing["data_s"] = time.perf_counter() - t0
    searches = [m for m in cfg.methods if m != "real"]
    passes = len(searches) * N * K * M * xi + ("real" in cfg.methods) * N * M * xi
    pre = 0 if mtm_cfg.init_checkpoint else mtm_cfg.pretrain_images  # pretraining images
    log(f"{name}: {experiment.title}. Methods: {', '.join(cfg.methods)}, {N} iterations each.")
    log(f"  {source.describe(data)} ({fmt_time(out.timing['data_s'])})")
    log(f"  MTM: {describe_mtm(mtm_cfg, K, M, xi)}")
    log(
        f"  work: {passes + pre * xi:,} image-passes of MTM training; on {jax.devices()[0].platform}. "
        f"Outputs: {workdir}/results.json and the figure; runs in {run_dir}/<method>/"
    )

    key = jax.random.key(cfg.seed)
    k_psi0, k_pre, k_state, k_run, k_real = jax.random.split(key, 5)
    programs = lts.Programs()
    pieces = Pieces(make_task(mtm_cfg, H, W), xi)
    init_path = starting_point(
        mtm_cfg, pieces, sim, spec, M, k_pre, run_dir, overwrite=cfg.overwrite, outcome=out, work=passes, log=log,
        checkpoint_every=cfg.checkpoint_every,
    )  # fmt: skip
    task = make_task(mtm_cfg, H, W, init_checkpoint=init_path)
    if init_path:
        start = "init_checkpoint" if mtm_cfg.init_checkpoint else "pretrained"
        out.rows[start] = evaluate_splits(pieces, task.init(jax.random.key(0)).params, data)

    psi0 = np.asarray(spec.initial(cfg.init, k_psi0), np.float32)
    step_cfg = dataclasses.replace(lts_cfg, keep_best_mtm=True, common_train_key=cfg.common_train_key)

    def build(method: str):
        if method == "real":
            return make_real_step(pieces, data["train"], M), init_real_state(task, k_real), None
        if method == "val_params":
            strategy, start_psi = search.FixedSearch(spec), source.psi(spec)
        elif method == "default_psi":  # no search: every candidate's data from the simulator's neutral preset
            strategy, start_psi = search.FixedSearch(spec), spec.preset("default")
        else:
            strategy, start_psi = common.search_strategy(cfg, spec, method), psi0
        step = make_step(step_cfg, sim, task, strategy, programs)
        return step, init_state(step_cfg, task, strategy, k_state, start_psi), strategy

    run_methods(cfg.methods, build, k_run, N, data, pieces, spec, multi, configs,
                run_options=common.run_options(cfg), outcome=out, log=log)  # fmt: skip
    if cfg.fresh_images:
        fresh_models(cfg, out, sim, task, pieces, data, multi, configs, jax.random.fold_in(key, FRESH_STREAM), log)
    multi.raise_failures()
    out.timing["total_s"] = time.perf_counter() - t_start

    headline = next((m for m in SEARCH_METHODS if m in out.psi), None)
    results: dict[str, Any] = {
        "experiment": name,
        "methods": list(cfg.methods),
        "iterations": N,
        **metric_tables(out.rows),
        "max_reward": {m: r["best_val_reward_logged"] for m, r in out.rows.items() if "best_val_reward_logged" in r},
        "late_mean_reward": late_mean_reward(out.curves),
        **fresh_tables(out.fresh, cfg.fresh_images),
        **source.results(data, spec),
        **(run.psi_export(spec, out.psi[headline]) if headline else {}),
        "psi_method": headline,
        "psi_by_method": {m: spec.describe(np.asarray(p, np.float32)) for m, p in out.psi.items()},
        "psi_raw_by_method": out.psi,
        "psi_init": spec.describe(psi0),
        # the learned rendering settings in physical units (camera, exposure, ...; scene.rendering_settings), to
        # set beside the real data set's known camera (results["real_data"]["camera"]); {} without them
        "rendering_by_method": {m: rendering_settings(spec, p) for m, p in out.psi.items()},
        "simulator": sim.describe(),
        "curves": out.curves,
        "checkpoints": out.checkpoints,
        "config": {
            **dataclasses.asdict(cfg),
            **dataclasses.asdict(lts_cfg),
            **{f"mtm_{k}": v for k, v in dataclasses.asdict(mtm_cfg).items()},
        },
        "timing": out.timing,
        # the methods' search costs (the validation / test data and the pretraining are not counted)
        "cost": common.cost_of_runs(out.cost),
        "device": str(jax.devices()[0].device_kind),
    }
    run.write_json(workdir / "results.json", results)
    (workdir / PARTIAL).unlink(missing_ok=True)
    experiment.figures_fn(workdir)
    log(experiment.table_fn(results))
    return results

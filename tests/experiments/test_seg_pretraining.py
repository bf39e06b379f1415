"""The segmentation pretraining stops cleanly on a signal, keeps what it trained and continues on a re-run."""

from __future__ import annotations

import dataclasses
import signal

import jax
import numpy as np
import pytest

from experiments.lib import seg, traffic
from experiments.lib import synth_seg as synth_lib
from lts_jax import run
from lts_jax.tasks.segmentation import SegmentationTask

CFG = synth_lib.SynthSegConfig(
    height=24, width=80, num_iterations=1, num_candidates=2, dataset_size=4, mtm_epochs=1, batch_size=4,
    pretrain_images=16, render_chunk=4, val_images=10, test_images=5, progress=False, methods=("val_params",),
)  # fmt: skip


def pieces_and_sim(cfg):
    sim = traffic.make_simulator(cfg).select(SegmentationTask.data_keys)
    mtm = seg.MTMConfig.of(cfg)
    return seg.Pieces(seg.make_task(mtm, sim.height, sim.width), cfg.mtm_epochs), sim, mtm


def signal_after(text: str, signum: int, lines: list[str]):
    """A log function that records the lines and sends ``signum`` to this process on the line holding ``text``."""

    def log(line: str) -> None:
        lines.append(line)
        if text in line:
            signal.raise_signal(signum)

    return log


@pytest.mark.slow  # a segmentation MTM compiles: ~20 s
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_pretraining_stops_on_a_signal_and_resumes_exactly(tmp_path, signum):
    pieces, sim, mtm = pieces_and_sim(CFG)
    psi, key = sim.spec.initial("default"), jax.random.key(3)
    task = seg.make_task(mtm, sim.height, sim.width, pretraining=True)
    reference, _ = seg.pretrain(pieces, sim, psi, 16, 4, key, lambda _: None, task, handle_signals=False)

    ckpt = tmp_path / "pretraining"
    lines: list[str] = []
    before = signal.getsignal(signum)
    with pytest.raises(run.Interrupted) as stopped:  # the signal arrives in round 2; the round ends, then it stops
        seg.pretrain(pieces, sim, psi, 16, 4, key, signal_after("pretraining 2/4", signum, lines), task,
                     checkpoint_dir=ckpt)  # fmt: skip
    assert stopped.value.signum == signum and stopped.value.iteration == 2
    assert "during the pretraining after round 2/4" in str(stopped.value) and (ckpt / "2").is_dir()
    assert signal.getsignal(signum) == before  # the handler is restored

    lines.clear()
    resumed, _ = seg.pretrain(pieces, sim, psi, 16, 4, key, lines.append, task, checkpoint_dir=ckpt)
    assert any("resuming the pretraining after round 2/4" in line for line in lines)
    assert not any("pretraining 1/4" in line or "pretraining 2/4" in line for line in lines)  # not trained again
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(reference.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_experiment_keeps_partial_pretraining_and_continues(tmp_path):
    """Through the experiment: Ctrl-C during the pretraining leaves RUN_DIR/pretraining/ and no results; the same
    call continues it and finishes the run (the command maps run.Interrupted to exit 130 / 143)."""
    cfg = dataclasses.replace(CFG, checkpoint_every=1)
    lines: list[str] = []
    with pytest.raises(run.Interrupted) as stopped:
        synth_lib.train_and_evaluate(cfg, tmp_path, log=signal_after("pretraining 1/4", signal.SIGINT, lines))
    assert stopped.value.signum == signal.SIGINT
    assert (tmp_path / seg.PRETRAINING).is_dir() and not (tmp_path / seg.PRETRAINED).exists()
    assert not (tmp_path / "results.json").exists()

    lines.clear()
    results = synth_lib.train_and_evaluate(cfg, tmp_path, log=lines.append)
    assert any("resuming the pretraining after round 1/4" in line for line in lines)
    assert (tmp_path / seg.PRETRAINED).is_file() and not (tmp_path / seg.PRETRAINING).exists()
    assert "pretrained" in results["val_car_iou"]

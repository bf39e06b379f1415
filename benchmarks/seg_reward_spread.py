"""Does psi matter to a segmentation candidate's reward? Reward spread across K candidates vs the seed noise.

Issue 14's audit: each kitti_seg candidate was fine-tuned for 12 steps, "too little for psi to matter". A
search can only separate parameters whose rewards differ by more than the noise of one candidate's
training. This benchmark measures both, per fine-tuning budget (steps per candidate = M x xi / batch):

- ``spread``: std over K candidates of the validation car IoU, K psi drawn uniformly in the simulator's box
  (random params), with common random numbers (the same scene key, MTM start and minibatch order for all:
  what the experiments' --common_sim_key --common_train_key do): the differences come from psi alone;
- ``noise``: std over K trainings at ONE psi (the neutral "default" preset) with K different scene and
  training keys: what a candidate's reward varies by when psi does not change.

Every candidate fine-tunes ONE model pretrained on ``--pretrain_images`` neutral-psi images (as the
segmentation experiments do; lts_jax.experiments.lib.seg), with a fresh Adam at ``--mtm_lr``; the reward is
car IoU on a real data set's val split (``--data``: CamVid's 101 val frames by default), and the test split's
car IoU is reported as well. ``spread / noise`` well above 1 means the reward ranks psi; near 1, a search
learns from noise.

    python benchmarks/seg_reward_spread.py --out=benchmarks/results/seg_reward_spread_cpu_camvid.json
                                                                    # CPU: 12 min on 2 cores shared with other jobs

Results: README.md, "Segmentation on real images (Table 1)" (2 CPU cores, 2026-12-01).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import simulators
from experiments.lib import seg
from lts_jax.data import real
from lts_jax.tasks import segmentation as segmentation_task

DEFAULT_BUDGETS = ("32:1", "32:4", "64:4", "128:4")  # M:xi


def parse_budget(text: str) -> tuple[int, int]:
    m, xi = text.split(":")
    return int(m), int(xi)


def candidate_rewards(pieces, start_task, sim, psis, keys, num, data) -> dict[str, np.ndarray]:
    """Val and test car IoU of one fine-tuned MTM per (psi, (scene key, train key)) pair; [K] each."""
    out = {"val": [], "test": []}
    for psi, (k_sim, k_train) in zip(psis, keys):
        d = sim.sample_dataset(k_sim, psi, num)
        state = pieces.train(start_task.init(jax.random.key(0)), seg.arrays(d), k_train)
        for part in out:
            out[part].append(pieces.metrics(state.params, data[part])["car_iou"])
    return {k: np.asarray(v) for k, v in out.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="camvid", choices=sorted(real.DATASETS))
    p.add_argument("--data_dir", default=None, help="default: the data set's shared copy")
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--model", default="fcn_small")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--mtm_lr", type=float, default=3e-4)
    p.add_argument("--pretrain_lr", type=float, default=3e-3)
    p.add_argument("--pretrain_images", type=int, default=1024)
    p.add_argument("--num_candidates", type=int, default=6, help="K")
    p.add_argument("--budgets", default=",".join(DEFAULT_BUDGETS), help="comma list of M:xi")
    p.add_argument("--learn_rendering", default="all", help="all | none | comma list of rendering blocks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    H, W = args.height, args.width
    lr = {"all": True, "none": False}.get(args.learn_rendering, args.learn_rendering.split(","))
    ds = real.get(args.data)
    root = args.data_dir or ds.default_dir()
    split = ds.split(root) if args.data == "camvid" else ds.split(root, seed=0)
    data = ds.load_splits(root, (H, W), splits={k: v for k, v in split.items() if k != "train"})
    sim = simulators.make("traffic", height=H, width=W, learn_rendering=lr).select(
        segmentation_task.SegmentationTask.data_keys
    )
    spec = sim.spec
    cfg = seg.MTMConfig.of(seg.SegConfig(model=args.model, batch_size=args.batch_size, mtm_lr=args.mtm_lr,
                                         pretrain_lr=args.pretrain_lr))  # fmt: skip
    key = jax.random.key(args.seed)
    k_pre, k_psi, k_sim, k_train, k_noise = jax.random.split(key, 5)

    # The start every candidate fine-tunes: one model pretrained on neutral-psi images (seg.pretrain).
    pre_pieces = seg.Pieces(seg.make_task(cfg, H, W), 2)
    init_task = seg.make_task(cfg, H, W, pretraining=True)
    t0 = time.perf_counter()
    state, _ = seg.pretrain(pre_pieces, sim, spec.zeros(), args.pretrain_images, 32, k_pre, print, init_task,
                            handle_signals=False)  # fmt: skip
    tmp = Path(tempfile.mkdtemp()) / "start.msgpack"
    segmentation_task.save_params(tmp, jax.device_get(state.params))
    pretrain_s = time.perf_counter() - t0
    start_task = seg.make_task(cfg, H, W, init_checkpoint=str(tmp))
    start = {part: pre_pieces.metrics(state.params, data[part])["car_iou"] for part in ("val", "test")}
    print(f"start: val car IoU {start['val']:.4f}, test {start['test']:.4f} ({pretrain_s:.0f} s pretraining)")

    K = args.num_candidates
    psis_random = [np.asarray(spec.initial("random", k), np.float32) for k in jax.random.split(k_psi, K)]
    psi_default = spec.preset("default")
    rows = []
    for text in args.budgets.split(","):
        M, xi = parse_budget(text)
        pieces = seg.Pieces(start_task, xi)
        t0 = time.perf_counter()
        same = [(k_sim, k_train)] * K  # common random numbers: only psi differs
        spread = candidate_rewards(pieces, start_task, sim, psis_random, same, M, data)
        distinct = [
            tuple(jax.random.split(k, 2)) for k in jax.random.split(jax.random.fold_in(k_noise, M * 100 + xi), K)
        ]
        noise = candidate_rewards(pieces, start_task, sim, [psi_default] * K, distinct, M, data)
        row = {
            "M": M,
            "xi": xi,
            "steps_per_candidate": -(-M // args.batch_size) * xi,
            "spread_val": float(spread["val"].std(ddof=1)),
            "noise_val": float(noise["val"].std(ddof=1)),
            "spread_test": float(spread["test"].std(ddof=1)),
            "noise_test": float(noise["test"].std(ddof=1)),
            "range_val": float(np.ptp(spread["val"])),
            "mean_val_random": float(spread["val"].mean()),
            "mean_val_default": float(noise["val"].mean()),
            "rewards_val_random": spread["val"].tolist(),
            "rewards_val_default": noise["val"].tolist(),
            "seconds": time.perf_counter() - t0,
        }
        row["ratio_val"] = row["spread_val"] / max(row["noise_val"], 1e-9)
        rows.append(row)
        print(
            f"M={M:4d} xi={xi} steps={row['steps_per_candidate']:4d}: spread {row['spread_val']:.4f} "
            f"noise {row['noise_val']:.4f} ratio {row['ratio_val']:.2f}  mean random {row['mean_val_random']:.4f} "
            f"default {row['mean_val_default']:.4f}  ({row['seconds']:.0f} s)",
            flush=True,
        )

    print(
        "| M | xi | steps/candidate | spread over K (val) | seed noise (val) | ratio | spread (test) | noise (test) "
        "| mean val: random / default |"
    )
    print("|" + "---|" * 9)
    for r in rows:
        print(
            f"| {r['M']} | {r['xi']} | {r['steps_per_candidate']} | {r['spread_val']:.4f} | {r['noise_val']:.4f} | "
            f"{r['ratio_val']:.2f} | {r['spread_test']:.4f} | {r['noise_test']:.4f} | "
            f"{r['mean_val_random']:.3f} / {r['mean_val_default']:.3f} |"
        )
    out = {
        "benchmark": "seg_reward_spread",
        "args": vars(args),
        "start_car_iou": start,
        "splits": {k: len(v["names"]) for k, v in data.items()},
        "rows": rows,
        "pretrain_s": pretrain_s,
        "total_s": time.perf_counter() - t_start,
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "date": datetime.date.today().isoformat(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

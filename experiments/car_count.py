r"""Paper section 4.3, appendices C-E: learning the traffic simulator for a car-counting CNN.

    python -m experiments.car_count --flagfile=experiments/flags/car_count_quick.flags --workdir=/tmp/cc

A CNN counts the cars of each of 5 types in traffic images (reward: the negative validation L1 count error);
the search learns psi so that MTMs trained on M simulated images for xi epochs count well on validation
images rendered with psi_real (the simulator's "val" preset). experiments/lib/car_count.py does the work and
documents the outputs: results.json, car_count.png, psi_real/ (the reference run) besides the run files.

--search: lts, fixed (--fixed_params: val = psi_real, final = the psi_raw of --final_from's results.json,
init = the --init point), random_params, random_search. --init: random, zeros, a preset (val, adversarial,
default) or adversarial_crowded; --retain_mtm also trains and reports the accumulated MTM (Figure 5).

Exit status (every command's, experiments/common.py): 0 done (or already complete), 2 bad flags, workdir or
input, 3 every CARLA server failed after its retries (the last good iteration is checkpointed; re-run to resume),
130/143 stopped by SIGINT/SIGTERM (resumable), 1 anything else (a non-finite value, a file that could not be
written).
"""

from __future__ import annotations

from experiments import common
from experiments.lib import car_count as lib

HELP = {
    "fixed_params": "With --search=fixed: val (psi_real), final (--final_from's learned psi) or init (--init).",
    "final_from": "With --fixed_params=final: a finished run's workdir whose results.json holds psi_raw.",
    "init_min_prob": (
        "Floor of every learnable category's / Bernoulli's probability at the --init point (presets write absent "
        "categories as logit -10, which the policy can never leave; see lib/traffic.floor_probabilities)."
    ),
    "reference_iterations": (
        "Iterations of the fixed search at psi_real giving the psi_real reward (0: skip; unset: as many as the "
        "search, whose final reward it then compares with, the candidates fine-tuning the AMTM)."
    ),
    "final_window": "Test evaluations averaged into the final test reward.",
    "mtm_lr": "Learning rate (Adam) of the counting CNN.",
    "mtm_batch_size": "Minibatch size of the counting CNN.",
    "mtm_features": "Channels of the CNN's 4 conv layers.",
    "mtm_hidden": "Units of the CNN's hidden dense layer.",
    "mtm_context": "3x3 context layers at the CNN's lowest resolution (wider receptive field; 0: none).",
    "mtm_position": "A learned position embedding at the CNN's lowest resolution (where a car is says how far).",
    "mtm_loss": "Training loss of the CNN: l1 (the paper's, = the metric), mse or huber; the reward stays L1.",
    "mtm_head": "Head of the CNN: pooled (mean over positions, then dense) or density (per-position counts, summed).",
    "mtm_norm": "Centred inputs and LayerNorm after every layer of the CNN.",
}
FLAGS = common.define_flags(lib.CarCountConfig, HELP)


def main() -> None:
    workdir = common.workdir()
    cfg = common.config_from_flags(lib.CarCountConfig)
    lib.validate(cfg)  # before any work: exit 2 naming the flag
    results = lib.train_and_evaluate(cfg, workdir)  # every CARLA server gone: SimulatorUnavailable, exit 3
    print(lib.report(results, workdir))  # the rounded results and where the files are


if __name__ == "__main__":
    common.main(main)

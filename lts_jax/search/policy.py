"""The Gaussian policy pi_omega = N(omega, sigma^2 I) learned by REINFORCE.

Paper equation 4 with a baseline b:

    A_k   = R_k - b
    grad  = (1/K) sum_k grad log pi(psi_k) * A_k            (ascended, through optax: Adam by default)

Every option below is a constructor argument whose default is the paper's method (and this library's
behaviour before the options existed); :data:`RECOMMENDED` is the configuration that the null-drift and
plateau measurements (``benchmarks/search_null_drift.py``) support.

- ``baseline``: ``"ema"`` (default) b <- decay * b + (1 - decay) * mean_k R_k after each update, initialised to the
  first batch's mean; ``"batch_mean"`` b = mean_k R_k of the same batch (it holds R_k, so the raw gradient is
  scaled by (K - 1) / K); ``"leave_one_out"`` b_k = the mean of the other K - 1 rewards (unbiased,
  A_k = K / (K - 1) * (R_k - mean R)). With ``antithetic`` pairs any constant baseline cancels.
- ``advantages``: ``"raw"`` (default) A_k = R_k - b; ``"normalized"`` A_k / std_k(A) (the std across the K
  candidates); ``"centered_rank"`` A_k = rank(R_k) / (K - 1) - 1/2 in [-1/2, 1/2], tied rewards sharing their mean
  rank (OpenAI-ES fitness shaping; invariant to any increasing transformation of the reward, so a tiny but
  consistent difference between candidates moves the policy as much as a large one; the baseline is not used).
  When the K rewards tie (max - min <= ``tie_tolerance``) the normalised and ranked advantages are 0: a batch
  that cannot rank its candidates does not move the mean (instead of dividing by a std of ~0).
- ``tie_std_growth``: exploration that continues on a plateau (the "flat fitness" rule of CMA-ES): after a tied
  batch sigma grows by this factor (up to ``max_std``), after each batch that is not tied it shrinks back by the
  same factor to the policy's own sigma. 1 (default) turns it off.
- ``learn_variance``: also learn log sigma (diagonal) by the same estimator, with the score
  d log pi / d log sigma_j = (psi_j - omega_j)^2 / sigma_j^2 - 1.
- ``antithetic``: ``ask`` returns mirrored pairs, psi = omega + sigma * [eps; -eps] (the first half eps, the
  second half -eps; num must be even).
- ``prob_floor``: after each update the mean is projected so that every learnable categorical/Bernoulli block
  keeps each probability >= the floor (:meth:`lts_jax.params.ParamSpec.floor_probabilities`); 0 (default): off.
- ``outlier_mads`` (on by default: 50): the guard against an extreme but finite reward, e.g. a candidate whose MTM
  diverged to -1.6e8 among rewards near -1. Unguarded, such a reward makes a gradient ~1e16 that fills Adam's
  second-moment estimate, wrecks the EMA baseline, and the policy stops moving for thousands of iterations
  without an error. A reward farther from the batch median than ``outlier_mads`` robust deviations (the median
  of the K rewards' nonzero distances to the median) and than the median's own magnitude (so that a poor
  candidate among saturated accuracies is not one) is clipped to that distance before the advantages and the
  baseline see it (the logged rewards and the best candidate keep the raw value); the step's metric
  ``rewards_extreme`` counts them and :func:`lts_jax.run.run_search` warns, naming the iteration. Ordinary
  reward noise stays inside the bound (Gaussian rewards cross it in about 1 of 50,000 batches of K = 8 and 1 of
  1,000 of K = 4, and then barely), so runs without such a candidate are unchanged. With fewer than 3 rewards
  off the median there is no scale and nothing is clipped. ``centered_rank`` advantages are immune already
  (ranks ignore distances): there extreme rewards are only counted. None turns the guard off (raw rewards).
- ``grad_clip`` (off by default): clip the REINFORCE gradient's global norm to this value before the optimiser
  (:func:`lts_jax.optim.make_optimizer`). A second guard, on the update rather than the reward: with Adam it keeps
  one huge gradient from inflating the second-moment estimate. Its scale is the gradient's: about
  |advantage| * sqrt(learnable dims) / sigma, e.g. rewards varying by 0.1 with sigma^2 = 0.05 over 16 dims
  give norms ~2; pick a clip a few times the ``grad_norm`` metric of a healthy run.

Frozen blocks of the spec are never perturbed or updated.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lts_jax.optim import make_optimizer
from lts_jax.params import ParamSpec
from lts_jax.search.base import Best, StrategyBase

BASELINES = ("ema", "batch_mean", "leave_one_out")
ADVANTAGES = ("raw", "normalized", "centered_rank")

# What benchmarks/search_null_drift.py supports (see benchmarks/README.md): with pure-noise rewards these keep the
# logits' drift small over 1,000 iterations and no category below 1%, while the same policy still learns a
# target distribution with signal and leaves a plateau of tied rewards. ``search.make("lts", spec, **RECOMMENDED)``.
RECOMMENDED = {
    "learning_rate": 0.02,
    "optimizer": "adam",
    "advantages": "centered_rank",
    "tie_std_growth": 1.5,
    "max_std": 1.0,
    "prob_floor": 0.01,
}


@struct.dataclass
class PolicyState:
    params: dict  # {"mean": [dim], "log_std": [dim]}
    opt_state: optax.OptState
    baseline: jax.Array  # [] the EMA of the mean reward
    num_tells: jax.Array  # [] int32
    log_std_boost: jax.Array  # [] float32 >= 0: log of the plateau factor on sigma (tie_std_growth)
    best: Best


def gaussian_log_prob(psi: jax.Array, mean: jax.Array, log_std: jax.Array, mask: jax.Array) -> jax.Array:
    """log N(psi; mean, diag(exp(log_std)^2)) over the entries where ``mask`` is 1.

    psi: [..., dim]; mean, log_std, mask: [dim] (log_std may also be a scalar). Returns [...].
    """
    z = (psi - mean) * jnp.exp(-log_std)
    per_dim = -0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi)
    return jnp.sum(per_dim * mask, axis=-1)


def clip_extreme_rewards(rewards: jax.Array, num_deviations: float, tie_tolerance: float = 1e-6):
    """(rewards [K] with the extreme ones clipped, number of extreme rewards []) for rewards [K].

    Extreme: farther from the median than ``num_deviations`` x the (upper) median of the distances to the median
    that exceed ``tie_tolerance`` (a scale that ignores tied rewards and up to half of the deviating ones), and
    farther than the median's magnitude.
    Fewer than 3 deviating rewards give no scale: nothing is extreme. Clipping keeps the order of the rewards.
    """
    median = jnp.median(rewards)
    dev = jnp.abs(rewards - median)
    deviating = dev > tie_tolerance
    count = jnp.sum(deviating)
    ordered = jnp.sort(jnp.where(deviating, dev, jnp.inf))
    scale = ordered[count // 2]
    # ... and at least the median's own magnitude: a bounded reward near saturation (accuracies of 0.996-1.0)
    # has a tiny spread, and a candidate at 0.78 there is a poor one, not a diverged one.
    bound = jnp.where(count >= 3, jnp.maximum(num_deviations * scale, jnp.abs(median)), jnp.inf)
    extreme = dev > bound
    clipped = jnp.where(extreme, median + jnp.sign(rewards - median) * bound, rewards)
    return clipped, jnp.sum(extreme)


def centered_ranks(x: jax.Array) -> jax.Array:
    """rank(x_k) / (K - 1) - 1/2 for x [K], ties sharing their mean rank; in [-1/2, 1/2], summing to 0; [K]."""
    num = x.shape[-1]
    if num == 1:
        return jnp.zeros_like(x)
    return (jax.scipy.stats.rankdata(x, axis=-1) - 1.0) / (num - 1) - 0.5


class GaussianPolicy(StrategyBase):
    """REINFORCE over a diagonal Gaussian policy (init / ask / tell); the options are in the module docstring.

    Args:
      spec: the simulator's ParamSpec (frozen blocks are masked out).
      variance: sigma^2 of the policy (initial value if ``learn_variance``), > 0. Paper: 0.05.
      learn_variance: also learn log sigma (per dimension). Default False (the paper's fixed sigma).
      learning_rate, optimizer, grad_clip: the optax update (:func:`lts_jax.optim.make_optimizer`); defaults
        0.05, "adam", None.
      baseline: "ema" (default), "batch_mean" or "leave_one_out".
      baseline_decay: EMA decay of the reward baseline, in [0, 1); default 0.9.
      advantages: "raw" (default), "normalized" or "centered_rank".
      tie_tolerance: the K rewards tie when max - min <= this (reward units), >= 0; default 1e-6.
      tie_std_growth: factor (>= 1) by which sigma grows after a tied batch; default 1 (off).
      max_std: the cap on sigma grown by ``tie_std_growth`` (not on a learned sigma); > 0, default 1.
      antithetic: mirrored sampling (ask's num must be even); default False.
      prob_floor: the least probability of each learnable categorical/Bernoulli value after an update;
        0 (default) is off, see :meth:`ParamSpec.check_floor` for the range.
      outlier_mads: the extreme-reward guard (module docstring): rewards beyond this many robust deviations
        from the batch median are clipped for the update; > 0, default 50; None: off.

    Raises:
      ValueError: an option outside its range, naming the option.
    """

    name = "lts"

    def __init__(
        self,
        spec: ParamSpec,
        *,
        variance: float = 0.05,
        learn_variance: bool = False,
        learning_rate: float = 0.05,
        optimizer: str = "adam",
        grad_clip: float | None = None,
        baseline: str = "ema",
        baseline_decay: float = 0.9,
        advantages: str = "raw",
        tie_tolerance: float = 1e-6,
        tie_std_growth: float = 1.0,
        max_std: float = 1.0,
        antithetic: bool = False,
        prob_floor: float = 0.0,
        outlier_mads: float | None = 50.0,
    ):
        if not variance > 0:
            raise ValueError(f"policy variance must be > 0, got {variance}")
        if not math.isfinite(variance):
            raise ValueError(f"policy variance must be finite, got {variance}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose one of {list(BASELINES)}")
        if advantages not in ADVANTAGES:
            raise ValueError(f"unknown advantages {advantages!r}; choose one of {list(ADVANTAGES)}")
        if not tie_tolerance >= 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
        if not tie_std_growth >= 1.0:
            raise ValueError(f"tie_std_growth must be >= 1 (1 = off), got {tie_std_growth}")
        if not max_std > 0:
            raise ValueError(f"max_std must be > 0, got {max_std}")
        if not math.isfinite(max_std):
            raise ValueError(f"max_std must be finite, got {max_std}")
        if outlier_mads is not None and not outlier_mads > 0:
            raise ValueError(f"outlier_mads must be > 0 or None (off), got {outlier_mads}")
        super().__init__(spec)
        self.variance = float(variance)
        self.learn_variance = bool(learn_variance)
        self.baseline = baseline
        self.baseline_decay = float(baseline_decay)
        self.advantages = advantages
        self.tie_tolerance = float(tie_tolerance)
        self.tie_std_growth = float(tie_std_growth)
        self.max_std = float(max_std)
        self.antithetic = bool(antithetic)
        self.prob_floor = spec.check_floor(prob_floor)
        self.outlier_mads = None if outlier_mads is None else float(outlier_mads)
        self.optimizer = make_optimizer(optimizer, learning_rate, grad_clip)
        self.mask = jnp.asarray(spec.learnable_mask())

    def _trainable(self, params: dict) -> dict:
        return params if self.learn_variance else {"mean": params["mean"]}

    def _init(self, key: jax.Array, psi0: jax.Array) -> PolicyState:
        del key
        log_std = jnp.full((self.spec.dim,), 0.5 * math.log(self.variance), jnp.float32)
        params = {"mean": psi0, "log_std": log_std}
        return PolicyState(
            params=params,
            opt_state=self.optimizer.init(self._trainable(params)),
            baseline=jnp.zeros((), jnp.float32),
            num_tells=jnp.zeros((), jnp.int32),
            log_std_boost=jnp.zeros((), jnp.float32),
            best=Best.empty(self.spec.dim),
        )

    def sampling_log_std(self, state: PolicyState) -> jax.Array:
        """log sigma [dim] that ``ask`` samples with: the policy's own, plus the plateau boost."""
        return state.params["log_std"] + state.log_std_boost

    def ask(self, key: jax.Array, state: PolicyState, num: int) -> jax.Array:
        """psi [num, dim] ~ N(omega, sigma^2) on the learnable entries (mirrored pairs if ``antithetic``)."""
        if self.antithetic:
            if num % 2:
                raise ValueError(f"antithetic sampling needs an even number of candidates (num), got {num}")
            half = jax.random.normal(key, (num // 2, self.spec.dim))
            eps = jnp.concatenate([half, -half])
        else:
            eps = jax.random.normal(key, (num, self.spec.dim))
        std = jnp.exp(self.sampling_log_std(state))
        return state.params["mean"] + std * eps * self.mask

    def log_prob(self, state: PolicyState, psi: jax.Array) -> jax.Array:
        """log pi(psi) under the sampling distribution, over the learnable entries; psi: [..., dim] -> [...]."""
        return gaussian_log_prob(psi, state.params["mean"], self.sampling_log_std(state), self.mask)

    def guard_rewards(self, rewards: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(the rewards [K] the update uses, number of extreme rewards [] float32): ``outlier_mads``'s clipping
        (none with ``centered_rank`` advantages, which only counts them)."""
        if self.outlier_mads is None:
            return rewards, jnp.zeros((), jnp.float32)
        clipped, extreme = clip_extreme_rewards(rewards, self.outlier_mads, self.tie_tolerance)
        used = rewards if self.advantages == "centered_rank" else clipped
        return used, extreme.astype(jnp.float32)

    def compute_advantages(self, state: PolicyState, rewards: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(advantages [K], tied [] bool, baseline [] (the mean baseline used)) for rewards [K] float32."""
        num = rewards.shape[0]
        batch_mean = jnp.mean(rewards)
        if self.baseline == "ema":
            base = jnp.where(state.num_tells == 0, batch_mean, state.baseline)
        elif self.baseline == "batch_mean":
            base = batch_mean
        else:  # leave_one_out
            if num < 2:
                raise ValueError(f"{self.name}: baseline='leave_one_out' needs >= 2 candidates, got {num}")
            base = (jnp.sum(rewards) - rewards) / (num - 1)
        tied = jnp.max(rewards) - jnp.min(rewards) <= self.tie_tolerance
        raw = rewards - base
        if self.advantages == "raw":
            adv = raw
        elif self.advantages == "normalized":
            std = jnp.std(raw)
            adv = jnp.where(tied, 0.0, raw / jnp.where(tied | (std == 0), 1.0, std))
        else:  # centered_rank
            adv = jnp.where(tied, 0.0, centered_ranks(rewards))
        return adv, tied, jnp.mean(base)

    def _surrogate(self, trainable: dict, state: PolicyState, psi: jax.Array, advantages: jax.Array) -> jax.Array:
        params = {**state.params, **trainable}
        logp = gaussian_log_prob(psi, params["mean"], params["log_std"] + state.log_std_boost, self.mask)
        # optax minimises; REINFORCE ascends E[A log pi].
        return -jnp.mean(logp * advantages)

    def reinforce_gradient(self, state: PolicyState, psi: jax.Array, rewards: jax.Array) -> dict:
        """The REINFORCE estimate of d E[R] / d params (ascent direction) that ``tell`` hands to the optimiser.

        Returns ``{"mean": [dim]}`` and, with ``learn_variance``, ``"log_std": [dim]``. For tests and analysis.
        """
        psi, rewards = self.check_tell(psi, rewards)
        advantages, _, _ = self.compute_advantages(state, self.guard_rewards(rewards)[0])
        grads = jax.grad(self._surrogate)(self._trainable(state.params), state, psi, advantages)
        return jax.tree_util.tree_map(jnp.negative, grads)

    def _tell(self, state: PolicyState, psi: jax.Array, rewards: jax.Array):
        rewards, extreme = self.guard_rewards(rewards)  # the update's rewards; the metrics keep the raw ones
        advantages, tied, base = self.compute_advantages(state, rewards)
        trainable = self._trainable(state.params)
        grads = jax.grad(self._surrogate)(trainable, state, psi, jax.lax.stop_gradient(advantages))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, trainable)
        new_params = {**state.params, **optax.apply_updates(trainable, updates)}
        if self.prob_floor > 0:
            new_params["mean"] = self.spec.floor_probabilities(new_params["mean"], self.prob_floor)
        boost = state.log_std_boost
        if self.tie_std_growth > 1.0:
            step = math.log(self.tie_std_growth)
            # The boost may raise sigma only up to max_std; it never lowers a sigma that is already above it.
            widest = jnp.max(jnp.where(self.mask > 0, new_params["log_std"], -jnp.inf))
            room = jnp.maximum(math.log(self.max_std) - widest, 0.0)
            boost = jnp.where(tied, jnp.minimum(boost + step, room), jnp.maximum(boost - step, 0.0))
        batch_mean = jnp.mean(rewards)
        ema = jnp.where(state.num_tells == 0, batch_mean, state.baseline)
        new_ema = self.baseline_decay * ema + (1.0 - self.baseline_decay) * batch_mean
        std = jnp.exp(new_params["log_std"] + boost)
        metrics = {
            "baseline": base,
            "advantage_abs_mean": jnp.mean(jnp.abs(advantages)),
            "grad_norm": jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads))),
            "policy_std_mean": jnp.sum(std * self.mask) / jnp.maximum(self.mask.sum(), 1),
            "rewards_tied": tied.astype(jnp.float32),
            "rewards_extreme": extreme,
        }
        new_state = state.replace(
            params=new_params,
            opt_state=opt_state,
            baseline=new_ema,
            num_tells=state.num_tells + 1,
            log_std_boost=boost.astype(jnp.float32),
        )
        return new_state, metrics

    def center(self, state: PolicyState) -> jax.Array:
        return state.params["mean"]

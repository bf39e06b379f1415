"""Every search strategy and policy option is reachable from an experiment's configuration (issue 17)."""

import pytest

from experiments.lib import common
from experiments.lib import gmm_toy as lib
from lts_jax import search
from simulators import gmm

SPEC = gmm.GMMSimulator(1).spec


@pytest.mark.parametrize("name", search.NAMES)
def test_every_strategy_is_built_from_a_config(name):
    cfg = lib.GmmToyConfig(search=name, policy_variance=0.1, es_lr=0.3, policy_advantages="centered_rank")
    common.validate_search(cfg)
    strategy = common.search_strategy(cfg, SPEC)
    assert strategy.spec is SPEC
    opts = common.search_options(cfg, name)
    assert set(opts) <= set(search.options(name))  # only what the strategy takes
    if "variance" in search.options(name):
        assert opts["variance"] == 0.1
    if name in ("openes", "snes", "pgpe"):
        assert opts["learning_rate"] == 0.3
    if name == "lts":
        assert opts["advantages"] == "centered_rank" and opts["learning_rate"] == cfg.policy_lr


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"policy_advantages": "bogus"}, "policy_advantages=bogus is out of range"),
        ({"policy_baseline": "mean"}, "policy_baseline=mean is out of range"),
        ({"policy_prob_floor": 0.5}, "policy_prob_floor=0.5 is out of range"),
        ({"es_lr": 0.0}, "es_lr=0.0 is out of range"),
        ({"search": "openes", "num_candidates": 5}, "num_candidates=5 is out of range; accepted: an even integer"),
        ({"policy_antithetic": True, "num_candidates": 3}, "num_candidates=3 is out of range"),
        ({"candidates_from_amtm": True}, "candidates_from_amtm=True is out of range"),
    ],
)
def test_bad_search_settings_name_the_setting(changes, message):
    with pytest.raises(common.ConfigError, match=message):
        common.validate_search(lib.GmmToyConfig(**changes))


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_es_run_end_to_end(tmp_path):
    cfg = lib.GmmToyConfig(search="snes", num_iterations=4, num_candidates=4, dataset_size=20, val_size=40,
                           test_size=40, eval_repeats=1, progress=False)  # fmt: skip
    results = lib.train_and_evaluate(cfg, tmp_path)
    assert results["iterations"] == 4 and "snes" in results["test_accuracy"]

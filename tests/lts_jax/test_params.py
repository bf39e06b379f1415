"""ParamSpec: psi <-> distribution parameters, validation, initialisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import params


def make_spec():
    return params.ParamSpec(
        [
            params.bernoulli("presence"),
            params.categorical("kind", labels=("a", "b", "c")),
            params.gaussian("pos", 2, labels=("x", "y"), box=(-1.0, 1.0)),
            params.categorical("frozen_cat", 2, frozen=True),
        ],
        presets={"point": {"presence": 0.25, "kind": {"a": 2.0, "b": 1.0, "c": 1.0}}},
    )


def test_layout_and_names():
    spec = make_spec()
    assert spec.dim == 1 + 3 + 4 + 2
    assert spec.slices["pos"] == slice(4, 8)
    assert spec.entry_names()[4:8] == ["pos.mean[x]", "pos.mean[y]", "pos.log_var[x]", "pos.log_var[y]"]
    np.testing.assert_array_equal(spec.learnable_mask(), [1] * 8 + [0, 0])


def test_distributions_match_numpy():
    spec = make_spec()
    psi = np.random.default_rng(0).normal(size=(5, spec.dim)).astype(np.float32)
    d = jax.jit(spec.distributions)(psi)
    np.testing.assert_allclose(d["presence"]["probs"], 1 / (1 + np.exp(-psi[:, :1])), rtol=1e-5)
    logits = psi[:, 1:4]
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(d["kind"]["probs"], soft, rtol=1e-5)
    np.testing.assert_allclose(d["pos"]["mean"], psi[:, 4:6])
    np.testing.assert_allclose(d["pos"]["variance"], np.exp(psi[:, 6:8]), rtol=1e-5)


def test_from_natural_roundtrip_and_describe():
    spec = make_spec()
    psi = spec.from_natural(
        {"presence": 0.3, "kind": [0.5, 0.25, 0.25], "pos": {"mean": [0.5, -1.0], "variance": [2.0, 0.5]}}
    )
    desc = spec.describe(psi)
    assert desc["presence"]["prob"] == pytest.approx(0.3, abs=1e-5)
    assert desc["kind"]["probs"] == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25}, abs=1e-5)
    assert desc["pos"]["mean"] == pytest.approx([0.5, -1.0])
    assert desc["pos"]["variance"] == pytest.approx([2.0, 0.5], rel=1e-5)
    assert desc["frozen_cat"]["frozen"] is True
    assert "presence=0.30" in spec.format(psi)


def test_preset_and_initial():
    spec = make_spec()
    p = spec.preset("point")
    assert spec.describe(p)["kind"]["probs"]["a"] == pytest.approx(0.5, abs=1e-5)
    np.testing.assert_array_equal(spec.initial("zeros"), np.zeros(spec.dim))
    r = spec.initial("random", jax.random.key(0))
    low, high = spec.box()
    assert np.all(r >= low) and np.all(r <= high)
    np.testing.assert_array_equal(r[-2:], 0.0)  # frozen blocks keep the base
    with pytest.raises(KeyError, match="unknown preset"):
        spec.preset("nope")
    with pytest.raises(KeyError, match="unknown initialisation"):
        spec.initial("nope")


def test_validate_names_shape_and_blocks():
    spec = make_spec()
    with pytest.raises(ValueError, match=r"expected psi of shape \[\.\.\., 10\] with blocks presence=0:1"):
        spec.validate(np.zeros(3))
    bad = np.zeros(spec.dim)
    bad[5] = np.nan
    with pytest.raises(ValueError, match=r"non-finite entry nan at pos.mean\[y\]"):
        spec.validate(bad)


def test_bad_natural_values():
    spec = make_spec()
    with pytest.raises(ValueError, match="probability must be in"):
        spec.from_natural({"presence": 1.5})
    with pytest.raises(ValueError, match="variance must be > 0"):
        spec.from_natural({"pos": {"mean": [0, 0], "variance": [-1.0, 1.0]}})
    with pytest.raises(KeyError, match="unknown blocks"):
        spec.from_natural({"nope": 0.5})


def test_random_under_vmap():
    spec = make_spec()
    keys = jax.random.split(jax.random.key(1), 4)
    out = jax.jit(jax.vmap(lambda k: spec.random(k, (3,))))(keys)
    assert out.shape == (4, 3, spec.dim)
    assert jnp.all(out[..., -2:] == 0)

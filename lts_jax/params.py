"""ParamSpec: named blocks of the unconstrained simulator parameters psi.

A simulator's parameters psi are one unconstrained real vector (WORKSPACE.md, "The method": the
simulator interface). A ParamSpec names its blocks and maps psi to distribution
parameters:

- ``bernoulli`` (``size`` independent logits)    -> probabilities via sigmoid;
- ``categorical`` (``size`` = number of values)   -> probabilities via softmax;
- ``gaussian`` (``size`` = dimension d)           -> psi holds d means then d
  log-variances; variance = exp(log-variance).

Blocks may be *frozen*: the policy never perturbs or updates them (e.g. the
traffic simulator's intersection type, uniform by default).

Everything here is pure and works on psi with any leading batch axes
(``psi: [..., dim]``), under ``jit`` and ``vmap``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("bernoulli", "categorical", "gaussian")


@dataclasses.dataclass(frozen=True)
class Block:
    """One named block of psi.

    Attributes:
      name: unique block name, e.g. ``"car_type"``.
      kind: ``"bernoulli"``, ``"categorical"`` or ``"gaussian"``.
      size: number of independent Bernoulli logits, number of categories, or the
        dimension of the Gaussian. The block occupies ``size`` entries of psi
        (``2 * size`` for a Gaussian: means, then log-variances).
      labels: optional names of the entries (categories, dimensions) for logs.
      frozen: if True the search strategies leave this block at its initial value.
      box: ``(low, high)`` of the uniform box from which random initialisation and
        the random-parameter baselines draw raw psi entries. For a Gaussian it is
        the box for the means; the log-variances use ``log_var_box``.
      log_var_box: box for a Gaussian's log-variances.
    """

    name: str
    kind: str
    size: int = 1
    labels: tuple[str, ...] | None = None
    frozen: bool = False
    box: tuple[float, float] = (-3.0, 3.0)
    log_var_box: tuple[float, float] = (-3.0, 1.0)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"block {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.size < 1:
            raise ValueError(f"block {self.name!r}: size must be >= 1, got {self.size}")
        if self.kind == "categorical" and self.size < 2:
            raise ValueError(f"block {self.name!r}: a categorical needs >= 2 values")
        if self.labels is not None and len(self.labels) != self.size:
            raise ValueError(f"block {self.name!r}: {len(self.labels)} labels for size {self.size}")
        if not self.box[0] < self.box[1]:
            raise ValueError(f"block {self.name!r}: box {self.box} is empty")

    @property
    def width(self) -> int:
        """Number of psi entries the block occupies."""
        return 2 * self.size if self.kind == "gaussian" else self.size

    def entry_names(self) -> list[str]:
        labels = self.labels or tuple(str(i) for i in range(self.size))
        if self.kind == "gaussian":
            return [f"{self.name}.mean[{lab}]" for lab in labels] + [f"{self.name}.log_var[{lab}]" for lab in labels]
        return [f"{self.name}[{lab}]" for lab in labels]


def bernoulli(name: str, size: int = 1, **kw) -> Block:
    return Block(name, "bernoulli", size, **kw)


def categorical(name: str, size: int | None = None, labels: Sequence[str] | None = None, **kw) -> Block:
    if size is None:
        if labels is None:
            raise ValueError(f"block {name!r}: give size or labels")
        size = len(labels)
    return Block(name, "categorical", size, tuple(labels) if labels is not None else None, **kw)


def gaussian(name: str, size: int = 1, labels: Sequence[str] | None = None, **kw) -> Block:
    return Block(name, "gaussian", size, tuple(labels) if labels is not None else None, **kw)


class ParamSpec:
    """An ordered set of named blocks over one unconstrained vector psi.

    Args:
      blocks: the blocks, in psi order.
      presets: named points, ``{preset_name: {block_name: natural value}}``; see
        :meth:`from_natural` for the accepted values. Blocks a preset omits take
        their neutral value (zero logits, zero mean, unit variance).
    """

    def __init__(self, blocks: Sequence[Block], presets: Mapping[str, Mapping[str, Any]] | None = None):
        names = [b.name for b in blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate block names in {names}")
        if not blocks:
            raise ValueError("a ParamSpec needs at least one block")
        self.blocks: tuple[Block, ...] = tuple(blocks)
        offsets = np.cumsum([0] + [b.width for b in blocks])
        self.slices: dict[str, slice] = {
            b.name: slice(int(offsets[i]), int(offsets[i + 1])) for i, b in enumerate(blocks)
        }
        self.dim: int = int(offsets[-1])
        self._presets = {k: dict(v) for k, v in (presets or {}).items()}
        for values in self._presets.values():
            self.from_natural(values)  # validate eagerly so a typo fails at definition

    # ----- structure -------------------------------------------------------------
    def __repr__(self) -> str:
        inner = ", ".join(f"{b.name}:{b.kind}[{b.size}]{'*' if b.frozen else ''}" for b in self.blocks)
        return f"ParamSpec(dim={self.dim}; {inner})"

    def __getitem__(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r}; blocks are {self.block_names}")

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def preset_names(self) -> list[str]:
        return sorted(self._presets)

    def entry_names(self) -> list[str]:
        """One readable name per psi entry, e.g. ``car_type[sedan]``."""
        return [n for b in self.blocks for n in b.entry_names()]

    def layout(self) -> str:
        """A one-line description of the expected psi layout, for error messages."""
        parts = [f"{b.name}={self.slices[b.name].start}:{self.slices[b.name].stop}" for b in self.blocks]
        return f"psi of shape [..., {self.dim}] with blocks " + ", ".join(parts)

    def learnable_mask(self) -> np.ndarray:
        """float32 [dim]: 1 where the search may change psi, 0 on frozen blocks."""
        mask = np.ones(self.dim, np.float32)
        for b in self.blocks:
            if b.frozen:
                mask[self.slices[b.name]] = 0.0
        return mask

    def with_frozen(self, **frozen: bool) -> ParamSpec:
        """A copy with blocks frozen or unfrozen, e.g. ``spec.with_frozen(intersection=False)``."""
        unknown = set(frozen) - set(self.block_names)
        if unknown:
            raise KeyError(f"unknown blocks {sorted(unknown)}; blocks are {self.block_names}")
        blocks = [dataclasses.replace(b, frozen=frozen.get(b.name, b.frozen)) for b in self.blocks]
        return ParamSpec(blocks, self._presets)

    # ----- validation ----------------------------------------------------------
    def validate(self, psi, *, what: str = "psi") -> np.ndarray:
        """Checks a concrete psi (host-side); returns it as float32 NumPy.

        Raises ValueError naming the expected shape and the blocks when the last
        axis is wrong or an entry is not finite.
        """
        arr = np.asarray(psi, dtype=np.float32)
        if arr.ndim < 1 or arr.shape[-1] != self.dim:
            raise ValueError(f"{what} has shape {list(arr.shape)}; expected {self.layout()}")
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = np.argwhere(bad)[0]
            name = self.entry_names()[idx[-1]]
            raise ValueError(
                f"{what} has a non-finite entry {arr[tuple(idx)]} at {name} (index {tuple(int(i) for i in idx)}); "
                f"expected finite values, {self.layout()}"
            )
        return arr

    # ----- psi -> distributions ------------------------------------------------
    def split(self, psi: jax.Array) -> dict[str, jax.Array]:
        """Raw psi blocks: ``{name: psi[..., slice]}``."""
        return {b.name: psi[..., self.slices[b.name]] for b in self.blocks}

    def distributions(self, psi: jax.Array) -> dict[str, dict[str, jax.Array]]:
        """Distribution parameters of every block (jittable).

        Returns ``{name: {"probs": [..., size]}}`` for bernoulli and categorical
        blocks, ``{name: {"mean": [..., d], "variance": [..., d]}}`` for Gaussians.
        """
        out = {}
        for b in self.blocks:
            raw = psi[..., self.slices[b.name]]
            if b.kind == "bernoulli":
                out[b.name] = {"probs": jax.nn.sigmoid(raw)}
            elif b.kind == "categorical":
                out[b.name] = {"probs": jax.nn.softmax(raw, axis=-1)}
            else:
                out[b.name] = {"mean": raw[..., : b.size], "variance": jnp.exp(raw[..., b.size :])}
        return out

    def check_floor(self, floor: float) -> float:
        """``floor`` as a float, or ValueError unless every learnable categorical/Bernoulli block can keep it.

        A categorical of ``n`` values needs ``0 <= floor < 1 / n``, a Bernoulli ``0 <= floor < 0.5``.
        """
        floor = float(floor)
        for b in self.blocks:
            if b.frozen or b.kind == "gaussian":
                continue
            limit = 1.0 / b.size if b.kind == "categorical" else 0.5
            if not 0.0 <= floor < limit:
                raise ValueError(
                    f"probability floor {floor} is out of range for block {b.name!r} ({b.kind}, size {b.size}); "
                    f"accepted: 0 <= floor < {limit:g}"
                )
        return floor

    def floor_probabilities(self, psi: jax.Array, floor: float) -> jax.Array:
        """psi [..., dim] projected so every learnable categorical/Bernoulli probability is >= ``floor`` (jittable).

        The projection is the information projection (least KL(p' || p)) onto {p' >= floor}:
          - a categorical becomes ``p'_i = max(floor, c * p_i)`` with the one ``c <= 1`` that makes p' sum to 1, so
            the odds between the categories above the floor are kept; only the logits of the floored categories
            change (set to ``logsumexp(logits) + log(floor / c)``), the others are returned as they were;
          - a Bernoulli logit is clipped to ``[logit(floor), logit(1 - floor)]``.
        Entries that already satisfy the floor, frozen blocks and Gaussian blocks are returned unchanged (bitwise),
        so ``floor = 0`` is the identity. ``floor`` is a Python float (see :meth:`check_floor` for its range).
        """
        floor = self.check_floor(floor)
        if floor == 0.0:
            return psi
        psi = jnp.asarray(psi)
        out = psi
        for b in self.blocks:
            if b.frozen or b.kind == "gaussian":
                continue
            sl = self.slices[b.name]
            x = psi[..., sl]
            if b.kind == "bernoulli":
                bound = math.log(floor) - math.log1p(-floor)
                new = jnp.clip(x, bound, -bound)
            else:
                new = _floor_categorical(x, floor)
            out = out.at[..., sl].set(new)
        return out

    def describe(self, psi) -> dict[str, Any]:
        """JSON-ready readable description of one concrete psi [dim].

        Bernoulli and categorical blocks give their probabilities (and logits),
        keyed by label where the block has labels; Gaussians give means and variances (and ``labels``, the
        dimensions' names, where the block has them).
        """
        arr = self.validate(psi)
        if arr.ndim != 1:
            raise ValueError(f"describe takes one psi of shape [{self.dim}], got {list(arr.shape)}")
        dists = jax.tree_util.tree_map(np.asarray, self.distributions(arr.astype(np.float64)))
        out: dict[str, Any] = {}
        for b in self.blocks:
            raw = arr[self.slices[b.name]]
            d = dists[b.name]
            labels = b.labels or tuple(str(i) for i in range(b.size))
            if b.kind in ("bernoulli", "categorical"):
                probs = {lab: round(float(p), 6) for lab, p in zip(labels, d["probs"])}
                logits = {lab: round(float(v), 6) for lab, v in zip(labels, raw)}
                if b.kind == "bernoulli" and b.size == 1:
                    entry = {"kind": b.kind, "prob": probs[labels[0]], "logit": logits[labels[0]]}
                else:
                    entry = {"kind": b.kind, "probs": probs, "logits": logits}
            else:
                entry = {
                    "kind": "gaussian",
                    "mean": [round(float(v), 6) for v in d["mean"]],
                    "variance": [round(float(v), 6) for v in d["variance"]],
                }
                if b.labels is not None:  # the dimensions' names, for figures and readers of metrics.jsonl
                    entry["labels"] = list(b.labels)
            if b.frozen:
                entry["frozen"] = True
            out[b.name] = entry
        return out

    def format(self, psi, precision: int = 2) -> str:
        """A compact one-line description for logs, e.g. ``car_presence=0.41 weather=[.7 .1 .1 .1]``."""
        desc = self.describe(psi)
        parts = []
        for b in self.blocks:
            e = desc[b.name]
            if "prob" in e:
                parts.append(f"{b.name}={e['prob']:.{precision}f}")
            elif "probs" in e:
                vals = " ".join(f"{v:.{precision}f}" for v in e["probs"].values())
                parts.append(f"{b.name}=[{vals}]")
            else:
                mean = " ".join(f"{v:.{precision}f}" for v in e["mean"])
                var = " ".join(f"{v:.{precision}f}" for v in e["variance"])
                parts.append(f"{b.name}=N([{mean}], [{var}])")
        return " ".join(parts)

    # ----- initialisers ------------------------------------------------------------
    def zeros(self) -> np.ndarray:
        """The neutral point: zero logits (uniform / p = 0.5), zero means, unit variances."""
        return np.zeros(self.dim, np.float32)

    def from_natural(self, values: Mapping[str, Any], base=None) -> np.ndarray:
        """psi [dim] from distribution parameters given per block.

        Accepted values per block kind:
          - bernoulli: a probability in (0, 1) (or one per entry);
          - categorical: a list of ``size`` non-negative weights (normalised; a zero
            weight becomes a logit of -10), or a dict ``{label: weight}``
            (missing labels get weight 0);
          - gaussian: ``{"mean": [...], "variance": [...]}`` (variance > 0).
        Blocks not given keep ``base`` (default :meth:`zeros`).
        """
        psi = self.zeros() if base is None else np.array(self.validate(base), np.float32)
        unknown = set(values) - set(self.block_names)
        if unknown:
            raise KeyError(f"unknown blocks {sorted(unknown)}; blocks are {self.block_names}")
        for name, value in values.items():
            b = self[name]
            sl = self.slices[name]
            if b.kind == "bernoulli":
                p = np.broadcast_to(np.asarray(value, np.float64), (b.size,))
                if np.any(p <= 0) or np.any(p >= 1):
                    raise ValueError(f"block {name!r}: probability must be in (0, 1), got {value}")
                psi[sl] = np.log(p) - np.log1p(-p)
            elif b.kind == "categorical":
                if isinstance(value, Mapping):
                    labels = b.labels or tuple(str(i) for i in range(b.size))
                    bad = set(value) - set(labels)
                    if bad:
                        raise KeyError(f"block {name!r}: unknown labels {sorted(bad)}; labels are {labels}")
                    value = [value.get(lab, 0.0) for lab in labels]
                w = np.asarray(value, np.float64)
                if w.shape != (b.size,) or np.any(w < 0) or w.sum() <= 0:
                    raise ValueError(
                        f"block {name!r}: expected {b.size} non-negative weights with a positive sum, got {value}"
                    )
                p = w / w.sum()
                logits = np.where(p > 0, np.log(np.maximum(p, 1e-300)), -10.0)
                psi[sl] = logits - logits[p > 0].mean()
            else:
                mean = np.broadcast_to(np.asarray(value["mean"], np.float64), (b.size,))
                var = np.broadcast_to(np.asarray(value["variance"], np.float64), (b.size,))
                if np.any(var <= 0):
                    raise ValueError(f"block {name!r}: variance must be > 0, got {value['variance']}")
                psi[sl] = np.concatenate([mean, np.log(var)])
        return psi.astype(np.float32)

    def preset(self, name: str) -> np.ndarray:
        """psi [dim] of a named point (see the simulator's documentation of its presets)."""
        if name not in self._presets:
            raise KeyError(f"unknown preset {name!r}; presets are {self.preset_names}")
        return self.from_natural(self._presets[name])

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), each float32 [dim]: the documented box for random psi."""
        low = np.zeros(self.dim, np.float32)
        high = np.zeros(self.dim, np.float32)
        for b in self.blocks:
            sl = self.slices[b.name]
            if b.kind == "gaussian":
                low[sl] = [b.box[0]] * b.size + [b.log_var_box[0]] * b.size
                high[sl] = [b.box[1]] * b.size + [b.log_var_box[1]] * b.size
            else:
                low[sl], high[sl] = b.box
        return low, high

    def random(self, key: jax.Array, shape: Sequence[int] = (), base=None) -> jax.Array:
        """psi [*shape, dim] uniform in :meth:`box` on learnable blocks (jittable).

        Frozen blocks take ``base`` (default :meth:`zeros`).
        """
        low, high = self.box()
        u = jax.random.uniform(key, (*shape, self.dim), minval=low, maxval=high)
        base = self.zeros() if base is None else jnp.asarray(base, jnp.float32)
        mask = self.learnable_mask()
        return mask * u + (1.0 - mask) * base

    def initial(self, how: str, key: jax.Array | None = None) -> np.ndarray:
        """An initial psi by name: ``"zeros"``, ``"random"`` (needs ``key``) or a preset name."""
        if how == "zeros":
            return self.zeros()
        if how == "random":
            if key is None:
                raise ValueError("random initialisation needs a key")
            return np.asarray(self.random(key, base=self.zeros()))
        if how in self._presets:
            return self.preset(how)
        raise KeyError(f"unknown initialisation {how!r}; choose zeros, random or one of {self.preset_names}")


def _floor_categorical(x: jax.Array, floor: float) -> jax.Array:
    """Logits x [..., n] whose softmax is ``max(floor, c * softmax(x))`` summing to 1 (see floor_probabilities).

    With the probabilities sorted ascending, flooring the ``m`` smallest gives ``c_m = (1 - m * floor) / S_m``
    (``S_m``: the sum of the others); the answer is the smallest ``m`` whose next probability stays above the
    floor after scaling, ``c_m * p_(m) >= floor`` (``m = n - 1`` always qualifies when ``floor < 1 / n``).
    """
    n = x.shape[-1]
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    log_p = x - lse
    order = jnp.argsort(log_p, axis=-1)
    log_sorted = jnp.take_along_axis(log_p, order, axis=-1)
    suffix = jnp.flip(jnp.cumsum(jnp.flip(jnp.exp(log_sorted), -1), axis=-1), -1)  # S_m, [..., n]
    log_c = jnp.log1p(-jnp.arange(n) * floor) - jnp.log(suffix)
    m = jnp.argmax(log_c + log_sorted >= math.log(floor), axis=-1)[..., None]  # the first m that qualifies
    log_c_m = jnp.take_along_axis(log_c, m, axis=-1)
    floored = jnp.argsort(order, axis=-1) < m  # rank below m
    return jnp.where(floored, lse + math.log(floor) - log_c_m, x)


def logit(p: float) -> float:
    """log(p / (1 - p)), for writing presets by hand."""
    return math.log(p) - math.log1p(-p)

"""How the K candidates' main task models are trained and evaluated.

``run_candidates(fn, strategy, *args)`` applies ``fn`` to each candidate's slice
of ``args`` (every leaf has a leading axis K, or is ``None``-broadcast via
``in_axes``) and stacks the results, inside the caller's ``jit``:

- ``"vmap"``: ``jax.vmap`` (per-candidate weights become batched / grouped ops);
- ``"map"``: ``jax.lax.map`` (a sequential loop compiled once);
- ``"loop"``: a Python loop unrolled inside the one jit (K copies of the program);
- ``"auto"``: picked per backend from the measurements in ``benchmarks/``.

DESIGN.md's measurements: on an H100, the K scanned trainings written one after
another inside one jit beat vmap by 18x for the counting CNN; on 2 CPU cores
vmap was 35x slower than a loop. Host-backed tasks (scikit-learn through the
bridge) must use ``vmap`` so the bridge sees all K candidates in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

STRATEGIES = ("auto", "vmap", "map", "loop")


def resolve(strategy: str, backend: str | None = None) -> str:
    """The concrete strategy ``auto`` stands for on ``backend`` (default: the default backend)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown executor strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy != "auto":
        return strategy
    del backend
    return "loop"


def run_candidates(
    fn: Callable[..., Any],
    strategy: str,
    *args: Any,
    in_axes: Sequence[int | None] | None = None,
) -> Any:
    """Applies ``fn`` per candidate and stacks the outputs along a new leading axis.

    Args:
      fn: per-candidate function of unbatched arguments.
      strategy: one of :data:`STRATEGIES`.
      *args: pytrees; leaves batched along axis 0 where ``in_axes`` says 0.
      in_axes: per argument, 0 (batched) or None (shared); default all 0.
    """
    in_axes = tuple(in_axes) if in_axes is not None else (0,) * len(args)
    if len(in_axes) != len(args):
        raise ValueError(f"in_axes has {len(in_axes)} entries for {len(args)} arguments")
    strategy = resolve(strategy)
    sizes = {
        leaf.shape[0]
        for a, ax in zip(args, in_axes)
        if ax == 0
        for leaf in jax.tree_util.tree_leaves(a)
    }
    if len(sizes) != 1:
        raise ValueError(f"batched arguments disagree on the candidate axis: sizes {sorted(sizes)}")
    (num,) = sizes

    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)(*args)

    def take(i):
        return [jax.tree_util.tree_map(lambda x: x[i], a) if ax == 0 else a for a, ax in zip(args, in_axes)]

    if strategy == "map":
        batched = [a for a, ax in zip(args, in_axes) if ax == 0]

        def body(xs):
            it = iter(xs)
            full = [next(it) if ax == 0 else a for a, ax in zip(args, in_axes)]
            return fn(*full)

        return jax.lax.map(body, batched)

    outs = [fn(*take(i)) for i in range(num)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)

"""The Simulator protocol and the host bridge.

A simulator maps psi to a labelled data set (PAPER.md, "The simulator
interface"). Pure-JAX simulators implement :class:`Simulator` directly; NumPy,
Python or remote simulators (CARLA) and host-side tasks (scikit-learn) go
through :func:`host_call`, the only place in the library that calls
``jax.pure_callback``.

The bridge is batched: the wrapped host function always receives arguments with
one leading batch axis ``[B, ...]`` and returns results with the same leading
axis. Under ``jax.vmap`` over K candidates it is called ONCE with ``B = K``
(``vmap_method="expand_dims"``); outside ``vmap`` it is called with ``B = 1``.
Nested ``vmap`` axes are flattened into ``B`` and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax.params import ParamSpec


@runtime_checkable
class Simulator(Protocol):
    """What the algorithm needs from a simulator.

    ``sample(key, psi, num)`` takes one typed key, one psi [spec.dim] and a static
    ``num``; it returns a dict of arrays with leading axis ``num``. It must be
    jittable and vmappable over ``(key, psi)`` (pure JAX, or through the bridge).
    """

    spec: ParamSpec

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]: ...


def key_to_seed(key: jax.Array) -> jax.Array:
    """A uint32 seed derived from a typed key, for host code that takes seeds."""
    return jax.random.bits(key, (), jnp.uint32)


def host_call(
    fn: Callable[..., Any],
    result_shapes: Any,
    *args: Any,
) -> Any:
    """Calls a batched host function from jitted / vmapped code.

    Args:
      fn: a host function ``fn(*args) -> results`` where every argument and
        result leaf has one leading batch axis ``[B, ...]``. It receives NumPy
        arrays and must return NumPy arrays (or scalars convertible to them) of
        the declared shapes. Not jittable itself; the bridge runs it on the host.
      result_shapes: pytree of ``jax.ShapeDtypeStruct`` for ONE example (no batch
        axis).
      *args: pytrees of arrays for ONE example (no batch axis) at trace time.

    Returns:
      the results for one example (or batched, under vmap).
    """
    flat_args, args_tree = jax.tree_util.tree_flatten(args)
    core_ndims = [jnp.ndim(a) for a in flat_args]
    flat_res_shapes, res_tree = jax.tree_util.tree_flatten(result_shapes)

    def _host(*flat):
        flat = [np.asarray(a) for a in flat]
        leads = [a.shape[: a.ndim - nd] for a, nd in zip(flat, core_ndims)]
        batch_shape = np.broadcast_shapes(*leads) if leads else ()
        size = int(np.prod(batch_shape, dtype=np.int64))
        batched = [
            np.broadcast_to(a, batch_shape + a.shape[a.ndim - nd :]).reshape((size,) + a.shape[a.ndim - nd :])
            for a, nd in zip(flat, core_ndims)
        ]
        results = fn(*jax.tree_util.tree_unflatten(args_tree, batched))
        flat_results = res_tree.flatten_up_to(results)
        out = []
        for r, spec in zip(flat_results, flat_res_shapes):
            r = np.asarray(r, dtype=spec.dtype)
            if r.shape != (size, *spec.shape):
                raise ValueError(
                    f"host function {getattr(fn, '__name__', fn)} returned shape {r.shape}; "
                    f"expected {(size, *spec.shape)} (batch {size} x declared {tuple(spec.shape)})"
                )
            out.append(r.reshape(batch_shape + tuple(spec.shape)))
        return out

    # The callback sees the vmapped axes as added leading axes ("expand_dims"),
    # so one call serves all K candidates.
    out_specs = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in flat_res_shapes]
    flat_out = jax.pure_callback(_host, out_specs, *flat_args, vmap_method="expand_dims")
    return jax.tree_util.tree_unflatten(res_tree, flat_out)


class HostSimulator:
    """Wraps a NumPy / Python simulator so it runs inside ``jit`` and ``vmap``.

    Args:
      spec: the simulator's ParamSpec.
      sample_fn: host function ``sample_fn(seeds: uint32 [B], psi: float32 [B, dim],
        num: int) -> {name: array [B, num, ...]}``. It is called once per policy
        iteration with all K candidates. Not jittable.
      output_shapes: ``{name: (shape per example, dtype)}`` declaring the outputs.
    """

    def __init__(
        self,
        spec: ParamSpec,
        sample_fn: Callable[[np.ndarray, np.ndarray, int], Mapping[str, np.ndarray]],
        output_shapes: Mapping[str, tuple[tuple[int, ...], Any]],
    ):
        self.spec = spec
        self.sample_fn = sample_fn
        self.output_shapes = dict(output_shapes)

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        shapes = {
            name: jax.ShapeDtypeStruct((num, *shape), dtype) for name, (shape, dtype) in self.output_shapes.items()
        }

        def _host(seeds, psi_b):
            return dict(self.sample_fn(seeds, psi_b, num))

        return host_call(_host, shapes, key_to_seed(key), jnp.asarray(psi, jnp.float32))

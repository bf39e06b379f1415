"""The host bridge: host code (NumPy, scikit-learn, CARLA, any game engine) inside jitted, vmapped code.

:func:`host_call` is the only place in the library that calls ``jax.pure_callback``. The bridge is
batched: the wrapped host function always receives arguments with one leading batch axis ``[B, ...]``
and returns results with the same leading axis. Under ``jax.vmap`` over K candidates it is called
ONCE with ``B = K`` (``vmap_method="expand_dims"``); outside ``vmap`` it is called with ``B = 1``.
Nested ``vmap`` axes are flattened into ``B`` and restored afterwards. Result shapes are declared up
front (per example), and checked when the host function returns.

On top of it:

- :class:`HostSimulator`: a host ``sample_fn(seeds, psi, num)`` as a :class:`lts_jax.simulator.Simulator`.
- :func:`host_renderer`: a host ``render_fn(scenes [N, ...]) -> outputs [N, ...]`` as a jittable
  ``render(scenes)`` of a :class:`lts_jax.simulator.SceneSimulator`; inside ``lts.make_step`` it is
  called once per iteration with all K x M scenes, inside ``lts.make_split_step`` too (from the
  default ``render_batches``, one jitted ``render`` of the K x M scenes).

An exception raised by the host function reaches the caller wrapped by JAX (its text, not its type).

Under a device mesh (``LTSConfig(num_devices=n)``, several hosts included) the candidates are split
over the devices with ``shard_map`` (:mod:`lts_jax.parallel`), and the host function is called once
per device per iteration with that device's K / n candidates (``B = K / n``; a host renderer gets
their K / n x M scenes), on the process that owns the device: each process calls its own servers for
its own candidates. (Under plain ``jit`` with sharded inputs JAX would instead gather every candidate
on one device and call the host once there.) The calls of one process's devices come from different
threads at the same time; :func:`host_renderer` and :class:`HostSimulator` run them one at a time
unless ``concurrent=True`` says the host function is thread-safe (a CARLA pool is not: it already
spreads one call over all its servers).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax.params import ParamSpec
from lts_jax.simulator import OutputSpec

RenderFn = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]


class _DropCallbackTraceback(logging.Filter):
    """JAX logs every failed pure_callback with its whole traceback, then raises an error whose text holds the
    same traceback: the caller gets it there (a host failure the driver handles, such as every CARLA server
    gone, would otherwise print a hundred lines before its one-line message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("jax.pure_callback failed")


_callback_logger = logging.getLogger("jax._src.callback")
if not any(isinstance(f, _DropCallbackTraceback) for f in _callback_logger.filters):
    _callback_logger.addFilter(_DropCallbackTraceback())


def key_to_seed(key: jax.Array) -> jax.Array:
    """A uint32 seed derived from a typed key, for host code that takes seeds."""
    return jax.random.bits(key, (), jnp.uint32)


def host_call(
    fn: Callable[..., Any],
    result_shapes: Any,
    *args: Any,
    lock: Any = None,
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
      lock: a ``threading.Lock`` held while ``fn`` runs (None: none), for host functions that
        must not run twice at once (under a mesh each device calls, from its own thread).

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
        with lock if lock is not None else contextlib.nullcontext():
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
        iteration with all K candidates (under a mesh: once per device with its candidates). Not jittable.
      outputs: ``{name: Field}``, the outputs per example.
      concurrent: ``sample_fn`` is thread-safe; else the calls of several devices run one at a time.
    """

    def __init__(
        self,
        spec: ParamSpec,
        sample_fn: Callable[[np.ndarray, np.ndarray, int], Mapping[str, np.ndarray]],
        outputs: OutputSpec,
        *,
        concurrent: bool = False,
    ):
        self.spec = spec
        self.sample_fn = sample_fn
        self.outputs = dict(outputs)
        self._lock = None if concurrent else threading.Lock()

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        shapes = {name: field.struct(num) for name, field in self.outputs.items()}

        def _host(seeds, psi_b):
            return dict(self.sample_fn(seeds, psi_b, num))

        return host_call(_host, shapes, key_to_seed(key), jnp.asarray(psi, jnp.float32), lock=self._lock)


def host_renderer(
    render_fn: RenderFn, outputs: OutputSpec, *, concurrent: bool = False
) -> Callable[[dict[str, jax.Array]], dict[str, jax.Array]]:
    """A host renderer as a jittable, vmappable ``render(scenes) -> {name: [num, *field.shape]}``.

    Args:
      render_fn: host function ``render_fn({name: np.ndarray [N, ...]}) -> {name: [N, ...]}``: every
        scene of the call with one leading axis (under vmap over K candidates of ``num`` scenes each,
        N = K x num, in candidate-major order). It may return more outputs than declared; only
        ``outputs`` are kept. Not jittable; it runs once per call of the jitted program, and under a
        device mesh once per device with that device's candidates (N = K / n x num).
      outputs: ``{name: Field}``, the declared outputs per example.
      concurrent: ``render_fn`` is thread-safe; otherwise calls from several devices of a process
        run one at a time (a lock per renderer).

    Returns:
      ``render(scenes)`` for scenes with a leading axis ``num`` (static).
    """
    outputs = dict(outputs)
    lock = None if concurrent else threading.Lock()

    def render(scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        scenes = dict(scenes)
        num = int(jnp.shape(jax.tree_util.tree_leaves(scenes)[0])[0])
        shapes = {name: field.struct(num) for name, field in outputs.items()}

        def _host(batched):  # {name: [B, num, ...]}
            lead = np.shape(jax.tree_util.tree_leaves(batched)[0])[:2]
            flat = {k: np.asarray(v).reshape((-1, *np.shape(v)[2:])) for k, v in batched.items()}
            out, n = render_fn(flat), int(np.prod(lead, dtype=np.int64))
            results = {}
            for name, f in outputs.items():
                r = np.asarray(out[name], f.dtype) if name in out else None
                if r is None or r.shape != (n, *f.shape):
                    got = "nothing" if r is None else f"shape {r.shape}"
                    raise ValueError(f"{_host.__name__} returned {got} for {name!r}; declared {(n, *f.shape)}")
                results[name] = r.reshape((*lead, *f.shape))
            return results

        _host.__name__ = getattr(render_fn, "__name__", "render_fn")
        return host_call(_host, shapes, scenes, lock=lock)

    return render

"""Errors of run management, whose messages name the parameters involved.

The library does not know how its caller exposes the parameters (keyword
arguments, command-line flags, a config file), so a message is composed with a
*name function*: ``str(error)`` names a parameter as a library caller writes it
(``overwrite=True``, ``num_iterations=5``); ``error.render(name_fn)`` names it
the caller's way (a command line: ``--overwrite``, ``--num_iterations=5``).

``name_fn(name)`` names the parameter itself, ``name_fn(name, value)`` a
setting of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NameFn = Callable[..., str]  # (name) or (name, value) -> how the caller writes it


def parameter(name: str, *value: Any) -> str:
    """How a library caller writes a parameter: ``name``, or ``name=value`` with a value."""
    return f"{name}={value[0]}" if value else name


class RunError(Exception):
    """A run-management error. ``compose(name_fn) -> message`` (or a plain message that names no parameter)."""

    def __init__(self, compose: Callable[[NameFn], str] | str):
        self._compose = compose if callable(compose) else (lambda name_fn: compose)
        super().__init__(self._compose(parameter))

    def render(self, name_fn: NameFn) -> str:
        """The message with every parameter named by ``name_fn``."""
        return self._compose(name_fn)


class SimulatorUnavailable(RunError, RuntimeError):
    """A simulator stayed unavailable after its retries (e.g. every CARLA server of a pool failed); the message
    names what failed. The run's last good checkpoint is kept: the same call resumes once it is back."""

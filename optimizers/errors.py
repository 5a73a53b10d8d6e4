"""One root exception for optsweep's optimizers.

Config errors are also ``ValueError`` so callers can catch the builtin; "this combination cannot
run on this device" is its own class, which the sweep records as an INFEASIBLE trial rather than
a failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class OptsweepError(Exception):
    """Root of every error optsweep raises on purpose."""


class ConfigError(OptsweepError, ValueError):
    """An invalid configuration value. The message names the field, the rule and the value."""


class UnsupportedOnDeviceError(OptsweepError, RuntimeError):
    """A valid configuration with no real kernel on this device (e.g. int4 weight-only on CPU)."""


class UnsupportedArchitectureError(OptsweepError, RuntimeError):
    """The model contains a layer the technique cannot handle; the message names the layer."""


def check_choice(owner: str, field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``.

    >>> check_choice("PruningConfig", "method", "magnitude", ["magnitude", "random"])
    """
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{owner}.{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
        )


def check_range(
    owner: str, field: str, value: float, low: float, high: float, *, high_open: bool = True
) -> None:
    """Raise :class:`ConfigError` unless ``low <= value < high`` (or ``<= high``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{owner}.{field} must be in [{low}, {high}{bracket}; got {value!r}")

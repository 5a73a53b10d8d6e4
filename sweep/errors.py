"""Sweep errors. Config and usage errors exit with code 2 and a one-line message."""

from __future__ import annotations

from optimizers.errors import ConfigError, OptsweepError

__all__ = ["ConfigError", "OptsweepError", "SweepError"]


class SweepError(OptsweepError, RuntimeError):
    """The sweep could not run (Ray unavailable, storage unreadable, ...)."""

"""The one exception ``analysis`` raises on purpose.

It is a ``ValueError`` so callers can catch the builtin; the CLI turns it into a one-line
``error: ...`` on stderr and exit code 2. It does not derive from ``optimizers.errors`` on
purpose: importing ``optimizers`` imports torch, and reading Parquet must stay light.
"""

from __future__ import annotations


class AnalysisError(ValueError):
    """A dataset, objective or constraint that cannot be analysed; the message is one line.

    >>> try:
    ...     raise AnalysisError("column 'latency_ms' is missing")
    ... except ValueError as e:
    ...     print(e)
    column 'latency_ms' is missing
    """

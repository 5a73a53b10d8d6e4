"""The one exception ``analysis`` raises on purpose, and the warnings it emits.

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


class AnalysisWarning(UserWarning):
    """Something ``analysis`` worked around; the message is one line.

    The CLI prints these as ``warning: ...`` on stderr instead of Python's warning format.
    """


class DamagedFileWarning(AnalysisWarning):
    """A Parquet file that cannot be read (truncated, not Parquet) was skipped; names the file.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("skipped unreadable Parquet file 'r/7.parquet': ...", DamagedFileWarning)
    >>> issubclass(caught[0].category, UserWarning)
    True
    """

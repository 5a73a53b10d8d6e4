"""Shared helpers for the analysis tests: synthetic rows through the real schema."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.dataset import Results, results_from_frame
from analysis.schema import COLUMN_NAMES, DEFAULT_OBJECTIVES, SCHEMA, schema_with_metadata
from analysis.synthetic import synthetic_table, write_synthetic_run

__all__ = ["make_results", "rows_table", "synthetic_table", "write_rows", "write_synthetic_run"]

_DEFAULTS: dict[str, Any] = {
    "state": "COMPLETE", "pruning_method": "none", "quantization_type": "none",
    "precision": "fp32", "latency_iqr_ms": 0.0, "baseline_latency_ms": 1.0,
    "baseline_size_bytes": 100, "baseline_accuracy": 1.0, "speedup": 1.0,
    "compression_ratio": 1.0, "accuracy_drop": 0.0, "device": "cpu", "hardware": "cpu-a",
    "threads": 1, "torch_version": "2.13", "duration_s": 1.0, "size_bytes": 100, "accuracy": 1.0,
}


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    objectives: Mapping[str, str] | None = None,
    constraints: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Hand-written rows (missing columns get harmless defaults) as a schema-conformant table."""
    full = []
    for i, r in enumerate(rows):
        row = {**_DEFAULTS, "trial_number": i, **r}
        full.append({c: row.get(c) for c in COLUMN_NAMES})
    schema = schema_with_metadata(objectives or DEFAULT_OBJECTIVES, constraints or {}, "hand")
    return pa.Table.from_pylist(full, schema=schema)


def make_results(rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> Results:
    t = rows_table(rows, **kwargs)
    return results_from_frame(t.to_pandas(), metadata=t.schema.metadata)


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_table(rows, **kwargs), path)
    return path


def frame_of(results: Results) -> pd.DataFrame:
    return results.frame


assert SCHEMA is not None


def cli_app() -> Any:
    """A Typer app with the analysis commands (``pareto``, ``report``, ...)."""
    import typer

    from analysis.cli import register

    a = typer.Typer()
    register(a)
    return a


def invoke(app: Any, *args: object) -> Any:
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])

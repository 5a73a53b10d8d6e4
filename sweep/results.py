"""The results writer: one Parquet file per trial, written atomically (temp file + rename).

Layout of ``OUT/``::

    results/baseline.parquet        the untouched model (trial_number -1)
    results/trial-000012.parquet    one file per finished trial, any state
    sweep.json                      how to rebuild the model (for export), redacted config
    study.journal                   the Optuna study (default storage)

A crash can never leave a half-written file visible: readers only see ``*.parquet`` names, and
each appears by ``os.replace`` of a complete temp file. Object stores (``s3://...``) have no
atomic rename; there a single writer (the driver) uploads each complete file in one PUT.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import BASELINE_TRIAL, SCHEMA, schema_with_metadata


def _clean(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and (math.isnan(value)) and not pa.types.is_floating(typ):
        return None
    if pa.types.is_integer(typ):
        return int(value)
    if pa.types.is_floating(typ):
        return float(value)
    if pa.types.is_boolean(typ):
        return bool(value)
    if pa.types.is_string(typ) and not isinstance(value, str):
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return value


def to_table(rows: list[Mapping[str, Any]], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Rows (dicts keyed by column) -> a table with exactly the schema's columns and types."""
    arrays = {}
    for f in SCHEMA:
        arrays[f.name] = pa.array([_clean(r.get(f.name), f.type) for r in rows], type=f.type)
    return pa.Table.from_pydict(arrays, schema=schema)


class ResultsWriter:
    """Writes trial rows under ``OUT/results`` with the sweep's metadata.

    >>> import tempfile
    >>> w = ResultsWriter(tempfile.mkdtemp(), {"latency_ms": "minimize"}, {}, "demo")
    >>> w.existing_trials()
    set()
    """

    def __init__(self, out: str | Path, objectives: Mapping[str, str], constraints: Mapping[str, Any],
                 study_name: str) -> None:
        self.out = Path(out)
        self.dir = self.out / "results"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema_with_metadata(objectives, constraints, study_name)

    def path_for(self, trial_number: int) -> Path:
        if trial_number == BASELINE_TRIAL:
            return self.dir / "baseline.parquet"
        return self.dir / f"trial-{trial_number:06d}.parquet"

    def write(self, row: Mapping[str, Any]) -> Path:
        """Write one row atomically; returns its path."""
        table = to_table([row], self.schema)
        final = self.path_for(int(row["trial_number"]))
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".parquet.partial")
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def existing_trials(self) -> set[int]:
        """Trial numbers that already have a row (baseline excluded)."""
        out = set()
        for p in self.dir.glob("trial-*.parquet"):
            try:
                out.add(int(p.stem.split("-")[1]))
            except (IndexError, ValueError):
                continue
        return out

    def read(self, trial_number: int) -> dict[str, Any] | None:
        path = self.path_for(trial_number)
        if not path.exists():
            return None
        rows = pq.read_table(path).to_pylist()
        return rows[0] if rows else None

    def clean_partials(self) -> int:
        """Remove temp files a crashed writer left behind; they were never visible as rows."""
        n = 0
        for p in self.dir.glob(".tmp-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n



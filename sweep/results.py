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


def is_uri(out: str | Path) -> bool:
    """True for an object-store/filesystem URI (``s3://...``); False for a local path."""
    return "://" in str(out)


class ResultsWriter:
    """Writes trial rows under ``OUT/results`` with the sweep's metadata.

    ``out`` is a local or shared-filesystem path (temp file + fsync + ``os.replace``: atomic), or
    a pyarrow filesystem URI such as ``s3://bucket/prefix?endpoint_override=...`` (no rename
    exists; each row is one object that appears only when its upload completes, and only the
    driver writes, so no reader sees a partial row).

    >>> import tempfile
    >>> w = ResultsWriter(tempfile.mkdtemp(), {"latency_ms": "minimize"}, {}, "demo")
    >>> w.existing_trials()
    set()
    """

    def __init__(self, out: str | Path, objectives: Mapping[str, str], constraints: Mapping[str, Any],
                 study_name: str) -> None:
        self.remote = is_uri(out)
        if self.remote:
            import pyarrow.fs as pafs

            self.fs, base = pafs.FileSystem.from_uri(str(out))
            self._rdir = f"{base.rstrip('/')}/results"
            self._base = base.rstrip("/")
            self.fs.create_dir(self._rdir, recursive=True)
        self.out = Path(str(out)) if not self.remote else Path(self._base)
        self.dir = self.out / "results"
        if not self.remote:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema_with_metadata(objectives, constraints, study_name)

    @staticmethod
    def _name(trial_number: int) -> str:
        return "baseline.parquet" if trial_number == BASELINE_TRIAL else f"trial-{trial_number:06d}.parquet"

    def path_for(self, trial_number: int) -> Path:
        return self.dir / self._name(trial_number)

    def write(self, row: Mapping[str, Any]) -> str:
        """Write one row atomically; returns its path."""
        table = to_table([row], self.schema)
        name = self._name(int(row["trial_number"]))
        if self.remote:
            path = f"{self._rdir}/{name}"
            pq.write_table(table, path, filesystem=self.fs)  # one object, visible once complete
            return path
        final = self.dir / name
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
        return str(final)

    def write_text(self, name: str, text: str) -> None:
        """A small side file next to ``results/`` (e.g. ``sweep.json``), replaced atomically."""
        if self.remote:
            with self.fs.open_output_stream(f"{self._base}/{name}") as f:
                f.write(text.encode())
            return
        path = self.out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _names(self) -> list[str]:
        if self.remote:
            import pyarrow.fs as pafs

            infos = self.fs.get_file_info(pafs.FileSelector(self._rdir, allow_not_found=True))
            return [i.base_name for i in infos if i.type == pafs.FileType.File]
        return [p.name for p in self.dir.iterdir()]

    def existing_trials(self) -> set[int]:
        """Trial numbers that already have a row (baseline excluded)."""
        out = set()
        for name in self._names():
            if not (name.startswith("trial-") and name.endswith(".parquet")):
                continue
            try:
                out.add(int(name[len("trial-"):-len(".parquet")]))
            except ValueError:
                continue
        return out

    def read(self, trial_number: int) -> dict[str, Any] | None:
        name = self._name(trial_number)
        if self.remote:
            import pyarrow.fs as pafs

            remote_path = f"{self._rdir}/{name}"
            if self.fs.get_file_info(remote_path).type == pafs.FileType.NotFound:  # one HEAD, not a LIST
                return None
            rows = pq.read_table(remote_path, filesystem=self.fs).to_pylist()
        else:
            local = self.dir / name
            if not local.exists():
                return None
            rows = pq.read_table(local).to_pylist()
        return rows[0] if rows else None

    def clean_partials(self) -> int:
        """Remove temp files a crashed writer left behind; they were never visible as rows."""
        if self.remote:
            return 0  # uploads are all-or-nothing: nothing partial to clean
        n = 0
        for p in self.dir.glob(".tmp-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n

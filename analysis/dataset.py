"""Load trial rows from Parquet into a :class:`Results` (a DataFrame plus the sweep's metadata).

Accepted inputs (see ``analysis/schema.py`` for the contract):

- a sweep output directory ``OUT`` (reads ``OUT/results/*.parquet``),
- the ``OUT/results`` directory itself, or any directory of ``*.parquet`` files,
- a single ``.parquet`` file, written by optsweep or by any other tool that has the
  :data:`~analysis.schema.REQUIRED_COLUMNS`,
- any of those as a URI pyarrow understands (``s3://bucket/out``, ``file:///abs/out``).

Optional columns that a file lacks are added as nulls, so downstream code can rely on every
column in :data:`~analysis.schema.COLUMN_NAMES` existing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import AnalysisError
from .schema import (
    BASELINE_TRIAL,
    COLUMNS,
    DEFAULT_OBJECTIVES,
    DIRECTIONS,
    META_CONSTRAINTS,
    META_OBJECTIVES,
    META_SCHEMA_VERSION,
    META_STUDY,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
)

__all__ = ["Results", "load_results", "results_from_frame", "find_parquet_files"]

_NUMERIC_TYPES = {
    n for n, t, _ in COLUMNS
    if (pa.types.is_floating(t) or pa.types.is_integer(t)) and n != "trial_number"
}
_BOOL_COLUMNS = {n for n, t, _ in COLUMNS if pa.types.is_boolean(t)}


@dataclass(frozen=True)
class Results:
    """Every trial row of one sweep (or of one foreign Parquet file) plus its metadata.

    ``frame`` has one row per trial, baseline included (``trial_number == -1``), sorted by
    ``trial_number``; every schema column exists. ``objectives`` maps column to
    ``"minimize"``/``"maximize"`` in the sweep's order; ``constraints`` is the sweep config's
    form (``{"max_accuracy_drop": 0.01}``).

    >>> r = load_results("runs/digits")            # doctest: +SKIP
    >>> r.objectives                               # doctest: +SKIP
    {'latency_ms': 'minimize', 'size_bytes': 'minimize', 'accuracy': 'maximize'}
    """

    frame: pd.DataFrame
    objectives: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    constraints: dict[str, Any] = field(default_factory=dict)
    schema_version: str | None = None
    study_name: str | None = None
    source: str = ""

    @property
    def baseline(self) -> pd.Series | None:
        """The baseline row (``trial_number == -1``), or ``None`` when the file has none."""
        rows = self.frame[self.frame["trial_number"] == BASELINE_TRIAL]
        return None if rows.empty else rows.iloc[0]

    def __len__(self) -> int:
        return len(self.frame)


def find_parquet_files(path: str | Path) -> list[Path]:
    """The Parquet files ``path`` stands for (see the module docstring), sorted by name."""
    p = Path(path)
    if not p.exists():
        raise AnalysisError(f"results path {str(p)!r} does not exist")
    if p.is_file():
        return [p]
    if (p / "results").is_dir():
        p = p / "results"
    files = sorted(f for f in p.glob("*.parquet") if f.is_file() and not f.name.startswith("."))
    if not files:
        raise AnalysisError(f"no *.parquet files in {str(p)!r} (expected OUT or OUT/results)")
    return files


def _find_remote(uri: str) -> tuple[list[str], pafs.FileSystem]:
    """Like :func:`find_parquet_files` for a URI (``s3://bucket/out``, ``file:///...``)."""
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError) as e:
        raise AnalysisError(f"cannot open {uri!r}: {str(e).splitlines()[0]}") from e
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise AnalysisError(f"results path {uri!r} does not exist")
    if info.type == pafs.FileType.File:
        return [root], fs
    sub = root.rstrip("/") + "/results"
    if fs.get_file_info(sub).type == pafs.FileType.Directory:
        root = sub
    files = sorted(
        f.path for f in fs.get_file_info(pafs.FileSelector(root))
        if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
        and not f.base_name.startswith(".")
    )
    if not files:
        raise AnalysisError(f"no *.parquet files in {uri!r} (expected OUT or OUT/results)")
    return files, fs


def load_results(path: str | Path) -> Results:
    """Read trial rows from ``path`` and validate them against the schema contract.

    Raises :class:`AnalysisError` (a ``ValueError``) with a one-line message when the path has
    no rows, a required column is missing, or the writer's schema major version differs.

    >>> results = load_results("runs/digits")      # doctest: +SKIP
    >>> results.frame[["trial_number", "latency_ms"]].head()  # doctest: +SKIP
    """
    if "://" in str(path):
        remote, fs = _find_remote(str(path))
        table = _read_table(remote, fs)
    else:
        table = _read_table([str(f) for f in find_parquet_files(path)])
    meta = dict(table.schema.metadata or {})
    frame = table.to_pandas()
    return results_from_frame(frame, metadata=meta, source=str(path))


def results_from_frame(
    frame: pd.DataFrame,
    *,
    metadata: Mapping[bytes | str, bytes | str] | None = None,
    source: str = "<frame>",
) -> Results:
    """Validate an in-memory frame the way :func:`load_results` validates a file.

    >>> results_from_frame(pd.DataFrame())        # doctest: +SKIP
    Traceback (most recent call last):
    AnalysisError: ...
    """
    meta = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (metadata or {}).items()}
    version = meta.get(META_SCHEMA_VERSION.decode())
    if version is None and "schema_version" in frame.columns:
        versions = frame["schema_version"].dropna().unique()
        version = str(versions[0]) if len(versions) else None
    _check_version(version, source)

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise AnalysisError(
            f"{source}: required column {missing[0]!r} is missing"
            + (f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else "")
        )
    if frame.empty:
        raise AnalysisError(f"{source}: the dataset has no rows")

    frame = _normalise_frame(frame)
    objectives = _parse_objectives_meta(meta.get(META_OBJECTIVES.decode()), source)
    constraints = _parse_json_meta(meta.get(META_CONSTRAINTS.decode()), "constraints", source) or {}
    if not isinstance(constraints, dict):
        raise AnalysisError(f"{source}: metadata 'optsweep.constraints' must be a JSON object")
    study = meta.get(META_STUDY.decode())
    if study is None and frame["study_name"].notna().any():
        study = str(frame["study_name"].dropna().iloc[0])
    return Results(
        frame=frame,
        objectives=objectives,
        constraints=dict(constraints),
        schema_version=version,
        study_name=study,
        source=source,
    )


def _read_table(files: list[str], fs: pafs.FileSystem | None = None) -> pa.Table:
    try:
        dataset = ds.dataset(files, format="parquet", filesystem=fs)
        table = dataset.to_table()
        if len(files) > 1 and any(c not in table.column_names for c in REQUIRED_COLUMNS):
            raise pa.ArrowInvalid("first file lacks columns; unify all schemas")
        return table
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    # Files disagree (older writer, foreign tool): unify every footer's schema, then scan again.
    try:
        schemas = [pq.read_schema(f, filesystem=fs) for f in files]
        unified = pa.unify_schemas(schemas, promote_options="permissive")
        unified = unified.with_metadata(schemas[0].metadata)
        return ds.dataset(files, schema=unified, format="parquet", filesystem=fs).to_table()
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = str(Path(files[0]).parent)
        raise AnalysisError(f"cannot read Parquet files under {where!r}: {first}") from e


def _check_version(version: str | None, source: str) -> None:
    if version is None:
        return  # foreign files carry no version; the column check is the contract
    ours = SCHEMA_VERSION.split(".")[0]
    theirs = str(version).split(".")[0]
    if theirs != ours:
        raise AnalysisError(
            f"{source}: schema version {version} is not readable by this optsweep "
            f"(reads {ours}.x, writes {SCHEMA_VERSION})"
        )


def _parse_json_meta(raw: str | None, what: str, source: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{source}: metadata 'optsweep.{what}' is not valid JSON ({e.msg})") from e


def _parse_objectives_meta(raw: str | None, source: str) -> dict[str, str]:
    parsed = _parse_json_meta(raw, "objectives", source)
    if not parsed:
        return dict(DEFAULT_OBJECTIVES)
    if isinstance(parsed, list):  # tolerate ["latency_ms:min", ...]
        from .pareto import parse_objective

        return {o.name: o.direction for o in map(parse_objective, parsed)}
    if not isinstance(parsed, dict):
        raise AnalysisError(f"{source}: metadata 'optsweep.objectives' must be a JSON object")
    out: dict[str, str] = {}
    for name, direction in parsed.items():
        d = {"min": "minimize", "max": "maximize"}.get(str(direction), str(direction))
        if d not in DIRECTIONS:
            raise AnalysisError(
                f"{source}: objective {name!r} has direction {direction!r}; "
                f"expected one of {', '.join(DIRECTIONS)}"
            )
        out[str(name)] = d
    return out


def _normalise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for name, _, _ in COLUMNS:
        if name not in frame.columns:
            frame[name] = np.nan if name in _NUMERIC_TYPES else None
    for name in _NUMERIC_TYPES:
        # float64 everywhere: NaN is the one "missing" marker the numpy code understands.
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    for name in _BOOL_COLUMNS:
        frame[name] = frame[name].astype("object")
    frame["trial_number"] = pd.to_numeric(frame["trial_number"], errors="coerce").astype("Int64")
    frame["state"] = frame["state"].astype("object").where(frame["state"].notna(), "UNKNOWN")
    frame["state"] = frame["state"].astype(str).str.upper()
    frame["hardware"] = frame["hardware"].astype("object").where(frame["hardware"].notna(), "unknown")
    frame = frame.sort_values("trial_number", kind="stable").reset_index(drop=True)
    return frame

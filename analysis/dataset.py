"""Load trial rows from Parquet into a :class:`Results` (a DataFrame plus the sweep's metadata).

Accepted inputs (see ``analysis/schema.py`` for the contract):

- a sweep output directory ``OUT`` (reads ``OUT/results/*.parquet``),
- the ``OUT/results`` directory itself, or any directory of ``*.parquet`` files,
- a single ``.parquet`` file, written by optsweep or by any other tool that has the
  :data:`~analysis.schema.REQUIRED_COLUMNS` (``trial_number``, ``state``) and the objectives'
  columns,
- any of those as a URI pyarrow understands (``s3://bucket/out``, ``file:///abs/out``).

Documented columns that a file lacks are filled as :data:`~analysis.schema.ABSENT_DEFAULTS`
says, or with nulls, so downstream code can rely on every column in
:data:`~analysis.schema.COLUMN_NAMES` existing; :attr:`Results.columns_present` tells what the
file really had. In a folder, a file that cannot be read (truncated, not Parquet) is skipped with
a :class:`~analysis.errors.DamagedFileWarning` naming it, and the other files are read.
"""

from __future__ import annotations

import json
import warnings
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

from ._escape import redact_uris
from .errors import AnalysisError, DamagedFileWarning
from .schema import (
    BASELINE_TRIAL,
    COLUMN_NAMES,
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
_TEXT_COLUMNS = {n for n, t, _ in COLUMNS if pa.types.is_string(t)}
# baseline_X absent: the baseline row's X. Gains absent: computed from the two columns.
_BASELINE_OF = {"baseline_latency_ms": "latency_ms", "baseline_size_bytes": "size_bytes",
                "baseline_accuracy": "accuracy"}
_GAINS = {"speedup": ("baseline_latency_ms", "latency_ms"),
          "compression_ratio": ("baseline_size_bytes", "size_bytes"),
          "accuracy_drop": ("baseline_accuracy", "accuracy")}
# 2**53: the largest integer a float64 (how numbers are read) holds exactly.
_MAX_TRIAL = 2**53


@dataclass(frozen=True)
class Results:
    """Every trial row of one sweep (or of one foreign Parquet file) plus its metadata.

    ``frame`` has one row per trial, baseline included (``trial_number == -1``), sorted by
    ``trial_number``; every schema column exists. ``objectives`` maps column to
    ``"minimize"``/``"maximize"`` in the sweep's order; ``constraints`` is the sweep config's
    form (``{"max_accuracy_drop": 0.01}``). ``columns_present`` is the set of columns the source
    really had (plus those derived from them, see :data:`~analysis.schema.ABSENT_DEFAULTS`);
    ``None`` means every column. ``skipped`` names the files that could not be read.

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
    columns_present: frozenset[str] | None = None
    skipped: tuple[str, ...] = ()

    def has_column(self, name: str) -> bool:
        """Whether the source had ``name`` (rather than it being filled with a default)."""
        return name in self.frame.columns and (
            self.columns_present is None or name in self.columns_present)

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
    source = redact_uris(path)  # what messages and the report name: never a URI's credentials
    if "://" in str(path):
        try:
            remote, fs = _find_remote(str(path))
            table, skipped = _read_table(remote, fs)
        except AnalysisError as e:
            raise AnalysisError(redact_uris(e)) from None
        except (OSError, pa.ArrowException) as e:  # unreachable store, refused credentials
            raise AnalysisError(redact_uris(f"cannot read {source!r}: {_first_line(e)}")) from None
    else:
        table, skipped = _read_table([str(f) for f in find_parquet_files(path)])
    meta = dict(table.schema.metadata or {})
    frame = _to_pandas(table, source)
    return results_from_frame(frame, metadata=meta, source=source, skipped=skipped)


def _to_pandas(table: pa.Table, source: str) -> pd.DataFrame:
    names = table.column_names
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise AnalysisError(f"{source}: column {dup!r} appears more than once")
    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError):
        pass
    # Broken "pandas" metadata (index and dtype hints from whatever wrote the file): ignore it.
    try:
        return table.replace_schema_metadata(None).to_pandas()
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
        raise AnalysisError(f"{source}: cannot convert the rows to a table: {_first_line(e)}") from e


def results_from_frame(
    frame: pd.DataFrame,
    *,
    metadata: Mapping[bytes | str, bytes | str] | None = None,
    source: str = "<frame>",
    skipped: tuple[str, ...] = (),
) -> Results:
    """Validate an in-memory frame the way :func:`load_results` validates a file.

    >>> results_from_frame(pd.DataFrame())        # doctest: +SKIP
    Traceback (most recent call last):
    AnalysisError: ...
    """
    meta = _decode_metadata(metadata, source)
    if not frame.columns.is_unique:
        dup = frame.columns[frame.columns.duplicated()][0]
        raise AnalysisError(f"{source}: column {dup!r} appears more than once")
    frame = _as_schema_kinds(frame)
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

    present = {str(c) for c in frame.columns}
    frame = _normalise_frame(frame, present, source)
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
        columns_present=frozenset(present),
        skipped=tuple(skipped),
    )


def _read_table(
    files: list[str], fs: pafs.FileSystem | None = None
) -> tuple[pa.Table, tuple[str, ...]]:
    """All rows of ``files`` and the files skipped as unreadable (each with a warning)."""
    try:
        table = ds.dataset(files, format="parquet", filesystem=fs).to_table()
        # The dataset takes its schema from the first file: another file's extra columns would be
        # dropped silently, so a first file without the full schema goes the careful way.
        if len(files) == 1 or all(c in table.column_names for c in COLUMN_NAMES):
            return table, ()
    except (pa.ArrowException, OSError):
        pass
    # Files disagree (older writer, foreign tool) or some are damaged: read every footer, skip
    # the unreadable ones, unify the rest, then scan again.
    skipped: list[str] = []
    good: list[str] = []
    schemas: list[pa.Schema] = []
    for f in files:
        try:
            schemas.append(pq.read_schema(f, filesystem=fs))
            good.append(f)
        except (pa.ArrowException, OSError) as e:
            _skip(f, e, files, skipped)
    where = str(Path(files[0]).parent)
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowException, ValueError) as e:
        raise AnalysisError(f"cannot combine the Parquet files under {where!r}: {_first_line(e)}") from e
    unified = unified.with_metadata(schemas[0].metadata)
    try:
        table = ds.dataset(good, schema=unified, format="parquet", filesystem=fs).to_table()
        return table, tuple(skipped)
    except (pa.ArrowException, OSError):
        pass
    # A footer that reads but data pages that do not: find the culprits one file at a time.
    tables = []
    for f in good:
        try:
            tables.append(ds.dataset([f], schema=unified, format="parquet", filesystem=fs).to_table())
        except (pa.ArrowException, OSError) as e:
            _skip(f, e, files, skipped)
    return pa.concat_tables(tables).replace_schema_metadata(unified.metadata), tuple(skipped)


def _skip(f: str, e: BaseException, files: list[str], skipped: list[str]) -> None:
    """Record ``f`` as unreadable and warn; raise once no file is left to read."""
    skipped.append(f)
    if len(skipped) == len(files):
        if len(files) == 1:
            raise AnalysisError(f"cannot read Parquet file {f!r}: {_first_line(e)}") from e
        where = str(Path(files[0]).parent)
        raise AnalysisError(
            f"none of the {len(files)} Parquet files under {where!r} is readable "
            f"(the last, {f!r}: {_first_line(e)})"
        ) from e
    warnings.warn(f"skipped unreadable Parquet file {f!r}: {_first_line(e)}", DamagedFileWarning,
                  stacklevel=4)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _decode_metadata(
    metadata: Mapping[bytes | str, bytes | str] | None, source: str
) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        if isinstance(v, bytes):
            try:
                value = v.decode("utf-8")
            except UnicodeDecodeError:
                if key == META_STUDY.decode():  # a name, for display only
                    value = v.decode("utf-8", "replace")
                elif key.startswith("optsweep."):
                    raise AnalysisError(f"{source}: metadata {key!r} is not UTF-8 text") from None
                else:
                    continue  # someone else's binary metadata; not ours to read
        else:
            value = str(v)
        out[key] = value
    return out


def _check_version(version: str | None, source: str) -> None:
    if version is None:
        return  # foreign files carry no version; the column check is the contract
    ours = SCHEMA_VERSION.split(".")[0]
    theirs = str(version).split(".")[0]
    if theirs != ours:
        raise AnalysisError(
            f"{source}: schema version {_clip(str(version))} is not readable by this optsweep "
            f"(reads {ours}.x, writes {SCHEMA_VERSION})"
        )


def _parse_json_meta(raw: str | None, what: str, source: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{source}: metadata 'optsweep.{what}' is not valid JSON ({e.msg})") from e
    except RecursionError as e:
        raise AnalysisError(f"{source}: metadata 'optsweep.{what}' is nested too deeply") from e


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


def _normalise_frame(frame: pd.DataFrame, present: set[str], source: str) -> pd.DataFrame:
    """Every schema column, in the reader's types; ``present`` gains the derived columns."""
    frame = frame.copy()
    for name, _, _ in COLUMNS:
        if name not in frame.columns:
            frame[name] = np.nan if name in _NUMERIC_TYPES else None
    for name in _NUMERIC_TYPES:
        # float64 everywhere: NaN is the one "missing" marker the numpy code understands.
        frame[name] = _numeric(frame[name])
    frame["trial_number"] = _trial_numbers(frame["trial_number"], source)
    frame["state"] = frame["state"].astype("object").where(frame["state"].notna(), "UNKNOWN")
    frame["state"] = frame["state"].astype(str).str.upper()
    frame["hardware"] = frame["hardware"].astype("object").where(frame["hardware"].notna(), "unknown")
    frame = frame.sort_values("trial_number", kind="stable").reset_index(drop=True)
    base = frame[frame["trial_number"] == BASELINE_TRIAL]
    for col, of in _BASELINE_OF.items():
        if col not in present and of in present and not base.empty:
            frame[col] = float(base[of].iloc[0])
            present.add(col)
    with np.errstate(divide="ignore", invalid="ignore"):
        for col, (b, x) in _GAINS.items():
            if col not in present and b in present and x in present:
                frame[col] = frame[b] - frame[x] if col == "accuracy_drop" else frame[b] / frame[x]
                present.add(col)
    return frame


def _as_schema_kinds(frame: pd.DataFrame) -> pd.DataFrame:
    """Text and boolean schema columns as Python ``str`` / ``bool`` / ``None``, whatever a
    foreign writer stored there (bytes, lists, numbers), so grouping and comparing never fail."""
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    for name in _TEXT_COLUMNS & set(frame.columns):
        if pd.api.types.infer_dtype(frame[name], skipna=True) not in ("string", "empty"):
            frame[name] = pd.Series([_text(v) for v in frame[name]], index=frame.index, dtype=object)
    for name in _BOOL_COLUMNS & set(frame.columns):
        if pd.api.types.infer_dtype(frame[name], skipna=True) in ("boolean", "empty"):
            frame[name] = frame[name].astype("object")
        else:
            frame[name] = pd.Series([_flag(v) for v in frame[name]], index=frame.index, dtype=object)
    return frame


def _text(v: object) -> str | None:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return str(v.tolist())
    return str(v)


def _flag(v: object) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and v in (0, 1):
        return bool(v)
    return None


def _numeric(s: pd.Series) -> pd.Series:
    """``s`` as float64, with NaN for whatever is not a number (text, lists, dates)."""
    if s.dtype.kind in "mM":  # a date is not a latency, whatever its integer encoding
        return pd.Series(np.nan, index=s.index, dtype="float64")
    try:
        return pd.to_numeric(s, errors="coerce").astype("float64")
    except (TypeError, ValueError, OverflowError):
        return s.map(_to_float).astype("float64")


def _to_float(v: object) -> float:
    if isinstance(v, (bool, int, float, np.number)):
        try:
            return float(v)
        except OverflowError:
            return float("nan")
    return float("nan")


def _trial_numbers(s: pd.Series, source: str) -> pd.Series:
    t = _numeric(s)
    vals = t.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(vals) | (np.round(vals) != vals) | (np.abs(vals) > _MAX_TRIAL)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AnalysisError(
            f"{source}: column 'trial_number' must hold integers; {int(bad.sum())} row(s) do not "
            f"(first: row {i}, value {_short(s.iloc[i])})"
        )
    return t.astype("int64").astype("Int64")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(v: object, limit: int = 40) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return "null"
    return _clip(repr(v), limit)

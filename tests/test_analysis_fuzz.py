"""Fuzz the dataset loader: any Parquet file gives rows or one ``AnalysisError``, never a traceback.

Columns get arbitrary names from the schema (and a few others), arbitrary Arrow types and values
(nulls, NaN, ±inf, huge integers, hostile text, lists, dates), and the file arbitrary metadata
(``optsweep.*`` keys holding JSON or garbage bytes, a broken ``pandas`` key). What a user runs,
``optsweep pareto``, must end with exit 0 or a one-line ``error:`` and exit 2.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from analysis import AnalysisError, load_results, pareto_front
from analysis.cli import register
from analysis.report import front_table, records

COLUMN_POOL = ["trial_number", "state", "latency_ms", "size_bytes", "accuracy", "hardware",
               "latency_iqr_ms", "feasible", "duplicate_of", "baseline_accuracy", "accuracy_drop",
               "schema_version", "study_name", "error", "group", "rank", "x"]
META_KEYS = [b"optsweep.schema_version", b"optsweep.objectives", b"optsweep.constraints",
             b"optsweep.study", b"pandas", b"other"]
HOSTILE = st.sampled_from(["[/bold]x", "[link=http://e]y[/link]", "\x1b[2J", "a\rb", "<script>",
                           "=1+1", "COMPLETE", "complete", "FAIL", "", "cpu", "-1", "1.5", "nan"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["min", "max", "minimize", "latency_ms", "accuracy_drop", "max_latency_ms"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["latency_ms", "accuracy", "max_accuracy_drop", "min_x",
                                       "nope", "size_bytes"]) | st.text(max_size=6),
                      children, max_size=3),
    max_leaves=8,
)
meta_values = (json_values.map(lambda v: json.dumps(v).encode())
               | st.binary(max_size=12)
               | st.sampled_from([b"1.0", b"1.9", b"2.0", b"", b"\xff\xfe", b"[" * 3000]))


@st.composite
def column(draw: st.DrawFn, n: int) -> pa.Array:
    """``n`` values of one drawn Arrow type, nulls included."""
    kind = draw(st.sampled_from(["int", "float", "str", "bool", "binary", "list", "time", "null",
                                 "uint", "dict"]))
    def some(values: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(st.none() | values, min_size=n, max_size=n))

    if kind == "int":
        return pa.array(some(st.integers(-2, 5) | st.integers(-(2**63), 2**63 - 1)), pa.int64())
    if kind == "uint":
        return pa.array(some(st.integers(0, 2**64 - 1)), pa.uint64())
    if kind == "float":
        return pa.array(some(st.floats() | st.sampled_from([-1.0, 0.0, 0.5, 1.0])), pa.float64())
    if kind == "str":
        return pa.array(some(HOSTILE | st.text(max_size=6)), pa.string())
    if kind == "bool":
        return pa.array(some(st.booleans()), pa.bool_())
    if kind == "binary":
        return pa.array(some(st.binary(max_size=4)), pa.binary())
    if kind == "list":
        return pa.array(some(st.lists(st.integers(-3, 3), max_size=2)), pa.list_(pa.int64()))
    if kind == "time":
        when = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 1, 1),
                            timezones=st.just(timezone.utc))
        return pa.array(some(when), pa.timestamp("us", tz="UTC"))
    if kind == "dict":
        return pa.array(some(HOSTILE), pa.string()).dictionary_encode()
    return pa.nulls(n)


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from(COLUMN_POOL), min_size=1, max_size=9, unique=True))
    if draw(st.integers(0, 3)) > 0:  # mostly a plausible file, so what runs after loading is fuzzed too
        names = list(dict.fromkeys(["trial_number", "state", "latency_ms", "size_bytes",
                                    "accuracy", *names]))
    numbers = st.floats(0, 10) | st.sampled_from([None, float("nan"), float("inf"), -1.0])
    plausible = {
        "trial_number": st.lists(st.integers(-1, 9), min_size=n, max_size=n, unique=True)
        .map(lambda v: pa.array(v, pa.int64())),
        "state": st.lists(st.sampled_from(["COMPLETE"] * 4 + ["FAIL"]) | HOSTILE,
                          min_size=n, max_size=n).map(lambda v: pa.array(v, pa.string())),
        **{c: st.lists(numbers, min_size=n, max_size=n).map(lambda v: pa.array(v, pa.float64()))
           for c in ("latency_ms", "size_bytes", "accuracy", "latency_iqr_ms")},
    }
    arrays = {}
    for name in names:
        if name in plausible and draw(st.integers(0, 3)) > 0:
            arrays[name] = draw(plausible[name])
        else:
            arrays[name] = draw(column(n))
    table = pa.table(arrays)
    meta = draw(st.none() | st.dictionaries(st.sampled_from(META_KEYS), meta_values, max_size=4))
    return table.replace_schema_metadata(meta or None)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(table=parquet_tables())
def test_any_parquet_file_loads_or_fails_cleanly(app: typer.Typer, table: pa.Table) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.parquet"
        pq.write_table(table, path)
        try:
            pr = pareto_front(load_results(path))
            records(front_table(pr))
        except AnalysisError as e:
            assert str(e) and "\n" not in str(e)
        res = CliRunner().invoke(app, ["pareto", str(path)])
    assert res.exit_code in (0, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 2:
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1

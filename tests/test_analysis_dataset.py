"""Loading: OUT, OUT/results, a single file, foreign files; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis_fixtures import rows_table, write_synthetic_run

from analysis import AnalysisError, load_results
from analysis.schema import DEFAULT_OBJECTIVES, REQUIRED_COLUMNS, SCHEMA_VERSION


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("ds") / "out", 30, seed=0)


@pytest.mark.parametrize("sub", ["", "results", "results/baseline.parquet"])
def test_accepts_out_results_dir_and_single_file(run: Path, sub: str) -> None:
    r = load_results(run / sub if sub else run)
    assert -1 in r.frame["trial_number"].tolist()
    assert r.objectives == {"latency_ms": "minimize", "size_bytes": "minimize", "accuracy": "maximize"}
    assert r.schema_version == SCHEMA_VERSION and r.study_name == "synthetic"
    if not sub.endswith(".parquet"):
        assert len(r) == 31 and r.frame["trial_number"].is_monotonic_increasing
        assert r.baseline is not None and r.baseline["trial_number"] == -1


def test_accepts_a_uri(run: Path) -> None:
    r = load_results(run.resolve().as_uri())
    assert len(r) == 31 and r.baseline is not None
    one = load_results((run / "results" / "baseline.parquet").resolve().as_uri())
    assert len(one) == 1
    with pytest.raises(AnalysisError, match="does not exist"):
        load_results((run / "nope").resolve().as_uri())


def test_foreign_file_with_only_required_and_objective_columns(tmp_path: Path) -> None:
    full = rows_table([{"latency_ms": 1.0}, {"latency_ms": 2.0}]).to_pandas()
    foreign = full[[*REQUIRED_COLUMNS, *DEFAULT_OBJECTIVES]].copy()
    foreign["size_bytes"] = foreign["size_bytes"].astype("int32")  # another tool, narrower types
    pq.write_table(pa.Table.from_pandas(foreign, preserve_index=False), tmp_path / "x.parquet")
    r = load_results(tmp_path / "x.parquet")
    assert r.schema_version is None and r.objectives["accuracy"] == "maximize"
    assert "quantized_engine" in r.frame.columns and r.frame["quantized_engine"].isna().all()
    assert r.frame["size_bytes"].dtype == "float64"
    assert r.has_column("latency_ms") and not r.has_column("quantized_engine")


def test_files_with_different_columns_are_unified(tmp_path: Path) -> None:
    t = rows_table([{"trial_number": 0, "latency_ms": 1.0}, {"trial_number": 1, "latency_ms": 2.0}])
    pq.write_table(t.slice(0, 1).drop_columns(["traceback", "hostname"]), tmp_path / "a.parquet")
    pq.write_table(t.slice(1, 1), tmp_path / "b.parquet")
    r = load_results(tmp_path)
    assert r.frame["trial_number"].tolist() == [0, 1]


@pytest.mark.parametrize("column", ["state", "trial_number"])
def test_missing_required_column_is_named(tmp_path: Path, column: str) -> None:
    t = rows_table([{"latency_ms": 1.0}])
    pq.write_table(t.drop_columns([column]), tmp_path / "x.parquet")
    with pytest.raises(AnalysisError, match=f"required column '{column}' is missing") as e:
        load_results(tmp_path)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def test_empty_dataset(tmp_path: Path) -> None:
    t = rows_table([{"latency_ms": 1.0}])
    pq.write_table(t.slice(0, 0), tmp_path / "x.parquet")
    with pytest.raises(AnalysisError, match="no rows"):
        load_results(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match=r"no \*\.parquet files"):
        load_results(tmp_path / "empty")
    with pytest.raises(AnalysisError, match="does not exist"):
        load_results(tmp_path / "nope")


def test_schema_major_version_gate(tmp_path: Path) -> None:
    t = rows_table([{"latency_ms": 1.0}])
    meta = dict(t.schema.metadata)
    minor = t.replace_schema_metadata({**meta, b"optsweep.schema_version": b"1.7"})
    pq.write_table(minor, tmp_path / "minor.parquet")
    assert load_results(tmp_path / "minor.parquet").schema_version == "1.7"
    major = t.replace_schema_metadata({**meta, b"optsweep.schema_version": b"2.0"})
    pq.write_table(major, tmp_path / "major.parquet")
    with pytest.raises(AnalysisError, match="schema version 2.0"):
        load_results(tmp_path / "major.parquet")


def test_objectives_metadata_forms(tmp_path: Path) -> None:
    t = rows_table([{"latency_ms": 1.0}])
    meta = dict(t.schema.metadata)
    short = t.replace_schema_metadata({**meta, b"optsweep.objectives": json.dumps(
        {"latency_ms": "min", "accuracy": "max"}).encode()})
    pq.write_table(short, tmp_path / "a.parquet")
    assert load_results(tmp_path / "a.parquet").objectives == {
        "latency_ms": "minimize", "accuracy": "maximize"}
    bad = t.replace_schema_metadata({**meta, b"optsweep.objectives": b'{"latency_ms": "up"}'})
    pq.write_table(bad, tmp_path / "b.parquet")
    with pytest.raises(AnalysisError, match="direction 'up'"):
        load_results(tmp_path / "b.parquet")


def test_duckdb_and_polars_can_read_the_same_rows(run: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"select count(*) from '{run}/results/*.parquet'").fetchall()[0][0]
    assert n == len(load_results(run))
    assert isinstance(load_results(run).frame, pd.DataFrame)

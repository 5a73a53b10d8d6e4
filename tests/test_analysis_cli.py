"""CLI commands through typer's CliRunner on synthetic datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import typer
from analysis_fixtures import rows_table, write_rows, write_synthetic_run
from typer.testing import CliRunner

from analysis.cli import register


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("cli") / "out", 80, seed=5)


def invoke(app: typer.Typer, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_pareto_table(app: typer.Typer, run: Path) -> None:
    res = invoke(app, "pareto", run)
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.output and "latency_ms:min" in res.output


def test_uris_stay_strings(app: typer.Typer, run: Path, tmp_path: Path) -> None:
    # A Path argument would turn "file:///abs/out" into "file:/abs/out" (and s3:// into s3:/).
    uri = run.resolve().as_uri()
    assert uri.startswith("file:///")
    res = invoke(app, "pareto", uri, "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(invoke(app, "pareto", run, "--format", "json").stdout)
    res = invoke(app, "report", uri, "--out", tmp_path / "r.html")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").exists()
    res = invoke(app, "compare", uri, run, "--out", tmp_path / "c.html")
    assert res.exit_code == 0, res.output


def test_pareto_json_rows_have_trial_number(app: typer.Typer, run: Path) -> None:
    res = invoke(app, "pareto", run, "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and all(isinstance(r["trial_number"], int) for r in rows)
    assert {"latency_ms", "size_bytes", "accuracy", "speedup", "knee"} <= set(rows[0])


def test_pareto_objective_and_constraint_options(app: typer.Typer, run: Path) -> None:
    res = invoke(app, "pareto", run, "-f", "json", "-o", "latency_ms:min", "-o", "accuracy:max",
                 "-c", "accuracy_drop <= 0.02", "-c", "speedup >= 1")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and "size_bytes" not in rows[0]
    assert all(r["accuracy_drop"] <= 0.02 and r["speedup"] >= 1 for r in rows)


def test_pareto_csv(app: typer.Typer, run: Path) -> None:
    res = invoke(app, "pareto", run, "--format", "csv")
    assert res.exit_code == 0
    df = pd.read_csv(io.StringIO(res.stdout))
    assert "trial_number" in df.columns and len(df) >= 1


def test_pareto_all_hardware(app: typer.Typer, tmp_path: Path) -> None:
    rows = [{"trial_number": 0, "latency_ms": 1.0, "hardware": "a"},
            {"trial_number": 1, "latency_ms": 2.0, "hardware": "b"}]
    write_rows(tmp_path / "r.parquet", rows)
    split = json.loads(invoke(app, "pareto", tmp_path, "-f", "json").stdout)
    merged = json.loads(invoke(app, "pareto", tmp_path, "-f", "json", "--all-hardware").stdout)
    assert len(split) == 2 and [r["trial_number"] for r in merged] == [0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "nope:min"], "unknown objective 'nope'"),
        (["-o", "latency_ms"], "bad objective"),
        (["-c", "latency_ms << 5"], 'bad constraint "latency_ms << 5"'),
        (["-c", "import os"], "COLUMN OP NUMBER"),
        (["-f", "xml"], "--format must be one of"),
    ],
)
def test_user_errors_are_one_line_exit_2(app: typer.Typer, run: Path, args: list[str], message: str) -> None:
    res = invoke(app, "pareto", run, *args)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output


def test_missing_column_and_empty_dataset_exit_2(app: typer.Typer, tmp_path: Path) -> None:
    t = rows_table([{"latency_ms": 1.0}])
    (tmp_path / "a").mkdir()
    pq.write_table(t.drop_columns(["accuracy"]), tmp_path / "a" / "x.parquet")
    res = invoke(app, "pareto", tmp_path / "a")
    assert res.exit_code == 2 and "required column 'accuracy' is missing" in res.stderr
    (tmp_path / "b").mkdir()
    pq.write_table(t.slice(0, 0), tmp_path / "b" / "x.parquet")
    for cmd in ("pareto", "report"):
        res = invoke(app, cmd, tmp_path / "b")
        assert res.exit_code == 2 and "no rows" in res.stderr


def test_report_command(app: typer.Typer, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    res = invoke(app, "report", run, "--out", out)
    assert res.exit_code == 0, res.output
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert '<script src="http' not in out.read_text()


def test_compare_command(app: typer.Typer, tmp_path: Path) -> None:
    a = write_synthetic_run(tmp_path / "a", 30, seed=1, hardware="Xeon")
    b = write_synthetic_run(tmp_path / "b", 30, seed=2, hardware="EPYC")
    res = invoke(app, "compare", a, b, "--out", tmp_path / "c.html")
    assert res.exit_code == 0, res.output
    assert "Xeon (a)" in res.stdout and "EPYC (b)" in res.stdout and (tmp_path / "c.html").is_file()

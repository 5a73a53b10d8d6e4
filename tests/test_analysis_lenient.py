"""Analysis needs only what it uses, and one damaged file does not hide the others.

- ``trial_number``, ``state`` and the objectives' columns are required; other columns are
  optional with the defaults in ``analysis.schema.ABSENT_DEFAULTS``.
- A Parquet file that cannot be read is skipped with a warning that names it.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from analysis_fixtures import cli_app, invoke, rows_table, write_synthetic_run

from analysis import AnalysisError, load_results, pareto_front
from analysis.errors import DamagedFileWarning
from analysis.schema import ABSENT_DEFAULTS, COLUMN_NAMES

NO_HARDWARE_NOTE = "the dataset has no 'hardware' column"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return cli_app()  # type: ignore[no-any-return]


def plain_table(baseline: bool = True, **extra: list[object]) -> pa.Table:
    """What a tool that is not optsweep writes: objective columns only, no metadata."""
    cols: dict[str, list[object]] = {
        "trial_number": [0, 1, 2, 3],
        "state": ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"],
        "latency_ms": [1.0, 2.0, 3.0, None],
        "size_bytes": [300, 200, 100, None],
        "accuracy": [0.90, 0.95, 0.80, None],
    }
    if baseline:
        cols = {k: [v0, *v] for (k, v), v0 in
                zip(cols.items(), [-1, "COMPLETE", 4.0, 400, 0.96], strict=True)}
    cols.update(extra)
    return pa.table(cols)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    pq.write_table(plain_table(), tmp_path / "plain.parquet")
    return tmp_path / "plain.parquet"


# -- only what it uses ---------------------------------------------------------------------------


def test_absent_defaults_name_schema_columns() -> None:
    assert set(ABSENT_DEFAULTS) <= set(COLUMN_NAMES)


def test_plain_pyarrow_file_loads_with_stated_defaults(plain: Path) -> None:
    r = load_results(plain)
    assert r.schema_version is None and len(r) == 5
    assert r.has_column("latency_ms") and not r.has_column("threads")
    assert r.frame["threads"].isna().all() and r.frame["device"].isna().all()
    assert (r.frame["hardware"] == "unknown").all()
    # baseline_* from the baseline row, gains computed from them
    assert (r.frame["baseline_latency_ms"] == 4.0).all()
    row = r.frame[r.frame["trial_number"] == 0].iloc[0]
    assert row["speedup"] == 4.0 and row["compression_ratio"] == pytest.approx(400 / 300)
    assert row["accuracy_drop"] == pytest.approx(0.06)


def test_without_a_baseline_row_gains_stay_absent(tmp_path: Path) -> None:
    pq.write_table(plain_table(baseline=False), tmp_path / "p.parquet")
    r = load_results(tmp_path / "p.parquet")
    assert not r.has_column("speedup") and r.frame["speedup"].isna().all()
    with pytest.raises(AnalysisError,
                       match=r"constraint 'accuracy_drop <= 0\.01' needs column 'accuracy_drop', "
                             "which the dataset lacks"):
        pareto_front(r, constraints=["accuracy_drop <= 0.01"])


def test_constraint_on_a_derived_column_filters(plain: Path) -> None:
    pr = pareto_front(load_results(plain), constraints=["accuracy_drop <= 0.05"])
    assert sorted(pr.front["trial_number"].tolist()) == [-1, 1]


def test_objective_column_is_required_when_used(tmp_path: Path) -> None:
    t = plain_table().drop_columns(["size_bytes"])
    pq.write_table(t, tmp_path / "p.parquet")
    r = load_results(tmp_path / "p.parquet")  # loading needs no objective column
    with pytest.raises(AnalysisError, match=r"required column 'size_bytes' is missing "
                                            r"\(it is objective size_bytes:min\)"):
        pareto_front(r)
    pr = pareto_front(r, ["latency_ms:min", "accuracy:max"])
    assert sorted(pr.front["trial_number"].tolist()) == [-1, 0, 1]


def test_missing_hardware_is_a_note_not_an_error(plain: Path, tmp_path: Path) -> None:
    pr = pareto_front(load_results(plain))
    assert pr.groups == ["unknown"] and len(pr.notes) == 1 and NO_HARDWARE_NOTE in pr.notes[0]
    assert pareto_front(load_results(plain), all_hardware=True).notes == ()
    with_hw = plain_table(hardware=["x"] * 5)
    pq.write_table(with_hw, tmp_path / "hw.parquet")
    assert pareto_front(load_results(tmp_path / "hw.parquet")).notes == ()


@pytest.mark.parametrize(
    ("values", "shown"),
    [([-1, None, 1, 2, 3], "null"), ([-1, 0.5, 1, 2, 3], "0.5"), (["-1", "x", "1", "2", "3"], "'x'")],
)
def test_trial_number_must_be_integers(tmp_path: Path, values: list[object], shown: str) -> None:
    t = plain_table()
    t = t.set_column(0, "trial_number", pa.array(values))
    pq.write_table(t, tmp_path / "p.parquet")
    with pytest.raises(AnalysisError, match=r"column 'trial_number' must hold integers; 1 row\(s\) "
                                            rf"do not \(first: row 1, value {shown}\)"):
        load_results(tmp_path / "p.parquet")


def test_cli_pareto_and_report_on_a_plain_file(app: typer.Typer, plain: Path, tmp_path: Path) -> None:
    res = invoke(app, "pareto", plain, "-f", "json")
    assert res.exit_code == 0, res.output
    assert sorted(r["trial_number"] for r in json.loads(res.stdout)) == [-1, 0, 1, 2]
    assert res.stderr.startswith("note: ") and NO_HARDWARE_NOTE in res.stderr
    table = invoke(app, "pareto", plain)
    assert table.exit_code == 0 and "Pareto front: 4 of 4 eligible rows" in table.stdout
    out = tmp_path / "rep" / "r.html"
    rep = invoke(app, "report", plain, "--out", out)
    assert rep.exit_code == 0, rep.output
    assert html.escape(NO_HARDWARE_NOTE) in out.read_text()
    assert NO_HARDWARE_NOTE in out.with_suffix(".md").read_text()


def test_cli_missing_objective_is_one_line(app: typer.Typer, tmp_path: Path) -> None:
    pq.write_table(plain_table().drop_columns(["accuracy"]), tmp_path / "p.parquet")
    res = invoke(app, "pareto", tmp_path)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "required column 'accuracy' is missing (it is objective accuracy:max)" in res.stderr
    ok = invoke(app, "pareto", tmp_path, "-f", "json", "-o", "latency_ms:min", "-o", "size_bytes:min")
    assert ok.exit_code == 0, ok.output


# -- damaged files -------------------------------------------------------------------------------


@pytest.fixture
def damaged_run(tmp_path: Path) -> tuple[Path, Path]:
    """A 10-trial run whose trial 3 was cut short (a disk-full write, an interrupted copy)."""
    out = write_synthetic_run(tmp_path / "out", 10, seed=0)
    victim = out / "results" / "trial-000003.parquet"
    victim.write_bytes(victim.read_bytes()[:100])
    return out, victim


def test_truncated_file_is_skipped_with_a_warning_naming_it(damaged_run: tuple[Path, Path]) -> None:
    out, victim = damaged_run
    with pytest.warns(DamagedFileWarning, match="skipped unreadable Parquet file " + re.escape(f"'{victim}': ")):
        r = load_results(out)
    assert len(r) == 10 and 3 not in r.frame["trial_number"].tolist()
    assert r.skipped == (str(victim),)


def test_damaged_file_in_a_uri_is_skipped(damaged_run: tuple[Path, Path]) -> None:
    out, victim = damaged_run
    with pytest.warns(DamagedFileWarning, match=re.escape(victim.name)):
        r = load_results(out.resolve().as_uri())
    assert len(r) == 10


def test_corrupt_pages_with_a_readable_footer_are_skipped(tmp_path: Path) -> None:
    out = write_synthetic_run(tmp_path / "out", 6, seed=1)
    victim = out / "results" / "trial-000002.parquet"
    data = bytearray(victim.read_bytes())
    data[4:300] = b"\xab" * 296  # the first data pages; the footer at the end stays intact
    victim.write_bytes(bytes(data))
    pq.read_schema(victim)  # the footer still reads: only a scan finds the damage
    with pytest.warns(DamagedFileWarning, match=re.escape(victim.name)):
        r = load_results(out)
    assert sorted(r.frame["trial_number"].tolist()) == [-1, 0, 1, 3, 4, 5]


def test_not_parquet_and_foreign_schema_together(tmp_path: Path) -> None:
    pq.write_table(plain_table(), tmp_path / "a.parquet")
    pq.write_table(rows_table([{"trial_number": 10, "latency_ms": 0.5}]), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_text("not parquet at all")
    with pytest.warns(DamagedFileWarning, match="c.parquet"):
        r = load_results(tmp_path)
    assert sorted(r.frame["trial_number"].tolist()) == [-1, 0, 1, 2, 3, 10]


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    with pytest.raises(AnalysisError, match=r"cannot read Parquet file '.*a\.parquet': "):
        load_results(tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.warns(DamagedFileWarning, match="a.parquet"), \
            pytest.raises(AnalysisError, match=r"none of the 2 Parquet files under '.*' is readable"):
        load_results(tmp_path)


def test_cli_warns_on_stderr_and_keeps_going(app: typer.Typer, damaged_run: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    out, victim = damaged_run
    res = invoke(app, "pareto", out, "-f", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)  # stdout stays parseable
    assert res.stderr.startswith(f"warning: skipped unreadable Parquet file '{victim}': ")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    html = tmp_path / "r.html"
    rep = invoke(app, "report", out, "--out", html)
    assert rep.exit_code == 0 and "warning: skipped" in rep.stderr
    assert victim.name in html.read_text() and victim.name in html.with_suffix(".md").read_text()


def test_pareto_cmd_called_directly_prints_warning_lines(
    damaged_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep's end-of-run table calls ``pareto_cmd`` without the CLI wrapper."""
    from analysis.cli import pareto_cmd

    out, victim = damaged_run
    pareto_cmd(str(out), fmt="json")  # type: ignore[arg-type]
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: skipped unreadable Parquet file ")
    assert victim.name in captured.err and json.loads(captured.out)

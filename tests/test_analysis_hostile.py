"""Values from a results folder are data: they print literally wherever they land.

Terminal (rich markup, control characters), Markdown, HTML (tables and plotly labels),
matplotlib labels and CSV (formula prefixes).
"""

from __future__ import annotations

import csv
import doctest
import io
import re
from pathlib import Path

import pytest
import typer
from analysis_fixtures import cli_app, invoke, write_rows

import analysis._escape as escape_module
from analysis._escape import csv_cell, csv_frame, markdown, rich_markup, terminal
from analysis.report import write_report

MARKUP = "[/bold]x"
LINK = "[link=http://evil.example]click[/link]"
ANSI = "\x1b[31mred\x1b[0m\r"
SCRIPT = "<script>alert(1)</script>"
MD_LINK = "[free](http://evil.example)"
FORMULA = '=HYPERLINK("http://evil.example","x")'
MATH = r"$\frac{$"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return cli_app()  # type: ignore[no-any-return]


def hostile_run(path: Path, names: list[str]) -> Path:
    """One front point per hardware name, plus a failed row with a hostile error message."""
    rows: list[dict[str, object]] = [
        {"trial_number": i, "latency_ms": 1.0 + i, "hardware": name, "accuracy_drop": -0.01,
         "pruning_method": name if i == 0 else "none"}
        for i, name in enumerate(names)
    ]
    rows.append({"trial_number": len(names), "state": "FAIL", "latency_ms": None,
                 "error_type": f"Boom{SCRIPT}", "error": f"a|b\n| injected | row | {MD_LINK} `x`",
                 "hardware": names[0]})
    write_rows(path / "results" / "rows.parquet", rows, objectives={"latency_ms": "minimize", "accuracy": "maximize"})
    return path


# -- the helpers ---------------------------------------------------------------------------------


def test_escape_doctests_pass() -> None:
    result = doctest.testmod(escape_module)
    assert result.attempted >= 8 and result.failed == 0


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("\x1b[2J", "\\x1b[2J"), ("a\rb", "a\\rb"), ("\x07", "\\x07"), ("\x00", "\\x00"),
     ("\x7f", "\\x7f"), ("\x9b31m", "\\x9b31m"), ("abc\u202edef", "abc\\u202edef"),
     ("tab\there", "tab\\there"), ("naïve µs", "naïve µs"), ("a\u200bb", "a\\u200bb"),
     ("line\u2028sep", "line\\u2028sep"), ("\ufeffbom", "\\ufeffbom")],
)
def test_terminal_shows_control_characters(raw: str, shown: str) -> None:
    assert terminal(raw) == shown


def test_rich_markup_prints_literally() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=200, highlight=False)
    console.print(rich_markup(f"{MARKUP} {LINK} {ANSI}"))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert MARKUP in out and LINK in out and "\\x1b[31mred" in out
    assert "\x1b]8;" not in out and "\x1b[31m" not in out


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cell_protects_every_formula_prefix(prefix: str) -> None:
    assert csv_cell(f"{prefix}1+1") == f"'{prefix}1+1"


@pytest.mark.parametrize("value", [-1, -1.5, 0, None, True, "cpu", "1-1", " =x"])
def test_csv_cell_leaves_numbers_and_plain_strings(value: object) -> None:
    assert csv_cell(value) == value


def test_markdown_cannot_break_a_table_row() -> None:
    cell = markdown("a|b\n| c `d` <i>")
    assert "\n" not in cell and re.search(r"(?<!\\)\|", cell) is None
    assert "<" not in cell and "\\`d\\`" in cell


# -- where they land -----------------------------------------------------------------------------


def test_pareto_table_prints_markup_and_controls_literally(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # a real terminal: links and colours would render
    run = hostile_run(tmp_path, [MARKUP, LINK, ANSI])
    res = invoke(app, "pareto", run)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert MARKUP in out and LINK in out and "\\x1b[31mred\\x1b[0m\\r" in out
    assert "\x1b]8;" not in out and "\x1b[31m" not in out and "\r" not in out


def test_error_lines_show_control_characters(app: typer.Typer, tmp_path: Path) -> None:
    run = hostile_run(tmp_path, ["cpu"])
    res = invoke(app, "pareto", run, "-c", "x\x1b[2J <")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "\x1b" not in res.stderr and 'bad constraint "x\\x1b[2J <"' in res.stderr


def test_csv_output_has_no_formulas(app: typer.Typer, tmp_path: Path) -> None:
    run = hostile_run(tmp_path, [FORMULA, "@SUM(A1)", "-2+3"])
    res = invoke(app, "pareto", run, "-f", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert sorted(r["group"] for r in rows) == sorted(["'" + FORMULA, "'@SUM(A1)", "'-2+3"])
    assert {r["accuracy_drop"] for r in rows} == {"-0.01"}  # a negative number stays a number
    assert not any(v.startswith(("=", "+", "@")) for r in rows for v in r.values())


@pytest.fixture
def report(tmp_path: Path) -> Path:
    run = hostile_run(tmp_path / "run", [SCRIPT, '<a href="http://evil.example">x</a>', MATH,
                                         MD_LINK])
    return write_report(run, tmp_path / "out" / "report.html").html


def test_markdown_report_escapes_data(report: Path) -> None:
    md = report.with_suffix(".md").read_text()
    assert SCRIPT not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert MD_LINK not in md and "\\[free\\](http&#8203;://evil.example)" in md
    assert "http://" not in md  # GitHub would link a bare URL by itself
    assert "<a href" not in md and "\n| injected" not in md
    assert MATH not in md and r"\$\\frac{\$" in md  # GitHub renders $...$ as math
    for line in md.splitlines():
        if line.startswith("| state |"):
            columns = len(re.findall(r"(?<!\\)\|", line))
        elif line.startswith("| FAIL"):
            assert len(re.findall(r"(?<!\\)\|", line)) == columns  # the pipe in the error is escaped


def test_html_report_escapes_data(report: Path) -> None:
    text = report.read_text()
    assert SCRIPT not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # plotly.js renders <a href> in trace names: they go in as entities
    labels = text.replace("\\u002f", "/")  # plotly's JSON writes "/" as \u002f
    assert '"name":"front: &lt;a href=&quot;http://evil.example&quot;&gt;x&lt;/a&gt;"' in labels
    assert '\\u003ca href=\\"http://evil.example\\"' not in labels


def test_pngs_render_with_mathtext_in_names(report: Path) -> None:
    pngs = sorted(report.parent.glob("*.png"))
    assert [p.name for p in pngs] == ["report-hypervolume.png", "report-pareto.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_csv_frame_protects_headers_too() -> None:
    import pandas as pd

    out = csv_frame(pd.DataFrame({"=cmd": ["+x"], "ok": [-3]}))
    assert list(out.columns) == ["'=cmd", "ok"] and out.iloc[0].tolist() == ["'+x", -3]


@pytest.mark.parametrize("uri", [
    "s3://AKIAXXXX:se/cr@t@no-such-bucket-optsweep/out",
    "file:///no/such/out?X-Amz-Signature=f00ba7&sig=abc",
    "gs://user:hunter2@bucket/out",
    "s3://AKIAXXXX:hunt#er2@bucket/out",
    "s3://AKIAXXXX:hunt er2@bucket/out",
])
def test_credentials_in_a_results_uri_are_never_printed(app: typer.Typer, uri: str) -> None:
    res = invoke(app, "pareto", uri)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1, res.output
    for secret in ("se/cr@t", "f00ba7", "sig=abc", "hunter2", "AKIAXXXX", "er2"):
        assert secret not in res.output


def test_compare_never_shows_a_uris_credentials(app: typer.Typer, tmp_path: Path) -> None:
    run = hostile_run(tmp_path / "run", ["cpu"])
    uri = run.resolve().as_uri() + "?token=SECRETTOKEN"  # pyarrow ignores an unknown query key on file://
    res = invoke(app, "compare", uri, run, "--out", tmp_path / "c.html")
    assert res.exit_code == 0, res.output
    assert "SECRETTOKEN" not in res.output and "token=***" in res.output
    assert "SECRETTOKEN" not in (tmp_path / "c.html").read_text()


def test_redact_uris_hides_userinfo_and_secret_query_values() -> None:
    from analysis._escape import redact_uris

    assert redact_uris("s3://K:p/w@b@bucket/x?region=eu&account_key=z") == \
        "s3://***@bucket/x?region=eu&account_key=***"
    assert redact_uris("see 'https://u:p@h/a' and 'file:///tmp/x'") == "see 'https://***@h/a' and 'file:///tmp/x'"
    assert redact_uris("runs/digits") == "runs/digits"


def test_reports_replace_a_planted_symlink_never_write_through_it(app: typer.Typer, tmp_path: Path) -> None:
    run = hostile_run(tmp_path / "run", ["cpu"])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "rep"
    out.mkdir()
    for name in ("report.html", "report.md", "report-pareto.png", "c.html"):
        (out / name).symlink_to(victim)
    assert invoke(app, "report", run, "--out", out / "report.html").exit_code == 0
    assert invoke(app, "compare", run, run, "--out", out / "c.html").exit_code == 0
    assert victim.read_text() == "precious"
    for name in ("report.html", "report.md", "c.html"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    from analysis._io import atomic_write

    target = tmp_path / "verify.json"
    atomic_write(target, "old")

    with pytest.raises(TypeError):
        atomic_write(target, object())  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["verify.json"]

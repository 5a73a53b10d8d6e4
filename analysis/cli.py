"""``optsweep pareto | report | compare | export``: thin commands over the analysis library.

The main ``optsweep`` app calls :func:`register`. Errors the user can fix (empty dataset,
missing column, unknown objective, bad constraint, unknown trial) print one ``error: ...`` line
on stderr and exit with code 2, without a traceback. Warnings the library emits (a damaged file
skipped) print as ``warning: ...`` and remarks on a front (no hardware column) as ``note: ...``,
both on stderr so ``--format json|csv`` output stays parseable.

Everything printed that comes from data is escaped for the terminal (``analysis/_escape.py``):
rich markup prints literally and control characters show as escapes such as ``\x1b``. CSV
cells that a spreadsheet would run as a formula get a leading ``'``.

>>> import typer
>>> app = typer.Typer()
>>> register(app)
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ._escape import csv_frame, terminal
from .errors import AnalysisError, AnalysisWarning

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])

ObjectiveOpt = Annotated[
    list[str] | None,
    typer.Option("--objective", "-o", help="NAME:min|max; repeat for several (default: the sweep's)"),
]
ConstraintOpt = Annotated[
    list[str] | None,
    typer.Option("--constraint", "-c",
                 help="'COLUMN OP NUMBER', e.g. 'accuracy_drop <= 0.01'; repeat for several "
                      "(default: the sweep's constraints)"),
]
AllHardwareOpt = Annotated[
    bool, typer.Option("--all-hardware", help="merge every hardware into one front")
]
ExactOpt = Annotated[
    bool, typer.Option("--exact", help="compare latency medians exactly (no noise-aware ties)")
]

PARETO_COLUMNS = ["trial_number", "group", "is_baseline", "knee", "pruning_method", "pruning_amount",
                  "quantization_type", "quantization_bits", "precision", "compile"]
EXTRA_COLUMNS = ["latency_iqr_ms", "speedup", "compression_ratio", "accuracy_drop"]


def _user_errors(fn: F) -> F:
    """Turn user-fixable errors into ``error: ...`` + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with analysis_warnings_as_lines():
                return fn(*args, **kwargs)
        except AnalysisError as e:
            _fail(str(e))
        except Exception as e:
            # optimizers' config errors (OptsweepError) are user errors too; import-free check.
            if any(c.__name__ == "OptsweepError" for c in type(e).__mro__):
                _fail(f"{type(e).__name__}: {e}")
            raise

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def analysis_warnings_as_lines() -> Iterator[None]:
    """Print each AnalysisWarning raised inside as one escaped ``warning: ...`` line on stderr.

    Other warnings keep Python's format.

    >>> with analysis_warnings_as_lines():
    ...     warnings.warn("skipped unreadable Parquet file 'x'", AnalysisWarning)  # doctest: +SKIP
    """
    with warnings.catch_warnings():
        warnings.simplefilter("always", AnalysisWarning)
        default = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            if issubclass(category, AnalysisWarning):
                typer.echo(f"warning: {terminal(message)}", err=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    typer.echo(f"error: {terminal(first)}", err=True)
    raise typer.Exit(2)


def _notes(pr: Any) -> None:
    for note in getattr(pr, "notes", ()):
        typer.echo(f"note: {terminal(note)}", err=True)


def pareto_cmd(
    path: Annotated[Path, typer.Argument(help="sweep OUT dir, OUT/results, or a .parquet file")],
    objective: ObjectiveOpt = None,
    constraint: ConstraintOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
    all_hardware: AllHardwareOpt = False,
    exact: ExactOpt = False,
) -> None:
    """Print the Pareto-optimal trials (feasible, complete; per hardware)."""
    from .dataset import load_results
    from .pareto import pareto_front
    from .report import front_table, to_json

    if fmt not in ("table", "json", "csv"):
        raise AnalysisError(f"--format must be one of table, json, csv; got {fmt!r}")
    with analysis_warnings_as_lines():  # also when called directly (the sweep's end-of-run table)
        results = load_results(path)
    pr = pareto_front(results, objective, constraint, noise_aware=not exact,
                      all_hardware=all_hardware)
    front = front_table(pr)
    objs = [o.name for o in pr.objectives]
    cols = [c for c in dict.fromkeys(PARETO_COLUMNS + objs + EXTRA_COLUMNS) if c in front.columns]
    front = front[cols]
    _notes(pr)
    if fmt == "json":
        typer.echo(to_json(front))
    elif fmt == "csv":
        sys.stdout.write(csv_frame(front).to_csv(index=False))
    else:
        _print_table(front, pr)


def _compact(front: Any) -> Any:
    """One readable column per technique instead of two raw ones, for the terminal."""
    import pandas as pd

    f = front.copy()

    def pruning(r: Any) -> str:
        if r["pruning_method"] in (None, "none") or pd.isna(r["pruning_amount"]):
            return "none"
        return f"{r['pruning_method']} {r['pruning_amount']:.2f}"

    def quant(r: Any) -> str:
        if r["quantization_type"] in (None, "none") or pd.isna(r["quantization_bits"]):
            return "none"
        return f"{r['quantization_type']} int{int(r['quantization_bits'])}"

    if {"pruning_method", "pruning_amount"} <= set(f.columns):
        f.insert(f.columns.get_loc("pruning_method"), "pruning", f.apply(pruning, axis=1))
        f = f.drop(columns=["pruning_method", "pruning_amount"])
    if {"quantization_type", "quantization_bits"} <= set(f.columns):
        f.insert(f.columns.get_loc("quantization_type"), "quantization", f.apply(quant, axis=1))
        f = f.drop(columns=["quantization_type", "quantization_bits"])
    marks = []
    for r in f.itertuples(index=False):
        m = ("baseline " if getattr(r, "is_baseline", False) else "") + ("knee" if getattr(r, "knee", False) else "")
        marks.append(m.strip())
    f = f.drop(columns=[c for c in ("is_baseline", "knee", "compile") if c in f.columns])
    f.insert(1, "note", marks)
    if "group" in f.columns and f["group"].nunique() <= 1:
        f = f.drop(columns=["group"])
    return f


def _print_table(front: Any, pr: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .report import _fmt

    front = _compact(front)

    # Text, never markup strings: a value like "[/bold]" or "[link=...]" must print as it is.
    title = (f"Pareto front: {len(front)} of {int(pr.table['eligible'].sum())} eligible rows ("
             + ", ".join(map(str, pr.objectives)) + ")")
    table = Table(title=Text(terminal(title)))
    for c in front.columns:
        table.add_column(Text(terminal(str(c).replace("_", " "))), justify="right")
    for row in front.itertuples(index=False):
        table.add_row(*[Text(terminal(_fmt(v))) for v in row])
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    if len(pr.ties):
        console.print(Text(f"{len(pr.ties)} pair(s) of front points tie on latency within their "
                           "IQRs."))


def report_cmd(
    path: Annotated[Path, typer.Argument(help="sweep OUT dir, OUT/results, or a .parquet file")],
    out: Annotated[Path, typer.Option("--out", help="HTML file; report.md + PNGs go next to it")]
    = Path("report.html"),
    objective: ObjectiveOpt = None,
    constraint: ConstraintOpt = None,
    all_hardware: AllHardwareOpt = False,
    exact: ExactOpt = False,
) -> None:
    """Write a self-contained HTML report (works offline) and a Markdown summary."""
    from .report import write_report

    paths = write_report(path, out, objectives=objective, constraints=constraint,
                         noise_aware=not exact, all_hardware=all_hardware)
    typer.echo(terminal(f"wrote {paths.html} ({paths.html.stat().st_size / 1e6:.1f} MB) and "
                        f"{paths.markdown}"))


def compare_cmd(
    paths: Annotated[list[Path], typer.Argument(help="two or more sweep OUT dirs or files")],
    out: Annotated[Path, typer.Option("--out", help="HTML file")] = Path("compare.html"),
    objective: ObjectiveOpt = None,
    constraint: ConstraintOpt = None,
    exact: ExactOpt = False,
) -> None:
    """Plot the fronts of several runs or machines together, labelled by hardware."""
    from .report import write_compare

    html_path, fronts = write_compare(paths, out, objectives=objective, constraints=constraint,
                                      noise_aware=not exact)
    cols = [c for c in ["label", "trial_number", *PARETO_COLUMNS[4:],
                        "latency_ms", "size_bytes", "accuracy", *EXTRA_COLUMNS] if c in fronts]

    class _P:  # what _print_table needs from a ParetoResult
        table = fronts.assign(eligible=True)
        objectives = ("fronts of " + ", ".join(map(str, paths)),)
        ties: list[Any] = []

    _print_table(fronts[cols], _P)
    typer.echo(terminal(f"wrote {html_path}"))


def export_cmd(
    path: Annotated[Path, typer.Argument(help="sweep OUT dir (with sweep.json and results/)")],
    trial: Annotated[int, typer.Option("--trial", help="trial_number to export (-1: baseline)")],
    out: Annotated[Path, typer.Option("--out", help="artifact path; PATH.json is the sidecar")],
    measure: Annotated[bool, typer.Option(help="re-measure latency/accuracy of the artifact")]
    = True,
) -> None:
    """Re-apply a trial's recipe to the sweep's model and write a deployable artifact."""
    from .export import export_trial

    res = export_trial(path, trial, out, measure=measure)
    typer.echo(terminal(f"wrote {res.path} ({res.format}) and {res.sidecar}"))
    typer.echo(f"{'':14}{'recorded':>12}{'artifact':>12}")
    for key in ("latency_ms", "accuracy"):
        rec, got = res.recorded.get(key), res.measured.get(key)
        typer.echo(f"{key:14}{_num(rec):>12}{_num(got):>12}")


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def register(app: typer.Typer) -> None:
    """Add ``pareto``, ``report``, ``compare`` and ``export`` to ``app``."""
    app.command("pareto")(_user_errors(pareto_cmd))
    app.command("report")(_user_errors(report_cmd))
    app.command("compare")(_user_errors(compare_cmd))
    app.command("export")(_user_errors(export_cmd))

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

from ._escape import csv_frame, redact_uris, terminal
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
AllOpt = Annotated[
    bool, typer.Option("--all", help="also rank models that could not be exported (exportable = false)")
]
ExactOpt = Annotated[
    bool, typer.Option("--exact", help="compare latency medians exactly (no noise-aware ties)")
]

def _pareto_columns() -> list[str]:
    from .schema import RECIPE_COLUMNS  # pyarrow: imported only by the commands that read data

    return ["trial_number", "group", "is_baseline", "knee", *RECIPE_COLUMNS, "no_op"]

EXTRA_COLUMNS = ["latency_iqr_ms", "speedup", "speedup_iqr", "compression_ratio", "accuracy_drop",
                 "export_format", "verified"]


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
    path: Annotated[str, typer.Argument(help="sweep OUT dir, OUT/results, a .parquet file, or a URI (s3://...)")],
    objective: ObjectiveOpt = None,
    constraint: ConstraintOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
    all_hardware: AllHardwareOpt = False,
    exact: ExactOpt = False,
    include_all: AllOpt = False,
) -> None:
    """Print the Pareto-optimal trials (feasible, complete, exportable; per hardware)."""
    from .dataset import load_results
    from .pareto import pareto_front
    from .report import front_table, to_json

    if fmt not in ("table", "json", "csv"):
        raise AnalysisError(f"--format must be one of table, json, csv; got {fmt!r}")
    with analysis_warnings_as_lines():  # also when called directly (the sweep's end-of-run table)
        results = load_results(path)
    pr = pareto_front(results, objective, constraint, noise_aware=not exact,
                      all_hardware=all_hardware, include_unexportable=include_all)
    front = front_table(pr)
    objs = [o.name for o in pr.objectives]
    cols = [c for c in dict.fromkeys(_pareto_columns() + objs + EXTRA_COLUMNS) if c in front.columns]
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
        bits = int(r["quantization_bits"])
        label = f"{r['quantization_type']} {'fp16' if bits == 16 else f'int{bits}'}"
        backend = r.get("quantization_backend")
        return f"{label} ({backend})" if isinstance(backend, str) and backend not in ("", "auto") else label

    if {"pruning_method", "pruning_amount"} <= set(f.columns):
        f.insert(f.columns.get_loc("pruning_method"), "pruning", f.apply(pruning, axis=1))
        f = f.drop(columns=["pruning_method", "pruning_amount"])
    if {"quantization_type", "quantization_bits"} <= set(f.columns):
        f.insert(f.columns.get_loc("quantization_type"), "quantization", f.apply(quant, axis=1))
        f = f.drop(columns=[c for c in ("quantization_type", "quantization_bits", "quantization_backend")
                            if c in f.columns])
    empty = [c for c in ("no_op", *EXTRA_COLUMNS) if c in f.columns
             and (f[c].isna().all() or not f[c].astype(str).str.strip().str.len().any())]
    f = f.drop(columns=empty)  # columns this data does not have would only narrow the others
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
    path: Annotated[str, typer.Argument(help="sweep OUT dir, OUT/results, a .parquet file, or a URI (s3://...)")],
    out: Annotated[Path, typer.Option("--out", help="HTML file; report.md + PNGs go next to it")]
    = Path("report.html"),
    objective: ObjectiveOpt = None,
    constraint: ConstraintOpt = None,
    all_hardware: AllHardwareOpt = False,
    exact: ExactOpt = False,
    include_all: AllOpt = False,
) -> None:
    """Write a self-contained HTML report (works offline) and a Markdown summary."""
    from .report import write_report

    paths = write_report(path, out, objectives=objective, constraints=constraint,
                         noise_aware=not exact, all_hardware=all_hardware,
                         include_unexportable=include_all)
    typer.echo(terminal(f"wrote {paths.html} ({paths.html.stat().st_size / 1e6:.1f} MB) and "
                        f"{paths.markdown}"))


def compare_cmd(
    paths: Annotated[list[str], typer.Argument(help="two or more sweep OUT dirs, files or URIs")],
    out: Annotated[Path, typer.Option("--out", help="HTML file")] = Path("compare.html"),
    objective: ObjectiveOpt = None,
    constraint: ConstraintOpt = None,
    exact: ExactOpt = False,
) -> None:
    """Plot the fronts of several runs or machines together, labelled by hardware."""
    from .report import write_compare

    html_path, fronts = write_compare(paths, out, objectives=objective, constraints=constraint,
                                      noise_aware=not exact)
    cols = [c for c in ["label", "trial_number", *_pareto_columns()[4:],
                        "latency_ms", "size_bytes", "accuracy", *EXTRA_COLUMNS] if c in fronts]

    class _P:  # what _print_table needs from a ParetoResult
        table = fronts.assign(eligible=True)
        objectives = ("fronts of " + ", ".join(redact_uris(p) for p in paths),)
        ties: list[Any] = []

    _print_table(fronts[cols], _P)
    typer.echo(terminal(f"wrote {html_path}"))


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="your sweep YAML: the code export may import (model, data)")
]
TrustOpt = Annotated[
    bool, typer.Option("--trust", help="import the code OUT/sweep.json names (only for folders you trust)")
]


def export_cmd(
    path: Annotated[str, typer.Argument(help="local sweep OUT dir (with sweep.json and results/)")],
    trial: Annotated[int | None, typer.Option("--trial", help="trial_number to export (-1: baseline)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="artifact path; PATH.json is the sidecar")] = None,
    front: Annotated[Path | None, typer.Option("--front", help="write every front model into this folder")]
    = None,
    measure: Annotated[bool, typer.Option(help="re-measure latency/accuracy of the artifact")]
    = True,
    config: ConfigOpt = None,
    trust: TrustOpt = False,
) -> None:
    """Re-apply a trial's recipe to the sweep's model and write a deployable artifact."""
    from .export import export_trial

    _local_out(path, "export")
    if front is not None:
        from .verify import export_front

        if trial is not None or out is not None:
            raise AnalysisError("--front writes every front model; it takes no --trial/--out")
        for res in export_front(path, front, config=config, trust=trust, measure=False):
            typer.echo(terminal(f"wrote {res.path} ({res.format})"))
        return
    if trial is None or out is None:
        raise AnalysisError("export needs --trial N and --out PATH, or --front DIR")
    res = export_trial(path, trial, out, measure=measure, config=config, trust=trust)
    typer.echo(terminal(f"wrote {res.path} ({res.format}) and {res.sidecar}"))
    typer.echo(f"{'':14}{'recorded':>12}{'artifact':>12}")
    for key in ("latency_ms", "accuracy"):
        rec, got = res.recorded.get(key), res.measured.get(key)
        typer.echo(f"{key:14}{_num(rec):>12}{_num(got):>12}")


def _local_out(path: str, command: str) -> None:
    if "://" in path:
        raise AnalysisError(f"{command} needs a local sweep OUT (it rebuilds models from OUT/sweep.json and "
                            f"writes beside it); got {redact_uris(path)!r}: copy the folder here first")


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def verify_cmd(
    path: Annotated[str, typer.Argument(help="local sweep OUT dir (with sweep.json and results/)")],
    trial: Annotated[list[int] | None, typer.Option("--trial", help="trial to verify; repeat (default: the front)")]
    = None,
    tolerance: Annotated[float, typer.Option(help="relative speedup difference that is flagged")] = 0.10,
    config: ConfigOpt = None,
    trust: TrustOpt = False,
    rounds: Annotated[int, typer.Option(help="interleaved timing rounds")] = 5,
    min_run_time: Annotated[float, typer.Option(help="seconds of timing per model")] = 1.0,
) -> None:
    """Export front models, re-time each in a fresh process against the untouched model, compare.

    Exit 0 when every re-measured speedup is within --tolerance of the recorded one, 1 otherwise.
    """
    from .verify import verify

    _local_out(path, "verify")
    if rounds < 1 or min_run_time <= 0:
        raise AnalysisError("--rounds must be >= 1 and --min-run-time > 0")
    records = verify(path, trial, tolerance=tolerance, config=config, trust=trust, rounds=rounds,
                     min_run_time_s=min_run_time)
    typer.echo(f"{'trial':>6}  {'format':<14}{'recorded':>10}{'fresh':>10}{'diff':>9}  verdict")
    bad = 0
    for r in records:
        if r.get("error"):
            bad += 1
            typer.echo(terminal(f"{r['trial_number']:>6}  {'-':<14}{'':>10}{'':>10}{'':>9}  FAILED: {r['error']}"))
            continue
        ok = r.get("within_tolerance", False)
        bad += not ok
        rec, got = r.get("recorded_speedup"), r.get("remeasured_speedup")
        typer.echo(f"{r['trial_number']:>6}  {r.get('format', ''):<14}{_num(rec):>9}x{_num(got):>9}x"
                   f"{r.get('difference', float('nan')) * 100:>8.1f}%  {'ok' if ok else 'MISMATCH'}")
    typer.echo(terminal(f"wrote {Path(path) / 'verify.json'}; {len(records) - bad}/{len(records)} within "
                        f"{tolerance:.0%}"))
    if bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``pareto``, ``report``, ``compare`` and ``export`` to ``app``."""
    app.command("pareto")(_user_errors(pareto_cmd))
    app.command("report")(_user_errors(report_cmd))
    app.command("compare")(_user_errors(compare_cmd))
    app.command("export")(_user_errors(export_cmd))
    app.command("verify")(_user_errors(verify_cmd))

"""One self-contained HTML report (plotly, inlined once) plus a Markdown summary with PNGs.

The HTML works offline: plotly.js is inlined with the first figure only and every later figure
reuses it. To stay small on big sweeps, scatter and parallel-coordinates plots keep every front
point and the baseline but at most :data:`MAX_DOMINATED_POINTS` dominated ones (a fixed-seed
sample), coordinates are sent as float32 typed arrays, and hover shows the trial number from
``customdata`` through one shared template instead of per-point text.

Values from the data (hardware names, study names, error messages) are escaped for where they
land: HTML text, plotly labels (plotly.js reads them as HTML), matplotlib labels (``$`` is
mathtext) and Markdown (``analysis/_escape.py``).

>>> write_report("runs/digits", "runs/digits/report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ._escape import markdown, matplotlib_label, plotly_label
from ._io import atomic_write
from .dataset import Results, load_results
from .pareto import (
    Constraint,
    Objective,
    ParetoResult,
    hypervolume_history,
    knee_point,
    pareto_front,
)
from .schema import COLUMNS, RECIPE_COLUMNS

__all__ = [
    "MAX_DOMINATED_POINTS",
    "ReportPaths",
    "front_table",
    "failures_table",
    "environment_table",
    "write_report",
    "write_compare",
]

MAX_DOMINATED_POINTS = 1000
MAX_TABLE_ROWS = 300
ENV_COLUMNS = ["hardware", "device", "threads", "torch_version", "quantized_engine"]
# A tiny template: the stock ones embed ~8 kB of per-trace-type defaults in every figure.
_TEMPLATE = {"layout": {"paper_bgcolor": "white", "plot_bgcolor": "white",
                        "xaxis": {"gridcolor": "#eee", "zerolinecolor": "#ccc"},
                        "yaxis": {"gridcolor": "#eee", "zerolinecolor": "#ccc"},
                        "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                     "#8c564b", "#e377c2", "#17becf"]}}
PARAM_DIMENSIONS = [c for c in RECIPE_COLUMNS if c != "compile"]


@dataclass(frozen=True)
class ReportPaths:
    """Files :func:`write_report` wrote."""

    html: Path
    markdown: Path
    images: tuple[Path, ...]


# --------------------------------------------------------------------------------------------
# Tables (shared by the CLI, the HTML and the Markdown)
# --------------------------------------------------------------------------------------------


VERIFY_FILE = "verify.json"


def _verify_records(source: Any) -> dict[int, dict[str, Any]]:
    """``optsweep verify``'s results beside the results folder, by trial number."""
    if isinstance(source, Results):
        return {}
    root = Path(source)
    if root.is_file():
        root = root.parent
    for cand in (root, root.parent):
        p = cand / VERIFY_FILE
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                return {}
            return {int(r["trial_number"]): r for r in data.get("trials", []) if "trial_number" in r}
    return {}


def _attach_verified(pareto: ParetoResult, records: dict[int, dict[str, Any]]) -> ParetoResult:
    """Adds a ``verified`` column to the ranked table (so the front table shows it)."""
    if records:
        pareto.table["verified"] = [verified_label(records.get(int(t))) for t in pareto.table["trial_number"]]
    return pareto


def verified_label(rec: dict[str, Any] | None) -> str:
    """``ok 3.1x (rec 3.0x)``, ``MISMATCH 2.2x (rec 3.0x)``, ``export failed`` or ``""``."""
    if not rec:
        return ""
    if rec.get("error"):
        return "export failed"
    got, want = rec.get("remeasured_speedup"), rec.get("recorded_speedup")
    if got is None or want is None:
        return "exported"
    return f"{'ok' if rec.get('within_tolerance') else 'MISMATCH'} {got:.2f}x (rec {want:.2f}x)"


def effective_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its recipe columns replaced by each row's effective recipe (the stages that
    changed the model), plus ``no_op``: the requested stages that changed nothing.

    A row whose ``effective_recipe`` is absent (older or foreign data) keeps its columns.
    """
    if "effective_recipe" not in frame.columns:
        return frame
    f = frame.copy()
    no_op = []
    for i, raw in zip(f.index, f["effective_recipe"], strict=True):
        eff = _json_or_none(raw)
        if not isinstance(eff, dict):
            no_op.append("")
            continue
        dropped = []
        for col in RECIPE_COLUMNS:
            if col not in f.columns or col not in eff:
                continue
            requested, got = f.at[i, col], eff[col]
            if _same(requested, got):
                continue
            if col in ("precision", "pruning_method", "quantization_type", "compile"):
                dropped.append(str(requested))
            f.at[i, col] = got
        no_op.append(", ".join(d for d in dropped if d not in ("none", "fp32", "False")))
    f["no_op"] = no_op
    return f


def _json_or_none(raw: Any) -> Any:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _same(a: Any, b: Any) -> bool:
    if (a is None or (isinstance(a, float) and np.isnan(a))) and b is None:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def front_table(pareto: ParetoResult) -> pd.DataFrame:
    """The front with its recipe, objectives and the gains vs the baseline.

    ``speedup``, ``compression_ratio`` and ``accuracy_drop`` are taken from the row when present,
    otherwise recomputed from the ``baseline_*`` columns. ``knee`` marks each group's knee point.
    """
    f = effective_labels(pareto.front.copy())
    with np.errstate(divide="ignore", invalid="ignore"):
        if "speedup" in f:
            f["speedup"] = f["speedup"].fillna(f["baseline_latency_ms"] / f["latency_ms"])
        if "compression_ratio" in f:
            f["compression_ratio"] = f["compression_ratio"].fillna(
                f["baseline_size_bytes"] / f["size_bytes"])
        if "accuracy_drop" in f:
            f["accuracy_drop"] = f["accuracy_drop"].fillna(f["baseline_accuracy"] - f["accuracy"])
    knees = {g: knee_point(pareto, g) for g in pareto.groups}
    knee_ids = {(g, int(k["trial_number"])) for g, k in knees.items() if k is not None}
    f["knee"] = [(g, int(t)) in knee_ids for g, t in zip(f["group"], f["trial_number"], strict=True)]
    objs = [o.name for o in pareto.objectives]
    cols = ["group", "trial_number", "is_baseline", "knee", *RECIPE_COLUMNS, "no_op", *objs]
    cols += [c for c in ("latency_iqr_ms", "speedup", "speedup_iqr", "compression_ratio", "accuracy_drop",
                         "export_format", "verified") if c not in cols]
    return f[[c for c in dict.fromkeys(cols) if c in f.columns]].reset_index(drop=True)


def failures_table(results: Results) -> pd.DataFrame:
    """Non-COMPLETE rows grouped by state, error type and message, most frequent first."""
    bad = results.frame[results.frame["state"] != "COMPLETE"]
    cols = ["state", "error_type", "error", "count", "trials"]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    keyed = bad.assign(error_type=bad["error_type"].fillna("-"), error=bad["error"].fillna("-"))
    g = keyed.groupby(["state", "error_type", "error"], dropna=False)["trial_number"]
    out = g.agg(count="size", trials=lambda s: ", ".join(map(str, sorted(s.tolist())[:10]))
                + (" ..." if len(s) > 10 else "")).reset_index()
    return out.sort_values("count", ascending=False, kind="stable")[cols].reset_index(drop=True)


def environment_table(results: Results) -> pd.DataFrame:
    """Distinct measurement environments (hardware, device, threads, versions) with row counts."""
    f = results.frame[ENV_COLUMNS].astype(str)
    return f.value_counts(dropna=False).rename("trials").reset_index()


# --------------------------------------------------------------------------------------------
# Plotly figures
# --------------------------------------------------------------------------------------------


def _sample_dominated(pareto: ParetoResult, limit: int = MAX_DOMINATED_POINTS) -> pd.DataFrame:
    t = pareto.table
    shown = t[t["eligible"] & ~t["on_front"] & ~t["is_baseline"]]
    if len(shown) > limit:
        shown = shown.sample(n=limit, random_state=0).sort_index()
    return shown


def _f32(s: pd.Series) -> np.ndarray:
    return s.to_numpy(dtype=float).astype(np.float32)


def _pareto_figure(pareto: ParetoResult, title: str = "Pareto front") -> Any:
    import plotly.graph_objects as go

    objs = list(pareto.objectives)
    three_d = len(objs) >= 3
    axes = objs[:3] if three_d else objs[:2]
    if len(axes) == 1:  # one objective: plot it against trial order
        axes = [Objective("trial_number", "minimize"), axes[0]]
    fig = go.Figure(layout={"template": _TEMPLATE})
    dominated = _sample_dominated(pareto)
    t = pareto.table
    hover = "trial %{customdata}<extra>%{fullData.name}</extra>"

    def trace(frame: pd.DataFrame, name: str, marker: dict[str, Any], mode: str = "markers") -> Any:
        coords = {k: _f32(frame[o.name]) for k, o in zip("xyz", axes, strict=False)}
        custom = frame["trial_number"].to_numpy(dtype=np.int64)
        if three_d:
            return go.Scatter3d(mode=mode, name=name, marker=marker, customdata=custom,
                                hovertemplate=hover, **coords)
        return go.Scatter(mode=mode, name=name, marker=marker, customdata=custom,
                            hovertemplate=hover, **coords)

    if not dominated.empty:
        fig.add_trace(trace(dominated, f"dominated (sample of {len(dominated)})"
                            if len(dominated) == MAX_DOMINATED_POINTS else "dominated",
                            {"size": 3 if three_d else 5, "color": "#b0b0b0", "opacity": 0.5}))
    for g in pareto.groups:
        front = t[t["on_front"] & (t["group"] == g)]
        if not front.empty:
            label = "front" if len(pareto.groups) == 1 else plotly_label(f"front: {g}")
            fig.add_trace(trace(front, label, {"size": 5 if three_d else 9}))
    base = t[t["is_baseline"]]
    if not base.empty:
        fig.add_trace(trace(base, "baseline", {"size": 8 if three_d else 16, "symbol": "diamond"
                            if three_d else "star", "color": "black"}))
    names = [plotly_label(o) for o in axes]
    if three_d:
        fig.update_layout(scene={"xaxis_title": names[0], "yaxis_title": names[1],
                                 "zaxis_title": names[2]})
    else:
        fig.update_layout(xaxis_title=names[0], yaxis_title=names[1])
    fig.update_layout(title=title, height=600,
                      legend={"orientation": "h"})
    return fig


def _parcoords_figure(pareto: ParetoResult) -> Any:
    import plotly.graph_objects as go

    t = pareto.table
    rows = pd.concat([t[t["on_front"] | t["is_baseline"]], _sample_dominated(pareto, 600)])
    rows = rows[rows["eligible"] | rows["is_baseline"]]
    dims = []
    for col in PARAM_DIMENSIONS + [o.name for o in pareto.objectives]:
        if col not in rows.columns or rows[col].isna().all():
            continue
        s = rows[col]
        if pd.api.types.is_numeric_dtype(s):
            vals = s.to_numpy(dtype=float)
            vals = np.where(np.isfinite(vals), vals, np.nan)
            dims.append({"label": plotly_label(col),
                         "values": np.nan_to_num(vals, nan=-1.0).astype(np.float32)})
        else:
            cats = sorted(s.fillna("none").astype(str).unique())
            codes = s.fillna("none").astype(str).map({c: i for i, c in enumerate(cats)})
            dims.append({"label": plotly_label(col), "values": codes.to_numpy(dtype=np.int16),
                         "tickvals": list(range(len(cats))),
                         "ticktext": [plotly_label(c) for c in cats]})
    color = rows["on_front"].to_numpy(dtype=np.int8)
    fig = go.Figure(go.Parcoords(
        line={"color": color, "colorscale": [[0, "#c8c8c8"], [1, "#1f77b4"]], "cmin": 0, "cmax": 1},
        dimensions=dims,
    ), layout={"template": _TEMPLATE})
    fig.update_layout(title="Parameters (blue: front; missing values shown as -1)", height=450,
                      )
    return fig


def _hypervolume_figure(history: pd.DataFrame) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(layout={"template": _TEMPLATE})
    for g, sub in history.groupby("group", sort=False):
        fig.add_trace(go.Scatter(x=sub["trial_number"].to_numpy(dtype=np.int64),
                                 y=_f32(sub["hypervolume"]), mode="lines", name=plotly_label(g),
                                 line={"shape": "hv"}))
    fig.update_layout(title="Hypervolume over trials (normalised; reference: worst of baseline "
                      "and observed + 10% of the range)", xaxis_title="trial_number",
                      yaxis_title="hypervolume", height=400)
    return fig


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:13px}
"""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not np.isfinite(f):
            return str(f)
        if f.is_integer() and abs(f) >= 1000:
            return f"{int(f):,}"
        return f"{f:.4g}" if abs(f) < 1e6 else f"{f:,.0f}"
    return str(v)


def _html_table(df: pd.DataFrame, limit: int = MAX_TABLE_ROWS) -> str:
    if df.empty:
        return '<p class="note">none</p>'
    shown = df.head(limit)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    )
    more = (f'<p class="note">{len(df) - limit} more rows not shown.</p>'
            if len(df) > limit else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _figures_html(figs: Sequence[Any]) -> list[str]:
    out = []
    for i, fig in enumerate(figs):
        out.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                               config={"displaylogo": False, "responsive": True}))
    return out


def _summary(results: Results, pareto: ParetoResult) -> dict[str, Any]:
    f = results.frame
    summary: dict[str, Any] = {
        "study": results.study_name or "-",
        "source": results.source,
        "trials": int((f["trial_number"] >= 0).sum()),
        "complete": int(((f["state"] == "COMPLETE") & (f["trial_number"] >= 0)).sum()),
        "failed": int((f["state"] == "FAIL").sum()),
        "infeasible": int((f["state"] == "INFEASIBLE").sum()),
        "duplicates (not re-measured)": int(f["duplicate_of"].notna().sum()) if "duplicate_of" in f.columns else 0,
        "eligible": int(pareto.table["eligible"].sum()),
        "front": int(pareto.table["on_front"].sum()),
        "objectives": ", ".join(map(str, pareto.objectives)),
        "constraints": ", ".join(map(str, pareto.constraints)) or "none",
        "noise-aware latency": "yes" if pareto.noise_aware else "no",
        "hardware groups": ", ".join(pareto.groups),
    }
    if pareto.notes:
        summary["notes"] = "; ".join(pareto.notes)
    if results.skipped:
        summary["skipped (unreadable) files"] = ", ".join(results.skipped)
    return summary


def _save_png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, buf.getvalue())


def write_report(
    source: str | Path | Results,
    out: str | Path = "report.html",
    *,
    objectives: Iterable[str | Objective] | None = None,
    constraints: Iterable[str | Constraint] | None = None,
    noise_aware: bool = True,
    all_hardware: bool = False,
    markdown: bool = True,
    include_unexportable: bool = False,
) -> ReportPaths:
    """Write ``out`` (HTML) and, with ``markdown``, ``out`` with suffix ``.md`` plus PNGs.

    ``source`` is anything :func:`~analysis.dataset.load_results` accepts, or a loaded Results.
    """
    results = source if isinstance(source, Results) else load_results(source)
    pareto = pareto_front(results, objectives, constraints, noise_aware=noise_aware,
                          all_hardware=all_hardware, include_unexportable=include_unexportable)
    pareto = _attach_verified(pareto, _verify_records(source))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history = hypervolume_history(pareto)
    front = front_table(pareto)
    failures = failures_table(results)
    env = environment_table(results)
    summary = _summary(results, pareto)

    figs = [_pareto_figure(pareto), _parcoords_figure(pareto)]
    if not history.empty:
        figs.append(_hypervolume_figure(history))
    fig_html = _figures_html(figs)
    title = f"optsweep report: {summary['study']}"
    summary_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                           for k, v in summary.items())
    ties_note = ("Pairs of front points whose latency intervals (median ± IQR) overlap: the "
                 "first would dominate the second on medians alone, so treat them as equally fast.")
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<table>{summary_rows}</table>",
        "<h2>Pareto front</h2>",
        fig_html[0],
        "<h2>Front vs baseline</h2>",
        _html_table(front),
        "<h2>Parameters</h2>",
        fig_html[1],
    ]
    if len(fig_html) > 2:
        parts += ["<h2>Hypervolume</h2>", fig_html[2]]
    parts += [
        "<h2>Latency ties</h2>",
        f'<p class="note">{html.escape(ties_note)}</p>',
        _html_table(pareto.ties),
        "<h2>Failures</h2>",
        _html_table(failures),
        "<h2>Environment</h2>",
        _html_table(env),
        "</body></html>",
    ]
    atomic_write(out, "\n".join(parts))

    md_path = out.with_suffix(".md")
    images: tuple[Path, ...] = ()
    if markdown:
        images = _write_markdown(md_path, pareto, history, front, failures, env, summary)
    return ReportPaths(html=out, markdown=md_path, images=images)


# --------------------------------------------------------------------------------------------
# Markdown + matplotlib
# --------------------------------------------------------------------------------------------


def _md_table(df: pd.DataFrame, limit: int = 50) -> str:
    if df.empty:
        return "_none_\n"
    shown = df.head(limit)
    lines = ["| " + " | ".join(map(markdown, shown.columns)) + " |",
             "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(markdown(_fmt(v)) for v in row) + " |")
    if len(df) > limit:
        lines.append(f"\n_{len(df) - limit} more rows in the HTML report._")
    return "\n".join(lines) + "\n"


def _write_markdown(
    path: Path,
    pareto: ParetoResult,
    history: pd.DataFrame,
    front: pd.DataFrame,
    failures: pd.DataFrame,
    env: pd.DataFrame,
    summary: dict[str, Any],
) -> tuple[Path, ...]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = path.with_suffix("")
    images: list[Path] = []
    t = pareto.table
    objs = list(pareto.objectives)
    if len(objs) >= 2:
        a, b = objs[0], objs[1]
        fig, ax = plt.subplots(figsize=(7, 5))
        dom = _sample_dominated(pareto)
        ax.scatter(dom[a.name], dom[b.name], s=6, c="#bbbbbb", label="dominated")
        for g in pareto.groups:
            fr = t[t["on_front"] & (t["group"] == g)].sort_values(a.name)
            ax.plot(fr[a.name], fr[b.name], "o-", ms=5, label=matplotlib_label(f"front {g}"[:60]))
        base = t[t["is_baseline"]]
        ax.scatter(base[a.name], base[b.name], marker="*", s=200, c="black", label="baseline")
        ax.set_xlabel(matplotlib_label(a))
        ax.set_ylabel(matplotlib_label(b))
        ax.legend(fontsize=8)
        ax.set_title("Pareto front (first two objectives)")
        p = Path(f"{stem}-pareto.png")
        fig.tight_layout()
        _save_png(fig, p)
        plt.close(fig)
        images.append(p)
    if not history.empty:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for grp, sub in history.groupby("group", sort=False):
            ax.step(sub["trial_number"], sub["hypervolume"], where="post",
                    label=matplotlib_label(str(grp)[:60]))
        ax.set_xlabel("trial_number")
        ax.set_ylabel("hypervolume (normalised)")
        ax.legend(fontsize=8)
        p = Path(f"{stem}-hypervolume.png")
        fig.tight_layout()
        _save_png(fig, p)
        plt.close(fig)
        images.append(p)
    lines = [f"# optsweep report: {markdown(summary['study'])}", ""]
    lines += [f"- **{markdown(k)}**: {markdown(v)}" for k, v in summary.items()]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    lines += ["## Front vs baseline", "", _md_table(front)]
    lines += ["## Latency ties", "", _md_table(pareto.ties)]
    lines += ["## Failures", "", _md_table(failures)]
    lines += ["## Environment", "", _md_table(env)]
    atomic_write(path, "\n".join(lines))
    return tuple(images)


# --------------------------------------------------------------------------------------------
# Compare runs
# --------------------------------------------------------------------------------------------


def compare_fronts(
    sources: Sequence[str | Path],
    *,
    objectives: Iterable[str | Objective] | None = None,
    constraints: Iterable[str | Constraint] | None = None,
    noise_aware: bool = True,
) -> tuple[pd.DataFrame, tuple[Objective, ...]]:
    """Front rows of several runs, labelled ``"<hardware> (<run>)"`` in column ``label``.

    Objectives default to the first run's.
    """
    frames = []
    objs: tuple[Objective, ...] | None = None
    for src in sources:
        results = load_results(src)
        pr = pareto_front(results, objectives if objs is None else objs, constraints,
                          noise_aware=noise_aware)
        objs = pr.objectives
        f = front_table(pr)
        shown = results.source  # the path as given, credentials hidden
        name = shown.rstrip("/").rsplit("/", 1)[-1] or shown
        f.insert(0, "label", [f"{g} ({name})" for g in f["group"]])
        f.insert(1, "run", shown)
        frames.append(f)
    assert objs is not None
    return pd.concat(frames, ignore_index=True), objs


def write_compare(
    sources: Sequence[str | Path],
    out: str | Path = "compare.html",
    *,
    objectives: Iterable[str | Objective] | None = None,
    constraints: Iterable[str | Constraint] | None = None,
    noise_aware: bool = True,
) -> tuple[Path, pd.DataFrame]:
    """One plot with every run's front, labelled by hardware; returns (path, fronts table)."""
    import plotly.graph_objects as go

    fronts, objs = compare_fronts(sources, objectives=objectives, constraints=constraints,
                                  noise_aware=noise_aware)
    axes = list(objs[:3]) if len(objs) >= 3 else list(objs[:2])
    fig = go.Figure(layout={"template": _TEMPLATE})
    for label, sub in fronts.groupby("label", sort=False):
        coords = {k: _f32(sub[o.name]) for k, o in zip("xyz", axes, strict=False)}
        kw = {"mode": "markers", "name": plotly_label(label),
              "customdata": sub["trial_number"].to_numpy(),
              "hovertemplate": "trial %{customdata}<extra>%{fullData.name}</extra>", **coords}
        fig.add_trace(go.Scatter3d(**kw) if len(axes) == 3 else go.Scatter(**kw))
    names = [plotly_label(o) for o in axes]
    if len(axes) == 3:
        fig.update_layout(scene={"xaxis_title": names[0], "yaxis_title": names[1],
                                 "zaxis_title": names[2]})
    elif len(axes) == 2:
        fig.update_layout(xaxis_title=names[0], yaxis_title=names[1])
    fig.update_layout(title="Pareto fronts by hardware", height=650)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = _figures_html([fig])[0]
    atomic_write(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>optsweep compare</title><style>{_CSS}</style></head><body>"
        f"<h1>Pareto fronts</h1>{body}<h2>Fronts</h2>{_html_table(fronts)}</body></html>",
    )
    return out, fronts


def _jsonable(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if np.isnan(f):
            return None
        return f if np.isfinite(f) else ("inf" if f > 0 else "-inf")
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v


_INT_COLUMNS = {n for n, t, _ in COLUMNS if pa.types.is_integer(t)}


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (NaN -> null, ±inf -> "inf"/"-inf", integer columns as ints)."""
    out = []
    for row in df.to_dict(orient="records"):
        rec: dict[str, Any] = {}
        for k, v in row.items():
            j = _jsonable(v)
            if str(k) in _INT_COLUMNS and isinstance(j, float) and j.is_integer():
                j = int(j)
            rec[str(k)] = j
        out.append(rec)
    return out


def to_json(df: pd.DataFrame) -> str:
    """:func:`records` as a JSON string."""
    return json.dumps(records(df), indent=2)

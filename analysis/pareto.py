"""Pareto analysis of trial rows: dominance, constraints, noise-aware ties, hypervolume, knee.

Everything here works on plain numpy arrays in *minimisation form* (a maximised objective is
negated), so one code path serves any number of objectives and any directions.

Rules (the contract the report and CLI rely on):

- A row is *eligible* when ``state == "COMPLETE"``, every objective is non-NaN, and it is
  feasible. ``±inf`` is a legal value: ``-inf`` latency dominates every finite latency.
- Feasible means: with ``constraints=None``, the sweep's own constraints (file metadata) hold and
  the stored ``feasible`` column is not ``False``; with an explicit list (possibly empty), exactly
  those expressions hold and the stored column is ignored.
- The baseline row (``trial_number == -1``) is a candidate like any other and is flagged.
- Fronts are computed per ``hardware`` value unless ``all_hardware=True``: latencies measured on
  different machines are not comparable, so they are never mixed silently. Data without a
  ``hardware`` column is one group, ``"unknown"``, and :attr:`ParetoResult.notes` says so.
- The objectives' columns must be in the data; every other column is optional (see
  :data:`~analysis.schema.ABSENT_DEFAULTS`). A constraint on a column the data lacks is an error,
  not a front of nothing.
- Noise-aware latency (default): two points whose intervals
  ``[latency_ms - latency_iqr_ms, latency_ms + latency_iqr_ms]`` overlap are equal on latency
  for dominance. The pairs this rescues are reported as *ties*.

>>> from analysis.dataset import load_results          # doctest: +SKIP
>>> front = pareto_front(load_results("runs/digits")).front   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd

from .dataset import Results
from .errors import AnalysisError
from .schema import BASELINE_TRIAL, DIRECTIONS

__all__ = [
    "Objective",
    "Constraint",
    "ParetoResult",
    "parse_objective",
    "parse_objectives",
    "parse_constraint",
    "constraints_from_config",
    "nondominated_mask",
    "nondominated_ranks",
    "pareto_front",
    "hypervolume",
    "hypervolume_history",
    "reference_point",
    "knee_point",
    "best_under_constraints",
]

NOISY_OBJECTIVES = {"latency_ms": "latency_iqr_ms", "speedup": "speedup_iqr"}
"""Objective column -> column holding the half-width of its noise interval."""

_SEED_MIN_POINTS = 2048
_F = TypeVar("_F", bound=Callable[..., Any])


def _quiet_overflow(fn: _F) -> _F:
    """Values near the float limits overflow to ±inf in sums and differences. ±inf compares and
    clips correctly here, so numpy's RuntimeWarning would only be noise on the user's terminal."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args, **kwargs)

    return cast(_F, wrapper)

_OPS = ("<=", ">=", "==", "!=", "<", ">")
_NUMBER = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|inf(?:inity)?)"
_CONSTRAINT_RE = re.compile(
    rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*({_NUMBER})\s*$", re.IGNORECASE
)
_CONSTRAINT_FORM = "'COLUMN OP NUMBER' with OP one of <, <=, >, >=, ==, != (e.g. 'accuracy_drop <= 0.01')"


# --------------------------------------------------------------------------------------------
# Objectives and constraints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """A column and whether smaller or larger is better.

    >>> Objective("accuracy", "maximize").sign
    -1.0
    """

    name: str
    direction: str = "minimize"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise AnalysisError(
                f"objective {self.name!r} direction must be one of {', '.join(DIRECTIONS)}; "
                f"got {self.direction!r}"
            )

    @property
    def sign(self) -> float:
        """+1 for minimize, -1 for maximize: multiply a column by it to get minimisation form."""
        return 1.0 if self.direction == "minimize" else -1.0

    def __str__(self) -> str:
        return f"{self.name}:{'min' if self.direction == 'minimize' else 'max'}"


def parse_objective(spec: str | Objective | tuple[str, str]) -> Objective:
    """``"latency_ms:min"`` / ``"accuracy:max"`` (or ``minimize``/``maximize``) -> Objective.

    >>> parse_objective("accuracy:max")
    Objective(name='accuracy', direction='maximize')
    """
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, tuple):
        name, direction = spec
    else:
        name, sep, direction = str(spec).strip().partition(":")
        if not sep or not name:
            raise AnalysisError(
                f"bad objective {spec!r}: expected NAME:min or NAME:max (e.g. 'latency_ms:min')"
            )
    direction = {"min": "minimize", "max": "maximize"}.get(direction.strip().lower(),
                                                           direction.strip().lower())
    if direction not in DIRECTIONS:
        raise AnalysisError(
            f"bad objective {spec!r}: direction must be min or max (e.g. 'latency_ms:min')"
        )
    return Objective(name.strip(), direction)


def parse_objectives(
    results: Results, objectives: Iterable[str | Objective] | None = None
) -> tuple[Objective, ...]:
    """The objectives to use: ``objectives`` if given, else the sweep's (file metadata).

    Raises :class:`AnalysisError` for a column that does not exist or is not numeric.
    """
    if objectives is None:
        objs = tuple(Objective(n, d) for n, d in results.objectives.items())
    else:
        objs = tuple(parse_objective(o) for o in objectives)
    if not objs:
        raise AnalysisError("at least one objective is required (e.g. 'latency_ms:min')")
    names = [o.name for o in objs]
    if len(set(names)) != len(names):
        raise AnalysisError(f"objectives must be distinct; got {', '.join(names)}")
    for o in objs:
        if o.name not in results.frame.columns:
            raise AnalysisError(
                f"unknown objective {o.name!r}: no such column (numeric columns include "
                f"latency_ms, size_bytes, accuracy, speedup, compression_ratio, accuracy_drop)"
            )
        if not results.has_column(o.name):
            raise AnalysisError(
                f"{results.source}: required column {o.name!r} is missing (it is objective {o})"
            )
        if not pd.api.types.is_numeric_dtype(results.frame[o.name]):
            raise AnalysisError(f"objective {o.name!r} is not a numeric column")
    return objs


@dataclass(frozen=True)
class Constraint:
    """``column op value``; a row with a NaN in ``column`` never satisfies it.

    >>> parse_constraint("latency_ms < 5")
    Constraint(column='latency_ms', op='<', value=5.0)
    """

    column: str
    op: str
    value: float

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean array: which rows of ``frame`` satisfy the constraint."""
        if self.column not in frame.columns:
            raise AnalysisError(f"constraint {str(self)!r} names unknown column {self.column!r}")
        col = pd.to_numeric(frame[self.column], errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            result = {
                "<": col < self.value,
                "<=": col <= self.value,
                ">": col > self.value,
                ">=": col >= self.value,
                "==": col == self.value,
                "!=": col != self.value,
            }[self.op]
        return np.asarray(result & ~np.isnan(col), dtype=bool)

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


def parse_constraint(expr: str | Constraint) -> Constraint:
    """Parse ``"accuracy_drop <= 0.01"``: a column, a comparison, a number. Nothing is evaluated.

    >>> parse_constraint("speedup >= 2").op
    '>='
    >>> parse_constraint("__import__('os')")
    Traceback (most recent call last):
    ...
    analysis.errors.AnalysisError: bad constraint "__import__('os')": expected 'COLUMN OP NUMBER' with OP one of <, <=, >, >=, ==, != (e.g. 'accuracy_drop <= 0.01')
    """
    if isinstance(expr, Constraint):
        return expr
    m = _CONSTRAINT_RE.match(str(expr))
    if m is None:
        shown = expr.encode("unicode_escape").decode("ascii") if not expr.isprintable() else expr
        raise AnalysisError(f'bad constraint "{shown}": expected {_CONSTRAINT_FORM}')
    column, op, number = m.groups()
    return Constraint(column, op, float(number))


def constraints_from_config(config: Mapping[str, Any] | None) -> list[Constraint]:
    """Translate the sweep config's form: ``max_X: v`` -> ``X <= v``, ``min_X: v`` -> ``X >= v``.

    >>> [str(c) for c in constraints_from_config({"max_accuracy_drop": 0.01, "min_accuracy": 0.9})]
    ['accuracy_drop <= 0.01', 'accuracy >= 0.9']
    """
    out: list[Constraint] = []
    for key, value in (config or {}).items():
        if value is None:
            continue
        prefix, _, column = str(key).partition("_")
        if prefix not in ("max", "min") or not column:
            raise AnalysisError(
                f"bad constraint key {key!r}: expected max_<column> or min_<column>"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AnalysisError(f"constraint {key!r} must be a number; got {value!r}")
        out.append(Constraint(column, "<=" if prefix == "max" else ">=", float(value)))
    return out


def _resolve_constraints(
    results: Results, constraints: Iterable[str | Constraint] | None
) -> tuple[tuple[Constraint, ...], bool]:
    """(constraints, use the stored ``feasible`` column)."""
    if constraints is None:
        return tuple(constraints_from_config(results.constraints)), True
    if isinstance(constraints, (str, Constraint)):
        constraints = [constraints]
    return tuple(parse_constraint(c) for c in constraints), False


# --------------------------------------------------------------------------------------------
# Dominance on arrays (minimisation form)
# --------------------------------------------------------------------------------------------


def _dominated_by(p: np.ndarray, tp: np.ndarray | None, y: np.ndarray, ty: np.ndarray | None) -> np.ndarray:
    """Which rows of ``y`` the point ``p`` dominates (with per-point noise half-widths)."""
    if tp is None or ty is None:
        return np.asarray((p <= y).all(axis=1) & (p < y).any(axis=1))
    # Equal values (including inf == inf) give a zero difference instead of inf - inf = nan.
    with np.errstate(invalid="ignore"):
        diff = np.where(p == y, 0.0, p - y)
    tol = tp + ty
    return np.asarray((diff <= tol).all(axis=1) & (diff < -tol).any(axis=1))


def _front_2d(y: np.ndarray) -> np.ndarray:
    """Exact 2-objective front in O(n log n)."""
    n = len(y)
    order = np.lexsort((y[:, 1], y[:, 0]))
    x0, x1 = y[order, 0], y[order, 1]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = x0[1:] != x0[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    cummin = np.minimum.accumulate(x1)
    before = np.full(n, np.inf)
    has_before = group_start > 0
    before[has_before] = cummin[group_start[has_before] - 1]
    # Dominated by a point with a smaller first value and a no-worse second value, or by a point
    # with the same first value and a smaller second value (sorted first within the group).
    dominated = np.where(has_before, before <= x1, False) | (x1[group_start] < x1)
    mask = np.empty(n, dtype=bool)
    mask[order] = ~dominated
    return mask


def nondominated_mask(values: np.ndarray, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the points no other point dominates.

    ``values`` is ``(n, d)`` in minimisation form without NaN (``±inf`` allowed). ``tolerance``
    (same shape, ``>= 0``) gives per-point half-widths: two points whose intervals overlap on an
    objective are equal there. Identical points do not dominate each other: both stay.

    >>> nondominated_mask(np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])).tolist()
    [True, True, False]
    """
    y = np.asarray(values, dtype=float)
    if y.ndim != 2:
        raise AnalysisError(f"values must be a 2-D array (points x objectives); got shape {y.shape}")
    n, d = y.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if np.isnan(y).any():
        raise AnalysisError("values contain NaN; drop ineligible rows first")
    tol = None if tolerance is None else np.nan_to_num(np.asarray(tolerance, dtype=float), nan=0.0)
    if tol is not None and not tol.any():
        tol = None
    if tol is None:
        if d == 1:
            return np.asarray(y[:, 0] == y[:, 0].min())
        if d == 2:
            return _front_2d(y)
    else:
        tol = np.clip(tol, 0.0, None)
    # Cheap first cut: a few good points remove most of the dominated ones in one broadcast.
    if n > _SEED_MIN_POINTS:
        dominated, covered = _seed_filter(y, tol, _seeds(y))
    else:
        dominated = covered = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(~dominated)
    mask = np.zeros(n, dtype=bool)
    if tol is None:
        # Dominance is transitive: whatever a removed point dominated, its remover dominates too.
        mask[idx[_front_sorted_filter(y[idx])]] = True
        return mask
    mask[idx[_front_tolerant(y[idx], tol[idx])]] = True
    # Interval overlap is not transitive: re-check the survivors against every point that could
    # be the only witness (covered points never are).
    return _verify(y, tol, np.flatnonzero(mask), mask, np.flatnonzero(~covered))


def _finite_bounds(y: np.ndarray, empty_lo: float = 0.0, empty_hi: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-column min and max over finite values (columns with none get the defaults)."""
    fin = np.isfinite(y)
    lo = np.where(fin, y, np.inf).min(axis=0) if len(y) else np.full(y.shape[1], np.inf)
    hi = np.where(fin, y, -np.inf).max(axis=0) if len(y) else np.full(y.shape[1], -np.inf)
    lo = np.where(np.isfinite(lo), lo, empty_lo)
    hi = np.where(np.isfinite(hi), hi, empty_hi)
    return lo, hi


def _seeds(y: np.ndarray, k: int = 48) -> np.ndarray:
    """Indices of likely-front points: the best on each objective and on random weightings."""
    d = y.shape[1]
    lo, hi = _finite_bounds(y)
    z = (np.clip(y, lo, hi) - lo) / np.where(hi > lo, hi - lo, 1.0)
    w = np.random.default_rng(0).dirichlet(np.ones(d), size=k)
    picks = np.argmin(z @ w.T, axis=0)
    firsts = np.argmin(np.where(np.isneginf(y), -np.inf, z), axis=0)
    return np.unique(np.concatenate([picks, firsts]))


def _seed_filter(
    y: np.ndarray, tol: np.ndarray | None, seeds: np.ndarray, chunk: int = 50_000
) -> tuple[np.ndarray, np.ndarray]:
    """(dominated by a seed, robustly covered by a seed).

    A point r is *covered* by q when q <= r everywhere and, on noisy objectives, q's interval
    lies entirely below r's. Then q dominates whatever r dominates, so r is never needed as a
    witness when checking other points.
    """
    dominated = np.zeros(len(y), dtype=bool)
    covered = np.zeros(len(y), dtype=bool)
    s = y[seeds][:, None, :]
    for start in range(0, len(y), chunk):
        blk = y[start:start + chunk][None]
        if tol is None:
            le = s <= blk
            dominated[start:start + chunk] = (le.all(axis=2) & (s < blk).any(axis=2)).any(axis=0)
            continue
        t = tol[seeds][:, None, :] + tol[start:start + chunk][None]
        with np.errstate(invalid="ignore"):
            diff = np.where(s == blk, 0.0, s - blk)
        dominated[start:start + chunk] = ((diff <= t).all(axis=2) & (diff < -t).any(axis=2)).any(axis=0)
        covered[start:start + chunk] = (diff <= -t).all(axis=2).any(axis=0)
    covered[seeds] = False
    return dominated, covered


def _front_sorted_filter(y: np.ndarray) -> np.ndarray:
    # After a lexicographic sort nothing can dominate an earlier point, so each surviving point in
    # turn is on the front and only needs to filter the points after it.
    order = np.lexsort(y.T[::-1])
    ys = y[order]
    idx = order
    i = 0
    while i < len(ys) - 1:
        tail = ys[i + 1:]
        keep_tail = ~_dominated_by(ys[i], None, tail, None)
        if not keep_tail.all():
            ys = np.concatenate([ys[: i + 1], tail[keep_tail]])
            idx = np.concatenate([idx[: i + 1], idx[i + 1:][keep_tail]])
        i += 1
    mask = np.zeros(len(y), dtype=bool)
    mask[idx] = True
    return mask


def _front_tolerant(y: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Superset of the front: drops only points that some point dominates."""
    order = np.lexsort(y.T[::-1])
    ys, ts, idx = y[order], tol[order], order
    i = 0
    while i < len(ys):
        dom = _dominated_by(ys[i], ts[i], ys, ts)
        if dom.any():
            keep = ~dom
            ys, ts, idx = ys[keep], ts[keep], idx[keep]
            i = int(np.count_nonzero(keep[:i]))
        i += 1
    mask = np.zeros(len(y), dtype=bool)
    mask[idx] = True
    return mask


def _verify(
    y: np.ndarray, tol: np.ndarray, cand: np.ndarray, mask: np.ndarray, witnesses: np.ndarray,
    chunk: int = 256,
) -> np.ndarray:
    mask = mask.copy()
    w, tw = y[witnesses][None, :, :], tol[witnesses][None, :, :]
    for start in range(0, len(cand), chunk):
        s = cand[start:start + chunk]
        with np.errstate(invalid="ignore"):
            diff = np.where(w == y[s, None, :], 0.0, w - y[s, None, :])
        t = tw + tol[s, None, :]
        mask[s] = ~((diff <= t).all(axis=2) & (diff < -t).any(axis=2)).any(axis=1)
    return mask


def nondominated_ranks(
    values: np.ndarray, tolerance: np.ndarray | None = None, max_rank: int | None = None
) -> np.ndarray:
    """Front rank of every point (0 = non-dominated), by peeling fronts off one at a time.

    Points beyond ``max_rank`` get ``max_rank + 1``.

    >>> nondominated_ranks(np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [1.0, 3.0]])).tolist()
    [0, 1, 2, 1]
    """
    y = np.asarray(values, dtype=float)
    n = len(y)
    tol = None if tolerance is None else np.asarray(tolerance, dtype=float)
    ranks = np.full(n, -1, dtype=np.int64)
    remaining = np.arange(n)
    rank = 0
    while len(remaining):
        if max_rank is not None and rank > max_rank:
            ranks[remaining] = max_rank + 1
            break
        front = nondominated_mask(y[remaining], None if tol is None else tol[remaining])
        ranks[remaining[front]] = rank
        remaining = remaining[~front]
        rank += 1
    return ranks


# --------------------------------------------------------------------------------------------
# Fronts of a Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParetoResult:
    """Every row with its eligibility, group and rank, plus the objectives that defined them.

    ``table`` adds these columns to the results frame: ``group`` (hardware, or ``"all"``),
    ``is_baseline``, ``eligible``, ``ineligible_reason`` (``"state=FAIL"``, ``"nan:accuracy"``,
    ``"constraint:latency_ms < 5"`` ...), ``rank`` (``Int64``, NA when ineligible) and
    ``on_front``. ``ties`` lists pairs of front points (same group) where one would dominate the
    other on the latency medians but their latency intervals overlap. ``notes`` are one-line
    remarks for the reader, e.g. that the data has no ``hardware`` column to split fronts by.
    """

    table: pd.DataFrame
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    ties: pd.DataFrame
    noise_aware: bool
    all_hardware: bool
    notes: tuple[str, ...] = ()

    @property
    def front(self) -> pd.DataFrame:
        """The front rows, ordered by group then by the first objective (best first)."""
        f = self.table[self.table["on_front"]]
        first = self.objectives[0]
        return f.sort_values(["group", first.name, "trial_number"],
                             ascending=[True, first.direction == "minimize", True])

    @property
    def groups(self) -> list[str]:
        """The group labels (hardware names, or ``["all"]``), in first-seen order."""
        return list(dict.fromkeys(self.table["group"].tolist()))

    def objective_matrix(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        """``(n, d)`` objective values of ``frame`` (default: all rows) in minimisation form."""
        f = self.table if frame is None else frame
        return np.column_stack([f[o.name].to_numpy(dtype=float) * o.sign for o in self.objectives])


def _tolerance(frame: pd.DataFrame, objectives: Sequence[Objective], noise_aware: bool) -> np.ndarray | None:
    if not noise_aware:
        return None
    cols = []
    for o in objectives:
        iqr_col = NOISY_OBJECTIVES.get(o.name)
        if iqr_col is not None and iqr_col in frame.columns:
            iqr = pd.to_numeric(frame[iqr_col], errors="coerce").to_numpy(dtype=float)
            cols.append(np.clip(np.nan_to_num(iqr, nan=0.0, posinf=np.inf), 0.0, None))
        else:
            cols.append(np.zeros(len(frame)))
    tol = np.column_stack(cols)
    return tol if tol.any() else None


def eligibility(
    results: Results,
    objectives: Sequence[Objective],
    constraints: Iterable[str | Constraint] | None = None,
    *,
    include_unexportable: bool = False,
) -> tuple[np.ndarray, pd.Series, tuple[Constraint, ...]]:
    """``(eligible mask, reason per row ("" when eligible), constraints used)``."""
    frame = results.frame
    cons, use_stored = _resolve_constraints(results, constraints)
    reason = pd.Series("", index=frame.index, dtype=object)

    def mark(mask: np.ndarray, why: str) -> None:
        hit = mask & (reason == "").to_numpy()
        reason[hit] = why

    states = frame["state"].astype(str).to_numpy()
    for state in sorted(set(states) - {"COMPLETE"}):
        mark(states == state, f"state={state}")
    for o in objectives:
        mark(np.isnan(frame[o.name].to_numpy(dtype=float)), f"nan:{o.name}")
    if "duplicate_of" in frame.columns:  # a reused result is the same point, not a second one
        mark(frame["duplicate_of"].notna().to_numpy(), "duplicate")
    if "exportable" in frame.columns and not include_unexportable:  # the front is what can ship
        mark((frame["exportable"] == False).to_numpy(dtype=bool), "not exportable")  # noqa: E712
    if use_stored and "feasible" in frame.columns:
        mark((frame["feasible"] == False).to_numpy(dtype=bool), "infeasible")  # noqa: E712
    for c in cons:
        if c.column in frame.columns and not results.has_column(c.column):
            raise AnalysisError(
                f"{results.source}: constraint {str(c)!r} needs column {c.column!r}, "
                "which the dataset lacks"
            )
        mark(~c.mask(frame), f"constraint:{c}")
    return (reason == "").to_numpy(), reason, cons


@_quiet_overflow
def pareto_front(
    results: Results,
    objectives: Iterable[str | Objective] | None = None,
    constraints: Iterable[str | Constraint] | None = None,
    *,
    noise_aware: bool = True,
    all_hardware: bool = False,
    ranks: bool = False,
    include_unexportable: bool = False,
) -> ParetoResult:
    """Rank every eligible row and mark the front, per hardware group.

    ``objectives``: ``["latency_ms:min", "accuracy:max"]`` or :class:`Objective`; default the
    sweep's. ``constraints``: expressions like ``"accuracy_drop <= 0.01"``; ``None`` means the
    sweep's own (see the module docstring). ``ranks=True`` also peels every later front (rank 1,
    2, ...; cost grows with the number of fronts); by default only the front is computed and
    ``rank`` is 0 on it and NA elsewhere.

    >>> pr = pareto_front(results, ["latency_ms:min", "accuracy:max"])   # doctest: +SKIP
    >>> pr.front[["trial_number", "latency_ms", "accuracy"]]              # doctest: +SKIP
    """
    objs = parse_objectives(results, objectives)
    eligible, reason, cons = eligibility(results, objs, constraints, include_unexportable=include_unexportable)
    table = results.frame.copy()
    table["group"] = "all" if all_hardware else table["hardware"].astype(str)
    if "segment" in table.columns and table["segment"].dropna().nunique() > 1:
        # Rows measured under different settings (--new-settings) are never one front.
        table["group"] = table["group"] + " / segment " + table["segment"].fillna("?").astype(str)
    table["is_baseline"] = (table["trial_number"] == BASELINE_TRIAL).fillna(False).astype(bool)
    table["eligible"] = eligible
    table["ineligible_reason"] = reason
    rank_col = np.full(len(table), -1, dtype=np.int64)

    y_all = np.column_stack([table[o.name].to_numpy(dtype=float) * o.sign for o in objs])
    tol_all = _tolerance(table, objs, noise_aware)
    ties: list[dict[str, Any]] = []
    groups = table["group"].to_numpy()
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero((groups == g) & eligible)
        if not len(idx):
            continue
        y = y_all[idx]
        tol = None if tol_all is None else tol_all[idx]
        r = nondominated_ranks(y, tol) if ranks else np.where(nondominated_mask(y, tol), 0, 1)
        rank_col[idx] = r
        if tol is not None:
            ties += _ties(table, idx[r == 0], y[r == 0], tol[r == 0], objs, g)
    table["rank"] = pd.array(np.where(rank_col >= 0, rank_col, 0), dtype="Int64")
    table.loc[rank_col < 0, "rank"] = pd.NA
    if not ranks:
        table.loc[rank_col > 0, "rank"] = pd.NA
    table["on_front"] = rank_col == 0
    notes: tuple[str, ...] = ()
    if not all_hardware and not results.has_column("hardware"):
        notes = ("the dataset has no 'hardware' column: every row is taken as measured on one "
                 "machine, on one front",)
    tie_cols = ["group", "trial_a", "trial_b", "latency_a_ms", "iqr_a_ms", "latency_b_ms", "iqr_b_ms"]
    return ParetoResult(
        table=table,
        objectives=objs,
        constraints=cons,
        ties=pd.DataFrame(ties, columns=tie_cols),
        noise_aware=noise_aware,
        all_hardware=all_hardware,
        notes=notes,
    )


def _ties(
    table: pd.DataFrame,
    idx: np.ndarray,
    y: np.ndarray,
    tol: np.ndarray,
    objs: Sequence[Objective],
    group: str,
    limit: int = 4000,
) -> list[dict[str, Any]]:
    """Front pairs (a, b) where a dominates b on medians but not once noise is accounted for."""
    if len(idx) < 2 or "latency_ms" not in {o.name for o in objs}:
        return []
    idx, y, tol = idx[:limit], y[:limit], tol[:limit]
    le = (y[:, None, :] <= y[None, :, :]).all(axis=2)
    lt = (y[:, None, :] < y[None, :, :]).any(axis=2)
    a_idx, b_idx = np.nonzero(le & lt)
    lat = table["latency_ms"].to_numpy(dtype=float)
    iqr = np.nan_to_num(table["latency_iqr_ms"].to_numpy(dtype=float), nan=0.0)
    tn = table["trial_number"].to_numpy()
    return [
        {
            "group": group,
            "trial_a": int(tn[idx[a]]),
            "trial_b": int(tn[idx[b]]),
            "latency_a_ms": float(lat[idx[a]]),
            "iqr_a_ms": float(iqr[idx[a]]),
            "latency_b_ms": float(lat[idx[b]]),
            "iqr_b_ms": float(iqr[idx[b]]),
        }
        for a, b in zip(a_idx.tolist(), b_idx.tolist(), strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Hypervolume
# --------------------------------------------------------------------------------------------


def _hv2d(points: np.ndarray, ref: np.ndarray) -> float:
    pts = points[(points < ref).all(axis=1)]
    if not len(pts):
        return 0.0
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    x, y = pts[order, 0], pts[order, 1]
    prev_min = np.minimum.accumulate(np.concatenate([[np.inf], y[:-1]]))
    keep = y < prev_min
    x, y = x[keep], y[keep]
    widths = np.diff(np.concatenate([x, [ref[0]]]))
    return float(np.sum(widths * (ref[1] - y)))


def hypervolume(points: np.ndarray, reference: Sequence[float] | np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` (minimisation) and bounded by ``reference``.

    1, 2 (sweep, O(n log n)) and 3 objectives (slicing along the third, O(n² log n)). Points
    that are not strictly better than the reference on every objective contribute nothing.

    >>> hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), [3.0, 3.0])
    3.0
    """
    pts = np.asarray(points, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if pts.size == 0:
        return 0.0
    if pts.ndim != 2 or pts.shape[1] != ref.shape[0]:
        raise AnalysisError(f"points shape {pts.shape} does not match reference of length {len(ref)}")
    pts = pts[~np.isnan(pts).any(axis=1)]
    d = pts.shape[1]
    if d == 1:
        return float(max(0.0, ref[0] - pts[:, 0].min())) if len(pts) else 0.0
    if d == 2:
        return _hv2d(pts, ref)
    if d == 3:
        pts = pts[(pts < ref).all(axis=1)]
        if not len(pts):
            return 0.0
        pts = pts[nondominated_mask(pts)]
        pts = pts[np.argsort(pts[:, 2], kind="stable")]
        z = np.concatenate([pts[:, 2], [ref[2]]])
        total = 0.0
        for k in range(len(pts)):
            thickness = z[k + 1] - z[k]
            if thickness > 0:
                total += _hv2d(pts[: k + 1, :2], ref[:2]) * thickness
        return total
    raise AnalysisError(f"hypervolume is implemented for 1 to 3 objectives; got {d}")


def reference_point(values: np.ndarray, baseline: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ideal, reference)`` in minimisation form for normalising before the hypervolume.

    ideal = best finite value observed; reference = worst finite value among the observed points
    and the baseline, pushed 10 % of the range further (so the extreme front points still add
    volume). A constant objective gets a range of ``max(|v| * 0.1, 1)``.
    """
    y = np.asarray(values, dtype=float)
    if baseline is not None:
        y = np.vstack([y, np.asarray(baseline, dtype=float)[None, :]])
    ideal, worst = _finite_bounds(y)
    span = worst - ideal
    flat = span <= 0
    span[flat] = np.maximum(np.abs(worst[flat]) * 0.1, 1.0)
    return ideal, worst + 0.1 * span


def _normalised(y: np.ndarray, ideal: np.ndarray, ref: np.ndarray) -> np.ndarray:
    # ideal -> 0, reference -> 1; -inf clips to 0 (as good as it gets), +inf stays beyond 1.
    with np.errstate(invalid="ignore"):
        return np.clip((y - ideal) / (ref - ideal), 0.0, None)


@_quiet_overflow
def hypervolume_history(pareto: ParetoResult, max_points: int = 200) -> pd.DataFrame:
    """Normalised hypervolume of the eligible rows seen so far, by ``trial_number`` per group.

    Columns ``group, trial_number, hypervolume`` (in [0, 1]: the fraction of the box between the
    ideal point and the reference point, see :func:`reference_point`). With many trials only
    ``max_points`` evenly spaced checkpoints (always including the last) are computed.
    """
    rows: list[dict[str, Any]] = []
    d = len(pareto.objectives)
    if d > 3:
        return pd.DataFrame(columns=["group", "trial_number", "hypervolume"])
    table = pareto.table
    for g in pareto.groups:
        sub = table[(table["group"] == g) & table["eligible"]].sort_values("trial_number")
        if sub.empty:
            continue
        y = pareto.objective_matrix(sub)
        ideal, ref = reference_point(y)
        z = _normalised(y, ideal, ref)
        n = len(sub)
        checkpoints = np.unique(np.linspace(1, n, num=min(n, max_points)).round().astype(int))
        tn = sub["trial_number"].to_numpy()
        front = np.zeros((0, d))
        last = 0
        for cp in checkpoints:
            # The front of a prefix is the front of (previous front + new points).
            cand = np.vstack([front, z[last:cp]])
            cand = cand[(cand < 1.0).all(axis=1)]
            front = cand[nondominated_mask(cand)] if len(cand) else cand
            last = cp
            rows.append({"group": g, "trial_number": int(tn[cp - 1]),
                         "hypervolume": hypervolume(front, np.ones(d))})
    return pd.DataFrame(rows, columns=["group", "trial_number", "hypervolume"])


# --------------------------------------------------------------------------------------------
# Picking one point
# --------------------------------------------------------------------------------------------


@_quiet_overflow
def knee_point(pareto: ParetoResult, group: str | None = None) -> pd.Series | None:
    """The front point farthest on the ideal side of the hyperplane through the extremes.

    Objectives are normalised to [0, 1] over the front first. With fewer than three front points,
    or extremes that do not span a hyperplane, the point closest to the ideal point is returned.
    ``None`` when the group has no front.
    """
    front = pareto.front
    if group is not None:
        front = front[front["group"] == group]
    elif len(pareto.groups) > 1:
        front = front[front["group"] == pareto.groups[0]]
    if front.empty:
        return None
    y = pareto.objective_matrix(front)
    lo, hi = _finite_bounds(y)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    z = np.clip(np.nan_to_num((y - lo) / span, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    d = z.shape[1]
    pick = int(np.argmin(np.linalg.norm(z, axis=1)))
    if len(z) >= 3 and d >= 2:
        extremes = np.array([z[np.lexsort((z.sum(axis=1), z[:, k]))[0]] for k in range(d)])
        if np.linalg.matrix_rank(extremes) == d:
            w = np.linalg.solve(extremes, np.ones(d))
            dist = (1.0 - z @ w) / np.linalg.norm(w)
            if np.max(dist) > 1e-12:
                pick = int(np.argmax(dist))
    return front.iloc[pick]


def best_under_constraints(
    results: Results,
    constraints: Iterable[str | Constraint] | None,
    objective: str | Objective,
    *,
    hardware: str | None = None,
) -> pd.Series | None:
    """The eligible row that is best on ``objective`` while every constraint holds.

    Ties go to the lower trial number. ``None`` when no row qualifies.

    >>> best_under_constraints(results, ["accuracy_drop <= 0.01"], "latency_ms:min")  # doctest: +SKIP
    """
    obj = parse_objective(objective)
    objs = parse_objectives(results, [obj])
    eligible, _, _ = eligibility(results, objs, constraints)
    frame = results.frame
    if hardware is not None:
        eligible &= (frame["hardware"] == hardware).to_numpy()
    cand = frame[eligible]
    if cand.empty:
        return None
    key = cand[obj.name].to_numpy(dtype=float) * obj.sign
    best = np.flatnonzero(key == key.min())
    winners = cand.iloc[best].sort_values("trial_number")
    return winners.iloc[0]

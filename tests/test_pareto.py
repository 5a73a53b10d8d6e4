"""Pareto logic: hand-written tables (ties, ±inf), properties, constraints, hypervolume."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from analysis_fixtures import make_results
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from analysis import (
    AnalysisError,
    best_under_constraints,
    constraints_from_config,
    hypervolume,
    hypervolume_history,
    knee_point,
    nondominated_mask,
    nondominated_ranks,
    pareto_front,
    parse_constraint,
    parse_objective,
)
from analysis.pareto import reference_point

INF = math.inf


def test_import_does_not_pull_ray_or_optuna() -> None:
    code = ("import analysis, analysis.pareto, analysis.report, analysis.dataset, analysis.cli; "
            "import sys; assert 'ray' not in sys.modules and 'optuna' not in sys.modules; "
            "assert 'sweep' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- hand-written tables (minimisation form) ---------------------------------------------------

@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([[1, 2], [2, 1], [2, 2]], [True, True, False]),
        ([[1, 1], [1, 1]], [True, True]),                      # identical: neither dominates
        ([[1, 1], [1, 2]], [True, False]),                     # tie on one, better on other
        ([[-INF, 5], [0, 0]], [True, True]),                   # -inf beats, but worse elsewhere
        ([[-INF, 0], [0, 0]], [True, False]),                  # -inf latency dominates
        ([[INF, 0], [INF, 1]], [True, False]),                 # inf == inf is a tie
        ([[INF, INF], [1e300, 1e300]], [False, True]),
        ([[3]], [True]),
        ([[1, 2, 3], [3, 2, 1], [2, 2, 2], [3, 3, 3]], [True, True, True, False]),
        ([[1, 2, 3], [1, 2, 3], [1, 2, 4]], [True, True, False]),
        ([[0, 0, -INF], [-INF, 0, 0], [0, 0, 0]], [True, True, False]),
    ],
)
def test_nondominated_mask_tables(points: list[list[float]], expected: list[bool]) -> None:
    y = np.array(points, dtype=float)
    assert nondominated_mask(y).tolist() == expected
    # Same answer through the tolerant path with zero-width (but present) intervals.
    assert nondominated_mask(y, np.full_like(y, 1e-300)).tolist() == expected


def test_ranks_peel_fronts() -> None:
    y = np.array([[1, 1], [2, 2], [3, 3], [1, 3], [3, 1]], dtype=float)
    assert nondominated_ranks(y).tolist() == [0, 1, 2, 1, 1]
    assert nondominated_ranks(y, max_rank=0).tolist() == [0, 1, 1, 1, 1]


def test_nan_is_rejected_by_the_array_api() -> None:
    with pytest.raises(AnalysisError, match="NaN"):
        nondominated_mask(np.array([[np.nan, 1.0]]))


# -- properties -------------------------------------------------------------------------------

finite_or_inf = st.one_of(st.integers(-5, 5).map(float), st.sampled_from([INF, -INF]))


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a <= b).all() and (a < b).any())


@settings(max_examples=150, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 25), st.integers(1, 4)), elements=finite_or_inf),
       st.randoms())
def test_front_properties(y: np.ndarray, rnd) -> None:  # type: ignore[no-untyped-def]
    mask = nondominated_mask(y)
    front, rest = y[mask], y[~mask]
    for p in front:
        assert not any(_dominates(q, p) for q in y)
    for p in rest:
        assert any(_dominates(q, p) for q in front)
    perm = list(range(len(y)))
    rnd.shuffle(perm)
    assert nondominated_mask(y[perm]).tolist() == mask[perm].tolist()


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 20), st.just(2)), elements=st.integers(0, 6).map(float)),
       arrays(np.float64, st.just(20), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])))
def test_tolerant_front_matches_brute_force(y: np.ndarray, iqr: np.ndarray) -> None:
    tol = np.zeros_like(y)
    tol[:, 0] = iqr[: len(y)]

    def dom(i: int, j: int) -> bool:
        diff = y[i] - y[j]
        t = tol[i] + tol[j]
        return bool((diff <= t).all() and (diff < -t).any())

    expected = [not any(dom(i, j) for i in range(len(y))) for j in range(len(y))]
    assert nondominated_mask(y, tol).tolist() == expected


# -- noise-aware ties ---------------------------------------------------------------------------

def _tie_rows() -> list[dict[str, object]]:
    return [
        {"trial_number": 0, "latency_ms": 1.00, "latency_iqr_ms": 0.10, "size_bytes": 100, "accuracy": 0.9},
        # Faster on the median but inside the noise, and worse on size: noise makes it a tie.
        {"trial_number": 1, "latency_ms": 1.05, "latency_iqr_ms": 0.10, "size_bytes": 100, "accuracy": 0.9},
        # Clearly slower, same otherwise: dominated either way.
        {"trial_number": 2, "latency_ms": 2.00, "latency_iqr_ms": 0.10, "size_bytes": 100, "accuracy": 0.9},
    ]


def test_noise_aware_ties_keep_overlapping_points() -> None:
    r = make_results(_tie_rows())
    noisy = pareto_front(r, noise_aware=True)
    exact = pareto_front(r, noise_aware=False)
    assert sorted(noisy.front["trial_number"]) == [0, 1]
    assert sorted(exact.front["trial_number"]) == [0]
    assert noisy.ties[["trial_a", "trial_b"]].values.tolist() == [[0, 1]]
    assert exact.ties.empty


def test_noise_can_remove_a_point_whose_speed_is_only_noise() -> None:
    rows = [
        {"trial_number": 0, "latency_ms": 1.0, "latency_iqr_ms": 0.2, "size_bytes": 50, "accuracy": 0.9},
        {"trial_number": 1, "latency_ms": 0.9, "latency_iqr_ms": 0.2, "size_bytes": 80, "accuracy": 0.9},
    ]
    r = make_results(rows)
    assert sorted(pareto_front(r, noise_aware=False).front["trial_number"]) == [0, 1]
    assert sorted(pareto_front(r).front["trial_number"]) == [0]


# -- eligibility, baseline, hardware ------------------------------------------------------------

def test_eligibility_state_nan_feasible_and_baseline() -> None:
    rows = [
        {"trial_number": -1, "latency_ms": 2.0, "size_bytes": 100, "accuracy": 0.95},
        {"trial_number": 0, "latency_ms": 1.0, "size_bytes": 100, "accuracy": 0.95},
        {"trial_number": 1, "latency_ms": 0.1, "size_bytes": 1, "accuracy": 0.99, "state": "FAIL"},
        {"trial_number": 2, "latency_ms": 0.1, "size_bytes": 1, "accuracy": None},
        {"trial_number": 3, "latency_ms": 0.1, "size_bytes": 1, "accuracy": 0.99, "feasible": False},
        {"trial_number": 4, "latency_ms": 3.0, "size_bytes": 10, "accuracy": 0.96},
    ]
    pr = pareto_front(make_results(rows), ranks=True)
    t = pr.table.set_index("trial_number")
    assert sorted(pr.front["trial_number"]) == [0, 4]
    assert t.loc[1, "ineligible_reason"] == "state=FAIL"
    assert t.loc[2, "ineligible_reason"] == "nan:accuracy"
    assert t.loc[3, "ineligible_reason"] == "infeasible"
    assert bool(t.loc[-1, "is_baseline"]) and t.loc[-1, "rank"] == 1
    # An explicit constraint list replaces the stored verdict.
    pr2 = pareto_front(make_results(rows), constraints=[])
    assert sorted(pr2.front["trial_number"]) == [3]


def test_baseline_can_be_on_the_front() -> None:
    rows = [
        {"trial_number": -1, "latency_ms": 1.0, "size_bytes": 100, "accuracy": 0.99},
        {"trial_number": 0, "latency_ms": 2.0, "size_bytes": 100, "accuracy": 0.95},
    ]
    front = pareto_front(make_results(rows)).front
    assert front["trial_number"].tolist() == [-1] and bool(front["is_baseline"].iloc[0])


def test_fronts_are_per_hardware_unless_merged() -> None:
    rows = [
        {"trial_number": 0, "latency_ms": 1.0, "hardware": "fast"},
        {"trial_number": 1, "latency_ms": 5.0, "hardware": "slow"},
    ]
    r = make_results(rows)
    assert sorted(pareto_front(r).front["trial_number"]) == [0, 1]
    merged = pareto_front(r, all_hardware=True)
    assert merged.front["trial_number"].tolist() == [0] and merged.groups == ["all"]


def test_metadata_constraints_apply_by_default() -> None:
    rows = [
        {"trial_number": 0, "latency_ms": 1.0, "accuracy_drop": 0.05},
        {"trial_number": 1, "latency_ms": 2.0, "accuracy_drop": 0.0},
    ]
    r = make_results(rows, constraints={"max_accuracy_drop": 0.01})
    pr = pareto_front(r, ["latency_ms:min"])
    assert pr.front["trial_number"].tolist() == [1]
    assert [str(c) for c in pr.constraints] == ["accuracy_drop <= 0.01"]


# -- constraints ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("expr", "column", "op", "value"),
    [
        ("accuracy_drop <= 0.01", "accuracy_drop", "<=", 0.01),
        ("latency_ms<5", "latency_ms", "<", 5.0),
        ("  speedup >= 2 ", "speedup", ">=", 2.0),
        ("size_bytes != 1e6", "size_bytes", "!=", 1e6),
        ("accuracy == -.5", "accuracy", "==", -0.5),
        ("latency_ms > -inf", "latency_ms", ">", -INF),
    ],
)
def test_parse_constraint(expr: str, column: str, op: str, value: float) -> None:
    c = parse_constraint(expr)
    assert (c.column, c.op, c.value) == (column, op, value)


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('x')", "latency_ms < 5 or 1", "5 > latency_ms", "latency_ms =< 5",
     "latency_ms < x", "", "latency ms < 5", "a.b < 1", "latency_ms <"],
)
def test_parse_constraint_rejects(expr: str) -> None:
    with pytest.raises(AnalysisError, match=r"bad constraint .*COLUMN OP NUMBER"):
        parse_constraint(expr)


def test_constraint_unknown_column_is_named() -> None:
    with pytest.raises(AnalysisError, match="unknown column 'nope'"):
        pareto_front(make_results([{"latency_ms": 1.0}]), constraints=["nope < 1"])


def test_constraints_from_config() -> None:
    cons = constraints_from_config(
        {"max_accuracy_drop": 0.01, "max_latency_ms": 5, "min_accuracy": 0.9, "max_size_bytes": 10}
    )
    assert [str(c) for c in cons] == [
        "accuracy_drop <= 0.01", "latency_ms <= 5", "accuracy >= 0.9", "size_bytes <= 10"]
    with pytest.raises(AnalysisError, match="max_<column>"):
        constraints_from_config({"accuracy_drop": 0.1})
    with pytest.raises(AnalysisError, match="must be a number"):
        constraints_from_config({"max_latency_ms": "5"})


def test_objective_parsing_and_unknown() -> None:
    assert parse_objective("latency_ms:min").direction == "minimize"
    assert parse_objective("accuracy:maximize").sign == -1.0
    with pytest.raises(AnalysisError, match="NAME:min"):
        parse_objective("latency_ms")
    with pytest.raises(AnalysisError, match="unknown objective 'bogus'"):
        pareto_front(make_results([{"latency_ms": 1.0}]), ["bogus:min"])


# -- hypervolume --------------------------------------------------------------------------------

def _brute_hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact: sum the grid cells (from all coordinates) that some point dominates."""
    pts = points[(points < ref).all(axis=1)]
    if not len(pts):
        return 0.0
    axes = [np.unique(np.concatenate([pts[:, k], [ref[k]]])) for k in range(pts.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[k][c] for k, c in enumerate(cell)])
        if (pts <= lo).all(axis=1).any():
            total += float(np.prod([axes[k][c + 1] - axes[k][c] for k, c in enumerate(cell)]))
    return total


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 3)),
              elements=st.integers(0, 10).map(float)))
def test_hypervolume_matches_brute_force(points: np.ndarray) -> None:
    ref = np.full(points.shape[1], 11.0)
    assert hypervolume(points, ref) == pytest.approx(_brute_hv(points, ref))


def test_hypervolume_simple_cases() -> None:
    assert hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), [3.0, 3.0]) == 3.0
    assert hypervolume(np.array([[0.0, 0.0, 0.0]]), [1.0, 2.0, 3.0]) == 6.0
    assert hypervolume(np.array([[5.0, 5.0]]), [3.0, 3.0]) == 0.0
    with pytest.raises(AnalysisError, match="1 to 3 objectives"):
        hypervolume(np.zeros((1, 4)), np.ones(4))


def test_reference_point_uses_baseline_and_nudges() -> None:
    ideal, ref = reference_point(np.array([[1.0, 10.0], [2.0, 5.0]]), baseline=np.array([4.0, 5.0]))
    assert ideal.tolist() == [1.0, 5.0]
    assert ref.tolist() == pytest.approx([4.3, 10.5])


def test_hypervolume_history_is_monotone() -> None:
    from analysis_fixtures import synthetic_table

    from analysis.dataset import results_from_frame

    t = synthetic_table(300, seed=3)
    pr = pareto_front(results_from_frame(t.to_pandas(), metadata=t.schema.metadata))
    hist = hypervolume_history(pr)
    assert len(hist) > 10
    assert (np.diff(hist["hypervolume"].to_numpy()) >= -1e-12).all()
    assert 0 < hist["hypervolume"].iloc[-1] <= 1


# -- picking one point ----------------------------------------------------------------------------

def test_knee_point_picks_the_bend() -> None:
    rows = [
        {"trial_number": 0, "latency_ms": 1.0, "size_bytes": 100},
        {"trial_number": 1, "latency_ms": 2.0, "size_bytes": 20},    # the bend
        {"trial_number": 2, "latency_ms": 10.0, "size_bytes": 10},
    ]
    pr = pareto_front(make_results(rows), ["latency_ms:min", "size_bytes:min"])
    knee = knee_point(pr)
    assert knee is not None and knee["trial_number"] == 1


def test_best_under_constraints() -> None:
    rows = [
        {"trial_number": 0, "latency_ms": 1.0, "accuracy_drop": 0.05},
        {"trial_number": 1, "latency_ms": 2.0, "accuracy_drop": 0.005},
        {"trial_number": 2, "latency_ms": 2.0, "accuracy_drop": 0.0},
        {"trial_number": 3, "latency_ms": 0.5, "accuracy_drop": 0.0, "state": "FAIL"},
    ]
    r = make_results(rows)
    best = best_under_constraints(r, ["accuracy_drop <= 0.01"], "latency_ms:min")
    assert best is not None and best["trial_number"] == 1
    assert best_under_constraints(r, ["accuracy_drop < 0"], "latency_ms:min") is None


@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("d", [3, 4])
def test_seeded_filter_matches_the_plain_algorithm(monkeypatch: pytest.MonkeyPatch, noisy: bool, d: int) -> None:
    """Large inputs take the seeded path; it must agree with the unseeded one (and brute force)."""
    import analysis.pareto as pareto_mod

    rng = np.random.default_rng(d)
    y = rng.integers(0, 12, size=(3000, d)).astype(float)
    y[rng.random(3000) < 0.01, 0] = -INF
    y[rng.random(3000) < 0.01, 1] = INF
    tol = None
    if noisy:
        tol = np.zeros_like(y)
        tol[:, 0] = rng.choice([0.0, 0.5, 1.5], size=3000)
    seeded = nondominated_mask(y, tol)
    monkeypatch.setattr(pareto_mod, "_SEED_MIN_POINTS", 10**9)
    plain = nondominated_mask(y, tol)
    assert seeded.tolist() == plain.tolist()
    # brute force on the front: nobody dominates a front point
    t = np.zeros_like(y) if tol is None else tol
    for i in np.flatnonzero(seeded)[:50]:
        with np.errstate(invalid="ignore"):
            diff = np.where(y == y[i], 0.0, y - y[i])
        tt = t + t[i]
        assert not ((diff <= tt).all(axis=1) & (diff < -tt).any(axis=1)).any()

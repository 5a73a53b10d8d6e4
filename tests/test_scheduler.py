"""The driver's scheduling state (sweep/scheduler.py), without Ray or Optuna."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sweep.scheduler import Scheduler


def _spec(n: int) -> Any:
    return SimpleNamespace(trial_number=n)


def _dup(spec: Any, original: dict[str, Any]) -> dict[str, Any]:
    return {**original, "trial_number": spec.trial_number, "duplicate_of": original["trial_number"]}


def test_twins_wait_and_become_duplicates_of_a_success() -> None:
    s = Scheduler()
    assert s.admit(_spec(0), "k", None) == "ready"
    assert s.admit(_spec(1), "k", None) == "waiting"
    assert s.distinct == 1 and s.repeats == 1 and s.next_ready().trial_number == 0
    s.done({"trial_number": 0, "state": "COMPLETE"}, _dup)
    rows = s.take_finished()
    assert [(r["trial_number"], r.get("duplicate_of")) for r in rows] == [(0, None), (1, 0)]
    assert s.idle() and not s.inflight and s.distinct == 1


def test_a_twin_of_a_failed_original_is_its_duplicate_and_costs_no_budget() -> None:
    # CI found the old rule (measure the first twin for real, and count it) overshooting n_trials.
    s = Scheduler()
    s.admit(_spec(0), "k", None)
    s.admit(_spec(1), "k", None)
    s.admit(_spec(2), "k", None)
    s.next_ready()
    s.done({"trial_number": 0, "state": "FAIL"}, _dup)
    rows = s.take_finished()
    assert [(r["trial_number"], r["state"], r.get("duplicate_of")) for r in rows] == \
        [(0, "FAIL", None), (1, "FAIL", 0), (2, "FAIL", 0)]
    assert s.distinct == 1 and not s.ready and s.idle()


def test_known_configurations_and_refusals_are_repeats() -> None:
    s = Scheduler()
    assert s.admit(_spec(0), "k", {"trial_number": -1, "state": "COMPLETE"}, _dup) == "duplicate"
    s.admit_infeasible()
    assert (s.asked, s.distinct, s.infeasible, s.repeats) == (2, 0, 1, 2)
    assert s.admit(_spec(3), "other", None) == "ready" and s.repeats == 0 and s.distinct == 1
    s.not_distinct_after_all()  # its build turned out to be a known model
    assert s.distinct == 0
    assert [x.trial_number for x in s.unfinished([_spec(9)])] == [9, 3]

"""``optsweep doctor OUT [--fix]``: damaged files, study/row mismatches, stale locks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweep.cli import app
from sweep.guard import LOCK_NAME, FileLock, describe_holder
from sweep.results import ResultsWriter

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(out: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.create_study(study_name="t", storage=storage, directions=["minimize"], load_if_exists=True)


def _out(tmp_path: Path, *, unfixable: bool) -> Path:
    """An out a crashed driver left: a damaged row, a RUNNING trial with no row, a stale lock and
    a temp file; with ``unfixable`` also a lost row and a row of another study."""
    out = tmp_path / "out"
    w = ResultsWriter(out, {"latency_ms": "minimize"}, {}, "t")
    w.write_text("sweep.json", json.dumps({"name": "t", "config": {"name": "t", "storage": None}}))
    study = _study(out)
    for n in range(4):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        if n == 0:
            w.write({"trial_number": 0, "state": "COMPLETE", "latency_ms": 1.0})
            study.tell(trial, 1.0)
        elif n == 1:
            pass  # RUNNING, no row: the driver died mid-trial
        elif n == 2:
            w.write({"trial_number": 2, "state": "COMPLETE", "latency_ms": 2.0})
            study.tell(trial, 2.0)
            (w.dir / "trial-000002.parquet").write_bytes(b"PAR1 cut short")
        elif unfixable:
            study.tell(trial, 3.0)  # COMPLETE, its row lost
        else:
            study.tell(trial, state=TrialState.FAIL)
            w.write({"trial_number": 3, "state": "FAIL"})
    if unfixable:
        w.write({"trial_number": 9, "state": "COMPLETE", "latency_ms": 9.0})
    (out / LOCK_NAME).write_text(json.dumps({"host": "gone", "pid": 123, "started": "2025-01-01T00:00:00Z"}))
    (w.dir / ".tmp-trial-000001.parquet-x.parquet.partial").write_bytes(b"half")
    return out


def _doctor(*args: str) -> tuple[int, list[str], str]:
    r = CliRunner().invoke(app, ["doctor", *args])
    return r.exit_code, r.stdout.strip().splitlines(), r.stderr.strip()


STALE = describe_holder({"host": "gone", "pid": 123, "started": "2025-01-01T00:00:00Z"})


def test_doctor_lists_problems_then_fixes_them(tmp_path: Path) -> None:
    out = _out(tmp_path, unfixable=False)
    code, lines, _ = _doctor(str(out))
    assert code == 1
    assert lines == [
        f"problem: stale_lock: {LOCK_NAME} of a driver that is gone ({STALE})",
        "problem: damaged: results/trial-000002.parquet: " + lines[1].split(": ", 3)[3],
        "problem: stale_temp: results/.tmp-trial-000001.parquet-x.parquet.partial: temp file of an interrupted write",
        "problem: orphan_running: trial 1 is RUNNING in the study, with no row and no driver (a dead driver's)",
        f"4 problem(s) in {out}; repair what can be with: optsweep doctor {out} --fix",
    ]
    code, lines, _ = _doctor(str(out), "--fix")
    assert code == 0, lines
    assert lines[-1] == f"ok: {out} is healthy (4 repaired)"
    assert [x.split(":")[0] for x in lines] == ["note", "fixed", "fixed", "fixed", "fixed", "ok"]
    assert lines[2].startswith("fixed: damaged: results/trial-000002.parquet: ")
    assert lines[2].endswith(" (moved to results/.damaged/)")
    assert (out / "results" / ".damaged" / "trial-000002.parquet").exists()
    assert not (out / LOCK_NAME).exists()
    assert lines[0] == "note: trial 2's row was moved aside as damaged: its point is queued, so the next run " \
                       "measures it again"
    assert lines[4] == ("fixed: orphan_running: trial 1 is RUNNING in the study, with no row and no driver "
                        "(a dead driver's) (failed in the study, its point queued again)")
    study = _study(out)
    assert study.trials[1].state == TrialState.FAIL
    assert len([t for t in study.trials if t.state == TrialState.WAITING]) == 2
    assert _doctor(str(out)) == (0, ["note: trial 2's row was moved aside as damaged: the next run measures its "
                                     "point again", f"ok: {out} is healthy"], "")
    _doctor(str(out), "--fix")
    study = _study(out)
    assert len([t for t in study.trials if t.state == TrialState.WAITING]) == 2  # never queued twice
    asked = [study.ask() for _ in range(2)]  # what the next run gets: the lost points, as a resume queues them
    assert sorted((t.user_attrs["requeued_from"], t.suggest_float("x", 0.0, 1.0)) for t in asked) == \
        sorted((n, study.trials[n].params["x"]) for n in (1, 2))


def test_doctor_names_what_it_cannot_repair(tmp_path: Path) -> None:
    out = _out(tmp_path, unfixable=True)
    code, lines, _ = _doctor(str(out), "--fix")
    assert code == 1
    assert "cannot fix: lost_row: trial 3 is COMPLETE in the study but has no row (removed by hand?)" in lines
    assert ("cannot fix: row_without_trial: results/trial-000009.parquet has no trial in study 't' "
            "(another study's row?)") in lines
    assert lines[-1] == f"2 problem(s) in {out} that --fix cannot repair"


def test_doctor_leaves_a_running_driver_alone(tmp_path: Path) -> None:
    out = _out(tmp_path, unfixable=False)
    (out / LOCK_NAME).unlink()
    live = FileLock(str(out))  # another driver holds the out
    try:
        code, _, err = _doctor(str(out), "--fix")
        assert code == 2
        assert err == (f"error: {out} is in use by a running optsweep driver ({describe_holder(live.holder)}); "
                       "stop it before --fix")
        code, lines, _ = _doctor(str(out))
        assert code == 1
        assert lines[0].startswith("note: a driver is running (")
        assert not any("orphan_running" in x or "stale_temp" in x for x in lines)  # its own, not problems
        assert (out / "results" / "trial-000002.parquet").exists()  # nothing moved
    finally:
        live.release()


@pytest.mark.parametrize("make", [False, True])
def test_doctor_refuses_what_is_not_an_out(tmp_path: Path, make: bool) -> None:
    target = tmp_path / "nothing"
    if make:
        target.mkdir()
    code, _, err = _doctor(str(target))
    assert code == 2
    assert re.fullmatch(re.escape(f"error: {target} has no results/ folder: not a sweep's out"), err)
    assert not (target / "results").exists()

"""``optsweep doctor OUT [--fix]``: what is wrong with a sweep's ``out``, and the safe repairs.

Checks, in order:

- the out lock: a running driver (then nothing else is touched, and ``--fix`` is refused), or a
  stale lock a dead driver left (``--fix`` removes it);
- damaged row files: unreadable or truncated Parquet (``--fix`` moves them to
  ``results/.damaged/``, so a resume runs their trials again);
- temp files of interrupted writes (``--fix`` removes them);
- study against rows, through Optuna's public API (``optuna.load_study``, ``get_trials``,
  ``tell``): a trial RUNNING with no row and no driver is a dead driver's (``--fix`` fails it,
  as a resume would); a trial COMPLETE with no row lost its row; a row whose trial the study
  does not know belongs to another study. The last two cannot be repaired here.

With ``--fix`` the doctor holds the out lock while it works, so no driver starts meanwhile.

>>> import tempfile, os
>>> out = tempfile.mkdtemp(); os.mkdir(os.path.join(out, "results"))
>>> diagnose(out).healthy
True
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass
class Finding:
    """One thing wrong with an ``out``: ``kind`` is ``stale_lock``, ``damaged``, ``stale_temp``,
    ``orphan_running``, ``lost_row`` or ``row_without_trial``."""

    kind: str
    what: str
    fixable: bool
    fixed: bool = False


@dataclass
class Diagnosis:
    out: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> list[Finding]:
        return [f for f in self.findings if not f.fixed]

    @property
    def healthy(self) -> bool:
        """Nothing left to repair (after ``--fix``: nothing it could not repair)."""
        return not self.remaining


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _redact(out: str) -> str:
    from .config import redact

    return redact(out) or out


def _has_results(out: str) -> bool:
    if "://" not in out:
        return os.path.isdir(os.path.join(out, "results"))
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(out)
    infos = fs.get_file_info(pafs.FileSelector(f"{base.rstrip('/')}/results", allow_not_found=True))
    return bool(infos)


def diagnose(out: str, *, fix: bool = False, storage: str | None = None) -> Diagnosis:
    """Check ``out`` (a local folder or an object-store URI); repair what is safe with ``fix``.

    ``storage``: the study's storage URL when ``sweep.json`` holds it redacted (an RDB with a
    password); without it the default journal ``OUT/study.journal`` is used. Raises
    :class:`ConfigError` (one line) when ``out`` is not a sweep's out, or for ``fix`` while a
    driver runs.
    """
    from .guard import LOCK_NAME, acquire_out_lock, describe_holder, probe_out_lock
    from .results import DAMAGED, ResultsWriter

    diag = Diagnosis(out)
    try:
        present = _has_results(out)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot open {_redact(out)}: {_printable(str(exc).strip().splitlines()[0])}") from None
    if not present:
        raise ConfigError(f"{_redact(out)} has no results/ folder: not a sweep's out")
    state, holder = probe_out_lock(out)
    live = state == "held"
    if live and fix:
        raise ConfigError(f"{_redact(out)} is in use by a running optsweep driver ({describe_holder(holder)}); "
                          "stop it before --fix")
    if live:
        diag.notes.append(f"a driver is running ({describe_holder(holder)}): its RUNNING trials and temp "
                          "files are not problems")
    stale = None
    if state == "stale":
        stale = Finding("stale_lock", f"{LOCK_NAME if '://' not in out else 'lease'} of a driver that is gone "
                                      f"({describe_holder(holder)})", fixable=True)
        diag.findings.append(stale)
    lock = acquire_out_lock(out) if fix else None
    try:
        writer = ResultsWriter(out, {}, {}, "doctor")
        damaged = writer.find_damaged()
        for name, reason in damaged.items():
            diag.findings.append(Finding("damaged", f"results/{name}: {_printable(reason)}", fixable=True))
        if fix:
            moved = set(writer.quarantine_damaged())
            for f in diag.findings:
                if f.kind == "damaged" and f.what.split(":", 1)[0].removeprefix("results/") in moved:
                    f.fixed = True
                    f.what += f" (moved to results/{DAMAGED}/)"
        if not live:
            temps = writer.partials()
            for p in temps:
                rel = os.path.relpath(p, writer.out)
                diag.findings.append(Finding("stale_temp", f"{_printable(rel)}: temp file of an interrupted write",
                                             fixable=True))
            if fix and temps:
                writer.clean_partials()
                for f in diag.findings:
                    f.fixed = f.fixed or f.kind == "stale_temp"
        _check_study(diag, writer, storage, live=live, fix=fix, damaged=damaged)
    finally:
        if lock is not None:
            lock.release()
            if stale is not None:
                stale.fixed = True
    return diag


def _study_storage(diag: Diagnosis, writer: Any, storage: str | None, manifest: dict[str, Any]) -> Any:
    url = storage or (manifest.get("config") or {}).get("storage") or manifest.get("storage")
    if url:
        if "***" in url:
            diag.notes.append("study not checked: sweep.json holds its storage URL redacted; pass --storage URL")
            return None
        return url
    journal = writer.out / "study.journal"
    if writer.remote or not journal.exists():
        diag.notes.append("study not checked: no study.journal and no storage in sweep.json")
        return None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(journal)))


def _check_study(diag: Diagnosis, writer: Any, storage: str | None, *, live: bool, fix: bool,
                 damaged: dict[str, str]) -> None:
    try:
        text = writer.read_text("sweep.json")
    except (OSError, UnicodeDecodeError) as exc:
        diag.notes.append(f"study not checked: sweep.json cannot be read ({type(exc).__name__})")
        return
    if text is None:
        diag.notes.append("study not checked: no sweep.json (the study's name is unknown)")
        return
    try:
        manifest = json.loads(text)
        name = str(manifest.get("name") or manifest["config"]["name"])
    except (ValueError, KeyError, TypeError):
        diag.notes.append("study not checked: sweep.json is not readable JSON with a 'name'")
        return
    store = _study_storage(diag, writer, storage, manifest)
    if store is None:
        return
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=store)
        trials = study.get_trials(deepcopy=False)
    except Exception as exc:  # noqa: BLE001 - storage and missing-study errors: a note, not a crash
        from .cluster import first_line

        diag.notes.append(f"study {_printable(name)!r} not checked: {first_line(exc)}")
        return
    rows = {n: writer.read(n) for n in writer.existing_trials()}
    rows = {n: r for n, r in rows.items() if r is not None}
    numbers = {t.number for t in trials}
    aside = writer.moved_aside()
    unreadable = {n for n in writer.existing_trials() if writer.path_for(n).name in damaged}
    requeued = {int(t.user_attrs["requeued_from"]) for t in trials
                if t.state == TrialState.WAITING and isinstance(t.user_attrs.get("requeued_from"), int)}

    def requeue(t: Any) -> bool:
        """Queue a lost trial's point again, as a resume does (once: a WAITING copy may exist)."""
        if t.number in requeued or not t.params:
            return t.number in requeued
        study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})
        requeued.add(t.number)
        return True

    for t in trials:
        if t.number in unreadable:
            continue  # reported as damaged above
        if t.number in aside and t.number not in rows:
            if fix and not live and requeue(t):
                diag.notes.append(f"trial {t.number}'s row was moved aside as damaged: its point is queued, so "
                                  "the next run measures it again")
            else:
                diag.notes.append(f"trial {t.number}'s row was moved aside as damaged: the next run measures "
                                  "its point again")
            continue
        if t.number in rows:
            if t.state == TrialState.RUNNING and not live:
                diag.notes.append(f"trial {t.number} is RUNNING in the study but has a row: the next run tells "
                                  "the study from the row")
            continue
        if t.state == TrialState.RUNNING and not live:
            finding = Finding("orphan_running", f"trial {t.number} is RUNNING in the study, with no row and no "
                                                "driver (a dead driver's)", fixable=True)
            diag.findings.append(finding)
            if fix:
                with contextlib.suppress(Exception):  # finished meanwhile: nothing to do
                    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                finding.fixed = True
                finding.what += " (failed in the study" + (", its point queued again)" if requeue(t) else ")")
        elif t.state == TrialState.COMPLETE:
            diag.findings.append(Finding("lost_row", f"trial {t.number} is COMPLETE in the study but has no row "
                                                     "(removed by hand?)", fixable=False))
    for n in sorted(set(rows) - numbers):
        diag.findings.append(Finding("row_without_trial", f"results/trial-{n:06d}.parquet has no trial in study "
                                                          f"{_printable(name)!r} (another study's row?)",
                                     fixable=False))


def report_lines(diag: Diagnosis, fix: bool) -> list[str]:
    """What ``optsweep doctor`` prints: one line per finding and note, then a verdict."""
    out = _redact(diag.out)
    lines = [f"note: {_printable(n)}" for n in diag.notes]
    for f in diag.findings:
        status = "fixed" if f.fixed else ("problem" if f.fixable or not fix else "cannot fix")
        lines.append(f"{status}: {f.kind}: {_printable(f.what)}")
    remaining = diag.remaining
    if not remaining:
        fixed = sum(f.fixed for f in diag.findings)
        lines.append(f"ok: {out} is healthy" + (f" ({fixed} repaired)" if fixed else ""))
    elif not fix and any(f.fixable for f in remaining):
        lines.append(f"{len(remaining)} problem(s) in {out}; repair what can be with: optsweep doctor {out} --fix")
    else:
        lines.append(f"{len(remaining)} problem(s) in {out} that --fix cannot repair")
    return lines

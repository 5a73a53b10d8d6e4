"""The driver's scheduling state: which asked trials wait, run, or are done but not yet told.

Contract (what :class:`sweep.driver.Driver` relies on):

- Every trial the driver asks goes through :meth:`Scheduler.admit` exactly once and then ends in
  exactly one place: a row in :attr:`finished` (to persist, then tell), or a spec returned by
  :meth:`unfinished` (asked, never measured: failed in the study and re-queued on exit).
- A configuration is measured at most once at a time: a second trial with the key of one in
  flight waits behind it and becomes a duplicate of its row, whatever its state. (A twin of a
  failed original is a repeat the sampler proposed while the original ran; measuring it would
  spend budget past ``n_trials``. A later proposal of a failed configuration is measured again.)
- Rows are handed out in the order they became final; the driver persists each row *before* it
  tells Optuna, so a crash between the two is repaired from the row on resume.

Not thread-safe: one driver loop owns it.

>>> from types import SimpleNamespace as Spec
>>> s = Scheduler()
>>> s.admit(Spec(trial_number=0), key="k", known=None)
'ready'
>>> s.admit(Spec(trial_number=1), key="k", known=None)
'waiting'
>>> s.next_ready().trial_number
0
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Scheduler:
    """Queues of one sweep's asked trials, keyed by configuration key."""

    ready: deque[Any] = field(default_factory=deque)            # asked, waiting for a free worker
    finished: list[dict[str, Any]] = field(default_factory=list)  # final rows, not yet persisted/told
    waiting: dict[str, list[Any]] = field(default_factory=dict)   # key -> specs behind an in-flight twin
    inflight: dict[str, Any] = field(default_factory=dict)        # key -> the spec being measured
    keys: dict[int, str] = field(default_factory=dict)            # trial number -> its key
    asked: int = 0       # every trial asked (duplicates included)
    distinct: int = 0    # asked trials that will give a new measurement: what n_trials counts
    infeasible: int = 0  # new configurations the registry refused: a row each, nothing run, no budget
    repeats: int = 0     # proposals in a row since the last new measurement (repeats, refusals)

    def admit(self, spec: Any, key: str, known: Mapping[str, Any] | None,
              duplicate: Callable[[Any, Any], dict[str, Any]] | None = None) -> str:
        """Place a newly asked trial; returns ``duplicate``, ``waiting`` or ``ready``."""
        self.asked += 1
        self.keys[spec.trial_number] = key
        if known is not None:
            assert duplicate is not None
            self.keys.pop(spec.trial_number, None)
            self.finished.append(duplicate(spec, known))
            self.repeats += 1
            return "duplicate"
        if key in self.inflight:
            self.waiting.setdefault(key, []).append(spec)
            self.repeats += 1
            return "waiting"
        self.inflight[key] = spec
        self.ready.append(spec)
        self.distinct += 1
        self.repeats = 0
        return "ready"

    def admit_infeasible(self) -> None:
        """A new configuration the registry refuses on this device: it gets its INFEASIBLE row
        (the reason is worth keeping), but nothing ran, so it costs no budget; a sampler that keeps
        proposing such points counts as repeating (the driver then queues a runnable point)."""
        self.asked += 1
        self.infeasible += 1
        self.repeats += 1

    def not_distinct_after_all(self) -> None:
        """A measured trial turned out to be an earlier model (a no-op stage): give its slot back."""
        self.distinct -= 1

    def next_ready(self) -> Any:
        return self.ready.popleft()

    def key_of(self, trial_number: int) -> str:
        """The key a trial was admitted under (rows may not reproduce it: a no-op stage)."""
        return self.keys[trial_number]

    def done(self, row: dict[str, Any], duplicate: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> None:
        """A measured row came back: it is final, and its waiting twins become its duplicates
        (whatever its state: see the module docstring)."""
        key = self.keys.pop(int(row["trial_number"]))
        self.inflight.pop(key, None)
        self.finished.append(row)
        for spec in self.waiting.pop(key, []):
            self.keys.pop(spec.trial_number, None)
            self.finished.append(duplicate(spec, row))

    def take_finished(self) -> list[dict[str, Any]]:
        rows, self.finished = self.finished, []
        return rows

    def idle(self) -> bool:
        """Nothing queued, nothing waiting behind a twin."""
        return not self.ready and not self.waiting

    def unfinished(self, running: list[Any]) -> list[Any]:
        """Asked but never measured: ``running`` (in flight on workers), ready and waiting specs."""
        return [*running, *self.ready, *(s for specs in self.waiting.values() for s in specs)]

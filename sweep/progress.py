"""Progress: a live rich display on a TTY, plain log lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rich.console import Console

from .config import SweepConfig, redact


class Progress:
    """Done / running / failed counts, ETA and the best value so far for each objective."""

    def __init__(self, cfg: SweepConfig, enabled: bool | None = None) -> None:
        self.cfg = cfg
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if enabled is None else enabled and self.console.is_terminal
        self.quiet = enabled is False
        self.total = self.done = self.start_done = self.running = self.failed = 0
        self.best: dict[str, float] = {}
        self.t0 = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.monotonic()
        if done:
            self._log(f"resuming: {done}/{total} trials already in {redact(self.cfg.out)}")
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                     console=self.console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.cfg.name, total=total, completed=done, status="")

    def _log(self, msg: str) -> None:
        if not self.quiet:
            # Error texts and hardware names are data: credentials hidden, control characters
            # (ESC, CR, bidi overrides) shown as escapes, so a line can't rewrite the terminal.
            from analysis._escape import terminal

            from .cluster import redact_text

            print(f"[optsweep] {terminal(redact_text(msg))}", file=sys.stderr, flush=True)

    def _status(self) -> str:
        best = " ".join(f"{k}={v:.4g}" for k, v in self.best.items())
        return f"running {self.running} failed {self.failed} | best {best}"

    def baseline(self, row: dict[str, Any]) -> None:
        self._log(f"baseline: latency {row['latency_ms']:.3f} ms, size {row['size_bytes']} B, "
                  f"accuracy {row['accuracy']:.4f} on {row.get('hardware')}")

    def update(self, running: int) -> None:
        self.running = running
        if self._bar is not None:
            self._bar.update(self._task, status=self._status())

    def trial_done(self, row: dict[str, Any]) -> None:
        if row.get("duplicate_of") is None and row.get("state") != "INFEASIBLE":  # what n_trials counts
            self.done += 1
        if row["state"] == "FAIL":
            self.failed += 1
        if row["state"] == "COMPLETE" and row.get("feasible", True):
            for metric, direction in self.cfg.objectives.items():
                v = row.get(metric)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                cur = self.best.get(metric)
                if cur is None or (v < cur if direction == "minimize" else v > cur):
                    self.best[metric] = float(v)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, status=self._status())
            return
        elapsed = time.monotonic() - self.t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        detail = row.get("error") if row["state"] != "COMPLETE" else (
            f"latency {row.get('latency_ms', float('nan')):.3f} ms acc {row.get('accuracy', float('nan')):.4f}")
        if row.get("duplicate_of") is not None:
            detail = f"same configuration as trial {row['duplicate_of']}: not re-measured"
        self._log(f"trial {row['trial_number']} {row['state']} ({self.done}/{self.total}, eta {eta:.0f}s): "
                  f"{_label(row)} {detail}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _label(row: dict[str, Any]) -> str:
    """pruning/quantization/precision the model really ran (its effective recipe when known),
    with the requested stages that changed nothing after ``no-op:``."""
    import json

    keys = ("pruning_method", "quantization_type", "precision")

    def show(src: dict[str, Any]) -> str:
        parts = [str(src.get(k, row.get(k))) for k in keys]
        backend = src.get("quantization_backend", row.get("quantization_backend"))
        if parts[1] != "none" and backend not in (None, "", "auto"):
            parts[1] += f"({backend})"  # the kernel asked for: two backends are two configurations
        return "/".join(parts)

    label = show({})
    try:
        eff = json.loads(row.get("effective_recipe") or "")
    except (TypeError, ValueError):
        return label
    if not isinstance(eff, dict):
        return label
    dropped = [str(row.get(k)) for k in keys if eff.get(k, row.get(k)) != row.get(k)]
    return show(eff) + (f" (no-op: {', '.join(dropped)})" if dropped else "")

"""``optsweep verify``: export front models, re-time each in a fresh process, compare.

For every front model (or the trials asked for) the artifact is written with
:func:`analysis.export.export_trial` (the path the trials timed), then a fresh Python process
loads it with torch's own loaders and times it against the untouched model with the same paired,
interleaved timer the sweep used. Recorded and re-measured speedups are compared; a difference
beyond ``tolerance`` (relative, default 10%) is flagged. Results go to ``OUT/verify.json``, which
the report shows as a ``verified`` column.

>>> rows = verify("runs/quickstart", config="examples/quickstart.yaml")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._io import atomic_write
from .errors import AnalysisError
from .export import _num as _f

__all__ = ["export_front", "front_trials", "verify"]


def front_trials(out: str | Path, include_unexportable: bool = False) -> list[int]:
    """Trial numbers on the default Pareto front of ``out`` (baseline included if on it)."""
    from .dataset import load_results
    from .pareto import pareto_front

    pr = pareto_front(load_results(out), include_unexportable=include_unexportable)
    return [int(t) for t in pr.front["trial_number"]]


def export_front(out: str | Path, directory: str | Path, *, config: str | Path | None = None,
                 trust: bool = False, measure: bool = False) -> list[Any]:
    """Write every front model with its sidecar to ``directory`` (``trial-N.pt2`` + ``.json``)."""
    from .export import export_trial

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return [export_trial(out, t, d / f"trial-{t}.pt2", measure=measure, config=config, trust=trust)
            for t in front_trials(out)]


def _root(out: str | Path) -> Path:
    p = Path(out)
    return p.parent if p.name == "results" and not (p / "sweep.json").exists() else p


def verify(out: str | Path, trials: Sequence[int] | None = None, *, tolerance: float = 0.10,
           config: str | Path | None = None, trust: bool = False, rounds: int = 5,
           min_run_time_s: float = 1.0, timeout_s: float = 600, pin_cores: bool = True) -> list[dict[str, Any]]:
    """Verify ``trials`` (default: the front); returns one record per trial and writes verify.json."""
    from .dataset import load_results
    from .export import MANIFEST, _manifest, code_refs, export_trial

    if not tolerance > 0:
        raise AnalysisError(f"--tolerance must be > 0; got {tolerance}")
    root = _root(out).resolve()
    frame = load_results(root).frame
    numbers = list(trials) if trials else front_trials(root)
    have = set(frame["trial_number"].dropna().astype(int))
    missing = [t for t in numbers if t not in have]
    if missing:
        raise AnalysisError(f"--trial {missing[0]} is not in {str(root)!r} (trial numbers "
                            f"{min(have)}..{max(have)})" if have else f"{str(root)!r} has no trials")
    _, manifest = _manifest(root)
    refs, base_dir = code_refs(root, manifest, config, trust)
    art_dir = root / "verify"
    art_dir.mkdir(exist_ok=True)
    records = []
    for t in numbers:
        row = frame[frame["trial_number"] == t].iloc[0]
        rec: dict[str, Any] = {"trial_number": int(t), "recorded_speedup": _f(row.get("speedup")),
                               "recorded_speedup_iqr": _f(row.get("speedup_iqr"))}
        try:
            res = export_trial(root, int(t), art_dir / f"trial-{t}.pt2", measure=False, config=config, trust=trust)
        except AnalysisError as e:
            rec["error"] = str(e)
            records.append(rec)
            continue
        threads = int(row["threads"]) if _f(row.get("threads")) else 1
        job = {"artifact": str(res.path), "format": res.format, "model": refs["model"],
               "example_inputs": refs["example_inputs"], "base_dir": base_dir, "threads": threads,
               "warmup": 5, "rounds": rounds, "min_run_time": min_run_time_s, "pin": pin_cores}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = repo
        proc = subprocess.run([sys.executable, "-m", "analysis._verify_child"], input=json.dumps(job),
                              capture_output=True, text=True, timeout=timeout_s, env=env, cwd=base_dir)
        rec["format"] = res.format
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rec["error"] = f"fresh process failed: {tail[:300]}"
        else:
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            rec.update(remeasured_speedup=got["speedup"], remeasured_speedup_iqr=got["speedup_iqr"],
                       remeasured_latency_ms=got["latency_ms"], load_s=got["load_s"])
            want = rec["recorded_speedup"]
            if want:
                rec["difference"] = got["speedup"] / want - 1.0
                rec["within_tolerance"] = abs(rec["difference"]) <= tolerance
        records.append(rec)
    atomic_write(root / "verify.json", json.dumps({"tolerance": tolerance, "manifest": MANIFEST,
                                                  "trials": records}, indent=2))
    return records


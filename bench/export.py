"""Recorded vs re-measured: does the speedup on the front survive export and a fresh process?

For each config: run the sweep (``optsweep run``) into a fresh folder, then ``optsweep verify``
it: every front model is exported (the path each trial timed), loaded in a new Python process
with torch's own loaders, and timed against the untouched model with the same paired,
interleaved timer. Prints, per front model, the recorded speedup (with its spread), the
re-measured one, and their difference; the target is every front model within ±10%.

    .venv/bin/python bench/export.py                                   # quickstart + MiniLM
    .venv/bin/python bench/export.py --configs examples/quickstart.yaml --n-trials 30
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["examples/quickstart.yaml", "examples/minilm_front.yaml"])
    ap.add_argument("--n-trials", type=int, default=None)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=1.0)
    args = ap.parse_args()
    from analysis.verify import verify

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for cfg in args.configs:
        out = Path(tempfile.mkdtemp(prefix="optsweep-bench-export-")) / "out"
        cmd = [sys.executable, "-m", "sweep.cli", "run", str(ROOT / cfg), "--out", str(out), "--quiet"]
        if args.n_trials:
            cmd += ["--n-trials", str(args.n_trials)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        sweep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        records = verify(out, tolerance=args.tolerance, config=ROOT / cfg, rounds=args.rounds,
                         min_run_time_s=args.min_run_time)
        print(f"\n## {cfg}: sweep {sweep_s:.0f} s, verify {time.perf_counter() - t0:.0f} s, out {out}")
        print("| trial | format | recorded speedup (IQR) | fresh-process speedup (IQR) | difference | within |")
        print("|---:|---|---:|---:|---:|---|")
        ok = 0
        for r in records:
            if r.get("error"):
                print(f"| {r['trial_number']} | - | {r.get('recorded_speedup')} | export failed: {r['error'][:80]} | | no |")
                continue
            ok += bool(r.get("within_tolerance"))
            print(f"| {r['trial_number']} | {r['format']} | {r['recorded_speedup']:.2f}x "
                  f"({r.get('recorded_speedup_iqr') or 0:.2f}) | {r['remeasured_speedup']:.2f}x "
                  f"({r['remeasured_speedup_iqr']:.2f}) | {r['difference'] * 100:+.1f}% | "
                  f"{'yes' if r.get('within_tolerance') else 'NO'} |")
        print(f"\n{ok}/{len(records)} front models within ±{args.tolerance:.0%}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark the analysis layer: Pareto time, report time and report size vs trial count.

Usage: ``.venv/bin/python bench/analysis.py [--sizes 1000 10000 100000]``

Rows are synthetic (``analysis.synthetic``: three objectives, latency noise, 5 % failures) and
are written to one Parquet file first so loading is timed too. Pareto times are the median of 3
runs; "front" is what ``optsweep pareto`` and the report compute, "ranks" peels every front.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.dataset import load_results  # noqa: E402
from analysis.pareto import pareto_front  # noqa: E402
from analysis.report import write_report  # noqa: E402
from analysis.synthetic import write_synthetic_run  # noqa: E402


def _median_time(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--ranks-up-to", type=int, default=1_000,
                    help="also time full non-dominated ranking up to this many rows")
    args = ap.parse_args()
    header = (f"{'rows':>8} {'load s':>8} {'front s':>8} {'front exact s':>14} {'ranks s':>8} "
              f"{'front pts':>9} {'report s':>9} {'report MB':>10}")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            out = write_synthetic_run(Path(tmp) / f"run{n}", n, seed=0, per_trial_files=False)
            t0 = time.perf_counter()
            results = load_results(out)
            load_s = time.perf_counter() - t0
            front_s = _median_time(lambda r=results: pareto_front(r))
            exact_s = _median_time(lambda r=results: pareto_front(r, noise_aware=False))
            ranks = "-"
            if n <= args.ranks_up_to:
                ranks = f"{_median_time(lambda r=results: pareto_front(r, ranks=True), 1):.3f}"
            pts = int(pareto_front(results).table["on_front"].sum())
            t0 = time.perf_counter()
            paths = write_report(results, Path(tmp) / f"report{n}.html")
            report_s = time.perf_counter() - t0
            size_mb = paths.html.stat().st_size / 1e6
            print(f"{n:>8} {load_s:>8.3f} {front_s:>8.3f} {exact_s:>14.3f} {ranks:>8} {pts:>9} "
                  f"{report_s:>9.2f} {size_mb:>10.3f}", flush=True)


if __name__ == "__main__":
    main()

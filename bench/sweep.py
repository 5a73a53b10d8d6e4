"""Sweep orchestration benchmark: the driver's own cost, measured through the real Driver.

Run from the repository root::

    .venv/bin/python bench/sweep.py            # default, <= ~6 min
    .venv/bin/python bench/sweep.py --quick    # <= ~90 s, smaller counts
    .venv/bin/python bench/sweep.py --full     # TPE at 1,000 trials, 5,000-trial memory run

Everything goes through ``sweep.driver.run_sweep(cfg, config_dir, worker_cls=...)``, so the real
ask -> suggest -> dispatch (Ray actor) -> row write (Parquet + fsync) -> tell path is measured.
Timers are monkeypatched in this process only (``optuna.Study.ask``, the sampler's hooks, the
Driver's ``_loop``/``_tell``, ``ResultsWriter.write``); nothing in ``sweep/`` is changed.

1. Driver overhead per trial with no-op trials (a ``TrialWorker`` subclass whose ``run`` returns
   a valid COMPLETE row at once), per sampler, at 100 and 1,000 trials. ``sampler`` is the
   sampler's own time (before_trial, infer_relative_search_space, sample_relative,
   sample_independent, after_trial), which grows with the study; ``orch`` = loop wall per trial
   minus that. ``ask`` (the whole ``Study.ask`` call, storage included) is shown separately.
2. Worker idle time caused by the driver: 0.2 s sleep trials, N local workers,
   idle = 1 - sum(trial busy time) / (N x loop wall).
3. Throughput on a simulated 8-node cluster (``ray.cluster_utils.Cluster``, 8 x 1 CPU) with 0.2 s
   sleep trials: ideal loop wall = n x 0.2 / 8; reported achieved/ideal.
4. Driver RSS growth over many no-op trials (random sampler), psutil, loop start -> loop end.
5. Latency of one fixed config (real ``TrialWorker``, a widened MLP, pinned cores), measured
   alone (workers=1) and while another pinned ``TrialWorker`` runs a CPU-heavy trial.

Loop wall excludes Ray start-up, actor start-up (``_Pool._start`` waits for ``prepare``) and the
baseline trial; it is exactly ``Driver._loop``. Every sweep writes to its own temp ``out``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# ``python bench/sweep.py`` puts bench/ first on sys.path, where this file would shadow the
# ``sweep`` package (and Ray passes the driver's sys.path on to its workers): drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import psutil  # noqa: E402

import sweep.driver as driver_mod  # noqa: E402
from sweep import executor  # noqa: E402
from sweep.config import parse_config  # noqa: E402
from sweep.driver import Driver, run_sweep  # noqa: E402
from sweep.executor import TrialWorker  # noqa: E402
from sweep.results import ResultsWriter  # noqa: E402

SLEEP_S = 0.2
WIDE_MODULE = "optsweep_bench_wide"
WIDE_SRC = """
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10)).eval()

def example_inputs():
    return (torch.randn(32, 256, generator=torch.Generator().manual_seed(1)),)
"""


# -- workers (defined in __main__: Ray ships them by value; the base class by reference) --------
class NoopWorker(TrialWorker):
    """A valid COMPLETE row at once; metrics are a cheap deterministic function of the params."""

    sleep_s = 0.0

    def run(self, payload_ref: list[Any], spec: Any, baseline: Any) -> dict[str, Any]:
        import time as _t

        from sweep.space import to_recipe
        from sweep.trial import _base_row, derived

        t0 = _t.perf_counter()
        if self.sleep_s:
            _t.sleep(self.sleep_s)
        params = dict(spec.params) or {"pruning_method": "none", "quantization_type": "none",
                                       "precision": "fp32", "compile": False}
        row = _base_row(spec, to_recipe(params))
        row.pop("precision_mode", None)
        a = float(params.get("pruning_amount") or 0.0)
        row.update(state="COMPLETE", latency_ms=1.0 + a, size_bytes=int(1_000_000 * (1.0 - a) + 1000),
                   accuracy=1.0 - a * a, device="cpu", threads=1, cpu_affinity="shared")
        if baseline is not None:
            row.update(derived(row, baseline))
            row["feasible"], row["constraint_violation"] = True, 0.0
        row["duration_s"] = _t.perf_counter() - t0
        return row


class SleepWorker(NoopWorker):
    sleep_s = SLEEP_S


# -- timers --------------------------------------------------------------------------------------
T: dict[str, float] = defaultdict(float)
ROWS: list[dict[str, Any]] = []
SAMPLER_HOOKS = ("before_trial", "infer_relative_search_space", "sample_relative", "sample_independent",
                 "after_trial")


def _timed(key: str, fn: Any) -> Any:
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            T[key] += time.perf_counter() - t0
    return wrapper


def install_timers() -> None:
    optuna.Study.ask = _timed("ask", optuna.Study.ask)  # type: ignore[method-assign]
    real_make_sampler = driver_mod.make_sampler

    def make_sampler(cfg: Any) -> Any:
        s = real_make_sampler(cfg)
        for name in SAMPLER_HOOKS:  # instance attributes: only the top-level sampler, no double count
            setattr(s, name, _timed("sampler", getattr(s, name)))
        return s
    driver_mod.make_sampler = make_sampler
    Driver._tell = _timed("tell", Driver._tell)  # type: ignore[method-assign]
    real_write = ResultsWriter.write

    def write(self: ResultsWriter, row: Any) -> Any:
        if int(row["trial_number"]) >= 0:
            ROWS.append({k: row.get(k) for k in ("trial_number", "duration_s", "latency_ms", "duplicate_of",
                                                  "cpu_affinity", "state", "precision")})
        return _timed("write", real_write)(self, row)
    ResultsWriter.write = write  # type: ignore[method-assign]
    real_loop = Driver._loop

    def loop(self: Driver, *a: Any, **k: Any) -> Any:
        gc.collect()
        T["rss0"] = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        try:
            return real_loop(self, *a, **k)
        finally:
            T["loop"] = time.perf_counter() - t0
            gc.collect()
            T["rss1"] = psutil.Process().memory_info().rss
    Driver._loop = loop  # type: ignore[method-assign]


def sweep_once(cfg_dir: Path, name: str, *, sampler: str, n: int, worker_cls: type | None, workers: int,
               search: dict[str, Any] | None = None, measure: dict[str, Any] | None = None,
               address: str | None = None) -> dict[str, Any]:
    out = tempfile.mkdtemp(prefix=f"optsweep-bench-{name}-")
    if search is None:  # continuous amount: every trial a distinct config, so every trial is dispatched
        search = {"pruning_method": ["magnitude"], "pruning_amount": {"low": 0.01, "high": 0.99},
                  "quantization_type": ["none"], "precision": ["fp32"]}
    cfg = parse_config({
        "name": name, "model": f"{WIDE_MODULE}:model", "example_inputs": f"{WIDE_MODULE}:example_inputs",
        "sampler": sampler, "n_trials": n, "workers": workers, "search": search, "out": out,
        "trial_timeout_s": 600, "seed": 0,
        "measure": measure or {"warmup": 0, "min_run_time_s": 0.01, "pin_cores": False},
    })
    T.clear()
    ROWS.clear()
    t0 = time.perf_counter()
    try:
        summary = run_sweep(cfg, cfg_dir, address=address, progress=False, worker_cls=worker_cls)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res = dict(T)
    res.update(total=time.perf_counter() - t0, n=n, rows=list(ROWS), states=summary.states,
               dispatched=sum(1 for r in ROWS if r["duplicate_of"] is None))
    return res


# -- report --------------------------------------------------------------------------------------
TABLE: list[tuple[str, str, str, str]] = []


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def add(metric: str, target: str, measured: str, ok: bool | None) -> None:
    TABLE.append((metric, target, measured, verdict(ok)))


def load() -> str:
    return "loadavg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_overhead(cfg_dir: Path, plan: list[tuple[str, int]], skipped: list[str]) -> None:
    print(f"\n[1] driver overhead per trial, no-op trials, 2 local workers  ({load()})")
    print(f"    {'sampler':8} {'trials':>6} {'loop s':>7} {'wall/trial':>11} {'sampler':>9} {'ask()':>8} "
          f"{'tell':>7} {'write':>7} {'orch':>8}   (ms per trial; orch = wall - sampler)")
    for sampler, n in plan:
        kw: dict[str, Any] = {}
        if sampler == "grid":  # discrete list: grid enqueues n distinct points up front
            kw["search"] = {"pruning_method": ["magnitude"], "pruning_amount": [round(0.01 + 0.98 * i / n, 6)
                                                                                 for i in range(n)],
                            "quantization_type": ["none"], "precision": ["fp32"]}
        r = sweep_once(cfg_dir, f"ovh-{sampler}-{n}", sampler=sampler, n=n, worker_cls=NoopWorker, workers=2,
                       **kw)
        per = {k: 1000 * r.get(k, 0.0) / n for k in ("loop", "sampler", "ask", "tell", "write")}
        orch = per["loop"] - per["sampler"]
        print(f"    {sampler:8} {n:>6} {r['loop']:>7.2f} {per['loop']:>11.2f} {per['sampler']:>9.2f} "
              f"{per['ask']:>8.2f} {per['tell']:>7.2f} {per['write']:>7.2f} {orch:>8.2f}"
              f"   dispatched {r['dispatched']}/{n}")
        add(f"orch overhead/trial, {sampler} @{n}" + ("" if n >= 1000 else " (target is @1000)"), "<= 10 ms",
            f"{orch:.2f} ms (+sampler {per['sampler']:.2f})", orch <= 10.0)
    for s in skipped:
        print(f"    {s}")
        add(f"orch overhead/trial, {s.split(':')[0]}", "<= 10 ms", "not run", None)


def bench_idle(cfg_dir: Path, n: int, workers: int) -> None:
    print(f"\n[2] worker idle time, {SLEEP_S} s sleep trials, {workers} local workers, {n} trials  ({load()})")
    r = sweep_once(cfg_dir, "idle", sampler="random", n=n, worker_cls=SleepWorker, workers=workers)
    busy = sum(float(x["duration_s"] or 0.0) for x in r["rows"] if x["duplicate_of"] is None)
    idle = 1.0 - busy / (workers * r["loop"])
    print(f"    loop {r['loop']:.2f} s, busy {busy:.2f} worker-s, idle {100 * idle:.1f}%  "
          f"(per-trial gap {1000 * (workers * r['loop'] - busy) / max(r['dispatched'], 1):.1f} ms)")
    add(f"worker idle ({workers} workers, {SLEEP_S}s trials)", "<= 5%", f"{100 * idle:.1f}%", idle <= 0.05)


def bench_cluster(cfg_dir: Path, n: int, nodes: int = 8) -> None:
    import ray
    from ray.cluster_utils import Cluster

    print(f"\n[3] simulated cluster {nodes} nodes x 1 CPU, {SLEEP_S} s sleep trials, {n} trials  ({load()})")
    executor.shutdown()
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        print(f"    cluster up in {time.perf_counter() - t0:.1f} s")
        r = sweep_once(cfg_dir, "cluster", sampler="random", n=n, worker_cls=SleepWorker, workers=nodes,
                       address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    ideal = r["dispatched"] * SLEEP_S / nodes
    ratio = ideal / r["loop"]
    print(f"    loop {r['loop']:.2f} s vs ideal {ideal:.2f} s -> {100 * ratio:.1f}% of ideal "
          f"({r['dispatched'] / r['loop']:.1f} trials/s, ideal {nodes / SLEEP_S:.0f}/s)")
    add(f"throughput, {nodes}-node cluster", ">= 90% of ideal", f"{100 * ratio:.1f}%", ratio >= 0.90)


def bench_memory(cfg_dir: Path, n: int, target_n: int = 5000) -> None:
    print(f"\n[4] driver RSS growth, {n} no-op trials, random sampler  ({load()})")
    r = sweep_once(cfg_dir, f"mem-{n}", sampler="random", n=n, worker_cls=NoopWorker, workers=2)
    grow = (r["rss1"] - r["rss0"]) / 2**20
    print(f"    RSS {r['rss0'] / 2**20:.0f} -> {r['rss1'] / 2**20:.0f} MiB over {n} trials "
          f"({r['loop']:.1f} s, {1000 * r['loop'] / n:.2f} ms/trial)")
    if n >= target_n:
        add(f"driver RSS growth @{n} trials", "<= 100 MB", f"{grow:.1f} MiB", grow <= 100)
    else:
        est = grow * target_n / n
        print(f"    linear extrapolation to {target_n}: {est:.1f} MiB (run --full to measure {target_n})")
        add(f"driver RSS growth @{n} (x{target_n / n:.1f} extrap. to {target_n})", "<= 100 MB @5000",
            f"{grow:.1f} MiB (~{est:.0f} MiB est.)", est <= 100)


def bench_latency(cfg_dir: Path, k: int, heavy_s: float) -> None:
    """One config's latency alone vs. inside a real 2-worker sweep whose other trials are heavy.

    The sweep is the real Driver: a grid of k copies of the target config (fp32 magnitude 30%)
    interleaved with k heavy trials (emulated fp16 on CPU, ~10x slower per call), 2 workers.
    Measured twice: cores pinned only, and pinned + ``measure.exclusive`` (timed phases
    serialized per node). ``heavy_s`` is unused (kept for the CLI).
    """
    import ray

    print("\n[5] latency of one config alone vs. next to heavy trials in the same sweep, real Driver")
    if not ray.is_initialized():
        executor.init_ray(None, str(cfg_dir))
    # tiny amount offsets only defeat the driver's de-duplication, so each copy is measured.
    amounts = [round(0.3 + i * 1e-6, 6) for i in range(k)]

    def lat(tag: str, workers: int, precisions: list[str], exclusive: bool) -> tuple[float, list[float], str]:
        search = {"pruning_method": ["magnitude"], "pruning_amount": amounts, "quantization_type": ["none"],
                  "precision": precisions}
        measure = {"warmup": 3, "min_run_time_s": 0.3, "pin_cores": True, "exclusive": exclusive}
        r = sweep_once(cfg_dir, f"lat-{tag}", sampler="grid", n=k * len(precisions), worker_cls=None,
                       workers=workers, search=search, measure=measure)
        vals = [float(x["latency_ms"]) for x in r["rows"] if x["state"] == "COMPLETE" and x["duplicate_of"] is None
                and x["precision"] == "fp32"]
        cores = sorted({str(x["cpu_affinity"]) for x in r["rows"] if x["precision"] == "fp32"})
        return statistics.median(vals), vals, ",".join(cores)

    alone, a_vals, a_cores = lat("alone", 1, ["fp32"], False)
    print(f"    alone               median {alone:.3f} ms  {[round(v, 3) for v in a_vals]}  cores {a_cores}  ({load()})")
    for exclusive in (False, True):
        label = "pinned+exclusive" if exclusive else "pinned only"
        contended, c_vals, c_cores = lat(f"contended-{int(exclusive)}", 2, ["fp32", "fp16"], exclusive)
        ratio = contended / alone
        print(f"    {label:<19} median {contended:.3f} ms  {[round(v, 3) for v in c_vals]}  cores {c_cores}  "
              f"ratio {ratio:.3f}  ({load()})")
        add(f"latency in sweep/alone, {label}", "within 5%", f"{ratio:.3f} ({alone:.3f} vs {contended:.3f} ms)",
            abs(ratio - 1.0) <= 0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="<= ~90 s: 100-trial overheads, small runs")
    g.add_argument("--full", action="store_true", help="TPE @1000, memory @5000, bigger runs")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: overhead,idle,cluster,memory,latency")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    mode = "quick" if args.quick else ("full" if args.full else "default")

    cfg_dir = Path(tempfile.mkdtemp(prefix="optsweep-bench-cfg-"))
    (cfg_dir / f"{WIDE_MODULE}.py").write_text(textwrap.dedent(WIDE_SRC))
    sys.path.insert(0, str(cfg_dir))
    install_timers()
    import ray
    import torch

    print(f"optsweep sweep bench ({mode}): ray {ray.__version__}, optuna {optuna.__version__}, "
          f"torch {torch.__version__}, {os.cpu_count()} cpus, {load()}")
    t_all = time.perf_counter()
    executor.init_ray(None, str(cfg_dir))

    if mode == "quick":
        plan = [(s, 100) for s in ("random", "nsga2", "tpe")]
        skipped = ["@1000 (random/nsga2/grid): not run in --quick (default/--full)", "tpe @1000: not run (--full only)"]
        idle_n, cluster_n, mem_n, lat_k = 20, 0, 300, 3
    elif mode == "full":
        plan = [(s, n) for s in ("random", "nsga2", "grid", "tpe") for n in (100, 1000)]
        skipped = []
        idle_n, cluster_n, mem_n, lat_k = 100, 400, 5000, 7
    else:
        plan = [(s, n) for s in ("random", "nsga2", "grid") for n in (100, 1000)] + [("tpe", 100)]
        skipped = ["tpe @1000: not run by default (--full only; TPE's ask grows with the study)"]
        idle_n, cluster_n, mem_n, lat_k = 50, 200, 2000, 5
    try:
        if "overhead" not in skip:
            bench_overhead(cfg_dir, plan, skipped)
        if "idle" not in skip:
            bench_idle(cfg_dir, idle_n, workers=2)
        if "memory" not in skip:
            bench_memory(cfg_dir, mem_n)
        if "latency" not in skip:
            bench_latency(cfg_dir, lat_k, heavy_s=60.0)
        if "cluster" not in skip and cluster_n:
            bench_cluster(cfg_dir, cluster_n)
        elif "cluster" not in skip:
            print("\n[3] simulated 8-node cluster: not run in --quick (cluster start-up alone is ~25 s here)")
            add("throughput, 8-node cluster", ">= 90% of ideal", "not run (--quick)", None)
    finally:
        executor.shutdown()
        shutil.rmtree(cfg_dir, ignore_errors=True)

    w = [max(len(r[i]) for r in TABLE + [("metric", "target", "measured", "")]) for i in range(3)]
    print(f"\nsummary ({mode}, {time.perf_counter() - t_all:.0f} s, {load()}; 2 shared cores, loaded by others)")
    print(f"  {'metric':<{w[0]}}  {'target':<{w[1]}}  {'measured':<{w[2]}}  result")
    for m, t, v, ok in TABLE:
        print(f"  {m:<{w[0]}}  {t:<{w[1]}}  {v:<{w[2]}}  {ok}")


if __name__ == "__main__":
    main()

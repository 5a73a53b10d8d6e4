"""A few-minute sweep on a CUDA device: does GPU measurement and GPU quantization work here?

Runs the digits MLP (``examples/digits.py``) as a grid sweep on ``cuda``: precisions fp32, fp16,
bf16; dynamic int8 and weight-only int8/int4 (torchao; int4 where torchao has the kernel, else
the trial is recorded INFEASIBLE with the reason). Latency comes from ``optimizers.benchmarking``
(torch.utils.benchmark: CUDA-synchronised, warmed up), peak memory from
``torch.cuda.max_memory_allocated``. Every optimized model's outputs are judged against the fp32
baseline through its accuracy on the digits test split (``accuracy_drop``, at most 0.02 for
fp16/bf16). Prints the table; exit 1 if a check fails.

    python bench/gpu_check.py [--out DIR]

Without a CUDA device it prints "no CUDA device: skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_HALF_DROP = 0.02


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="results folder (default: a temp dir)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    sys.path[:0] = [str(ROOT), str(ROOT / "examples")]
    import pandas as pd

    from sweep.config import parse_config
    from sweep.driver import run_sweep

    out = args.out or tempfile.mkdtemp(prefix="optsweep-gpu-")
    cfg = parse_config({
        "name": "gpu-check", "model": "digits:mlp", "example_inputs": "digits:example_inputs",
        "evaluate": "digits:evaluate", "calibration": "digits:calibration",
        "search": {"precision": ["fp32", "fp16", "bf16"], "quantization_type": ["none", "dynamic", "weight_only"],
                   "quantization_bits": [4, 8], "pruning_method": ["none"]},
        "objectives": {"latency_ms": "minimize", "accuracy": "maximize"},
        "sampler": "grid", "n_trials": 18, "device": "cuda", "workers": 1,
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 1},
        "trial_timeout_s": 120, "measure": {"warmup": 10, "min_run_time_s": 0.2, "pin_cores": False}, "out": out,
    })
    t0 = time.perf_counter()
    run_sweep(cfg, ROOT / "examples", progress=False)
    rows = pd.concat([pd.read_parquet(f) for f in sorted((Path(out) / "results").glob("*.parquet"))])
    cols = [c for c in ("trial_number", "precision", "quantization_type", "quantization_bits", "state",
                        "latency_ms", "peak_memory_bytes", "accuracy", "accuracy_drop", "hardware", "error")
            if c in rows.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        print(rows[cols].sort_values("trial_number").to_string(index=False))
    print(f"{len(rows)} rows in {time.perf_counter() - t0:.0f} s, results in {out}")

    problems = []
    base = rows[rows["trial_number"] < 0]
    if base.empty or base.iloc[0]["state"] != "COMPLETE":
        problems.append("the fp32 baseline did not complete")
    done = rows[rows["state"] == "COMPLETE"]
    if "peak_memory_bytes" in done and not (done["peak_memory_bytes"].fillna(0) > 0).all():
        problems.append("peak_memory_bytes missing on a CUDA trial")
    half = done[done["precision"].isin(["fp16", "bf16"]) & (done["quantization_type"] == "none")]
    if half.empty:
        problems.append("no fp16/bf16 trial completed")
    elif (half["accuracy_drop"] > MAX_HALF_DROP).any():
        problems.append(f"fp16/bf16 accuracy drop above {MAX_HALF_DROP}")
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

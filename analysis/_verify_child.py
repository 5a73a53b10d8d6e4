"""Re-time one exported artifact in a fresh process (run by ``optsweep verify``; not an API).

Reads a JSON job on stdin, loads the artifact with torch's own loaders (no optsweep code on the
artifact's path), builds the untouched model from the user's factory, times both with the same
paired, interleaved timer the sweep uses, and prints one JSON line.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any


def _load_artifact(path: str, fmt: str) -> Any:
    import torch

    if fmt in ("torch.export", "torch.export-static"):
        return torch.export.load(path).module()
    if fmt == "torchscript":
        return torch.jit.load(path, map_location="cpu").eval()
    if fmt == "pt2e":
        importlib.import_module("torch.ao.quantization.fx._decomposed")
        graph = torch.export.load(path).module()
        compiled = torch.compile(graph, dynamic=False)

        def run(*args: Any) -> Any:
            with torch.no_grad(), torch._inductor.config.patch(freezing=True):
                return compiled(*args)

        return run
    raise ValueError(f"unknown format {fmt!r}")


def _as_module(fn: Any) -> Any:
    import torch

    class Wrapped(torch.nn.Module):
        def forward(self, *args: Any) -> Any:
            return fn(*args)

    return Wrapped()


def main() -> None:
    job = json.loads(sys.stdin.read())
    import torch

    threads = int(job["threads"])
    if job.get("pin") and hasattr(os, "sched_setaffinity"):
        # Dedicated cores, as the sweep's workers had: a thread free to migrate is another condition.
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cores[-threads:]))
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    artifact = _load_artifact(job["artifact"], job["format"])
    load_s = time.perf_counter() - t0
    sys.path.insert(0, job["base_dir"])
    from optimizers._utils import load_callable
    from optimizers.benchmarking import measure_paired

    model = load_callable(job["model"], base_dir=job["base_dir"])().eval()
    inputs = load_callable(job["example_inputs"], base_dir=job["base_dir"])()
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    cand = artifact if isinstance(artifact, torch.nn.Module) else _as_module(artifact)
    with torch.no_grad():
        cand(*inputs)  # load-time compile (pt2e) happens here, never in the timing
    p = measure_paired(cand, model, inputs, threads=int(job["threads"]), warmup=int(job["warmup"]),
                       min_run_time=float(job["min_run_time"]), rounds=int(job["rounds"]))
    print(json.dumps({"speedup": p.speedup, "speedup_iqr": p.speedup_iqr, "latency_ms": p.candidate.median_ms,
                      "baseline_latency_ms": p.reference.median_ms, "load_s": load_s}))


if __name__ == "__main__":
    main()

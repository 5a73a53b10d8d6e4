"""Synthetic trial rows built through :data:`analysis.schema.SCHEMA`, for tests and benchmarks.

The numbers follow the shape of a real sweep (pruning and quantization trade accuracy for latency
and size, latency has noise, a few trials fail) so fronts, ties and reports look like real ones.

>>> table = synthetic_table(100, seed=0)
>>> table.num_rows
101
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import (
    BASELINE_TRIAL,
    COLUMN_NAMES,
    DEFAULT_OBJECTIVES,
    SCHEMA,
    SCHEMA_VERSION,
    schema_with_metadata,
)

__all__ = ["synthetic_columns", "synthetic_table", "write_synthetic_run"]

# Names a real sweep writes (tests/test_shipping.py keeps them among the registry's choices).
_PRUNING = np.array(["none", "magnitude", "random", "global_magnitude", "structured", "lowrank"])
_PHYSICAL = ["structured", "lowrank"]  # smaller, faster layers (the others only zero weights)
_QUANT = np.array(["none", "dynamic", "static", "weight_only"])
_PRECISION = np.array(["fp32", "fp16", "bf16"])


def synthetic_columns(
    n: int,
    *,
    seed: int = 0,
    hardware: str = "Synthetic CPU @ 3.0GHz",
    fail_fraction: float = 0.05,
    baseline: bool = True,
    study_name: str = "synthetic",
) -> dict[str, list[Any] | np.ndarray]:
    """Column name -> values for ``n`` trials (plus the baseline row when ``baseline``)."""
    rng = np.random.default_rng(seed)
    base_lat, base_size, base_acc = 2.0, 1_200_000.0, 0.95
    pm = rng.choice(_PRUNING, n)
    amount = np.where(pm == "none", np.nan, rng.uniform(0.1, 0.9, n).round(2))
    qt = rng.choice(_QUANT, n)
    bits = np.where(qt == "none", -1, np.where(qt == "weight_only", rng.choice([4, 8], n), 8))
    prec = rng.choice(_PRECISION, n)
    a = np.nan_to_num(amount, nan=0.0)
    structured = np.isin(pm, _PHYSICAL)
    lat_f = (1 - 0.6 * a * structured) * np.where(qt == "none", 1.0, 0.55) * np.where(prec == "fp32", 1.0, 0.8)
    latency = base_lat * lat_f * rng.lognormal(0, 0.08, n)
    iqr = latency * rng.uniform(0.01, 0.15, n)
    size_f = np.where(structured, 1 - a, 1.0) * np.where(bits == 4, 0.14, np.where(bits == 8, 0.27, 1.0))
    size_f *= np.where((qt == "none") & (prec != "fp32"), 0.5, 1.0)
    size = np.round(base_size * size_f).astype(np.int64)
    drop = 0.08 * a**2 * np.where(pm == "random", 3.0, 1.0) + np.where(bits == 4, 0.02, 0.0)
    accuracy = np.clip(base_acc - drop - rng.normal(0.0, 0.003, n), 0.0, 1.0)
    failed = rng.random(n) < fail_fraction
    state = np.where(failed, "FAIL", "COMPLETE")
    errors = np.array(["RuntimeError", "TIMEOUT", "OOM"])
    error_type = np.where(failed, rng.choice(errors, n), np.array(None, dtype=object))
    for arr in (latency, iqr, accuracy):
        arr[failed] = np.nan
    size_col: list[int | None] = [None if f else int(s) for s, f in zip(size, failed, strict=True)]
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cols: dict[str, list[Any] | np.ndarray] = {
        "trial_number": np.arange(n, dtype=np.int64),
        "state": state,
        "error_type": error_type,
        "error": np.where(failed, np.char.add(error_type.astype(str), ": synthetic failure"),
                          np.array(None, dtype=object)),
        "pruning_method": pm,
        "pruning_amount": amount,
        "quantization_type": qt,
        "quantization_bits": [None if b < 0 else int(b) for b in bits],
        "precision": prec,
        "compile": np.zeros(n, dtype=bool),
        "params_json": [None] * n,
        "latency_ms": latency,
        "latency_iqr_ms": iqr,
        "latency_p90_ms": latency + iqr,
        "latency_noisy": iqr / latency > 0.1,
        "size_bytes": size_col,
        "accuracy": accuracy,
        "started_at": [t0 + timedelta(seconds=int(i)) for i in range(n)],
        "duration_s": rng.uniform(1, 10, n),
    }
    if baseline:
        base = {
            "trial_number": BASELINE_TRIAL, "state": "COMPLETE", "error_type": None, "error": None,
            "pruning_method": "none", "pruning_amount": np.nan, "quantization_type": "none",
            "quantization_bits": None, "precision": "fp32", "compile": False,
            "params_json": "{}", "latency_ms": base_lat, "latency_iqr_ms": base_lat * 0.02,
            "latency_p90_ms": base_lat * 1.02, "latency_noisy": False, "size_bytes": int(base_size),
            "accuracy": base_acc, "started_at": t0 - timedelta(seconds=60), "duration_s": 1.0,
        }
        cols = {k: np.concatenate([np.asarray([base[k]], dtype=object), np.asarray(v, dtype=object)])
                for k, v in cols.items()}
    m = len(cols["trial_number"])
    lat = np.asarray(cols["latency_ms"], dtype=float)
    acc = np.asarray(cols["accuracy"], dtype=float)
    sz = np.array([np.nan if s is None else float(s) for s in cols["size_bytes"]])
    cols.update({
        "schema_version": [SCHEMA_VERSION] * m,
        "study_name": [study_name] * m,
        "latency_shared": [False] * m,
        "compressed_size_bytes": [None if np.isnan(s) else int(s * 0.9) for s in sz],
        "baseline_latency_ms": np.full(m, base_lat),
        "baseline_size_bytes": [int(base_size)] * m,
        "baseline_accuracy": np.full(m, base_acc),
        "speedup": base_lat / lat,
        "compression_ratio": base_size / sz,
        "accuracy_drop": base_acc - acc,
        "feasible": [bool(s == "COMPLETE") for s in cols["state"]],
        "constraint_violation": np.zeros(m),
        "quant_backend": [None if q == "none" else ("torchao" if q == "weight_only" else "torch_ao")
                          for q in cols["quantization_type"]],
        "quantization_backend": [None if q == "none" else "auto" for q in cols["quantization_type"]],
        "device": ["cpu"] * m,
        "hardware": [hardware] * m,
        "node_id": ["node-0"] * m,
        "hostname": ["synthetic-host"] * m,
        "threads": [1] * m,
        "cpu_affinity": ["0"] * m,
        "torch_version": ["2.13.0+cpu"] * m,
        "quantized_engine": ["x86"] * m,
        "attempts": [1] * m,
    })
    return cols


def synthetic_table(
    n: int,
    *,
    seed: int = 0,
    objectives: Mapping[str, str] | None = None,
    constraints: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> pa.Table:
    """``n`` synthetic trials (plus baseline) as a table with :data:`SCHEMA` and metadata."""
    cols = synthetic_columns(n, seed=seed, **kwargs)
    schema = schema_with_metadata(
        objectives or DEFAULT_OBJECTIVES, constraints or {}, kwargs.get("study_name", "synthetic")
    )
    m = len(cols["trial_number"])
    # Columns this generator does not model (the schema grows) are written as nulls.
    arrays = [pa.array(_clean(cols.get(name, [None] * m)), type=SCHEMA.field(name).type)
              for name in COLUMN_NAMES]
    return pa.Table.from_arrays(arrays, schema=schema)


def _clean(values: list[Any] | np.ndarray) -> list[Any] | np.ndarray:
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind == "f":
        return arr
    # NaN in object columns (nullable ints, strings) must become None for pyarrow.
    return [None if (isinstance(v, float) and np.isnan(v)) else v for v in arr.tolist()]


def write_synthetic_run(
    out: str | Path, n: int, *, per_trial_files: bool = True, **kwargs: Any
) -> Path:
    """Write a fake sweep output ``OUT/results/*.parquet`` (one file per trial + baseline).

    With ``per_trial_files=False`` a single ``OUT/results/trials.parquet`` holds every row (fast
    for large benchmarks). Returns ``OUT``.
    """
    out = Path(out)
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    table = synthetic_table(n, **kwargs)
    if not per_trial_files:
        pq.write_table(table, results / "trials.parquet")
        return out
    numbers = table.column("trial_number").to_pylist()
    for i, tn in enumerate(numbers):
        name = "baseline.parquet" if tn == BASELINE_TRIAL else f"trial-{tn:06d}.parquet"
        pq.write_table(table.slice(i, 1), results / name)
    (out / "sweep_meta.json").write_text(json.dumps({"synthetic": True}))
    return out

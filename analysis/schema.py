"""The Parquet contract between ``sweep`` (writer) and ``analysis`` (reader).

One row per finished trial (failed ones included) plus one baseline row (``trial_number == -1``).
Writers build rows through :data:`SCHEMA`. Readers need only :data:`REQUIRED_COLUMNS` plus the
objectives' columns, so any Parquet that has those (written by optsweep or not) can be analysed;
a documented column a file lacks reads as :data:`ABSENT_DEFAULTS` says, or as null.

File-level metadata (``pyarrow`` schema metadata, UTF-8 JSON values):

- ``optsweep.schema_version``: :data:`SCHEMA_VERSION` (semver; readers accept the same major).
- ``optsweep.objectives``: ``{"latency_ms": "minimize", ...}`` in the sweep's order.
- ``optsweep.constraints``: ``{"max_accuracy_drop": 0.01, ...}``.
- ``optsweep.study``: the study name.

Versioning: adding a nullable column bumps the minor version; removing or retyping a column
bumps the major version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1.1"
BASELINE_TRIAL = -1
STATES = ("COMPLETE", "FAIL", "INFEASIBLE", "PRUNED")
DIRECTIONS = ("minimize", "maximize")

META_SCHEMA_VERSION = b"optsweep.schema_version"
META_OBJECTIVES = b"optsweep.objectives"
META_CONSTRAINTS = b"optsweep.constraints"
META_STUDY = b"optsweep.study"

# (name, type, description). Order is the on-disk column order.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("schema_version", pa.string(), "schema version of the writer"),
    ("study_name", pa.string(), "the sweep's `name`"),
    ("trial_number", pa.int64(), "Optuna trial number; -1 for the baseline row"),
    ("state", pa.string(), "COMPLETE, FAIL, INFEASIBLE or PRUNED"),
    ("error_type", pa.string(), "exception class, TIMEOUT, WORKER_DIED or OOM; null unless failed"),
    ("error", pa.string(), "one-line error message; null unless failed or infeasible"),
    ("traceback", pa.string(), "last frames of the traceback for FAIL rows"),
    ("duplicate_of", pa.int64(), "for a repeated configuration: the trial whose result was reused"),
    ("pruning_method", pa.string(), "none, magnitude, random, global_magnitude, structured, lowrank "
     "(lowrank factorizes: pruning_amount is the fraction of rank removed)"),
    ("pruning_amount", pa.float64(), "requested fraction; null when pruning_method is none"),
    ("quantization_type", pa.string(), "none, dynamic, static, weight_only"),
    ("quantization_bits", pa.int64(), "4, 8 or 16; null when quantization_type is none"),
    ("precision", pa.string(), "fp32, fp16 or bf16"),
    ("compile", pa.bool_(), "torch.compile requested"),
    ("quantization_backend", pa.string(), "requested backend: auto, torch_ao, torchao, pt2e (see quant_backend)"),
    ("effective_recipe", pa.string(),
     "JSON recipe of the stages that changed the model (a no-op stage is left out); the row's label"),
    ("stages_json", pa.string(), "JSON list, one entry per stage: stage, technique, changed, note, details "
     "(the stage's scalar figures, e.g. a plug-in technique's own)"),
    ("params_json", pa.string(), "all sampled parameters as JSON"),
    ("latency_ms", pa.float64(), "median latency of one forward pass of the shipped artifact on example_inputs"),
    ("latency_iqr_ms", pa.float64(), "interquartile range of the latency samples"),
    ("latency_p90_ms", pa.float64(), "90th percentile latency"),
    ("latency_noisy", pa.bool_(), "IQR/median > 10%: treat latency comparisons with care"),
    ("latency_shared", pa.bool_(), "measured on a shared device (fractional GPU)"),
    ("size_bytes", pa.int64(), "bytes of the serialized state_dict"),
    ("compressed_size_bytes", pa.int64(), "bytes after zlib; what unstructured sparsity shrinks"),
    ("total_params", pa.int64(), "parameter count (packed quantized weights included)"),
    ("nonzero_params", pa.int64(), "non-zero parameters"),
    ("sparsity", pa.float64(), "fraction of pruned-layer weights that are zero"),
    ("dense_speedup_expected", pa.bool_(), "false for masked pruning: zeros are still computed"),
    ("accuracy", pa.float64(), "evaluate(model), higher is better; fidelity when no evaluate"),
    ("baseline_latency_ms", pa.float64(), "the untouched model's latency, same sweep"),
    ("baseline_size_bytes", pa.int64(), "the untouched model's size"),
    ("baseline_accuracy", pa.float64(), "the untouched model's accuracy"),
    ("speedup", pa.float64(), "paired ratio: median over interleaved rounds of untouched-model latency / "
     "latency, timed side by side in the trial's own worker on its shipped artifact"),
    ("speedup_iqr", pa.float64(), "interquartile range of the per-round speedup ratios (the ratio's noise)"),
    ("paired_baseline_latency_ms", pa.float64(), "the untouched model's latency timed beside this trial"),
    ("exportable", pa.bool_(), "the model was exported, reloaded with torch alone and matched the eager outputs"),
    ("export_format", pa.string(), "artifact format that was timed: torch.export, torchscript, torch.export-static, pt2e"),
    ("export_error", pa.string(), "why no format could export it (exportable = false)"),
    ("export_max_abs_diff", pa.float64(), "max |artifact - eager| on example_inputs"),
    ("compression_ratio", pa.float64(), "baseline_size_bytes / size_bytes"),
    ("accuracy_drop", pa.float64(), "baseline_accuracy - accuracy"),
    ("feasible", pa.bool_(), "all constraints hold"),
    ("constraint_violation", pa.float64(), "sum of positive constraint violations (0 if feasible)"),
    ("peak_memory_bytes", pa.int64(), "peak GPU memory allocated (CUDA); null on CPU"),
    ("recovery_s", pa.float64(), "seconds spent in pruning recovery fine-tuning"),
    ("quant_backend", pa.string(), "backend that built the quantized model: torch_ao, torchao, pt2e"),
    ("compile_s", pa.float64(), "seconds spent compiling (torch.compile, pt2e); never part of latency"),
    ("device", pa.string(), "cpu, cuda, cuda:0 ..."),
    ("hardware", pa.string(), "CPU model or GPU name"),
    ("node_id", pa.string(), "Ray node id (or hostname) the trial ran on"),
    ("hostname", pa.string(), "host the trial ran on"),
    ("threads", pa.int64(), "torch intra-op threads used for timing"),
    ("cpu_affinity", pa.string(), "cores the measurement was pinned to, e.g. '0' or '0-1'"),
    ("torch_version", pa.string(), "torch.__version__"),
    ("quantized_engine", pa.string(), "torch.ao quantized engine the row's own model was built for; null otherwise"),
    ("cpu_capability", pa.string(), "torch's CPU kernel level (AVX2, AVX512, ...)"),
    ("attempts", pa.int64(), "executions, counting retries after a worker died"),
    ("segment", pa.string(), "settings segment (hash of what makes the numbers comparable); a resume with "
     "--new-settings starts a new one, and fronts never mix segments"),
    ("started_at", pa.timestamp("us", tz="UTC"), "wall-clock start"),
    ("duration_s", pa.float64(), "wall time of the trial, build to last measurement"),
]

SCHEMA = pa.schema([pa.field(n, t) for n, t, _ in COLUMNS])

# The recipe: one column per search dimension of the technique registry (``optimizers.techniques.
# DIMENSIONS``; a test keeps the two equal). ``effective_recipe`` holds the same fields as JSON for
# the stages that really changed the model; analysis labels rows by it.
RECIPE_COLUMNS = ["pruning_method", "pruning_amount", "quantization_type", "quantization_bits",
                  "quantization_backend", "precision", "compile"]
COLUMN_NAMES = [n for n, _, _ in COLUMNS]

# What every reader needs. The objectives' columns are required too, but which those are is known
# only once the objectives are (file metadata or the caller), so ``analysis.pareto`` checks them.
REQUIRED_COLUMNS = ["trial_number", "state"]

# What a reader assumes for a documented column the file lacks (foreign tools write few columns).
# Any column not listed here reads as null (NaN for numbers). Null cells keep their meaning:
# a null ``state`` reads as UNKNOWN, a null ``hardware`` as "unknown".
ABSENT_DEFAULTS: dict[str, str] = {
    "hardware": '"unknown": every row is one machine\'s, on one front (the CLI and report say so)',
    "baseline_latency_ms": "the baseline row's (trial_number -1) latency_ms, when there is one",
    "baseline_size_bytes": "the baseline row's size_bytes, when there is one",
    "baseline_accuracy": "the baseline row's accuracy, when there is one",
    "speedup": "baseline_latency_ms / latency_ms",
    "compression_ratio": "baseline_size_bytes / size_bytes",
    "accuracy_drop": "baseline_accuracy - accuracy",
}

DEFAULT_OBJECTIVES: dict[str, str] = {
    "latency_ms": "minimize",
    "size_bytes": "minimize",
    "accuracy": "maximize",
}


def schema_with_metadata(
    objectives: Mapping[str, str], constraints: Mapping[str, Any], study_name: str
) -> pa.Schema:
    """:data:`SCHEMA` carrying the sweep's objectives and constraints as file metadata."""
    return SCHEMA.with_metadata({
        META_SCHEMA_VERSION: SCHEMA_VERSION.encode(),
        META_OBJECTIVES: json.dumps(dict(objectives)).encode(),
        META_CONSTRAINTS: json.dumps(dict(constraints)).encode(),
        META_STUDY: study_name.encode(),
    })


def schema_markdown() -> str:
    """The column table as Markdown (the README's schema section is generated from this)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{n}` | {t} | {d} |" for n, t, d in COLUMNS]
    return "\n".join(lines)

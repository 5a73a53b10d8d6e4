"""The trial is a plain function: tested serially, without Ray or Optuna."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "sweep_models"))
import tiny  # noqa: E402

from analysis.schema import COLUMN_NAMES  # noqa: E402
from sweep.results import ResultsWriter, to_table  # noqa: E402
from sweep.trial import TrialContext, TrialSpec, constraint_values, run_baseline, run_trial  # noqa: E402


@pytest.fixture(scope="module")
def ctx() -> TrialContext:
    return TrialContext(model=tiny.model(), example_inputs=tiny.example_inputs(), calibration=tiny.calibration(),
                        evaluate=tiny.evaluate)


def spec(n: int, **params) -> TrialSpec:  # type: ignore[no-untyped-def]
    base = {"pruning_method": "none", "quantization_type": "none", "precision": "fp32", "compile": False}
    return TrialSpec(trial_number=n, params={**base, **params}, min_run_time_s=0.02, warmup=1,
                     constraints={"max_accuracy_drop": 0.05})


def test_baseline_and_trial_rows(ctx: TrialContext) -> None:
    base = run_baseline(spec(0), ctx)
    assert base["state"] == "COMPLETE" and base["trial_number"] == -1
    assert base["speedup"] == pytest.approx(1.0) and base["accuracy_drop"] == pytest.approx(0.0)
    row = run_trial(spec(3, quantization_type="dynamic", quantization_bits=8), ctx, base)
    assert row["state"] == "COMPLETE", row.get("error")
    assert row["size_bytes"] < base["size_bytes"]
    assert row["compression_ratio"] == pytest.approx(base["size_bytes"] / row["size_bytes"])
    # Paired: timed beside the untouched model in the same process, median of per-round ratios.
    assert row["speedup"] > 0 and row["speedup_iqr"] >= 0 and row["paired_baseline_latency_ms"] > 0
    assert base["speedup"] == 1.0 and row["exportable"] is True and row["export_format"] == "torchscript"
    assert row["quant_backend"] == "torch_ao" and row["quantized_engine"] in ("x86", "fbgemm", "onednn", "qnnpack")
    assert json.loads(row["effective_recipe"])["quantization_backend"] == "torch_ao"
    assert row["latency_iqr_ms"] >= 0 and row["latency_p90_ms"] >= row["latency_ms"]
    assert row["threads"] == 1 and row["hardware"]
    assert set(row) - {"precision_mode"} <= set(COLUMN_NAMES)


def test_masked_pruning_says_no_dense_speedup(ctx: TrialContext) -> None:
    base = run_baseline(spec(0), ctx)
    row = run_trial(spec(1, pruning_method="magnitude", pruning_amount=0.5), ctx, base)
    assert row["state"] == "COMPLETE"
    assert row["dense_speedup_expected"] is False
    assert row["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert row["size_bytes"] == pytest.approx(base["size_bytes"], rel=0.01)  # dense storage: no smaller
    assert row["compressed_size_bytes"] < base["compressed_size_bytes"]


def test_exception_becomes_fail_row(ctx: TrialContext) -> None:
    bad = TrialContext(model=ctx.model, example_inputs=ctx.example_inputs, evaluate=tiny.evaluate_chaos)
    base = run_baseline(spec(0), ctx)
    row = run_trial(spec(2, pruning_method="magnitude", pruning_amount=0.6), bad, base)
    assert row["state"] == "FAIL" and row["error_type"] == "ValueError"
    assert "boom" in row["error"] and "\n" not in row["error"]
    assert "Traceback" in row["traceback"]


def test_impossible_combination_is_infeasible(ctx: TrialContext) -> None:
    row = run_trial(spec(4, quantization_type="weight_only", quantization_bits=4), ctx, None)
    assert row["state"] == "INFEASIBLE" and "cpu" in row["error"]


def test_fidelity_when_no_evaluate(ctx: TrialContext) -> None:
    plain = TrialContext(model=ctx.model, example_inputs=ctx.example_inputs)
    base = run_baseline(spec(0), plain)
    assert base["accuracy"] == pytest.approx(1.0, abs=1e-6)
    row = run_trial(spec(5, precision="fp16"), plain, base)
    assert 0.99 < row["accuracy"] <= 1.0 + 1e-6


def test_constraint_values() -> None:
    assert constraint_values({"accuracy_drop": 0.02}, {"max_accuracy_drop": 0.01}) == [pytest.approx(0.01)]
    assert constraint_values({"speedup": 3.0}, {"min_speedup": 2.0}) == [pytest.approx(-1.0)]
    assert constraint_values({"accuracy_drop": None}, {"max_accuracy_drop": 0.01}) == [1.0]


def test_writer_is_atomic_and_typed(tmp_path: Path, ctx: TrialContext) -> None:
    import pandas as pd

    w = ResultsWriter(tmp_path, {"latency_ms": "minimize"}, {}, "t")
    base = run_baseline(spec(0), ctx)
    w.write(base)
    w.write(run_trial(spec(0, precision="fp16"), ctx, base))
    (w.dir / ".tmp-crashed.parquet.partial").write_bytes(b"PAR1 half")  # a crashed writer's leftovers
    df = pd.read_parquet(tmp_path / "results")
    assert sorted(df.trial_number) == [-1, 0]
    assert list(df.columns) == COLUMN_NAMES
    assert w.existing_trials() == {0}
    assert w.clean_partials() == 1
    assert to_table([{"trial_number": 1, "state": "FAIL", "pruning_amount": float("nan")}]).num_rows == 1


def test_out_of_memory_is_recorded_as_oom(ctx: TrialContext) -> None:
    def oom(_model):  # type: ignore[no-untyped-def]
        raise MemoryError("cannot allocate 64 GiB")

    bad = TrialContext(model=ctx.model, example_inputs=ctx.example_inputs, evaluate=oom)
    row = run_trial(spec(7, precision="fp16"), bad, None)
    assert row["state"] == "FAIL" and row["error_type"] == "OOM"

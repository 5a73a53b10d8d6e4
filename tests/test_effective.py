"""Effective recipes: a stage that changed nothing is not part of the recipe a row claims."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from torch import nn

from optimizers.recipe import Recipe, apply_recipe
from optimizers.techniques.precision import same_outputs

sys.path.insert(0, str(Path(__file__).parent / "sweep_models"))


def test_bf16_autocast_over_static_int8_is_the_int8_model(digits_cnn: nn.Module, digits_inputs: tuple,
                                                          digits_calibration: list) -> None:
    """On CPU autocast does not touch torch.ao's int8 kernels: 'static int8 + bf16' is static int8."""
    both, info = apply_recipe(digits_cnn, Recipe(quantization_type="static", precision="bf16"),
                              example_inputs=digits_inputs, calibration=digits_calibration[:4])
    alone, info_alone = apply_recipe(digits_cnn, Recipe(quantization_type="static"),
                                     example_inputs=digits_inputs, calibration=digits_calibration[:4])
    prec = next(s for s in info["stages"] if s.stage == "precision")
    assert not prec.changed and "bit-identical" in prec.note
    assert info["effective"] == info_alone["effective"]
    assert Recipe.from_params(info["effective"]).key() == Recipe.from_params(info_alone["effective"]).key()
    assert same_outputs(both, alone, digits_inputs)


def test_precision_that_does_change_a_partly_float_model_stays(digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    _, info = apply_recipe(digits_mlp, Recipe(pruning_method="structured", pruning_amount=0.5, precision="bf16"),
                           example_inputs=digits_inputs)
    assert info["effective"]["precision"] == "bf16" and info["effective"]["pruning_method"] == "structured"


def test_pruning_that_removed_nothing_is_dropped(digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    out, info = apply_recipe(digits_mlp, Recipe(pruning_method="magnitude", pruning_amount=0.0),
                             example_inputs=digits_inputs)
    assert info["effective"] == Recipe().to_dict()
    assert info["pruning"]["changed"] is False and info["pruning"]["note"] == "removed nothing"


def test_a_trial_whose_effective_recipe_was_measured_is_not_measured_again() -> None:
    import tiny  # type: ignore[import-not-found]

    from sweep.trial import TrialContext, TrialSpec, run_baseline, run_trial

    ctx = TrialContext(model=tiny.model(), example_inputs=tiny.example_inputs())
    spec = TrialSpec(trial_number=0, params={"pruning_method": "none", "quantization_type": "dynamic",
                                             "quantization_bits": 8, "precision": "fp32"},
                     min_run_time_s=0.02, warmup=1, rounds=2)
    base = run_baseline(spec, ctx)
    first = run_trial(spec, ctx, base)
    assert first["state"] == "COMPLETE" and first["latency_ms"] > 0
    key = Recipe.from_params(json.loads(first["effective_recipe"])).key()
    twin = replace(spec, trial_number=1, known_effective={key: 0},
                   params={**spec.params, "precision": "bf16"})
    row = run_trial(twin, ctx, base)
    if json.loads(row["effective_recipe"])["precision"] != "fp32":
        pytest.skip("bf16 changes this model's outputs here: not a no-op on this CPU")
    assert row["duplicate_of"] == 0 and row.get("latency_ms") is None  # built, never timed


def test_progress_labels_name_the_backend_asked_for() -> None:
    from sweep.progress import _label

    row = {"pruning_method": "none", "quantization_type": "dynamic", "precision": "fp32"}
    assert _label({**row, "quantization_backend": "pt2e"}) == "none/dynamic(pt2e)/fp32"
    assert _label({**row, "quantization_backend": "torchao"}) != _label({**row, "quantization_backend": "torch_ao"})
    assert _label({**row, "quantization_backend": "auto"}) == "none/dynamic/fp32"
    noop = {**row, "precision": "fp16", "quantization_backend": "auto",
            "effective_recipe": '{"quantization_type": "dynamic", "precision": "fp32"}'}
    assert _label(noop) == "none/dynamic/fp32 (no-op: fp16)"

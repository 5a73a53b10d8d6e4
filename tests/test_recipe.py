"""Recipes: validation, row round-trips, feasibility, and prune → quantize → cast composition."""

from __future__ import annotations

import math

import digits
import pytest
import torch
from conftest import assert_state_equal, roundtrip_state_dict, state_snapshot
from torch import nn

from optimizers import (
    ConfigError,
    MixedPrecisionWrapper,
    Recipe,
    UnsupportedOnDeviceError,
    apply_recipe,
    check_feasible,
)
from optimizers._utils import count_parameters

# ---- validation and identity ----


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pruning_method": "lottery", "pruning_amount": 0.5}, r"Recipe.pruning_method must be one of .*got 'lottery'"),
        ({"quantization_type": "qat"}, r"Recipe.quantization_type must be one of .*got 'qat'"),
        ({"precision": "fp8"}, r"Recipe.precision must be one of 'fp32', 'fp16', 'bf16'; got 'fp8'"),
        ({"precision_mode": "amp"}, r"Recipe.precision_mode must be one of .*got 'amp'"),
        ({"pruning_method": "magnitude"}, r"Recipe.pruning_amount is required"),
    ],
)
def test_recipe_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Recipe(**kwargs)  # type: ignore[arg-type]


def test_recipe_normalises() -> None:
    r = Recipe(pruning_method="none", pruning_amount=0.5, quantization_type="none", quantization_bits=8)
    assert r.pruning_amount is None and r.quantization_bits is None
    assert Recipe(quantization_type="dynamic").quantization_bits == 8


def test_from_row_reads_nan_as_missing() -> None:
    nan = float("nan")
    row = {"pruning_method": "none", "pruning_amount": nan, "quantization_type": "dynamic",
           "quantization_bits": 8.0, "precision": "bf16", "compile": nan, "precision_mode": nan,
           "latency_ms": 1.5}
    r = Recipe.from_row(row)
    assert r == Recipe(quantization_type="dynamic", quantization_bits=8, precision="bf16")
    assert isinstance(r.quantization_bits, int)
    assert r.pruning_amount is None and r.compile is False and r.precision_mode == "auto"


def test_from_row_nan_bits_defaults_to_8() -> None:
    r = Recipe.from_row({"quantization_type": "static", "quantization_bits": math.nan})
    assert r.quantization_bits == 8


def test_from_row_empty_is_fp32_baseline() -> None:
    assert Recipe.from_row({}) == Recipe()


def test_key_equality() -> None:
    a = Recipe(pruning_method="magnitude", pruning_amount=0.5, quantization_type="dynamic")
    b = Recipe.from_row({"pruning_method": "magnitude", "pruning_amount": 0.5,
                         "quantization_type": "dynamic", "quantization_bits": 8.0})
    assert a == b and a.key() == b.key() and hash(a) == hash(b)
    assert a.key() != Recipe(pruning_method="magnitude", pruning_amount=0.6,
                             quantization_type="dynamic").key()
    # "none" ignores whatever amount/bits the row carried
    assert Recipe(pruning_amount=0.3).key() == Recipe().key()
    assert Recipe.from_row(a.to_dict()) == a


# ---- feasibility ----

CUDA = torch.device("cuda")
FEASIBILITY = [
    (Recipe(), "cpu", None),
    (Recipe(quantization_type="dynamic"), "cpu", None),
    (Recipe(quantization_type="static"), "cpu", None),
    (Recipe(quantization_type="weight_only", quantization_bits=8), "cpu", None),
    (Recipe(quantization_type="weight_only", quantization_bits=4), "cpu", "int4 weight-only .* no kernel on cpu"),
    (Recipe(quantization_type="dynamic", quantization_bits=4), "cpu", r"dynamic \(torch_ao\) supports quantization_bits \[8, 16\]; got 4"),
    (Recipe(quantization_type="static", quantization_bits=16), "cpu", r"static \(torch_ao\) supports quantization_bits \[8\]; got 16"),
    (Recipe(quantization_type="static"), "cuda", "torch_ao static quantization has no kernel on cuda.*pt2e static int8 .* no kernel on cuda"),
    (Recipe(quantization_type="dynamic", quantization_bits=16), "cuda", r"torch_ao dynamic quantization has no kernel on cuda.*\(torchao\) supports quantization_bits \[8\]; got 16"),
    (Recipe(quantization_type="dynamic", compile=True), "cpu", "torch.compile cannot trace"),
    (Recipe(quantization_type="dynamic", precision="bf16", precision_mode="cast"), "cpu", "cannot cast torch.ao"),
    (Recipe(quantization_type="static", precision="fp16", precision_mode="cast"), "cpu", "cannot cast torch.ao"),
    (Recipe(quantization_type="dynamic", precision="bf16"), "cpu", None),
    (Recipe(quantization_type="weight_only", precision="bf16", precision_mode="cast"), "cpu", None),
    (Recipe(pruning_method="magnitude", pruning_amount=0.5, precision="fp16"), "cpu", None),
]


@pytest.mark.parametrize(("recipe", "device", "reason"), FEASIBILITY)
def test_check_feasible(recipe: Recipe, device: str, reason: str | None) -> None:
    got = check_feasible(recipe, device)  # no CUDA needed: feasibility is a table lookup
    if reason is None:
        assert got is None
    else:
        assert got is not None
        assert pytest.importorskip("re").search(reason, got), got


def test_apply_recipe_raises_for_infeasible(digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    r = Recipe(quantization_type="weight_only", quantization_bits=4)
    with pytest.raises(UnsupportedOnDeviceError, match="int4"):
        apply_recipe(digits_mlp, r, example_inputs=digits_inputs)


# ---- composition: prune → quantize → cast ----

PAIRS = [
    # pruning × quantization
    ("mlp", Recipe(pruning_method="magnitude", pruning_amount=0.5, quantization_type="dynamic")),
    ("cnn", Recipe(pruning_method="magnitude", pruning_amount=0.3, quantization_type="static")),
    ("mlp", Recipe(pruning_method="global_magnitude", pruning_amount=0.5, quantization_type="weight_only")),
    # pruning × precision
    ("mlp", Recipe(pruning_method="magnitude", pruning_amount=0.5, precision="bf16")),
    ("cnn", Recipe(pruning_method="magnitude", pruning_amount=0.3, precision="bf16", precision_mode="autocast")),
    # quantization × precision
    ("mlp", Recipe(quantization_type="dynamic", precision="bf16")),
    ("cnn", Recipe(quantization_type="dynamic", precision="bf16")),  # bf16 conv feeds an int8 Linear
    ("cnn", Recipe(quantization_type="static", precision="bf16")),
    ("mlp", Recipe(quantization_type="weight_only", precision="bf16", precision_mode="cast")),
    # all three
    ("mlp", Recipe(pruning_method="magnitude", pruning_amount=0.5, quantization_type="dynamic", precision="bf16")),
]


def _id(v: object) -> str:
    if isinstance(v, Recipe):
        return "+".join(x for x in (v.pruning_method, v.quantization_type, v.precision, v.precision_mode)
                        if x not in ("none", "fp32", "auto"))
    return str(v)


@pytest.mark.parametrize(("name", "recipe"), PAIRS, ids=_id)
def test_composition(
    name: str, recipe: Recipe, request: pytest.FixtureRequest, digits_inputs: tuple,
    digits_calibration: list, digits_accuracy: dict,
) -> None:
    model = request.getfixturevalue(f"digits_{name}")
    before = state_snapshot(model)
    out, info = apply_recipe(model, recipe, example_inputs=digits_inputs, calibration=digits_calibration)
    assert_state_equal(model, before)
    with torch.inference_mode():
        y = out(*digits_inputs)
    assert y.shape == (digits_inputs[0].shape[0], 10) and y.dtype == torch.float32
    assert abs(digits.evaluate(out) - digits_accuracy[name]) <= 0.03
    assert info["recipe"] == recipe.to_dict()
    roundtrip_state_dict(out)

    # The order shows in the result: the cast wraps the quantized model, which was quantized
    # from the pruned weights.
    inner = out
    if recipe.precision != "fp32" and info["precision"]["changed"]:
        assert isinstance(out, MixedPrecisionWrapper)
        assert info["precision"]["mode"] in ("autocast", "cast")
        assert info["effective"]["precision"] == recipe.precision
        inner = out.module
    elif recipe.precision != "fp32":  # autocast over an all-int8 graph: a no-op, dropped
        assert not isinstance(out, MixedPrecisionWrapper) and info["effective"]["precision"] == "fp32"
    if recipe.quantization_type != "none":
        assert {"original_size_bytes", "optimized_size_bytes", "compression_ratio"} <= info["quantization"].keys()
        assert info["quantization"]["compression_ratio"] > 1.2  # CNN dynamic: only its Linear
    if recipe.pruning_amount is not None:
        assert info["pruning"]["final_sparsity"] == pytest.approx(recipe.pruning_amount, abs=0.01)
        nonzero, total = count_parameters(inner)
        # Quantizing a pruned weight keeps its zeros (zero is exactly representable).
        assert 1 - nonzero / total >= 0.8 * recipe.pruning_amount * _prunable_fraction(model)
    if recipe.quantization_type == "none" and recipe.precision_mode in ("auto", "cast"):
        assert all(p.dtype == torch.bfloat16 for p in inner.parameters())


def _prunable_fraction(model: nn.Module) -> float:
    prunable = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    return prunable / sum(p.numel() for p in model.parameters())


def test_fp32_recipe_is_a_copy(digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    out, info = apply_recipe(digits_mlp, Recipe(), example_inputs=digits_inputs)
    assert out is not digits_mlp
    assert info["stages"] == [] and info["techniques"] == []
    assert info["effective"] == Recipe().to_dict()
    with torch.no_grad():
        assert torch.equal(out(*digits_inputs), digits_mlp(*digits_inputs))


def test_static_recipe_without_calibration(digits_cnn: nn.Module, digits_inputs: tuple) -> None:
    with pytest.raises(ConfigError, match="calibration_loader is required"):
        apply_recipe(digits_cnn, Recipe(quantization_type="static"), example_inputs=digits_inputs)


def test_pruning_options_are_validated(digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    r = Recipe(pruning_method="magnitude", pruning_amount=0.5)
    with pytest.raises(ConfigError, match="n_iterations"):
        apply_recipe(digits_mlp, r, example_inputs=digits_inputs, pruning_options={"n_iterations": 0})
    _, info = apply_recipe(digits_mlp, r, example_inputs=digits_inputs,
                           pruning_options={"n_iterations": 1, "ignored_layers": ("net.5",)})
    assert "net.5.weight" not in info["pruning"]["layer_sparsity"]


def test_bf16_without_native_support_is_infeasible_not_silently_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizers import mixed_precision

    monkeypatch.setattr(mixed_precision, "device_supports", lambda dtype, device: (False, "CPU lacks native bf16"))
    assert check_feasible(Recipe(precision="bf16"), "cpu") == "CPU lacks native bf16"
    assert check_feasible(Recipe(precision="fp16"), "cpu") is None  # emulated fp16 runs, and the data shows it


def test_quantization_options_reach_the_quantizer() -> None:
    from torch import nn

    from optimizers._backends._torch_ao import FullRangeDynamicLinear

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = (torch.randn(4, 16),)
    seven, _ = apply_recipe(model, Recipe(quantization_type="dynamic"), example_inputs=x)
    eight, _ = apply_recipe(model, Recipe(quantization_type="dynamic"), example_inputs=x,
                            quantization_options={"reduce_range": False})
    assert not isinstance(seven[0], FullRangeDynamicLinear) and isinstance(eight[0], FullRangeDynamicLinear)

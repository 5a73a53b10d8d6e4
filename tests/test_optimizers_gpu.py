"""The recipe paths on CUDA: bf16/fp16 cast, torchao dynamic int8, int4 weight-only.

Marked ``gpu``; ``conftest.py`` skips them when ``torch.cuda.is_available()`` is False.
"""

from __future__ import annotations

import digits
import pytest
import torch
from conftest import assert_state_equal, sqnr_db, state_snapshot
from torch import nn

from optimizers import Recipe, UnsupportedOnDeviceError, apply_recipe, check_feasible

pytestmark = pytest.mark.gpu

GPU_RECIPES = [
    Recipe(precision="bf16", precision_mode="cast"),
    Recipe(precision="fp16", precision_mode="cast"),
    Recipe(precision="bf16", precision_mode="autocast"),
    Recipe(quantization_type="dynamic"),  # torchao Int8DynamicActivationInt8Weight on CUDA
    Recipe(quantization_type="weight_only", quantization_bits=8),
    Recipe(pruning_method="magnitude", pruning_amount=0.5, quantization_type="dynamic"),
]


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda r: r.key())
def test_recipe_on_cuda(recipe: Recipe, digits_mlp: nn.Module, digits_inputs: tuple,
                        digits_accuracy: dict) -> None:
    reason = check_feasible(recipe, "cuda")
    if reason:
        pytest.skip(reason)
    before = state_snapshot(digits_mlp)
    out, info = apply_recipe(digits_mlp, recipe, example_inputs=digits_inputs, device="cuda")
    assert_state_equal(digits_mlp, before)
    with torch.inference_mode():
        y = out(digits_inputs[0].cuda())
    assert y.is_cuda and y.shape == (digits_inputs[0].shape[0], 10)
    assert abs(digits.evaluate(out) - digits_accuracy["mlp"]) <= 0.02
    if recipe.quantization_type == "dynamic":
        assert info["quantization"]["backend"] == "torchao"


def test_int4_weight_only_on_cuda() -> None:
    recipe = Recipe(quantization_type="weight_only", quantization_bits=4)
    assert check_feasible(recipe, "cuda") is None
    torch.manual_seed(0)
    # int4 kernels want bf16 weights and in_features divisible by the group size (128).
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).to(torch.bfloat16)
    x = torch.randn(32, 256, dtype=torch.bfloat16)
    try:
        out, _ = apply_recipe(model, recipe, example_inputs=(x,), device="cuda")
    except UnsupportedOnDeviceError as exc:  # no int4 kernel package for this GPU/torchao build
        pytest.skip(str(exc))
    with torch.inference_mode():
        ref, y = model.cuda()(x.cuda()), out(x.cuda())
    assert sqnr_db(ref, y) >= 15

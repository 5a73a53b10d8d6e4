"""Low-rank factorization: the plug-in technique added without touching sweep/ or analysis/."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

from optimizers.errors import ConfigError
from optimizers.recipe import Recipe, apply_recipe
from optimizers.techniques.lowrank import factorize


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_rank_zero_removed_reproduces_the_layer_when_it_is_smaller() -> None:
    torch.manual_seed(0)
    # A rank-8 weight in a 256x256 layer: factorizing at rank 8 loses nothing.
    m = nn.Sequential(nn.Linear(256, 256))
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(256, 8) @ torch.randn(8, 256) / 16)
    x = torch.randn(32, 256)
    f, info = factorize(m, amount=1 - 8 / 256)
    assert info["factorized"] == {"0": 8}
    assert isinstance(f[0], nn.Sequential) and f[0][0].out_features == 8
    assert _params(f) < _params(m)
    torch.testing.assert_close(f(x), m(x), atol=1e-4, rtol=1e-4)


def test_layers_that_would_not_shrink_stay_dense_and_say_why() -> None:
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    f, info = factorize(m, amount=0.5)  # square 64x64 at rank 32: 32*128 == 64*64, no saving
    assert "0" in info["skipped"] and "not smaller" in info["skipped"]["0"]
    assert info["factorized"] == {"2": 2}
    assert isinstance(f[0], nn.Linear)


def test_conv1x1_is_factorized_and_3x3_is_not() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 128, 1))
    f, info = factorize(m, amount=0.75)
    assert set(info["factorized"]) == {"1"}
    x = torch.randn(2, 64, 8, 8)
    assert f(x).shape == m(x).shape


def test_bad_amount_and_unknown_ignored_layer() -> None:
    m = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ConfigError, match=r"lowrank pruning_amount must be in \[0, 1\); got 1.5"):
        factorize(m, 1.5)
    with pytest.raises(ConfigError, match=r"ignored_layers must name modules of the model; \['head'\] not found"):
        factorize(m, 0.5, ignored_layers=("head",))


def test_through_the_recipe_smaller_recovered_and_input_untouched(digits_mlp: nn.Module, digits_inputs: tuple,
                                                                   digits_calibration: list) -> None:
    before = state_snapshot(digits_mlp)
    out, info = apply_recipe(digits_mlp, Recipe(pruning_method="lowrank", pruning_amount=0.75),
                             example_inputs=digits_inputs, calibration=digits_calibration[:4],
                             pruning_options={"recovery_steps": 30})
    assert_state_equal(digits_mlp, before)
    p = info["pruning"]
    assert p["params_after"] < p["params_before"] and p["changed"]
    assert p["recovery_steps_done"] == 30
    assert p["accuracy_after_recovery"] >= p["accuracy_before_recovery"] - 1e-3
    assert info["effective"]["pruning_method"] == "lowrank"


def test_composes_with_dynamic_int8(digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    """The two thin Linears quantize like any other Linear."""
    out, info = apply_recipe(digits_mlp, Recipe(pruning_method="lowrank", pruning_amount=0.75,
                                                quantization_type="dynamic"), example_inputs=digits_inputs)
    assert info["quantization"]["quantized_modules"] >= 2 * len(info["pruning"]["factorized"])
    with torch.no_grad():
        assert out(*digits_inputs).shape == digits_mlp(*digits_inputs).shape


def test_sweep_config_accepts_it_from_the_registry() -> None:
    from sweep.config import parse_config
    from sweep.space import grid

    cfg = parse_config({"name": "x", "model": "m:f", "example_inputs": "m:g",
                        "search": {"pruning_method": ["lowrank"], "pruning_amount": [0.5, 0.75]}})
    assert [p["pruning_amount"] for p in grid(cfg.search)] == [0.5, 0.75]

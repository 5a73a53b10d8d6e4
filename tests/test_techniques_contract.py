"""The contract every registered technique passes (one suite, parametrized over the registry).

- the input model is untouched;
- the output shape is kept;
- outputs stay close to the original's (cosine fidelity bound per stage);
- ``check`` agrees with ``apply``: what check refuses, apply refuses with the same reason, and
  what it accepts (on this machine's CPU) applies;
- the row columns a technique declares are filled;
- a technique that ran says it changed the model.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

from optimizers.errors import UnsupportedOnDeviceError
from optimizers.techniques import REGISTRY, ApplyContext, StageInfo, Technique

TECHNIQUES = REGISTRY.techniques()
FIDELITY = {"prune": 0.9, "factorize": 0.8, "quantize": 0.97, "precision": 0.99, "compile": 0.9999}


def _id(t: Technique) -> str:
    return f"{t.stage}-{t.name}-{t.backend or 'builtin'}"


def default_params(t: Technique) -> dict[str, Any]:
    params: dict[str, Any] = dict(t.selector)
    if "pruning_amount" in t.uses:
        params["pruning_amount"] = 0.3
    if "quantization_bits" in t.uses:
        params["quantization_bits"] = 8
    return params


def _ctx(inputs: tuple[torch.Tensor, ...], calibration: list[tuple[torch.Tensor, ...]],
         device: str = "cpu") -> ApplyContext:
    return ApplyContext(example_inputs=inputs, device=torch.device(device), calibration=calibration,
                        options={"pruning": {}, "quantization": {}})


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).mean())


_CACHE: dict[str, tuple[nn.Module, StageInfo, dict[str, torch.Tensor]]] = {}


@pytest.fixture(params=TECHNIQUES, ids=_id)
def applied(request: pytest.FixtureRequest, digits_mlp: nn.Module, digits_inputs: tuple,
            digits_calibration: list) -> tuple[Technique, nn.Module, StageInfo, dict[str, torch.Tensor]]:
    """Each technique applied once to the trained digits MLP (compiles are the slow part)."""
    tech: Technique = request.param
    if tech.full_check(default_params(tech), "cpu") is not None:
        pytest.skip(f"{_id(tech)} does not run on this CPU: {tech.full_check(default_params(tech), 'cpu')}")
    key = _id(tech)
    if key not in _CACHE:
        before = state_snapshot(digits_mlp)
        out, stage = tech.apply(digits_mlp, default_params(tech), _ctx(digits_inputs, digits_calibration[:4]))
        _CACHE[key] = (out, stage, before)
    out, stage, before = _CACHE[key]
    return tech, out, stage, before


def test_input_model_untouched(applied: Any, digits_mlp: nn.Module) -> None:
    _, _, _, before = applied
    assert_state_equal(digits_mlp, before)


def test_output_shape_kept_and_fidelity(applied: Any, digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    tech, out, _, _ = applied
    with torch.no_grad():
        ref, got = digits_mlp(*digits_inputs), out(*digits_inputs)
    assert got.shape == ref.shape
    assert _cos(ref, got) >= FIDELITY[tech.stage], _cos(ref, got)


def test_declared_columns_are_filled(applied: Any) -> None:
    tech, _, stage, _ = applied
    missing = [c for c in tech.columns if stage.details.get(c) is None]
    assert not missing, f"{_id(tech)} declares {missing} but left them empty"


def test_a_stage_that_ran_says_what_it_changed(applied: Any) -> None:
    tech, _, stage, _ = applied
    assert stage.stage == tech.stage and stage.technique == tech.name
    assert stage.changed, stage.note
    assert stage.effective, "a changed stage names its effective recipe fields"
    assert all(stage.effective.get(k) == v for k, v in tech.selector.items())


def test_int8_weights_make_the_model_smaller(applied: Any, digits_mlp: nn.Module) -> None:
    # What size_bytes counts is what ships: an int8 model that still holds its fp32 weights
    # (PT2E's convert leaves them on the graph, unread) is not smaller, whatever its label says.
    from optimizers._utils import model_size_bytes

    tech, out, _, _ = applied
    if tech.stage != "quantize":
        pytest.skip("not a quantization stage")
    ratio = model_size_bytes(out) / model_size_bytes(digits_mlp)
    assert ratio < 0.5, f"{_id(tech)}: int8 model is {ratio:.2f}x the fp32 model's size"


def _variants(tech: Technique) -> list[dict[str, Any]]:
    base = default_params(tech)
    out = [base]
    if "quantization_bits" in tech.uses:
        out += [{**base, "quantization_bits": b} for b in (4, 16, 3) if b != base["quantization_bits"]]
    if "pruning_amount" in tech.uses:
        out += [{**base, "pruning_amount": 1.5}]
    return out


@pytest.mark.parametrize("tech", TECHNIQUES, ids=_id)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_check_agrees_with_apply(tech: Technique, device: str, digits_mlp: nn.Module, digits_inputs: tuple,
                                 digits_calibration: list) -> None:
    """Refused here means apply raises UnsupportedOnDeviceError with the very same reason."""
    for params in _variants(tech):
        reason = tech.full_check(params, device)
        if reason is None:
            # Accepted: on this CPU, test_accepted_variants_apply and the `applied` fixture build it;
            # on a device we don't have, there is nothing to run.
            continue
        with pytest.raises(UnsupportedOnDeviceError) as info:
            tech.apply(digits_mlp, params, _ctx(digits_inputs, digits_calibration[:2], device))
        assert str(info.value) == reason


def test_accepted_variants_apply(digits_mlp: nn.Module, digits_inputs: tuple, digits_calibration: list) -> None:
    """Every (technique, bits) the registry accepts on this CPU really builds, except compiles
    (covered once by the ``applied`` fixture)."""
    for tech in TECHNIQUES:
        if "compiled" in tech.traits or tech.stage == "compile":
            continue
        for params in _variants(tech)[1:]:
            if tech.full_check(params, "cpu") is None:
                out, stage = tech.apply(digits_mlp, params, _ctx(digits_inputs, digits_calibration[:2]))
                assert stage.changed, (tech, params)


def test_registry_rejects_bad_registrations() -> None:
    from optimizers.errors import ConfigError
    from optimizers.techniques import Registry

    reg = Registry()

    class NoStage(Technique):
        name = "x"
        stage = "polish"

    with pytest.raises(ConfigError, match="stage must be one of prune, factorize, quantize, precision, compile"):
        reg.register(NoStage)

    class BadDim(Technique):
        name = "y"
        stage = "prune"
        selector = {"pruning_method": "y"}
        uses = ("sparsity_pattern",)

    with pytest.raises(ConfigError, match="unknown dimensions \\['sparsity_pattern'\\]"):
        reg.register(BadDim)

    class A(Technique):
        name = "a"
        stage = "prune"
        selector = {"pruning_method": "a"}

    class B(A):
        pass

    reg.register(A)
    with pytest.raises(ConfigError, match="duplicates the selector of A"):
        reg.register(B)


def test_a_new_technique_reaches_config_space_and_feasibility(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering is all it takes: config validation, the space and feasibility see it."""
    from optimizers.techniques import _base
    from sweep.config import parse_config
    from sweep.space import grid

    reg = Registry_copy()
    monkeypatch.setattr(_base, "REGISTRY", reg)
    import optimizers.techniques as pkg
    import sweep.space as space

    monkeypatch.setattr(pkg, "REGISTRY", reg)
    monkeypatch.setattr(space, "REGISTRY", reg)

    class TwoFour(Technique):
        """2:4 sparsity stand-in: needs CUDA."""

        name = "sparse24"
        stage = "prune"
        selector = {"pruning_method": "sparse24"}

        def check(self, params: Any, device: torch.device, upstream: Any = ()) -> str | None:
            return None if device.type == "cuda" else "2:4 sparsity needs CUDA sparse kernels"

    reg.register(TwoFour)
    cfg = parse_config({"name": "x", "model": "m:f", "example_inputs": "m:g",
                        "search": {"pruning_method": ["none", "sparse24"]}})
    assert {p["pruning_method"] for p in grid(cfg.search)} == {"none", "sparse24"}
    assert reg.check({"pruning_method": "sparse24"}, "cpu") == "2:4 sparsity needs CUDA sparse kernels"
    assert reg.check({"pruning_method": "sparse24"}, "cuda") is None


def Registry_copy() -> Any:  # noqa: N802 - a factory named after what it returns
    from optimizers.techniques import Registry

    reg = Registry()
    for t in REGISTRY.techniques():
        reg._techniques.append(t)
    return reg


def test_isolated_state_restores_what_a_trial_touches() -> None:
    import random

    import numpy as np

    from optimizers.techniques import isolated_state

    engine, threads = torch.backends.quantized.engine, torch.get_num_threads()
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    expect = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    with isolated_state(threads=1, seed=123):
        inside = (torch.rand(1).item(), random.random(), np.random.rand())
        torch.backends.quantized.engine = next(e for e in torch.backends.quantized.supported_engines
                                               if e != engine)
        assert torch.get_num_threads() == 1
    assert (torch.rand(1).item(), random.random(), np.random.rand()) == expect  # as if nothing ran
    assert torch.backends.quantized.engine == engine and torch.get_num_threads() == threads
    with isolated_state(seed=123):
        assert (torch.rand(1).item(), random.random(), np.random.rand()) == inside  # seeded: reproducible


def test_a_stages_declared_figures_reach_the_row_without_editing_the_trial() -> None:
    import json

    from sweep.trial import stage_columns

    # lowrank declares recovery_s; latency_ms is a schema column it does not declare.
    stage = StageInfo("factorize", "lowrank", True, {"pruning_method": "lowrank"},
                      {"recovery_s": 1.5, "latency_ms": 0.0, "ranks_kept": 12, "layers": ["a", "b"]})
    noop = StageInfo("precision", "bf16", False, {}, {"recovery_s": 9.0}, note="no-op")
    cols = stage_columns({"stages": [stage, noop], "effective": {"pruning_method": "lowrank"}})
    assert cols["recovery_s"] == 1.5  # a declared column, from the stage's details
    assert "latency_ms" not in cols  # never a measured column a technique did not declare
    stages = json.loads(cols["stages_json"])
    assert stages[0]["details"] == {"recovery_s": 1.5, "latency_ms": 0.0, "ranks_kept": 12}  # its own figures
    assert stages[1]["changed"] is False and stages[1]["note"] == "no-op"
    assert json.loads(cols["effective_recipe"]) == {"pruning_method": "lowrank"}

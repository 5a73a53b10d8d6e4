"""Reduced precision: autocast vs cast, fallbacks, device capability, torch.ao interplay."""

from __future__ import annotations

import digits
import pytest
import torch
from conftest import sqnr_db
from torch import nn

import optimizers
from optimizers import (
    ConfigError,
    DynamicQuantizer,
    MixedPrecisionConverter,
    MixedPrecisionWrapper,
    UnsupportedArchitectureError,
    UnsupportedOnDeviceError,
)
from optimizers._utils import model_size_bytes
from optimizers.mixed_precision import device_supports

BF16_NATIVE = device_supports(torch.bfloat16, "cpu")[0]
FP16_NATIVE = device_supports(torch.float16, "cpu")[0]


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64, "bf16"])
def test_rejects_unknown_dtype(digits_mlp: nn.Module, dtype: object) -> None:
    with pytest.raises(ConfigError, match=r"MixedPrecisionConverter.dtype must be one of .*got"):
        MixedPrecisionConverter(digits_mlp, dtype=dtype)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"MixedPrecisionWrapper.dtype must be one of"):
        MixedPrecisionWrapper(nn.Linear(2, 2), dtype=dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize("use_auto_cast", [True, False])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_bf16_accuracy(name: str, use_auto_cast: bool, digits_accuracy: dict, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"digits_{name}")
    conv = MixedPrecisionConverter(model, dtype=torch.bfloat16, use_auto_cast=use_auto_cast)
    converted = conv.convert_to_mixed_precision()
    assert abs(digits.evaluate(converted) - digits_accuracy[name]) <= 0.02
    info = conv.get_precision_info()
    assert info["use_auto_cast"] is use_auto_cast
    assert info["requested_dtype"] == "torch.bfloat16"
    assert info["effective_dtype"] == ("torch.bfloat16" if BF16_NATIVE else "torch.float32")


def test_cast_halves_size_autocast_does_not(digits_mlp: nn.Module) -> None:
    fp32 = model_size_bytes(digits_mlp)
    cast = optimizers.convert_to_mixed_precision(digits_mlp, torch.bfloat16, use_auto_cast=False)
    auto = optimizers.convert_to_mixed_precision(digits_mlp, torch.bfloat16, use_auto_cast=True)
    if BF16_NATIVE:
        assert model_size_bytes(cast) == pytest.approx(fp32 / 2, rel=0.02)
        assert all(p.dtype == torch.bfloat16 for p in cast.parameters())
    assert model_size_bytes(auto) == pytest.approx(fp32, rel=0.01)
    assert all(p.dtype == torch.float32 for p in auto.parameters())


def test_outputs_are_fp32_and_close(transformer_block: nn.Module, block_inputs: tuple) -> None:
    wrapped = optimizers.convert_to_mixed_precision(transformer_block, torch.bfloat16)
    with torch.no_grad():
        ref, out = transformer_block(*block_inputs), wrapped(*block_inputs)
    assert out.dtype == torch.float32
    assert sqnr_db(ref, out) >= 30
    assert not torch.equal(ref, out) or not BF16_NATIVE  # really ran in bf16


@pytest.mark.skipif(FP16_NATIVE, reason="this CPU has native fp16")
def test_fp16_on_cpu_warns_and_records_why(digits_mlp: nn.Module) -> None:
    conv = MixedPrecisionConverter(digits_mlp, dtype=torch.float16)
    with pytest.warns(UserWarning, match="fp16 kept but CPU fp16 is emulated"):
        conv.convert_to_mixed_precision()
    info = conv.get_precision_info()
    assert info["effective_dtype"] == "torch.float16"
    assert "emulated" in info["fallback"]


@pytest.mark.skipif(FP16_NATIVE, reason="this CPU has native fp16")
def test_strict_raises_instead_of_falling_back(digits_mlp: nn.Module) -> None:
    conv = MixedPrecisionConverter(digits_mlp, dtype=torch.float16, strict=True)
    with pytest.raises(UnsupportedOnDeviceError, match="torch.float16 on cpu"):
        conv.convert_to_mixed_precision()


def test_device_supports() -> None:
    assert device_supports(torch.float32, "cpu") == (True, "fp32 always supported")
    ok, reason = device_supports(torch.bfloat16, "cpu")
    assert isinstance(ok, bool) and reason
    assert device_supports(torch.float16, "meta")[0] is False


def test_info_before_convert_is_an_error(digits_mlp: nn.Module) -> None:
    with pytest.raises(RuntimeError, match="convert_to_mixed_precision"):
        MixedPrecisionConverter(digits_mlp).get_precision_info()


def test_fp32_wrapper_is_passthrough(digits_mlp: nn.Module, digits_inputs: tuple) -> None:
    wrapped = MixedPrecisionWrapper(digits_mlp, torch.float32)
    with torch.no_grad():
        assert torch.equal(wrapped(*digits_inputs), digits_mlp(*digits_inputs))


def test_autocast_around_torch_ao_quantized(digits_cnn: nn.Module, digits_accuracy: dict) -> None:
    # The CNN's convs run in bf16 under autocast and feed a dynamic-int8 Linear, whose kernel only
    # takes fp32: the wrapper must hand it fp32 activations.
    q = DynamicQuantizer(digits_cnn).optimize()
    wrapped = MixedPrecisionWrapper(q, torch.bfloat16, use_auto_cast=True)
    assert abs(digits.evaluate(wrapped) - digits_accuracy["cnn"]) <= 0.02


def test_cast_of_torch_ao_quantized_is_rejected(digits_mlp: nn.Module) -> None:
    q = DynamicQuantizer(digits_mlp).optimize()
    if not BF16_NATIVE:
        pytest.skip("bf16 falls back to fp32 here, so nothing is cast")
    with pytest.raises(UnsupportedArchitectureError, match=r"cannot cast torch.ao quantized module 'net.1'"):
        MixedPrecisionWrapper(q, torch.bfloat16, use_auto_cast=False)

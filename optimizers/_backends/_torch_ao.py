"""torch.ao.quantization (deprecated upstream, still the fastest int8 CPU path in torch 2.13)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.ao.nn.quantized.dynamic
from torch import nn

from ..errors import UnsupportedArchitectureError, UnsupportedOnDeviceError


def _select_engine(engine: str) -> str:
    supported = torch.backends.quantized.supported_engines
    if engine == "auto":
        engine = "x86" if "x86" in supported else ("qnnpack" if "qnnpack" in supported else supported[0])
    if engine not in supported:
        raise UnsupportedOnDeviceError(
            f"quantized engine {engine!r} is not available here; supported: {supported}"
        )
    torch.backends.quantized.engine = engine
    return engine


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """torch.ao's dynamic int8 Linear, quantizing activations to all 8 bits.

    torch.ao always passes ``reduce_range=True`` (7-bit activations) on x86/fbgemm: without
    VNNI, fbgemm's ``vpmaddubsw`` sums pairs into saturating int16. With VNNI (``vpdpbusd``,
    int32 accumulation) nothing saturates, and the extra bit is what separates MiniLM cosine
    0.976 from 0.993 at the same speed. A class, not an attribute, so it survives
    ``load_state_dict`` (which resets ``version``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_params.dtype != torch.qint8:
            return super().forward(x)  # type: ignore[no-any-return]
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)  # type: ignore[no-any-return]


def cpu_has_vnni() -> bool:
    """AVX512-VNNI or AVX-VNNI on this CPU (Linux ``/proc/cpuinfo``; False when unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_vnni", "avx_vnni"} & flags)
    except OSError:
        pass
    return False


def quantize_dynamic(
    model: nn.Module, *, bits: int, per_channel: bool, engine: str, reduce_range: bool | None = True
) -> tuple[nn.Module, str]:
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float16_dynamic_qconfig,
        per_channel_dynamic_qconfig,
    )
    from torch.ao.quantization import (
        quantize_dynamic as _qd,
    )

    engine = _select_engine(engine)
    if reduce_range is None:  # auto: full 8-bit activations only where they cannot saturate
        reduce_range = not (engine in ("x86", "fbgemm") and cpu_has_vnni())
    if bits == 16:
        qconfig, dtype = float16_dynamic_qconfig, torch.float16
    else:
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        dtype = torch.qint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _qd(model, {nn.Linear: qconfig, nn.LSTM: qconfig, nn.GRU: qconfig}, dtype=dtype, inplace=True)
    if bits == 8 and not reduce_range:
        for m in q.modules():
            if type(m) is torch.ao.nn.quantized.dynamic.Linear:
                m.__class__ = FullRangeDynamicLinear
    _disable_encoder_fastpath(q)
    return q, engine


def _disable_encoder_fastpath(model: nn.Module) -> None:
    """Keep quantized ``TransformerEncoderLayer``s off PyTorch's fused fast path.

    In eval mode that path reads ``linear1.weight.device``; on a quantized linear ``weight`` is a
    method, so the layer would crash. ``activation_relu_or_gelu`` is read only by the fast-path
    checks and the fused kernel call, so zeroing it routes the layer through the regular
    (quantized-module) forward without changing its math.
    """
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer) and any(
            c.__module__.startswith("torch.ao.nn.quantized") for sub in m.modules() for c in type(sub).__mro__
        ):
            m.activation_relu_or_gelu = 0


def quantize_static(
    model: nn.Module,
    *,
    example_inputs: tuple[torch.Tensor, ...],
    calibration: Iterable[tuple[torch.Tensor, ...]],
    per_channel: bool,
    engine: str,
) -> tuple[nn.Module, str]:
    """FX graph-mode post-training quantization: no QuantStub edits to the user's model."""
    from torch.ao.quantization import (
        QConfigMapping,
        get_default_qconfig,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = _select_engine(engine)
    qmap = get_default_qconfig_mapping(engine) if per_channel else QConfigMapping().set_global(
        get_default_qconfig("qnnpack" if engine == "qnnpack" else "fbgemm")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(model.eval(), qmap, example_inputs)
        except Exception as exc:  # symbolic tracing failed: the model is not FX-traceable
            raise UnsupportedArchitectureError(
                f"static quantization needs an FX-traceable model: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from exc
        n = 0
        with torch.no_grad():
            for batch in calibration:
                prepared(*batch)
                n += 1
        if n == 0:
            raise ValueError("calibration data is empty")
        return convert_fx(prepared), engine

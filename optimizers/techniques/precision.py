"""Reduced precision (fp16/bf16) and torch.compile, as registered stages.

Both report whether they changed what the model computes: autocast over a graph whose every
matmul/conv is already an int8 kernel leaves the outputs bit-identical, and then the precision
is not part of the row's effective recipe (the "int8 + bf16" label would be the int8 model under
another name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .._utils import clone_model
from ._base import ApplyContext, StageInfo, Technique, register

PRECISION_MODES = ("auto", "autocast", "cast")


def _outputs(model: nn.Module, inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(*inputs)
    flat: list[torch.Tensor] = []

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            flat.append(o.detach().float().cpu())
        elif isinstance(o, Mapping):
            for v in o.values():
                walk(v)
        elif isinstance(o, (tuple, list)):
            for v in o:
                walk(v)

    walk(out)
    return flat


def same_outputs(a: nn.Module, b: nn.Module, inputs: tuple[Any, ...]) -> bool:
    """Bit-identical outputs on ``inputs``: the second model computes exactly what the first does."""
    oa, ob = _outputs(a, inputs), _outputs(b, inputs)
    return len(oa) == len(ob) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(oa, ob, strict=True))


class _Precision(Technique):
    stage: ClassVar[str] = "precision"
    dtype: ClassVar[torch.dtype] = torch.float32
    columns: ClassVar[tuple[str, ...]] = ()

    def check(self, params: Mapping[str, Any], device: torch.device,
              upstream: Sequence[Technique] = ()) -> str | None:
        from ..mixed_precision import device_supports

        # bf16 without native support would silently fall back to fp32 and be labelled bf16;
        # fp16 on a CPU is allowed: it runs (emulated, slowly) and the data shows it.
        if self.name == "bf16" or device.type == "cuda":
            ok, reason = device_supports(self.dtype, device)
            if not ok:
                return reason
        traits = {t for u in upstream for t in u.traits}
        mode = params.get("precision_mode", "auto")
        if "compiled" in traits:
            return f"{self.name} over an inductor-compiled int8 graph: the graph fixes its own dtypes"
        if mode == "cast" and "fp32_activations" in traits and device.type == "cpu":
            return "precision_mode 'cast' cannot cast torch.ao quantized modules (fp32 activations only)"
        return None

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        from ..mixed_precision import MixedPrecisionWrapper

        mode = params.get("precision_mode", "auto")
        quantized = any(u.stage == "quantize" for u in ctx.upstream)
        if mode == "auto":  # quantized modules expect fp32 activations: autocast around them
            mode = "autocast" if quantized else "cast"
        inner = clone_model(model).eval()  # cast mutates weights; autocast hooks the quantized modules
        wrapper = MixedPrecisionWrapper(inner, self.dtype, use_auto_cast=(mode == "autocast"))
        changed = wrapper.dtype != torch.float32 and not same_outputs(model, wrapper, ctx.example_inputs)
        effective: dict[str, Any] = {}
        note = ""
        if changed:
            effective = {"precision": {torch.float16: "fp16", torch.bfloat16: "bf16"}[wrapper.dtype]}
            if quantized:
                note = "applies to the operations left in float (the int8 kernels stay int8)"
        else:
            note = "outputs bit-identical to the input model: every op it would change is int8"
        details = {"mode": mode, "effective_dtype": str(wrapper.dtype), "fallback": wrapper.fallback,
                   "scope": note}
        return wrapper, StageInfo(self.stage, self.name, changed, effective, details, note)


@register
class FP16(_Precision):
    """fp16 by autocast (weights fp32) or cast (weights fp16)."""

    name = "fp16"
    dtype = torch.float16
    selector = {"precision": "fp16"}


@register
class BF16(_Precision):
    """bf16 by autocast or cast; needs native bf16 (AVX512-BF16/AMX on CPU, Ampere+ on CUDA)."""

    name = "bf16"
    dtype = torch.bfloat16
    selector = {"precision": "bf16"}


@register
class Compile(Technique):
    """torch.compile (inductor); compiled on the example inputs so compile time is not latency."""

    name = "compile"
    stage = "compile"
    selector = {"compile": True}
    columns = ("compile_s",)
    export = ("torch.export", "torchscript")

    def check(self, params: Mapping[str, Any], device: torch.device,
              upstream: Sequence[Technique] = ()) -> str | None:
        if any("no_compile" in u.traits for u in upstream):
            return "torch.compile cannot trace torch.ao quantized modules (packed params)"
        return None

    def _apply(self, model: nn.Module, params: Mapping[str, Any], ctx: ApplyContext
               ) -> tuple[nn.Module, StageInfo]:
        import time

        if any("compiled" in u.traits for u in ctx.upstream):
            return model, StageInfo(self.stage, self.name, False, {}, {},
                                    "already compiled by the quantization backend")
        torch._dynamo.reset()  # a fresh cache per trial: avoids hitting the recompile limit
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(*ctx.example_inputs)  # compile now, so compile time is not mistaken for latency
        return compiled, StageInfo(self.stage, self.name, True, {"compile": True},  # type: ignore[return-value]
                                   {"compile_s": time.perf_counter() - t0})

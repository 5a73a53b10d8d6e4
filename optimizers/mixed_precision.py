"""Reduced precision: fp16 / bf16 by autocast (default) or by casting the weights.

The hardware decides what is worth running: CUDA has fp16 and (on Ampere+) bf16 kernels; a CPU
has fast bf16 only with AVX512-BF16/AMX (oneDNN reports it); fp16 on most CPUs is *emulated* and
slow. :class:`MixedPrecisionWrapper` uses the requested dtype when the device supports it and
otherwise falls back (to bf16, else fp32) with a warning; ``.fallback`` records why.

>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(8, 8))
>>> amp = convert = MixedPrecisionConverter(m, dtype=torch.bfloat16).convert_to_mixed_precision()
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ._utils import clone_model, model_device
from .errors import UnsupportedArchitectureError, check_choice

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def device_supports(dtype: torch.dtype, device: torch.device | str) -> tuple[bool, str]:
    """``(supported, reason)``: is there a native (not emulated) kernel path for ``dtype``?"""
    device = torch.device(device)
    if dtype == torch.float32:
        return True, "fp32 always supported"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is available to this process"
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
        return True, "CUDA"
    if device.type == "mps":
        return True, "MPS"
    if device.type == "cpu":
        mkldnn = getattr(torch.ops, "mkldnn", None)
        if dtype == torch.bfloat16:
            ok = bool(mkldnn is not None and torch.ops.mkldnn._is_mkldnn_bf16_supported())
            return ok, "CPU has AVX512-BF16/AMX" if ok else "CPU lacks native bf16 (AVX512-BF16/AMX)"
        ok = bool(mkldnn is not None and torch.ops.mkldnn._is_mkldnn_fp16_supported())
        return ok, "CPU has native fp16 (AMX-FP16/AVX512-FP16)" if ok else "CPU fp16 is emulated"
    return False, f"unknown device type {device.type!r}"


def _is_torch_ao_quantized(module: nn.Module) -> bool:
    return any(c.__module__.startswith("torch.ao.nn.quantized") for c in type(module).__mro__)


def _inputs_to_fp32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # torch.ao quantized kernels accept only fp32 activations; autocast does not know them.
    return tuple(_cast_floats(a, torch.float32) for a in args)


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.to(dtype)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


class MixedPrecisionWrapper(nn.Module):
    """Run ``module`` under ``torch.autocast`` (or with cast weights) and return fp32 outputs.

    Args:
        module: the model to wrap (not copied).
        dtype: requested ``torch.float16`` or ``torch.bfloat16``.
        use_auto_cast: autocast (weights stay fp32, matmuls run in ``dtype``) when True; the
            weights themselves are cast when False (halves the size).
        strict: raise instead of falling back when the device lacks ``dtype``.

    >>> import torch
    >>> w = MixedPrecisionWrapper(torch.nn.Linear(4, 4), torch.bfloat16)
    >>> w(torch.randn(2, 4)).dtype
    torch.float32
    """

    def __init__(
        self, module: nn.Module, dtype: torch.dtype = torch.bfloat16, use_auto_cast: bool = True,
        strict: bool = False,
    ) -> None:
        super().__init__()
        check_choice("MixedPrecisionWrapper", "dtype", dtype, _DTYPES)
        self.module = module
        self.requested_dtype = dtype
        self.use_auto_cast = use_auto_cast
        self.device_type = model_device(module).type
        self.fallback: str | None = None
        self.dtype = self._choose(dtype, strict)
        quantized = [n for n, m in module.named_modules() if _is_torch_ao_quantized(m)]
        if quantized and self.dtype != torch.float32:
            if not use_auto_cast:
                raise UnsupportedArchitectureError(
                    f"cannot cast torch.ao quantized module {quantized[0]!r} to {self.dtype}: its "
                    "kernels take fp32 activations; use use_auto_cast=True"
                )
            for m in module.modules():
                if _is_torch_ao_quantized(m):
                    m.register_forward_pre_hook(_inputs_to_fp32)
        if not use_auto_cast and self.dtype != torch.float32:
            self.module.to(self.dtype)

    def _choose(self, dtype: torch.dtype, strict: bool) -> torch.dtype:
        ok, reason = device_supports(dtype, self.device_type)
        if ok or dtype == torch.float32:
            return dtype
        if strict:
            from .errors import UnsupportedOnDeviceError

            raise UnsupportedOnDeviceError(f"{dtype} on {self.device_type}: {reason}")
        # fp16 on CPUs is emulated: honour the request (it still runs) but say it is slow.
        if self.device_type == "cpu" and dtype == torch.float16:
            self.fallback = f"fp16 kept but {reason}: expect a slowdown"
            warnings.warn(self.fallback, stacklevel=3)
            return dtype
        alt = torch.bfloat16 if device_supports(torch.bfloat16, self.device_type)[0] else torch.float32
        self.fallback = f"{dtype} unsupported ({reason}); falling back to {alt}"
        warnings.warn(self.fallback, stacklevel=3)
        return alt

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.dtype == torch.float32:
            return self.module(*args, **kwargs)
        if self.use_auto_cast:
            with torch.autocast(device_type=self.device_type, dtype=self.dtype):
                out = self.module(*args, **kwargs)
        else:
            out = self.module(*_cast_floats(args, self.dtype), **_cast_floats(kwargs, self.dtype))
        return _cast_floats(out, torch.float32)


class MixedPrecisionConverter:
    """Convert a copy of ``model`` to run in fp16/bf16.

    >>> import torch
    >>> conv = MixedPrecisionConverter(torch.nn.Linear(4, 4), dtype=torch.bfloat16)
    >>> model = conv.convert_to_mixed_precision()
    """

    def __init__(
        self, model: nn.Module, dtype: torch.dtype = torch.float16, use_auto_cast: bool = True,
        strict: bool = False,
    ) -> None:
        check_choice("MixedPrecisionConverter", "dtype", dtype, _DTYPES)
        self.model = model
        self.dtype = dtype
        self.use_auto_cast = use_auto_cast
        self.strict = strict
        self.converted_model: MixedPrecisionWrapper | None = None

    def convert_to_mixed_precision(self) -> nn.Module:
        """Return the wrapped copy; the input model is untouched."""
        self.converted_model = MixedPrecisionWrapper(
            clone_model(self.model).eval(), self.dtype, self.use_auto_cast, self.strict
        )
        return self.converted_model

    def get_precision_info(self) -> dict[str, Any]:
        """Requested and effective dtype, autocast or cast, and the fallback reason if any."""
        if self.converted_model is None:
            raise RuntimeError("call convert_to_mixed_precision() first")
        w = self.converted_model
        return {"requested_dtype": str(self.dtype), "effective_dtype": str(w.dtype),
                "use_auto_cast": self.use_auto_cast, "fallback": w.fallback,
                "device_type": w.device_type}

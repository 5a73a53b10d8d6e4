"""torchao: the maintained quantization library (``quantize_`` + a config object)."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from ..errors import UnsupportedOnDeviceError

# torchao logs a warning for every optional CUDA extension it can't load (e.g. on a CPU build);
# those are not errors for us, and they drown the sweep's output.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao registers enums it warns about


def available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> None:
    if not available():
        raise UnsupportedOnDeviceError("this quantization needs torchao: pip install torchao")


def quantize(model: nn.Module, *, kind: str, bits: int, device: torch.device) -> nn.Module:
    """Apply a torchao config in place. ``kind`` is ``dynamic`` or ``weight_only``."""
    _require()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        if kind == "weight_only" and bits == 4:  # CUDA only: the technique's check refuses it elsewhere
            config = Int4WeightOnlyConfig(group_size=128)
        elif kind == "weight_only":
            config = Int8WeightOnlyConfig()
        else:
            config = Int8DynamicActivationInt8WeightConfig()
        try:
            quantize_(model, config)
        except ImportError as exc:  # e.g. a kernel package (mslk/fbgemm-gpu) missing for int4
            raise UnsupportedOnDeviceError(f"torchao {type(config).__name__} unavailable: {exc}") from exc
    return model

"""A tiny model for sweep tests, with an evaluate() that misbehaves on purpose per recipe.

- ``evaluate``: honest fidelity-style score.
- ``evaluate_chaos``: dynamic-quantized model -> the worker process dies (os._exit);
  reduced-precision wrapper -> hangs; heavily pruned -> raises. Everything else scores normally.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 4)).eval()


def example_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(8, 16, generator=torch.Generator().manual_seed(1)),)


def calibration() -> list[tuple[torch.Tensor]]:
    return [(torch.randn(8, 16, generator=torch.Generator().manual_seed(i)),) for i in range(2)]


@torch.no_grad()
def evaluate(m: nn.Module) -> float:
    ref = model()
    x = example_inputs()[0]
    return float(nn.functional.cosine_similarity(m(x).float(), ref(x), dim=1).mean())


def _is_dynamic_quantized(m: nn.Module) -> bool:
    return any(isinstance(s, torch.ao.nn.quantized.dynamic.Linear) for s in m.modules())


def evaluate_chaos(m: nn.Module) -> float:
    if _is_dynamic_quantized(m):
        os._exit(1)  # simulate a crashing worker process (segfault, OOM-kill)
    if type(m).__name__ == "MixedPrecisionWrapper":
        time.sleep(3600)  # simulate a hang
    if any(getattr(s, "weight", None) is not None and isinstance(s.weight, torch.Tensor)
           and float((s.weight == 0).float().mean()) > 0.3 for s in m.modules()):
        raise ValueError("boom: evaluation failed on a pruned model")
    return evaluate(m)

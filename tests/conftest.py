"""Shared fixtures: trained digits models (cached on disk by ``examples/digits.py``), a tiny
transformer block, and the ``gpu`` marker's skip rule."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import digits  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_library_warnings() -> None:
    # torch.ao deprecation and "fp16 is emulated" warnings are expected on CPU; tests that care
    # about a warning use pytest.warns, which still sees it.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")


@pytest.fixture(scope="session")
def digits_mlp() -> nn.Module:
    return digits.mlp()


@pytest.fixture(scope="session")
def digits_cnn() -> nn.Module:
    return digits.cnn()


@pytest.fixture(scope="session")
def digits_inputs() -> tuple[torch.Tensor]:
    return digits.example_inputs()


@pytest.fixture(scope="session")
def digits_calibration() -> list[tuple[torch.Tensor]]:
    return list(digits.calibration())


@pytest.fixture(scope="session")
def digits_accuracy(digits_mlp: nn.Module, digits_cnn: nn.Module) -> dict[str, float]:
    """fp32 test accuracy of each digits model, the reference for every accuracy bound."""
    return {"mlp": digits.evaluate(digits_mlp), "cnn": digits.evaluate(digits_cnn)}


@pytest.fixture(scope="session")
def transformer_block() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(d_model=64, nhead=4, batch_first=True).eval()


@pytest.fixture(scope="session")
def block_inputs() -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(4, 16, 64, generator=gen),)


@pytest.fixture(scope="session")
def block_calibration() -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 16, 64, generator=gen),) for _ in range(4)]


# ---- helpers used across test modules (imported as ``from conftest import ...``) ----


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert torch.equal(v, before[k]), f"input model changed at {k!r}"


def sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (torchao's yardstick for quantized outputs)."""
    reference, actual = reference.float(), actual.float()
    noise = (reference - actual).norm()
    if noise == 0:
        return float("inf")
    return float(20 * torch.log10(reference.norm() / noise))


def roundtrip_state_dict(model: nn.Module) -> dict[str, object]:
    """``torch.save(state_dict)`` then ``torch.load(weights_only=True)``: what shipping needs."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded: dict[str, object] = torch.load(buf, weights_only=True)
    return loaded

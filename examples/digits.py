"""Digits example: an MLP and a small CNN with BatchNorm on ``sklearn.datasets.load_digits``.

Both train in a few seconds with a fixed seed and are cached under ``examples/.cache``. Every
callable the sweep config names lives here::

    model: "digits:mlp"            # or "digits:cnn"
    example_inputs: "digits:example_inputs"
    evaluate: "digits:evaluate"
    calibration: "digits:calibration"

Both models take images shaped ``(N, 1, 8, 8)`` and return ``(N, 10)`` logits.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

CACHE_DIR = Path(os.environ.get("OPTSWEEP_EXAMPLES_CACHE", Path(__file__).resolve().parent / ".cache"))
SEED = 0
BATCH = 256


@functools.lru_cache(maxsize=1)
def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(SEED)
    perm = torch.randperm(len(x), generator=gen)
    xt = torch.tensor(x, dtype=torch.float32)[perm].reshape(-1, 1, 8, 8) / 16.0
    yt = torch.tensor(y, dtype=torch.long)[perm]
    n_train = int(0.7 * len(xt))
    return xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:]


class DigitsMLP(nn.Module):
    """64 -> 1024 -> 1024 -> 10 classifier; wide enough that compute, not per-call overhead,
    dominates a batch-256 forward pass (at 512 wide, int8's fixed per-call cost of quantizing
    activations held dynamic int8 to ~2.4x on 2 cores; at 1024 it is ~3.1x)."""

    def __init__(self, hidden: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x2 -> global pool -> Linear, on 8x8 digit images."""

    def __init__(self, c1: int = 32, c2: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _train(model: nn.Module, epochs: int = 30) -> nn.Module:
    xtr, ytr, _, _ = _data()
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    return model.eval()


def _cached(name: str, factory: type[nn.Module]) -> nn.Module:
    """Train once with a fixed seed, then load the cached weights (``weights_only=True``)."""
    path = CACHE_DIR / f"digits_{name}.pt"
    model = factory()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(SEED)
    model = _train(factory())
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Atomic: concurrent workers may train at the same time; the last rename wins, all identical.
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def mlp() -> nn.Module:
    """The trained digits MLP."""
    return _cached("mlp1024", DigitsMLP)


def cnn() -> nn.Module:
    """The trained digits CNN (Conv -> BatchNorm -> Conv)."""
    return _cached("cnn", DigitsCNN)


def example_inputs() -> tuple[torch.Tensor]:
    """One batch of 256 test images, the input latency is measured on."""
    _, _, xte, _ = _data()
    return (xte[:BATCH].clone(),)


def calibration(n_batches: int = 8) -> Iterator[tuple[torch.Tensor]]:
    """Training images in batches of 64, for static quantization and pruning recovery."""
    xtr, _, _, _ = _data()
    return iter([(xtr[i * 64 : (i + 1) * 64],) for i in range(n_batches)])


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module) -> float:
    """Test-set accuracy in [0, 1] (540 held-out images)."""
    _, _, xte, yte = _data()
    device = _device_of(model)
    model.eval()
    logits = model(xte.to(device))
    return float((logits.float().argmax(dim=1).cpu() == yte).float().mean())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> float:
    """One supervised step on a training batch; used for pruning recovery when labels exist."""
    xtr, ytr, _, _ = _data()
    i = (step * 64) % (len(xtr) - 64)
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(xtr[i : i + 64]), ytr[i : i + 64])
    loss.backward()
    optimizer.step()
    return float(loss.detach())

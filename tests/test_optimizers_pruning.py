"""Unstructured pruning: sparsity measured from the weights, permanent masks, validation.

``structured`` lives in ``optimizers/structured.py`` and is tested in ``test_structured.py``.
"""

from __future__ import annotations

import digits
import pytest
import torch
from conftest import assert_state_equal, roundtrip_state_dict, state_snapshot
from torch import nn

import optimizers
from optimizers import ConfigError, ModelPruner, PruningConfig

UNSTRUCTURED = ("magnitude", "random", "global_magnitude")


def _weight_sparsity(model: nn.Module) -> float:
    """Zero fraction over every Linear/Conv weight and MHA in-projection, read from the tensors."""
    zeros = total = 0
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() > 1:
            zeros += int((p == 0).sum())
            total += p.numel()
    return zeros / total


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    w = model.get_submodule(name).weight
    assert isinstance(w, torch.Tensor)
    return w


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "lottery"}, r"PruningConfig.method must be one of .*'magnitude'.*got 'lottery'"),
        ({"amount": 1.0}, r"PruningConfig.amount must be in \[0.0, 1.0\); got 1.0"),
        ({"amount": -0.1}, r"amount must be in \[0.0, 1.0\); got -0.1"),
        ({"amount": "0.5"}, r"amount must be in .*got '0.5'"),
        ({"amount": True}, r"amount must be in .*got True"),
        ({"n_iterations": 0}, r"n_iterations must be an integer >= 1; got 0"),
        ({"n_iterations": 2.0}, r"n_iterations must be an integer >= 1; got 2.0"),
        ({"pruning_dims": "weight"}, r"pruning_dims must be a list of parameter names; got 'weight'"),
        ({"importance": "taylor"}, r"importance must be one of .*got 'taylor'"),
        ({"recovery_loss": "kl"}, r"recovery_loss must be one of .*got 'kl'"),
        ({"layer_amounts": {"fc": 1.5}}, r"layer_amounts\['fc'\] must be in \[0.0, 1.0\); got 1.5"),
        ({"round_to": 0}, r"round_to must be a positive integer or None; got 0"),
        ({"recovery_steps": -1}, r"recovery_steps must be an integer >= 0; got -1"),
        ({"recovery_seconds": -1.0}, r"recovery_seconds must be >= 0 or None; got -1.0"),
        ({"recovery_lr": 0}, r"recovery_lr must be > 0; got 0"),
    ],
)
def test_config_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PruningConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", UNSTRUCTURED)
@pytest.mark.parametrize("amount", [0.3, 0.7])
def test_final_sparsity_matches_amount(digits_mlp: nn.Module, method: str, amount: float) -> None:
    pruner = ModelPruner(digits_mlp, PruningConfig(method=method, amount=amount))
    pruned = pruner.prune_model()
    info = pruner.get_pruning_info()
    assert info["final_sparsity"] == pytest.approx(amount, abs=0.01)
    assert _weight_sparsity(pruned) == pytest.approx(info["final_sparsity"], abs=1e-9)
    assert info["total_params"] == info["original_params"]  # dense shapes kept
    assert info["dense_shapes_unchanged"] and not info["speedup_expected"]


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_per_layer_sparsity(digits_cnn: nn.Module, method: str) -> None:
    pruner = ModelPruner(digits_cnn, PruningConfig(method=method, amount=0.4))
    pruned = pruner.prune_model()
    layers = pruner.get_pruning_info()["layer_sparsity"]
    assert set(layers) == {"features.0.weight", "features.3.weight", "classifier.1.weight"}
    modules = dict(pruned.named_modules())
    for key, sparsity in layers.items():
        w = modules[key.rsplit(".", 1)[0]].weight
        assert sparsity == pytest.approx(float((w == 0).float().mean()))
        assert sparsity == pytest.approx(0.4, abs=0.02)  # per-layer methods hit it on each layer


def test_global_magnitude_varies_per_layer(digits_mlp: nn.Module) -> None:
    pruner = ModelPruner(digits_mlp, PruningConfig(method="global_magnitude", amount=0.5))
    pruner.prune_model()
    info = pruner.get_pruning_info()
    per_layer = list(info["layer_sparsity"].values())
    assert max(per_layer) - min(per_layer) > 0.05  # one threshold across layers, not per layer
    assert info["final_sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("n_iterations", [1, 2, 5])
def test_iterations_reach_amount(digits_mlp: nn.Module, n_iterations: int) -> None:
    pruner = ModelPruner(digits_mlp, PruningConfig(amount=0.6, n_iterations=n_iterations))
    pruner.prune_model()
    assert pruner.get_pruning_info()["final_sparsity"] == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_masks_are_permanent(digits_cnn: nn.Module, method: str) -> None:
    pruned = ModelPruner(digits_cnn, PruningConfig(method=method, amount=0.5)).prune_model()
    keys = set(pruned.state_dict())
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)
    assert keys == set(digits_cnn.state_dict())
    assert not any(m._forward_pre_hooks for m in pruned.modules())  # no pruning hooks left
    fresh = digits.DigitsCNN()
    fresh.load_state_dict(roundtrip_state_dict(pruned))
    fresh.eval()
    x = digits.example_inputs()[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


def test_input_untouched_and_rng_restored(digits_mlp: nn.Module) -> None:
    before = state_snapshot(digits_mlp)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ModelPruner(digits_mlp, PruningConfig(method="random", amount=0.5)).prune_model()
    assert torch.equal(torch.rand(3), expected)  # pruning's seed does not leak into the caller
    assert_state_equal(digits_mlp, before)


def test_random_is_seeded(digits_mlp: nn.Module) -> None:
    def masks(seed: int) -> torch.Tensor:
        m = ModelPruner(digits_mlp, PruningConfig(method="random", amount=0.5, seed=seed)).prune_model()
        return _weight(m, "net.1") == 0

    assert torch.equal(masks(0), masks(0))
    assert not torch.equal(masks(0), masks(1))


def test_magnitude_keeps_largest(digits_mlp: nn.Module) -> None:
    pruned = ModelPruner(digits_mlp, PruningConfig(amount=0.5, n_iterations=1)).prune_model()
    w0, w1 = _weight(digits_mlp, "net.3").abs(), _weight(pruned, "net.3")
    assert w0[w1 == 0].max() <= w0[w1 != 0].min()


def test_amount_zero_is_identity(digits_mlp: nn.Module) -> None:
    pruner = ModelPruner(digits_mlp, PruningConfig(amount=0.0))
    pruned = pruner.prune_model()
    assert pruned is not digits_mlp
    assert_state_equal(pruned, state_snapshot(digits_mlp))
    assert pruner.get_pruning_info()["final_sparsity"] == 0.0


def test_ignored_layers(digits_mlp: nn.Module) -> None:
    pruner = ModelPruner(digits_mlp, PruningConfig(amount=0.5, ignored_layers=("net.5",)))
    pruned = pruner.prune_model()
    assert "net.5.weight" not in pruner.get_pruning_info()["layer_sparsity"]
    assert torch.equal(_weight(pruned, "net.5"), _weight(digits_mlp, "net.5"))


def test_bias_pruning_dims(digits_mlp: nn.Module) -> None:
    pruner = ModelPruner(digits_mlp, PruningConfig(amount=0.5, pruning_dims=("weight", "bias")))
    pruner.prune_model()
    layers = pruner.get_pruning_info()["layer_sparsity"]
    assert "net.1.bias" in layers and layers["net.1.bias"] == pytest.approx(0.5, abs=0.01)


def test_transformer_block_prunes_attention(transformer_block: nn.Module) -> None:
    pruner = ModelPruner(transformer_block, PruningConfig(amount=0.5))
    pruned = pruner.prune_model()
    layers = pruner.get_pruning_info()["layer_sparsity"]
    assert set(layers) == {"self_attn.in_proj_weight", "self_attn.out_proj.weight",
                           "linear1.weight", "linear2.weight"}
    assert all(v == pytest.approx(0.5, abs=0.01) for v in layers.values())
    assert _weight_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert not any("_orig" in k or "_mask" in k for k in pruned.state_dict())


def test_compressed_size_shrinks_dense_size_does_not(digits_mlp: nn.Module) -> None:
    from optimizers._utils import compressed_size_bytes, model_size_bytes

    pruned = optimizers.prune_model(digits_mlp, method="magnitude", amount=0.7)
    assert model_size_bytes(pruned) == pytest.approx(model_size_bytes(digits_mlp), rel=0.01)
    assert compressed_size_bytes(pruned) < 0.8 * compressed_size_bytes(digits_mlp)


def test_info_before_prune_is_an_error(digits_mlp: nn.Module) -> None:
    with pytest.raises(RuntimeError, match="call prune_model"):
        ModelPruner(digits_mlp).get_pruning_info()

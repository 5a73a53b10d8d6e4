"""The README never lies: its commands, config reference and schema match the code."""

from __future__ import annotations

from pathlib import Path

from analysis.schema import schema_markdown
from sweep.config import Measure, Resources, SearchSpace, SweepConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    assert "bash scripts/test.sh" in README
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_readme_main_job_config_is_valid() -> None:
    assert "optsweep run examples/quickstart.yaml" in README
    cfg, _ = load_config(ROOT / "examples" / "quickstart.yaml")
    assert cfg.n_trials == 30


def test_schema_section_is_generated_from_the_schema() -> None:
    assert schema_markdown() in README


def test_every_config_key_is_documented() -> None:
    for key in SweepConfig.model_fields:
        if key in ("search", "resources", "measure"):
            continue
        assert f"| `{key}` |" in README, key
    for prefix, model in (("search", SearchSpace), ("resources", Resources), ("measure", Measure)):
        for key in model.model_fields:
            assert f"`{prefix}.{key}`" in README, f"{prefix}.{key}"


def test_config_table_lists_what_the_registry_allows() -> None:
    """Registering a technique without documenting it fails here."""
    from optimizers.techniques import REGISTRY

    for dim in ("pruning_method", "quantization_type", "quantization_bits", "quantization_backend", "precision"):
        line = next(ln for ln in README.splitlines() if ln.startswith(f"| `search.{dim}` |"))
        allowed = line.split("|")[2]
        for choice in REGISTRY.choices(dim):
            assert f"`{choice}`" in allowed, (dim, choice)

"""The front is what ships: exportable rows only (unless --all), registry-backed recipe columns,
missing libraries as INFEASIBLE rows, and bad input to the loaders never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from analysis_fixtures import make_results, write_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from analysis.pareto import pareto_front, parse_constraint
from analysis.schema import COLUMN_NAMES, RECIPE_COLUMNS

ROWS: list[dict[str, Any]] = [
    {"trial_number": -1, "latency_ms": 10.0, "size_bytes": 100, "accuracy": 0.9, "exportable": True},
    {"trial_number": 1, "latency_ms": 1.0, "size_bytes": 10, "accuracy": 0.95, "exportable": False,
     "export_error": "no format could export it"},
    {"trial_number": 2, "latency_ms": 2.0, "size_bytes": 20, "accuracy": 0.92, "exportable": True},
]


def test_unexportable_rows_are_off_the_default_front_and_back_with_all() -> None:
    res = make_results(ROWS)
    default = pareto_front(res)
    assert 1 not in set(default.front["trial_number"])
    reason = default.table.set_index("trial_number").loc[1, "ineligible_reason"]
    assert reason == "not exportable"
    assert 1 in set(pareto_front(res, include_unexportable=True).front["trial_number"])


def test_cli_all_flag(tmp_path: Path) -> None:
    import typer

    from analysis.cli import register

    write_rows(tmp_path / "results" / "t.parquet", ROWS)
    app = typer.Typer()
    register(app)
    plain = CliRunner().invoke(app, ["pareto", str(tmp_path), "-f", "csv"])
    everything = CliRunner().invoke(app, ["pareto", str(tmp_path), "-f", "csv", "--all"])
    assert plain.exit_code == 0 and everything.exit_code == 0, plain.output
    assert "\n1," not in plain.stdout and "\n1," in everything.stdout


def test_recipe_columns_are_the_registry_dimensions() -> None:
    """analysis does not import the registry; this keeps its recipe columns equal to it."""
    from optimizers.techniques import DIMENSIONS

    assert list(DIMENSIONS) == RECIPE_COLUMNS
    assert set(RECIPE_COLUMNS) <= set(COLUMN_NAMES)


def test_synthetic_rows_use_registered_names() -> None:
    from analysis.synthetic import synthetic_columns
    from optimizers.techniques import REGISTRY

    cols = synthetic_columns(300, seed=0)
    for dim in ("pruning_method", "quantization_type", "precision", "quantization_backend"):
        used = {v for v in cols[dim] if v is not None}
        assert used <= set(REGISTRY.choices(dim)), (dim, used - set(REGISTRY.choices(dim)))
    assert {"lowrank", "structured"} <= set(cols["pruning_method"])


def test_schema_descriptions_name_every_registered_choice() -> None:
    """The schema (and the README table made from it) lists what a recipe column can hold."""
    from analysis.schema import COLUMNS
    from optimizers.techniques import DIMENSIONS, REGISTRY

    described = {name: text for name, _, text in COLUMNS}
    for dim in DIMENSIONS:
        choices = [c for c in REGISTRY.choices(dim) if not isinstance(c, bool)]
        missing = [c for c in choices if str(c) not in described[dim]]
        assert not missing, f"schema description of {dim!r} lacks {missing}"


def test_a_missing_backend_library_is_infeasible_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from optimizers.techniques import REGISTRY

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    reason = REGISTRY.check({"quantization_type": "weight_only", "quantization_bits": 8}, "cpu")
    assert reason == "weight_only (torchao) needs torchao: pip install torchao"
    reason = REGISTRY.check({"quantization_type": "static", "quantization_bits": 8,
                             "quantization_backend": "pt2e"}, "cpu")
    assert reason == "static (pt2e) needs torchao: pip install torchao"


def test_unknown_backend_is_one_line_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "model": "m:f", "example_inputs": "m:g",
                                   "search": {"quantization_backend": ["tensorrt"]}}))
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "validate", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: config key 'search.quantization_backend': must be one of 'auto', "
                                   "'torch_ao', 'torchao', 'pt2e'; got 'tensorrt'")


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                       max_leaves=8)
_keys = st.sampled_from(["name", "model", "example_inputs", "search", "objectives", "constraints", "sampler",
                         "n_trials", "measure", "resources", "out", "pruning", "quantization", "device", "x"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6))
def test_config_loader_fuzz_gives_config_errors_only(data: dict[str, Any]) -> None:
    from sweep.config import parse_config
    from sweep.errors import ConfigError

    try:
        parse_config({"name": "x", "model": "m:f", "example_inputs": "m:g", **data})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(("config key", "config must"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40))
def test_yaml_text_fuzz(text: str) -> None:
    import tempfile

    from sweep.config import load_config
    from sweep.errors import ConfigError

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        load_config(f.name)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    finally:
        Path(f.name).unlink()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_constraint_parser_fuzz(expr: str) -> None:
    from analysis.errors import AnalysisError

    try:
        parse_constraint(expr)
    except AnalysisError as exc:
        assert "\n" not in str(exc)


def test_speedup_ties_use_the_paired_ratios_spread() -> None:
    rows = [
        {"trial_number": 1, "speedup": 3.0, "speedup_iqr": 0.4, "accuracy": 0.90},
        {"trial_number": 2, "speedup": 3.2, "speedup_iqr": 0.4, "accuracy": 0.89},
    ]
    res = make_results(rows)
    noisy = pareto_front(res, ["speedup:max", "accuracy:max"])
    exact = pareto_front(res, ["speedup:max", "accuracy:max"], noise_aware=False)
    assert set(exact.front["trial_number"]) == {1, 2}
    # Within the spread, 3.2x is not a win over 3.0x: the more accurate point dominates.
    assert set(noisy.front["trial_number"]) == {1}


def test_report_shows_what_verify_found(tmp_path: Path) -> None:
    import json

    from analysis.report import write_report

    write_rows(tmp_path / "results" / "t.parquet", ROWS)
    (tmp_path / "verify.json").write_text(json.dumps({"tolerance": 0.1, "trials": [
        {"trial_number": 2, "recorded_speedup": 5.0, "remeasured_speedup": 3.0, "within_tolerance": False},
        {"trial_number": -1, "error": "no format could export it"}]}))
    paths = write_report(tmp_path, tmp_path / "r" / "report.html")
    md = paths.markdown.read_text()
    front = [ln for ln in md.splitlines() if ln.startswith("| cpu-a | 2 |")]
    assert front and front[0].endswith("| MISMATCH 3.00x (rec 5.00x) |"), md[:3000]

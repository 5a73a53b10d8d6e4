"""Config validation, the conditional space and the CLI's usage errors (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from optimizers.errors import ConfigError
from sweep.cli import app
from sweep.config import SweepConfig, load_config, parse_config, redact
from sweep.space import grid, suggest, to_recipe

BASE = {"name": "t", "model": "tiny:model", "example_inputs": "tiny:example_inputs"}


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"bogus": 1}, r"config key 'bogus': unknown key"),
        ({"sampler": "annealing"}, r"config key 'sampler': must be one of 'tpe', 'nsga2', 'random' or 'grid'"),
        ({"n_trials": 0}, r"config key 'n_trials': must be greater than or equal to 1"),
        ({"n_trials": "many"}, r"config key 'n_trials'.*valid integer"),
        ({"device": "tpu"}, r"config key 'device': must be one of 'cpu', 'cuda' or 'auto'"),
        ({"model": "no_colon"}, r"config key 'model': must be a 'module:attr' reference"),
        ({"search": {"precision": ["fp8"]}}, r"config key 'search.precision': must be one of 'fp32', 'fp16', 'bf16'; got 'fp8'"),
        ({"search": {"quantization_bits": [3]}}, r"config key 'search.quantization_bits': must be one of 4, 8, 16; got 3"),
        ({"search": {"pruning_method": ["none", "2:4"]}}, r"config key 'search.pruning_method': must be one of 'none', "
         r"'magnitude', 'random', 'global_magnitude', 'structured', 'lowrank'; got '2:4'"),
        ({"search": {"quantization_type": ["fp8"]}}, r"config key 'search.quantization_type': must be one of 'none', "
         r"'dynamic', 'static', 'weight_only'; got 'fp8'"),
        ({"search": {"pruning_method": []}}, r"config key 'search.pruning_method': must list at least one"),
        ({"search": {"pruning_amount": {"low": 0.6, "high": 0.2}}}, r"config key 'search.pruning_amount'.*low"),
        ({"search": {"pruning_amount": {"low": 0.1, "high": 1.5}}}, r"config key 'search.pruning_amount"),
        ({"search": {"colour": ["red"]}}, r"config key 'search.colour': unknown key"),
        ({"objectives": {"vibes": "maximize"}}, r"config key 'objectives': unknown metric 'vibes'"),
        ({"objectives": {"accuracy": "up"}}, r"config key 'objectives.accuracy': must be one of 'minimize' or 'maximize'"),
        ({"constraints": {"max_vibes": 1}}, r"config key 'constraints': unknown constraint 'max_vibes'"),
        ({"resources": {"cpus_per_trial": 0}}, r"config key 'resources.cpus_per_trial': must be greater than 0"),
        ({"trial_timeout_s": -1}, r"config key 'trial_timeout_s'"),
        ({"pruning": {"importance": "vibes"}}, r"config key 'pruning': PruningConfig.importance must be one of"),
        ({"pruning": {"unknown_opt": 1}}, r"config key 'pruning': unknown pruning option 'unknown_opt'"),
        ({"out": "ftp://host/runs"}, r"config key 'out': URI scheme must be one of s3, gs"),
        ({"out": "s3://bucket/runs"}, r"config key 'storage': required when 'out' is an object-store URI"),
    ],
)
def test_bad_config_names_the_key(patch: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_config({**BASE, **patch})
    assert "\n" not in str(info.value)


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match=r"config key 'model': Field required"):
        parse_config({"name": "x", "example_inputs": "a:b"})


def test_defaults_and_overrides() -> None:
    cfg = parse_config(BASE, {"n_trials": 7, "sampler": None})
    assert cfg.n_trials == 7 and cfg.sampler == "tpe"
    assert cfg.objectives == {"latency_ms": "minimize", "size_bytes": "minimize", "accuracy": "maximize"}


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\nmodel: a:b\nexample_inputs: a:c\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_redact() -> None:
    assert redact("postgresql://bob:hunter2@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert "hunter2" not in str(redact("s3://AKIA:hunter2@bucket/path"))
    assert redact("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


def _space(**search):  # type: ignore[no-untyped-def]
    return SweepConfig.model_validate({**BASE, "search": search}).search


def test_conditional_space_has_no_amount_without_pruning_and_no_bits_without_quantization() -> None:
    space = _space(pruning_method=["none", "magnitude"], quantization_type=["none", "dynamic"],
                   quantization_bits=[8, 16], precision=["fp32", "bf16"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        params = suggest(trial, space)
        assert ("pruning_amount" in params) == (params["pruning_method"] != "none")
        assert ("quantization_bits" in params) == (params["quantization_type"] != "none")
        assert set(trial.params) <= set(params)
        study.tell(trial, 0.0)
        seen.add(to_recipe(params).key())
    assert len(seen) > 5


def test_grid_enumerates_distinct_valid_points() -> None:
    space = _space(pruning_method=["none", "magnitude"], pruning_amount={"low": 0.2, "high": 0.4, "step": 0.1},
                   quantization_type=["none", "dynamic"], quantization_bits=[8, 16], precision=["fp32", "bf16"])
    points = grid(space)
    keys = {to_recipe(p).key() for p in points}
    # (1 none + 3 amounts) x (1 none + 2 bits) x 2 precisions
    assert len(points) == len(keys) == 4 * 3 * 2


def test_cli_unknown_technique_is_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "search": {"pruning_method": ["none", "sparsegpt"]}}))
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == ("error: config key 'search.pruning_method': must be one of 'none', 'magnitude', "
                                  "'random', 'global_magnitude', 'structured', 'lowrank'; got 'sparsegpt'")


def test_cli_validate_bad_config_exits_2_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "sampler": "nope"}))
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "sampler" in res.output


def test_cli_validate_ok_resolves_references(tmp_path: Path) -> None:
    models = Path(__file__).parent / "sweep_models"
    name = f"usermodel_{tmp_path.name.replace('-', '_')}"  # unique: not already in sys.modules
    refs = {"model": f"{name}:model", "example_inputs": f"{name}:example_inputs", "evaluate": f"{name}:evaluate"}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, **refs}))
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 2 and name in res.output  # not importable yet
    (tmp_path / f"{name}.py").write_text((models / "tiny.py").read_text())
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 0, res.output
    assert "ok: t" in res.output


def test_cli_run_bad_config_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "n_trials": -3, "out": str(out)}))
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(p)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "n_trials" in proc.stderr
    assert not out.exists()


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "cannot read config" in res.output


def test_cli_run_model_factory_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "def model():\n    raise RuntimeError('checkpoint missing')\n\ndef inputs():\n    return ()\n")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "model": "broken:model", "example_inputs": "broken:inputs",
                                 "out": str(tmp_path / "out")}))
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(p), "--quiet"], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert "config key 'model': broken:model() raised RuntimeError: checkpoint missing" in proc.stderr


def test_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(p)


def test_cli_run_typo_in_evaluate_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "okmod.py").write_text((Path(__file__).parent / "sweep_models" / "tiny.py").read_text())
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "model": "okmod:model", "example_inputs": "okmod:example_inputs",
                                 "evaluate": "okmod:evaluat", "out": str(tmp_path / "out")}))
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(p), "--quiet"], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and "config key 'evaluate'" in proc.stderr


def test_quantization_options_are_validated() -> None:
    cfg = parse_config({**BASE, "quantization": {"reduce_range": False, "per_channel": True}})
    assert cfg.quantization == {"reduce_range": False, "per_channel": True}
    with pytest.raises(ConfigError, match=r"config key 'quantization': unknown quantization option 'bits'"):
        parse_config({**BASE, "quantization": {"bits": 4}})
    with pytest.raises(ConfigError, match=r"config key 'quantization': QuantizationConfig.engine must be one of"):
        parse_config({**BASE, "quantization": {"engine": "tpu"}})


def test_a_yaml_alias_bomb_is_refused_in_one_line_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [none, magnitude]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10^8 values
    lines += ["name: bomb", 'model: "m:f"', 'example_inputs: "m:g"', "search: {pruning_method: *a8}"]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(app, ["validate", str(p)])  # the count stops at the limit: no expansion
    assert res.exit_code == 2
    assert res.output.strip() == (f"error: config {str(p)!r} expands to more than 100000 values (YAML aliases "
                                  "nested in aliases?); write the lists out")

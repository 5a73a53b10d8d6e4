"""Export: re-apply a trial's recipe, write a program artifact, load it without the user's code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import typer
from analysis_fixtures import write_rows
from typer.testing import CliRunner

from analysis import AnalysisError
from analysis.cli import register
from analysis.export import FORMATS, ExportResult, export_trial, load_artifact

REPO = Path(__file__).resolve().parents[1]

USER_CODE = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def forward(self, x):
            return self.net(x)

    def model():
        torch.manual_seed(0)
        return TinyNet().eval()

    def example_inputs():
        return (torch.randn(8, 16, generator=torch.Generator().manual_seed(1)),)

    def calibration():
        g = torch.Generator().manual_seed(2)
        return [(torch.randn(8, 16, generator=g),) for _ in range(4)]

    def evaluate(m):
        m.eval()
        x = example_inputs()[0]
        with torch.no_grad():
            return float((m(x).argmax(1) == model()(x).argmax(1)).float().mean())
''')

RECIPES = {
    0: {"quantization_type": "dynamic", "quantization_bits": 8},
    1: {"quantization_type": "static", "quantization_bits": 8},
    2: {"pruning_method": "magnitude", "pruning_amount": 0.5},
    3: {},
}


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    cfg = root / "config"
    cfg.mkdir()
    (cfg / "tinyuser.py").write_text(USER_CODE)
    out = root / "out"
    (out / "results").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({
        "config_dir": str(cfg), "model": "tinyuser:model", "example_inputs": "tinyuser:example_inputs",
        "evaluate": "tinyuser:evaluate", "calibration": "tinyuser:calibration", "device": "cpu",
        "pruning": {},
    }))
    rows = [{"trial_number": n, "latency_ms": 0.1, "accuracy": 1.0, "speedup": 50.0 if n == 3 else 1.0, **r}
            for n, r in RECIPES.items()]
    rows.append({"trial_number": 9, "state": "FAIL", "latency_ms": None})
    write_rows(out / "results" / "trials.parquet", rows)
    return out


def _reference(out: Path, trial: int) -> torch.Tensor:
    """The optimized model built directly with the recipe, as the sweep would."""
    sys.path.insert(0, json.loads((out / "sweep.json").read_text())["config_dir"])
    try:
        import tinyuser  # type: ignore[import-not-found]

        from optimizers.recipe import Recipe, apply_recipe

        fields = {"pruning_method": "none", "quantization_type": "none", "precision": "fp32",
                  **RECIPES[trial]}
        torch.manual_seed(0)
        m, _ = apply_recipe(tinyuser.model(), Recipe.from_row(fields),
                            example_inputs=tinyuser.example_inputs(),
                            calibration=tinyuser.calibration(), evaluate=tinyuser.evaluate)
        with torch.no_grad():
            return m(*tinyuser.example_inputs())
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def exported(sweep_out: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, ExportResult]:
    d = tmp_path_factory.mktemp("artifacts")
    return {t: export_trial(sweep_out, t, d / f"trial{t}.pt2", measure=False, trust=True) for t in RECIPES}


@pytest.mark.parametrize("trial", sorted(RECIPES))
def test_sidecar_records_format_recipe_and_metrics(exported: dict[int, ExportResult], trial: int) -> None:
    res = exported[trial]
    side = json.loads(res.sidecar.read_text())
    assert side["format"] in FORMATS and side["format"] == res.format
    assert side["recipe"]["quantization_type"] == RECIPES[trial].get("quantization_type", "none")
    assert side["recorded"]["latency_ms"] == 0.1 and side["torch_version"] == torch.__version__
    assert side["max_abs_diff"] <= 1e-4 and side["dynamic_batch"] is True
    if RECIPES[trial].get("quantization_type") in ("dynamic", "static"):
        # torch.ao packed params do not survive torch.export: the technique asks for TorchScript first.
        assert res.format == "torchscript" and side["load"] == "torch.jit.load(path)"


def test_artifacts_load_in_a_fresh_process_without_user_code(
    exported: dict[int, ExportResult], sweep_out: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "x.pt"
    torch.save(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), inputs)
    arts = {t: str(r.path) for t, r in exported.items()}
    result = tmp_path / "y.pt"
    code = ("import sys, torch; from analysis.export import load_artifact; "
            f"x = torch.load({str(inputs)!r}); arts = {arts!r}; "
            "ms = {t: load_artifact(p) for t, p in arts.items()}; "
            "ys = {t: m(x) for t, m in ms.items()}; "
            "assert all(m(x[:3]).shape[0] == 3 for m in ms.values()), 'batch size must be free'; "
            f"torch.save(ys, {str(result)!r}); "
            "assert 'tinyuser' not in sys.modules")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    got = torch.load(result)
    for trial in RECIPES:
        ref = _reference(sweep_out, trial)
        assert torch.allclose(got[trial], ref, atol=1e-4, rtol=1e-4), (trial, (got[trial] - ref).abs().max())


def test_export_cli_prints_recorded_and_measured(sweep_out: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["export", str(sweep_out), "--trial", "3", "--out",
                                   str(tmp_path / "a.pt2"), "--trust"])
    assert res.exit_code == 0, res.output
    assert "recorded" in res.output and "latency_ms" in res.output and "accuracy" in res.output
    measured = json.loads((tmp_path / "a.pt2.json").read_text())["measured"]
    assert measured["latency_ms"] > 0 and measured["accuracy"] == 1.0
    loaded = load_artifact(tmp_path / "a.pt2")
    assert loaded.eval() is loaded  # user evaluate() functions call .eval(); it must not raise


@pytest.mark.parametrize(("trial", "match"), [(42, "trial 42 is not in"), (9, "did not complete")])
def test_export_rejects_bad_trials(sweep_out: Path, tmp_path: Path, trial: int, match: str) -> None:
    with pytest.raises(AnalysisError, match=match):
        export_trial(sweep_out, trial, tmp_path / "x.pt2", trust=True)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["export", str(sweep_out), "--trial", str(trial), "--out",
                                   str(tmp_path / "x.pt2"), "--trust"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.output


def test_export_needs_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="no sweep.json"):
        export_trial(tmp_path, 0, tmp_path / "x.pt2")


def test_a_results_folder_is_not_trusted_by_default(sweep_out: Path, tmp_path: Path) -> None:
    """A crafted sweep.json must not make export import its code: one line, exit 2."""
    with pytest.raises(AnalysisError, match=r"export would import the code .*sweep.json names \(model 'tinyuser:model'"
                                            r".*pass --config YOUR_SWEEP.yaml, or --trust"):
        export_trial(sweep_out, 3, tmp_path / "x.pt2")
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["export", str(sweep_out), "--trial", "3", "--out", str(tmp_path / "x.pt2")])
    assert res.exit_code == 2 and "Traceback" not in res.output and not (tmp_path / "x.pt2").exists()


def test_config_must_name_the_sweeps_model(sweep_out: Path, tmp_path: Path) -> None:
    cfg_dir = json.loads((sweep_out / "sweep.json").read_text())["config_dir"]
    good = Path(cfg_dir) / "sweep.yaml"
    good.write_text("name: t\nmodel: tinyuser:model\nexample_inputs: tinyuser:example_inputs\n"
                    "evaluate: tinyuser:evaluate\ncalibration: tinyuser:calibration\n")
    res = export_trial(sweep_out, 3, tmp_path / "ok.pt2", measure=False, config=good)
    assert res.path.is_file()
    evil = tmp_path / "other.yaml"
    evil.write_text("name: t\nmodel: os:system\nexample_inputs: tinyuser:example_inputs\n")
    with pytest.raises(AnalysisError, match=r"model 'os:system' differs from the sweep's 'tinyuser:model'"):
        export_trial(sweep_out, 3, tmp_path / "no.pt2", config=evil)


def test_export_front_writes_every_front_model(sweep_out: Path, tmp_path: Path) -> None:
    from analysis.verify import export_front, front_trials

    written = export_front(sweep_out, tmp_path / "front", trust=True)
    assert sorted(int(p.path.stem.split("-")[1]) for p in written) == sorted(front_trials(sweep_out))
    assert all(Path(f"{p.path}.json").is_file() for p in written)


def test_verify_retimes_in_a_fresh_process_and_flags_disagreement(sweep_out: Path) -> None:
    """The fixture's recorded speedups are made up (1.0 and 50.0): 50x cannot re-measure within 10%."""
    from analysis.verify import verify

    records = verify(sweep_out, [0, 3], trust=True, rounds=2, min_run_time_s=0.1)
    by = {r["trial_number"]: r for r in records}
    assert set(by) == {0, 3} and all("error" not in r for r in records), records
    assert all(r["remeasured_speedup"] > 0 and r["format"] for r in records)
    assert by[3]["within_tolerance"] is False and by[3]["difference"] < -0.5
    saved = json.loads((sweep_out / "verify.json").read_text())
    assert [t["trial_number"] for t in saved["trials"]] == [0, 3]


@pytest.mark.parametrize(("args", "match"), [
    (["--trial", "42"], "--trial 42 is not in"),
    (["--tolerance", "0"], "--tolerance must be > 0; got 0.0"),
])
def test_verify_bad_input_is_one_line(sweep_out: Path, args: list[str], match: str) -> None:
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["verify", str(sweep_out), "--trust", *args])
    assert res.exit_code == 2 and match in res.stderr and "Traceback" not in res.output


def test_verify_a_folder_without_results(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["verify", str(tmp_path), "--trust"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.output

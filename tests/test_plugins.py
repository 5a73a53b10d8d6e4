"""A technique from outside the tree: a module the config names under ``plugins``.

It registers itself when imported (driver, every worker, ``optsweep export``), so the sweep
searches it without an edit to ``optimizers/``, ``sweep/`` or ``analysis/``. Each command runs
in its own process: registering a plug-in here would change this process's registry for the
other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parent / "sweep_models"
OPTSWEEP = [sys.executable, "-m", "sweep.cli"]

PLUGIN = textwrap.dedent('''
    """Row top-k: in every Linear keep the largest weights of each output row (an N:M stand-in)."""
    import copy

    import torch
    from torch import nn

    from optimizers.techniques import StageInfo, Technique, register


    @register
    class RowTopK(Technique):
        name = "row_topk"
        stage = "prune"
        selector = {"pruning_method": "row_topk"}
        uses = ("pruning_amount",)
        columns = ("sparsity",)

        def _apply(self, model, params, ctx):
            out = copy.deepcopy(model)
            amount = float(params["pruning_amount"])
            zeros = total = 0
            with torch.no_grad():
                for m in out.modules():
                    if isinstance(m, nn.Linear):
                        k = int(m.weight.shape[1] * amount)
                        if k:
                            m.weight.scatter_(1, m.weight.abs().argsort(dim=1)[:, :k], 0.0)
                        zeros += int((m.weight == 0).sum())
                        total += m.weight.numel()
            sparsity = zeros / total
            changed = sparsity > 0
            effective = {"pruning_method": self.name, "pruning_amount": amount} if changed else {}
            details = {"sparsity": sparsity, "speedup_expected": False, "rows_kept_per_layer": 1 - amount}
            return out, StageInfo(self.stage, self.name, changed, effective, details, "" if changed else "no-op")
''')


def _setup(tmp_path: Path, **over: object) -> Path:
    (tmp_path / "row_topk_plugin.py").write_text(PLUGIN)
    (tmp_path / "tiny.py").write_text((MODELS / "tiny.py").read_text())
    data = {
        "name": "plug", "model": "tiny:model", "example_inputs": "tiny:example_inputs", "evaluate": "tiny:evaluate",
        "plugins": ["row_topk_plugin"],
        "search": {"pruning_method": ["none", "row_topk"], "pruning_amount": [0.25, 0.5], "precision": ["fp32"]},
        "n_trials": 2, "sampler": "grid", "workers": 1, "trial_timeout_s": 120, "out": "out",
        "objectives": {"latency_ms": "minimize", "accuracy": "maximize"},
        "measure": {"warmup": 1, "min_run_time_s": 0.05, "rounds": 2},
    }
    data.update(over)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*OPTSWEEP, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_a_plugin_extends_what_a_config_may_name(tmp_path: Path) -> None:
    ok = _cli("validate", str(_setup(tmp_path)))
    assert ok.returncode == 0, ok.stderr
    without = _cli("validate", str(_setup(tmp_path, plugins=[])))
    assert without.returncode == 2
    assert without.stderr.strip() == (
        "error: config key 'search.pruning_method': must be one of 'none', 'magnitude', 'random', "
        "'global_magnitude', 'structured', 'lowrank'; got 'row_topk'")


@pytest.mark.parametrize(("plugins", "message"), [
    (["no_such_techniques"], "error: config key 'plugins': cannot import 'no_such_techniques': "
                             "ModuleNotFoundError: No module named 'no_such_techniques'; got ['no_such_techniques']"),
    (["os; rm -rf"], "error: config key 'plugins': 'os; rm -rf' is not a module name (like my_techniques or "
                     "pkg.techniques); got ['os; rm -rf']"),
    (["broken_plugin"], "error: config key 'plugins': cannot import 'broken_plugin': RuntimeError: "
                        "needs a GPU driver; got ['broken_plugin']"),
    ("row_topk_plugin", "error: config key 'plugins': must be a valid list; got 'row_topk_plugin'"),
])
def test_a_bad_plugin_is_one_line_exit_2(tmp_path: Path, plugins: object, message: str) -> None:
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    res = _cli("validate", str(_setup(tmp_path, plugins=plugins)))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == message


@pytest.mark.ray
def test_a_sweep_searches_and_exports_a_plugin_technique(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    run = _cli("run", str(cfg), "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "out" / "results")
    mine = df[(df.pruning_method == "row_topk") & (df.state == "COMPLETE")]
    assert len(mine) == 2, df[["trial_number", "state", "pruning_method", "error"]]  # both amounts, in workers
    assert (mine.sparsity > 0.2).all() and mine.latency_ms.notna().all()
    details = json.loads(mine.iloc[0].stages_json)[0]
    assert details["technique"] == "row_topk" and "rows_kept_per_layer" in details["details"]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["plugins"] == ["row_topk_plugin"]
    trial = int(mine.iloc[0].trial_number)
    art = tmp_path / "m.pt2"
    exp = _cli("export", str(tmp_path / "out"), "--trial", str(trial), "--out", str(art), "--config", str(cfg),
               "--no-measure")
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert art.exists() and json.loads(Path(f"{art}.json").read_text())["recipe"]["pruning_method"] == "row_topk"

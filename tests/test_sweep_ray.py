"""End-to-end sweeps on a real local Ray: rows, failures, dedup and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sweep.config import parse_config
from sweep.driver import run_sweep

pytestmark = pytest.mark.ray
MODELS = Path(__file__).parent / "sweep_models"


@pytest.fixture(scope="module", autouse=True)
def ray_session():  # type: ignore[no-untyped-def]
    import ray

    from sweep.executor import init_ray

    init_ray(None, str(MODELS))
    yield
    ray.shutdown()


def config(tmp_path: Path, **over):  # type: ignore[no-untyped-def]
    data = {
        "name": "t", "model": "tiny:model", "example_inputs": "tiny:example_inputs", "evaluate": "tiny:evaluate",
        "calibration": "tiny:calibration",
        "search": {"pruning_method": ["none", "magnitude"], "pruning_amount": [0.5],
                   "quantization_type": ["none", "dynamic"], "quantization_bits": [8],
                   "precision": ["fp32", "fp16"]},
        "n_trials": 6, "sampler": "grid", "workers": 2, "trial_timeout_s": 60, "out": str(tmp_path / "out"),
        "measure": {"warmup": 1, "min_run_time_s": 0.02},
    }
    data.update(over)
    return parse_config(data)


def rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results")


def test_sweep_runs_to_n_trials_with_columns(tmp_path: Path) -> None:
    cfg = config(tmp_path, sampler="tpe", n_trials=8, constraints={"max_accuracy_drop": 0.05})
    summary = run_sweep(cfg, MODELS, progress=False)
    df = rows(tmp_path / "out")
    trials = df[df.trial_number >= 0]
    distinct = trials[trials.duplicate_of.isna()]
    # n_trials counts distinct configurations: 8 of this 8-point space, unless no-op stages make
    # some of its points the same model (then the space is exhausted sooner, and says so).
    assert (len(distinct) == 8 or summary.exhausted) and trials.trial_number.is_unique
    assert (df.trial_number == -1).sum() == 1
    assert summary.n_rows == len(trials) and summary.distinct == len(distinct)
    done = trials[trials.state == "COMPLETE"]
    assert len(done) >= 1
    assert (done.baseline_latency_ms > 0).all() and done.speedup.notna().all() and done.feasible.notna().all()
    import pyarrow.parquet as pq

    meta = pq.read_schema(next((tmp_path / "out" / "results").glob("trial-*.parquet"))).metadata
    assert b"optsweep.objectives" in meta and b"latency_ms" in meta[b"optsweep.objectives"]
    assert (tmp_path / "out" / "sweep.json").exists()


def test_identical_configurations_are_not_remeasured(tmp_path: Path) -> None:
    # 'none' pruning in a 2-point space: random sampling must repeat configurations.
    cfg = config(tmp_path, sampler="random", n_trials=8,
                 search={"pruning_method": ["none"], "quantization_type": ["none", "dynamic"],
                         "quantization_bits": [8], "precision": ["fp32"]})
    summary = run_sweep(cfg, MODELS, progress=False)
    df = rows(tmp_path / "out")
    trials = df[df.trial_number >= 0]
    measured = trials[trials.duplicate_of.isna()]
    # Repeats cost no budget. Of the 2 points, 'none' is the untouched model, measured as the
    # baseline row: only 'dynamic' is new, then the space is exhausted and the sweep ends early.
    assert len(measured) == 1 and summary.exhausted and summary.distinct == 1
    keys = measured.quantization_type.tolist()
    assert len(keys) == len(set(keys))  # each distinct config measured once
    dups = trials[trials.duplicate_of.notna()]
    assert len(dups) >= 1
    for _, d in dups.iterrows():
        orig = df[df.trial_number == d.duplicate_of].iloc[0]
        assert d.latency_ms == orig.latency_ms and d.quantization_type == orig.quantization_type


def test_raise_hang_and_dead_worker_are_rows_and_sweep_finishes(tmp_path: Path) -> None:
    cfg = config(tmp_path, evaluate="tiny:evaluate_chaos", n_trials=8, trial_timeout_s=8, max_retries=1)
    summary = run_sweep(cfg, MODELS, progress=False)
    df = rows(tmp_path / "out")
    trials = df[df.trial_number >= 0]
    assert (len(trials[trials.duplicate_of.isna()]) == 8 or summary.exhausted) and not summary.interrupted
    errs = set(trials.error_type.dropna())
    assert {"ValueError", "TIMEOUT", "WORKER_DIED"} <= errs, trials[["state", "error_type", "error"]]
    died = trials[trials.error_type == "WORKER_DIED"]
    assert (died.attempts == 2).all()  # retried once, then recorded
    assert (trials.state == "COMPLETE").sum() >= 1


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGINT],
                         ids=["sigkill", "ctrl-c"])  # SIGKILL: 55 s, run by .ci/run after the default suite
def test_resume_after_driver_stops(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    cfg_path = tmp_path / "sweep.yaml"
    data = {
        "name": "resume", "model": "tiny:model", "example_inputs": "tiny:example_inputs",
        "evaluate": "tiny:evaluate",
        "search": {"pruning_method": ["none", "magnitude", "random"], "pruning_amount": {"low": 0.1, "high": 0.9,
                                                                                          "step": 0.1},
                   "precision": ["fp32", "fp16"]},
        "n_trials": 12, "sampler": "random", "workers": 1, "out": str(out),
        "measure": {"warmup": 1, "min_run_time_s": 0.3},
    }
    cfg_path.write_text(yaml.safe_dump(data))
    (tmp_path / "tiny.py").write_text((MODELS / "tiny.py").read_text())
    cmd = [sys.executable, "-m", "sweep.cli", "run", str(cfg_path), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        n = len(list((out / "results").glob("trial-*.parquet"))) if (out / "results").exists() else 0
        if n >= 3:
            break
        time.sleep(0.2)
    os.kill(proc.pid, sig)  # the driver dies (SIGKILL) or is interrupted (Ctrl-C) mid-sweep
    rc = proc.wait(timeout=120)
    if sig == signal.SIGINT:
        assert rc == 130, proc.stderr.read().decode()[-2000:] if proc.stderr else rc
    partial = len(list((out / "results").glob("trial-*.parquet")))
    assert 3 <= partial < 12
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    df = rows(out)
    trials = df[df.trial_number >= 0]
    assert len(trials[trials.duplicate_of.isna()]) == 12 and trials.trial_number.is_unique
    assert (df.trial_number == -1).sum() == 1
    for f in (out / "results").glob("*.parquet"):
        pd.read_parquet(f)  # every visible file is complete


def test_sweep_writes_rows_to_an_object_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`out: s3://...`: the driver uploads one object per row; analysis reads the URI back."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    from analysis.dataset import load_results

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="bkt")
        uri = f"s3://bkt/runs/t?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
        cfg = config(tmp_path, out=uri, storage=f"sqlite:///{tmp_path / 'study.db'}", n_trials=4)
        summary = run_sweep(cfg, MODELS, progress=False)
        assert summary.distinct == 4
        df = load_results(uri).frame
        trials = df[df.trial_number >= 0]
        assert sorted(df.trial_number.tolist())[0] == -1 and trials.duplicate_of.isna().sum() == 4
        again = run_sweep(cfg, MODELS, progress=False)  # resume: nothing left to run, nothing duplicated
        assert again.n_rows == summary.n_rows and again.distinct == 4
    finally:
        server.stop()


def test_repeats_cost_no_budget_and_resume_stays_exact(tmp_path: Path) -> None:
    """TPE in a 4-point space (one of them the baseline's) with n_trials 3: 3 distinct
    configurations, repeats told the known values; resuming adds nothing; raising n_trials past
    the space ends early, exhausted."""
    search = {"pruning_method": ["none", "magnitude"], "pruning_amount": [0.5],
              "quantization_type": ["none"], "precision": ["fp32", "fp16"]}
    cfg = config(tmp_path, sampler="tpe", n_trials=3, search=search)
    first = run_sweep(cfg, MODELS, progress=False)
    trials = rows(tmp_path / "out").query("trial_number >= 0")
    assert first.distinct == 3 == int(trials.duplicate_of.isna().sum()) and not first.exhausted
    again = run_sweep(cfg, MODELS, progress=False)
    assert again.distinct == 3 and again.n_rows == first.n_rows  # exact: nothing re-run, nothing added
    bigger = run_sweep(config(tmp_path, sampler="tpe", n_trials=10, search=search), MODELS, progress=False)
    trials = rows(tmp_path / "out").query("trial_number >= 0")
    assert bigger.exhausted and bigger.distinct == int(trials.duplicate_of.isna().sum()) <= 4
    measured = trials[trials.duplicate_of.isna()]
    assert not measured.effective_recipe.duplicated().any()  # every distinct row is a distinct model


def test_new_settings_start_a_segment_with_its_own_baseline(tmp_path: Path) -> None:
    from analysis import load_results, pareto_front
    from sweep.errors import ConfigError

    out = tmp_path / "out"
    run_sweep(config(tmp_path, n_trials=3, workers=1), MODELS, progress=False)
    manifest, files = (out / "sweep.json").read_bytes(), sorted(p.name for p in (out / "results").iterdir())
    changed = config(tmp_path, n_trials=3, workers=1, measure={"warmup": 1, "min_run_time_s": 0.03})
    with pytest.raises(ConfigError, match=r"^config changed since this out was started: measure\.min_run_time_s "
                                          r"\(0\.02 -> 0\.03\);.* pass --new-settings to start a new segment$"):
        run_sweep(changed, MODELS, progress=False)
    assert (out / "sweep.json").read_bytes() == manifest  # refused before any write
    assert sorted(p.name for p in (out / "results").iterdir()) == files

    run_sweep(changed, MODELS, progress=False, new_settings=True)
    df = rows(out)
    assert df.segment.notna().all() and df.segment.nunique() == 2
    base = df[df.trial_number == -1].set_index("segment")
    assert len(base) == 2  # each segment measured its own untouched model
    names = sorted(p.name for p in (out / "results").glob("baseline*.parquet"))
    assert len(names) == 2 and "baseline.parquet" in names and any(n.startswith("baseline-") for n in names)
    trials = df[df.trial_number >= 0]
    for seg, group in trials.groupby("segment"):
        assert (group.baseline_latency_ms == base.loc[seg, "latency_ms"]).all()  # relative to its own
        assert group.duplicate_of.isna().sum() == 3  # n_trials counts this segment's configurations
        # a repeat points at a row of its own segment (-1: its own baseline), never another's
        assert group.duplicate_of.dropna().isin([-1, *group.trial_number]).all()
    pr = pareto_front(load_results(out))
    groups = pr.table.groupby("group")["is_baseline"].sum()
    assert len(groups) == 2 and (groups == 1).all()


def test_refused_configurations_cost_no_budget(tmp_path: Path) -> None:
    """int4 weight-only has no CPU kernel: those points get INFEASIBLE rows naming the reason,
    but n_trials counts what was measured, so the sweep runs out of runnable points (exhausted)
    instead of spending its budget on refusals."""
    cfg = config(tmp_path, n_trials=3, workers=1, sampler="random",
                 search={"pruning_method": ["none", "magnitude"], "pruning_amount": [0.5],
                         "quantization_type": ["none", "weight_only"], "quantization_bits": [4],
                         "precision": ["fp32"]})
    summary = run_sweep(cfg, MODELS, progress=False)
    df = rows(tmp_path / "out")
    trials = df[df.trial_number >= 0]
    refused = trials[trials.state == "INFEASIBLE"]
    assert len(refused) >= 1 and refused.error.str.contains("int4").all()
    measured = trials[trials.duplicate_of.isna() & (trials.state != "INFEASIBLE")]
    assert summary.distinct == len(measured) == 1  # the one runnable point besides the baseline's
    assert summary.infeasible == len(refused[refused.duplicate_of.isna()]) == 2
    assert summary.exhausted


def test_a_space_with_nothing_runnable_ends_instead_of_filling_the_folder(tmp_path: Path) -> None:
    """Every point refused (int4 weight-only on CPU), continuous amounts: each proposal is a new
    configuration, so only the check that nothing can run here stops the sweep."""
    cfg = config(tmp_path, n_trials=5, workers=1, sampler="random",
                 search={"pruning_method": ["magnitude"], "pruning_amount": {"low": 0.1, "high": 0.9},
                         "quantization_type": ["weight_only"], "quantization_bits": [4], "precision": ["fp32"]})
    summary = run_sweep(cfg, MODELS, progress=False)
    trials = rows(tmp_path / "out").query("trial_number >= 0")
    assert summary.exhausted and summary.distinct == 0
    assert (trials.state == "INFEASIBLE").all() and len(trials) <= 8 + 1  # MAX_REPEATS refusals, then it stops

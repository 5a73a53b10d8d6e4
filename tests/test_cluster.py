"""``optsweep submit`` / ``optsweep jobs`` against a real local Ray head, and loopback checks.

The head is started once per session with ``ray start --head`` on 127.0.0.1, token auth on and a
private ``--temp-dir``. Teardown kills exactly the processes of that head (found by its temp dir
and GCS port): ``ray stop`` would also stop every other Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest

from sweep.cluster import build_submission, redact_text, resolve_submit_out

pytestmark = pytest.mark.ray

VENV_BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(tags: list[str]) -> dict[int, psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(t in cmd for t in tags):
            procs[p.pid] = p
            with contextlib.suppress(psutil.Error):
                procs.update({c.pid: c for c in p.children(recursive=True)})
    return procs


def listeners(procs: dict[int, psutil.Process]) -> list[tuple[str, str, int]]:
    """``(process name, ip, port)`` of every listening TCP socket of ``procs``."""
    out = []
    for p in procs.values():
        try:
            name = p.name()
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        out += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


@dataclass
class Head:
    address: str
    env: dict[str, str]
    tags: list[str]


@pytest.fixture(scope="session")
def ray_head() -> Iterator[Head]:
    if shutil.which("ray", path=str(VENV_BIN)) is None:
        pytest.skip("the 'ray' command is not installed next to this Python")
    temp = tempfile.mkdtemp(prefix="osw-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dash, client = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           # Ray's single-host mode: keeps 127.0.0.1 as the node IP, so every server stays on loopback.
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--num-cpus", "2", "--temp-dir", temp, "--disable-usage-stats"]
    tags = [temp, f"127.0.0.1:{gcs}"]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        # The client side: the token but no RAY_AUTH_MODE, as a user's shell would have it.
        client_env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        yield Head(address=f"http://127.0.0.1:{dash}", env=client_env, tags=tags)
    finally:
        procs = _tree(tags)
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(temp, ignore_errors=True)


TINY_MODEL = """
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

def example_inputs():
    torch.manual_seed(1)
    return (torch.randn(8, 32),)
"""


def _sweep(tmp: Path, n_trials: int, *, out: str = "runs/tiny", min_run_time_s: float = 0.05,
           name: str = "tiny") -> Path:
    (tmp / "tinymodel.py").write_text(TINY_MODEL)
    cfg = tmp / "sweep.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: {name}
        model: "tinymodel:model"
        example_inputs: "tinymodel:example_inputs"
        search:
          pruning_method: [none, magnitude]
          pruning_amount: {{low: 0.1, high: 0.8, step: 0.1}}
          quantization_type: [none, dynamic]
          precision: [fp32, bf16]
        objectives: {{latency_ms: minimize, size_bytes: minimize}}
        sampler: random
        n_trials: {n_trials}
        workers: 1
        trial_timeout_s: 120
        measure: {{warmup: 1, min_run_time_s: {min_run_time_s}, pin_cores: false}}
        out: {out}
    """))
    return cfg


def optsweep(head: Head, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "optsweep"), *args, "--address", head.address], env=head.env,
                          capture_output=True, text=True, timeout=timeout)


def _rows(out: Path) -> pd.DataFrame:
    files = sorted((out / "results").glob("trial-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


# -- unit: packaging --------------------------------------------------------------------------
def test_build_submission_ships_code_and_resolves_relative_out(tmp_path: Path) -> None:
    cfg = _sweep(tmp_path, 4)
    sub = build_submission(cfg)
    assert sub["out"] == str(tmp_path / "runs" / "tiny")  # absolute: the job's copy of the dir is temporary
    assert sub["entrypoint"] == "python -m sweep.cli run sweep.yaml --address auto"  # out: never on the command line
    env = sub["runtime_env"]
    assert env["env_vars"]["OPTSWEEP_OUT"] == sub["out"]
    assert env["working_dir"] == str(tmp_path)
    assert {Path(p).name for p in env["py_modules"]} == {"optimizers", "sweep", "analysis"}
    assert "/runs/tiny" in env["excludes"]  # results are never uploaded


def test_submit_out_uri_and_credentials_are_redacted() -> None:
    assert resolve_submit_out("s3://k:s@b/x", Path("/w")) == "s3://k:s@b/x"
    assert resolve_submit_out("/abs/out", Path("/w")) == "/abs/out"
    assert redact_text("--out s3://AKIA:secret@bucket/x and gs://tok@b") == "--out s3://***@bucket/x and gs://***@b"


# -- CLI errors -------------------------------------------------------------------------------
def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return subprocess.run([str(VENV_BIN / "optsweep"), *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_no_address_is_a_usage_error() -> None:
    r = _run_cli("jobs", "list")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: no cluster address")
    assert "Traceback" not in r.stderr


def test_unreachable_address_is_one_line_exit_1() -> None:
    r = _run_cli("jobs", "list", "--address", f"http://127.0.0.1:{_free_port()}")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot reach the Ray cluster at http://127.0.0.1:")
    assert "Traceback" not in r.stderr


# -- against a real head ----------------------------------------------------------------------
def test_head_listens_on_loopback_only(ray_head: Head) -> None:
    found = listeners(_tree(ray_head.tags))
    assert found, "no listeners found for the test head"
    public = [x for x in found if x[1] not in LOOPBACK]
    assert not public, f"Ray servers listening beyond loopback: {public}"


def test_unknown_job_id_is_a_usage_error(ray_head: Head) -> None:
    r = optsweep(ray_head, "jobs", "status", "raysubmit_doesnotexist")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: no job 'raysubmit_doesnotexist' on the cluster at {ray_head.address}"


def test_submit_runs_to_completion_and_results_read_back(ray_head: Head, tmp_path: Path) -> None:
    cfg = _sweep(tmp_path, 3)
    t0 = time.monotonic()
    r = optsweep(ray_head, "submit", str(cfg))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    job_id = r.stdout.strip().splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "SUCCEEDED" in r.stderr
    rows = _rows(tmp_path / "runs" / "tiny")
    assert sorted(rows["trial_number"]) == [0, 1, 2]
    assert rows["node_id"].notna().all()
    assert (tmp_path / "runs" / "tiny" / "results" / "baseline.parquet").exists()
    print(f"submit (wait) took {time.monotonic() - t0:.1f} s")  # noqa: T201 - timing for the report
    listing = optsweep(ray_head, "jobs", "list")
    assert listing.returncode == 0 and job_id in listing.stdout and "SUCCEEDED" in listing.stdout


@pytest.mark.slow  # 80 s; .ci/run runs it after the default suite
def test_no_wait_status_logs_stop_then_resume(ray_head: Head, tmp_path: Path) -> None:
    n = 6
    cfg = _sweep(tmp_path, n, min_run_time_s=1.0, name="tiny-stop")
    out = tmp_path / "runs" / "tiny"
    r = optsweep(ray_head, "submit", str(cfg), "--no-wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    status = optsweep(ray_head, "jobs", "status", job_id)
    assert status.returncode == 0, status.stderr
    assert any(f'"status": "{s}"' in status.stdout for s in ("PENDING", "RUNNING")), status.stdout
    dup = optsweep(ray_head, "submit", str(cfg), "--no-wait")  # one driver per out: refused, job named
    assert dup.returncode == 2, dup.stderr
    assert re.fullmatch(re.escape(f"error: a sweep is already running on out {out}: job {job_id} is ")
                        + "(PENDING|RUNNING)" + re.escape(f"; follow it with: optsweep jobs logs {job_id} --follow"),
                        dup.stderr.strip()), dup.stderr
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and len(_rows(out)) < 1:
        time.sleep(0.5)
    stopped = optsweep(ray_head, "jobs", "stop", job_id)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    logs = optsweep(ray_head, "jobs", "logs", job_id)
    assert logs.returncode == 0, logs.stderr
    before = _rows(out)
    assert len(before) >= 1 and int(before["duplicate_of"].isna().sum()) < n  # kept and readable

    again = optsweep(ray_head, "submit", str(cfg))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    after = _rows(out)
    assert int(after["duplicate_of"].isna().sum()) == n  # n_trials counts distinct configurations
    assert after["trial_number"].is_unique
    kept = after.set_index("trial_number").loc[before["trial_number"], "latency_ms"]
    assert list(kept) == list(before["latency_ms"])  # resumed, not re-measured

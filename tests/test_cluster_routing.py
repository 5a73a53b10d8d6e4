"""Routing on a simulated multi-node cluster, and the private local Ray staying on loopback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from sweep.executor import CPU_NODE_RESOURCE, trial_resources

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(("cluster", "cpus", "gpus", "custom", "expected"), [
    ({"CPU": 4}, 1, 0, None, {}),                                   # homogeneous: any node
    ({"CPU": 4, CPU_NODE_RESOURCE: 2}, 2, 0, None, {CPU_NODE_RESOURCE: 2.0}),
    ({"CPU": 4, "GPU": 1, CPU_NODE_RESOURCE: 2}, 1, 0.5, None, {}),  # GPU trials: num_gpus routes
    ({"CPU": 4}, 1, 0, {"fast_nic": 1}, {"fast_nic": 1.0}),
])
def test_trial_resources(cluster: dict[str, float], cpus: float, gpus: float,
                         custom: dict[str, float] | None, expected: dict[str, float]) -> None:
    assert trial_resources(cluster, cpus, gpus, custom) == expected


TINY = """
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

def example_inputs():
    return (torch.randn(4, 16),)
"""


def test_gpu_trials_on_gpu_nodes_cpu_trials_on_cpu_nodes(tmp_path: Path) -> None:
    """Head (driver only), one CPU node (``optsweep_cpu``), one GPU node (a declared GPU; the
    trial itself runs on CPU since this machine has none). Checked through ``node_id`` in rows."""
    import ray
    from ray.cluster_utils import Cluster

    from sweep.config import parse_config
    from sweep.driver import run_sweep
    from sweep.executor import TrialWorker

    class FakeCudaWorker(TrialWorker):  # defined here: shipped by value to the workers
        def run(self, payload_ref, spec, baseline):  # type: ignore[no-untyped-def]
            import dataclasses

            row = super().run(payload_ref, dataclasses.replace(spec, device="cpu"), baseline)
            row["device"] = "cuda"
            return row

    (tmp_path / "tinyroute.py").write_text(TINY)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cpu_node = cluster.add_node(num_cpus=1, resources={CPU_NODE_RESOURCE: 1})
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        cluster.wait_for_nodes()
        base = {"model": "tinyroute:model", "example_inputs": "tinyroute:example_inputs", "sampler": "random",
                "objectives": {"latency_ms": "minimize"}, "n_trials": 2, "workers": 1,
                "search": {"precision": ["fp32"], "pruning_method": ["none", "magnitude"]},
                "measure": {"warmup": 1, "min_run_time_s": 0.02, "pin_cores": False}}
        for name, device in (("cpu", "cpu"), ("gpu", "cuda")):
            cfg = parse_config({**base, "name": name, "device": device, "out": str(tmp_path / name)})
            run_sweep(cfg, tmp_path, address=cluster.address, progress=False,
                      worker_cls=FakeCudaWorker if device == "cuda" else None)
        rows = {n: pd.concat([pd.read_parquet(f) for f in (tmp_path / n / "results").glob("*.parquet")])
                for n in ("cpu", "gpu")}
        assert set(rows["cpu"]["node_id"]) == {cpu_node.node_id}
        assert set(rows["gpu"]["node_id"]) == {gpu_node.node_id}
        assert set(rows["gpu"]["device"]) == {"cuda"}
    finally:
        ray.shutdown()
        cluster.shutdown()


LOCAL_PROBE = """
import json, sys, time
import psutil, ray
from sweep import executor
executor.init_ray(None, sys.argv[1])
sess = ray._private.worker._global_node.get_session_dir_path()
procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
for p in psutil.process_iter(["cmdline"]):
    if any(sess in a for a in (p.info["cmdline"] or [])):
        procs[p.pid] = p
        procs.update({c.pid: c for c in p.children(recursive=True)})
procs[psutil.Process().pid] = psutil.Process()
found = []
for p in procs.values():
    try:
        found += [[p.name(), c.laddr.ip, c.laddr.port] for c in p.net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        pass
print(json.dumps(found))
ray.shutdown()
"""


def test_private_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    """What ``optsweep run`` starts (no --address): every listener on 127.0.0.1."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(LOCAL_PROBE), str(tmp_path)],
                       capture_output=True, text=True, timeout=180,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert found, "no listeners found"
    public = [x for x in found if x[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not public, f"listening beyond loopback: {public}"

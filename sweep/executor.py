"""Ray execution: a pool of long-lived worker actors, one per concurrent trial.

- Workers are actors, so torch is imported once per process and the user's model and data are
  fetched from the object store once per worker (``ray.put`` once by the driver), not per trial.
- Each worker claims dedicated cores on its node (``flock`` on ``/tmp/optsweep-cores/core-N``),
  pins itself with ``sched_setaffinity`` and sets torch threads to its CPU count, so concurrent
  trials cannot corrupt each other's latency. The claimed cores are recorded in every row.
- This is the only module that imports Ray.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

import ray

from optimizers.benchmarking import core_ranges

log = logging.getLogger("optsweep")
CORE_LOCK_DIR = os.environ.get("OPTSWEEP_CORE_LOCK_DIR", "/tmp/optsweep-cores")


def claim_cores(n: int, lock_dir: str = CORE_LOCK_DIR) -> tuple[list[int], list[int]]:
    """Claim ``n`` cores of this process's affinity set no other optsweep worker holds.

    Returns ``(cores, fds)``; the locks last as long as the fds stay open (the process lives).
    Empty lists when not enough free cores remain.
    """
    os.makedirs(lock_dir, exist_ok=True)
    avail = sorted(os.sched_getaffinity(0))
    for start in range(0, len(avail) - n + 1, n):
        cores, fds = avail[start:start + n], []
        for c in cores:
            fd = os.open(os.path.join(lock_dir, f"core-{c}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                break
            fds.append(fd)
        if len(fds) == n:
            return cores, fds
        for fd in fds:
            os.close(fd)
    return [], []


class TrialWorker:
    """Runs trials in one process. Wrapped with ``ray.remote`` by :func:`make_worker`."""

    def __init__(self, config_dir: str, refs: Mapping[str, str | None], cpus: int, pin: bool) -> None:
        if config_dir not in sys.path:
            sys.path.insert(0, config_dir)
        self.config_dir = config_dir
        self.refs = dict(refs)
        self.threads = max(1, int(cpus))
        self.cores: list[int] = []
        self._locks: list[int] = []
        if pin and hasattr(os, "sched_setaffinity"):
            self.cores, self._locks = claim_cores(self.threads)
            if self.cores:
                os.sched_setaffinity(0, self.cores)
        import torch

        torch.set_num_threads(self.threads)
        self.ctx: Any = None
        self._ctx_id: str | None = None

    def info(self) -> dict[str, Any]:
        try:
            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - outside Ray (serial tests)
            node = None
        return {"node_id": node, "hostname": socket.gethostname(), "pid": os.getpid(),
                "cores": core_ranges(self.cores) if self.cores else "shared"}

    def _context(self, payload_ref: list[Any]) -> Any:
        ref = payload_ref[0]
        key = ref.hex() if hasattr(ref, "hex") else str(id(ref))
        if self._ctx_id != key:
            from optimizers._utils import load_callable

            from .trial import TrialContext

            payload = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
            def fn(name: str) -> Any:
                spec = self.refs.get(name)
                return load_callable(spec, self.config_dir) if spec else None

            self.ctx = TrialContext(model=payload["model"], example_inputs=payload["example_inputs"],
                                    calibration=payload["calibration"], evaluate=fn("evaluate"),
                                    train_step=fn("train_step"))
            self._ctx_id = key
        return self.ctx

    def prepare(self, payload_ref: list[Any]) -> dict[str, Any]:
        """Fetch the model and data now (start-up is not trial time); returns :meth:`info`."""
        self._context(payload_ref)
        return self.info()

    def run(self, payload_ref: list[Any], spec: Any, baseline: Mapping[str, Any] | None) -> dict[str, Any]:
        import dataclasses

        from .trial import run_baseline, run_trial

        ctx = self._context(payload_ref)
        info = self.info()
        spec = dataclasses.replace(spec, threads=self.threads, node_id=info["node_id"])
        row = run_baseline(spec, ctx) if spec.trial_number < 0 else run_trial(spec, ctx, baseline)
        row["hostname"] = info["hostname"]
        row["cpu_affinity"] = info["cores"]
        return row


def make_worker(config_dir: str, refs: Mapping[str, str | None], cpus: float, gpus: float,
                pin: bool, worker_cls: type = TrialWorker, resources: Mapping[str, float] | None = None) -> Any:
    """Start one worker actor with the trial's resources (``worker_cls`` lets benches swap the trial)."""
    remote: Any = ray.remote(worker_cls)
    return remote.options(num_cpus=cpus, num_gpus=gpus, resources=dict(resources or {}), max_restarts=0,
                          max_concurrency=1).remote(
        config_dir, dict(refs), max(1, int(cpus)), pin)


LOOPBACK = "127.0.0.1"
CPU_NODE_RESOURCE = "optsweep_cpu"
"""Custom resource an operator puts on CPU-only nodes (``ray start --resources '{"optsweep_cpu": N}'``).

When the cluster advertises it, CPU trials ask for it, so they never take cores on a GPU node."""


def trial_resources(cluster: Mapping[str, float], cpus: float, gpus: float,
                    custom: Mapping[str, float] | None = None) -> dict[str, float]:
    """Custom Ray resources one trial's worker asks for (``num_cpus``/``num_gpus`` are separate).

    GPU trials are routed by ``num_gpus`` alone. CPU trials ask for :data:`CPU_NODE_RESOURCE`
    (one unit per CPU) when the cluster has CPU-labelled nodes; otherwise any node will do.
    ``custom`` (the config's ``resources.custom``) is added as given.

    >>> trial_resources({"CPU": 8, "GPU": 1, "optsweep_cpu": 4}, 1, 0)
    {'optsweep_cpu': 1.0}
    >>> trial_resources({"CPU": 8, "GPU": 1, "optsweep_cpu": 4}, 1, 0.5)
    {}
    """
    out = {k: float(v) for k, v in (custom or {}).items()}
    if not gpus and cluster.get(CPU_NODE_RESOURCE, 0) > 0:
        out.setdefault(CPU_NODE_RESOURCE, float(cpus))
    return out


def _in_ray_job() -> bool:
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    return RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ


def _single_host_ray() -> None:
    """Keep a private Ray on loopback.

    Ray resolves a loopback ``node_ip_address`` to the machine's external IP, and its servers
    (GCS, raylet, dashboard and runtime-env agents, workers) then listen on every interface.
    Its single-host mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read at import, hence also
    set on the imported constant) keeps the node IP, and so every listener, on 127.0.0.1.
    Child processes inherit the variable.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None, config_dir: str) -> dict[str, float]:
    """Connect to ``address`` or start a private local Ray (no dashboard, loopback only).

    The local Ray's node IP is ``OPTSWEEP_BIND_HOST`` (default ``127.0.0.1``); anything else
    is logged as a warning, since a Ray node accepts code from whoever can reach it. Inside a
    Ray job (``optsweep submit``) the job's runtime env (working dir, ``py_modules``) already
    reaches every worker, so no driver-level runtime env is added.
    """
    if not ray.is_initialized():
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join([config_dir, os.environ.get("PYTHONPATH", "")])}}
        if address:
            runtime_env = None if _in_ray_job() else env
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
        else:
            host = os.environ.get("OPTSWEEP_BIND_HOST", LOOPBACK)
            if host not in (LOOPBACK, "localhost", "::1"):
                log.warning("OPTSWEEP_BIND_HOST=%s: the local Ray node is reachable from the network; "
                            "anyone who can reach it can run code as you", host)
            if host in (LOOPBACK, "localhost", "::1"):
                _single_host_ray()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env=env, _node_ip_address=host)
    return dict(ray.cluster_resources())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


ActorDied = (ray.exceptions.RayActorError,)
OutOfMemory = (ray.exceptions.OutOfMemoryError,)
GetTimeout = ray.exceptions.GetTimeoutError

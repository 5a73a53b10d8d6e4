"""Ray execution: a pool of long-lived worker actors, one per concurrent trial.

- Workers are actors, so torch is imported once per process and the user's model and data are
  fetched from the object store once per worker (``ray.put`` once by the driver), not per trial.
- Each worker claims dedicated cores on its node (``flock`` on ``core-N.lock`` in this user's
  :func:`sweep.guard.core_lock_dir`, ``/tmp/optsweep-<uid>/cores``), pins itself with
  ``sched_setaffinity`` and sets torch threads to its CPU count, so concurrent trials cannot
  corrupt each other's latency. The claimed cores are recorded in every row. The folder is per
  user: another user's sweep can neither block nor break these locks (nor coordinate with them).
- :func:`init_ray` connects to ``--address``, else ``RAY_ADDRESS``, else starts a private local
  Ray (``address="local"``: never a cluster found on the machine).
- This is the only module that imports Ray.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from typing import Any

import ray

from optimizers.benchmarking import core_ranges

log = logging.getLogger("optsweep")


def claim_cores(n: int, lock_dir: str | None = None) -> tuple[list[int], list[int]]:
    """Claim ``n`` cores of this process's affinity set no other optsweep worker holds.

    Returns ``(cores, fds)``; the locks last as long as the fds stay open (the process lives).
    Empty lists when not enough free cores remain, or (with a warning) when the lock folder is
    unsafe: the worker then runs unpinned and its rows say ``cpu_affinity: shared``.
    """
    from .guard import UnsafeDirError, core_lock_dir, open_lock_file

    try:
        lock_dir = lock_dir or core_lock_dir()
    except UnsafeDirError as exc:
        log.warning("not pinning cores: %s", exc)
        return [], []
    avail = sorted(os.sched_getaffinity(0))
    for start in range(0, len(avail) - n + 1, n):
        cores, fds = avail[start:start + n], []
        for c in cores:
            fd = open_lock_file(os.path.join(lock_dir, f"core-{c}.lock"))
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
        plugins = self.refs.pop("plugins", None)
        if plugins:  # the config's technique modules register themselves in this process too
            from optimizers.techniques import load_plugins

            load_plugins(plugins.split(","), config_dir)
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


def _worker_pythonpath(config_dir: str) -> str:
    """The config's folder, then the caller's ``PYTHONPATH`` entries; never an empty entry (an
    empty entry, e.g. from a trailing ``:``, puts each worker's working directory on its path)."""
    entries = [config_dir, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(e for e in entries if e))


def _private_token_auth() -> bool:
    """Token auth for the private local Ray, where this Ray supports it (2.5x+).

    ``RAY_AUTH_MODE=token``, and a fresh random token in ``RAY_AUTH_TOKEN`` unless one is
    configured already: the token lives in this process's environment (inherited by the Ray
    processes it starts, readable only by this user) and is never written to disk. An explicit
    other ``RAY_AUTH_MODE`` is respected, with a warning.
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
    except ImportError:
        return False
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        log.warning("RAY_AUTH_MODE=%s: the private local Ray runs without token auth; other users of this "
                    "machine who reach its ports can run code as you", mode)
        return False
    from .cluster import token_configured

    os.environ["RAY_AUTH_MODE"] = "token"
    if not token_configured():
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    Config.initialize("")  # Ray caches its config at import; refresh it, as Ray's own CLI does
    AuthenticationTokenLoader.instance().reset_cache()
    return True


def init_ray(address: str | None, config_dir: str) -> dict[str, float]:
    """Connect to a Ray cluster, or start a private local Ray; returns the cluster's resources.

    The address is ``address`` (the ``--address`` flag), else ``RAY_ADDRESS``; ``auto`` is
    Ray's own (``RAY_ADDRESS`` or the ``ray start`` cluster of this machine). With neither, a
    private local Ray starts with ``address="local"``, so no cluster found on the machine is
    used by accident. It has no dashboard, token auth where Ray supports it, its session files in
    this user's ``/tmp/optsweep-<uid>/ray`` (mode 0700), and its servers on ``OPTSWEEP_BIND_HOST``
    (default ``127.0.0.1``; anything else is logged as a warning, since a Ray node accepts code
    from whoever can reach it). An address that does not answer raises :class:`ConfigError` with
    one line naming where it came from.

    Inside a Ray job (``optsweep submit``) the job's runtime env (working dir, ``py_modules``)
    already reaches every worker, so no driver-level runtime env is added.
    """
    if not ray.is_initialized():
        from .cluster import ray_address, ray_address_problem
        from .errors import ConfigError

        env = {"env_vars": {"PYTHONPATH": _worker_pythonpath(config_dir)}}
        addr, source = ray_address(address)
        if addr is not None and addr != "local":
            problem = ray_address_problem(addr, source)
            if problem:
                raise ConfigError(problem)
            # Auth as Ray does it: an explicit address never switches token mode on by itself
            # (a token-mode driver refuses calls from a cluster's token-less workers); a token
            # cluster's nodes and jobs have RAY_AUTH_MODE=token in their environment.
            runtime_env = None if _in_ray_job() else env
            try:
                ray.init(address=addr, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as exc:
                from .cluster import first_line
                from .config import redact

                raise ConfigError(f"cannot connect to the Ray cluster at {redact(addr, keep_user=False)} (from {source}): "
                                  f"{first_line(exc)}") from None
        else:
            from .guard import core_lock_dir, private_dir

            core_lock_dir()  # an unsafe lock folder is one line now, not unpinned workers later
            host = os.environ.get("OPTSWEEP_BIND_HOST", LOOPBACK)
            if host not in (LOOPBACK, "localhost", "::1"):
                log.warning("OPTSWEEP_BIND_HOST=%s: the local Ray node is reachable from the network; "
                            "anyone who can reach it can run code as you", host)
            if host in (LOOPBACK, "localhost", "::1"):
                _single_host_ray()
            _private_token_auth()
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env=env, _node_ip_address=host,
                     _temp_dir=private_dir("ray"))
    return dict(ray.cluster_resources())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


ActorDied = (ray.exceptions.RayActorError,)
OutOfMemory = (ray.exceptions.OutOfMemoryError,)
GetTimeout = ray.exceptions.GetTimeoutError

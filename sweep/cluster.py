"""Run sweeps on a Ray cluster through Ray's Jobs API (``optsweep submit`` and ``optsweep jobs``,
whose commands live in :mod:`sweep.cli`), and find the Ray cluster ``optsweep run`` uses.

The driver (``python -m sweep.cli run CONFIG --address auto``) runs on the cluster as a Ray job.
What travels with it:

- the working dir (default: the config's folder): the config and the user's model module;
- optsweep itself as ``py_modules`` (the ``optimizers``, ``sweep`` and ``analysis`` package
  dirs of this client), so client and cluster run the same optsweep code. The cluster's Python
  must already have optsweep's dependencies (torch, optuna, pyarrow, ...).
- ``out`` as the job's environment variable ``OPTSWEEP_OUT`` (runtime env ``env_vars``), never
  on its command line, which the dashboard, ``ray job list`` and ``ps`` show to everyone.

``out`` must outlive the job: Ray extracts the working dir to a fresh temp dir per job, so a
relative ``out`` is resolved on the client, against the config's folder, to an absolute path
(read on the node that runs the driver) before it is passed on; absolute paths and URIs pass
unchanged. Submitting the same config again therefore resumes the same sweep, unless a job of it
still runs: then ``submit`` says so and names the job.

Exit codes of ``submit`` (following the job): SUCCEEDED 0, FAILED 1, STOPPED 130.
Errors print one ``error: ...`` line: 2 for usage/config errors (no address, unknown job id,
bad runtime env file, a sweep already running on ``out``), 1 for anything else (unreachable
cluster, auth refused).

>>> to_http_address("127.0.0.1:8265")
'http://127.0.0.1:8265'
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import SECRET_QUERY, load_config, redact
from .errors import OptsweepError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
TERMINAL = frozenset(EXIT_CODES)
OUT_ENV = "OPTSWEEP_OUT"
"""The job's ``out``: an environment variable of its runtime env, read by ``optsweep run``."""
_URL = re.compile(r"[A-Za-z][\w+.-]*://[^\s'\"<>]+")
_LOOSE_USERINFO = re.compile(r"\b([A-Za-z][\w+.-]*://)[^/\s@]*:[^@\n]*@")
_PACKAGES = ("optimizers", "sweep", "analysis")


class ClusterError(OptsweepError):
    """The cluster could not be reached or refused a request (exit 1)."""


class ClusterUsageError(ClusterError, ValueError):
    """The request itself is wrong: no address, unknown job id, bad runtime env (exit 2)."""


def redact_text(text: str) -> str:
    """Hide credentials in a text (job entrypoints, log lines): the whole userinfo of every URL
    and every secret-looking ``KEY=VALUE`` (see :func:`sweep.config.redact`).

    >>> redact_text("run c.yaml --out s3://AKIA:se/cr@t@bucket/x --token=abc")
    'run c.yaml --out s3://***@bucket/x --token=***'
    """
    text = SECRET_QUERY.sub(lambda m: f"{m.group(1)}***", text)
    # A password with a space or quote ends the URL token early: hide up to the line's last '@'.
    text = _LOOSE_USERINFO.sub(lambda m: f"{m.group(1)}***@", text)
    return _URL.sub(lambda m: redact(m.group(0), keep_user=False) or "", text)


def to_http_address(address: str) -> str:
    """The Jobs API talks to the dashboard over HTTP; a bare ``host:port`` gets ``http://``."""
    return address if "://" in address or address == "auto" else f"http://{address}"


def resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ClusterUsageError("no cluster address: pass --address http://HOST:8265 "
                                "or set RAY_API_SERVER_ADDRESS")
    return to_http_address(address)


def ray_address(flag: str | None) -> tuple[str | None, str]:
    """The Ray cluster ``optsweep run`` uses and where that came from: ``--address``, else
    ``RAY_ADDRESS``, else ``(None, "a private local Ray")``.

    >>> ray_address("10.0.0.1:6379")
    ('10.0.0.1:6379', '--address')
    """
    if flag:
        return flag, "--address"
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, "RAY_ADDRESS"
    return None, "a private local Ray"


def ray_address_problem(address: str, source: str, timeout_s: float = 5.0) -> str | None:
    """One line saying why ``address`` (from ``source``) cannot be a Ray cluster, or ``None``.

    Checks the form, then that something listens (a TCP connect, seconds at most: ``ray.init``
    itself retries an absent cluster for minutes). ``auto`` and ``local`` are Ray's own.
    """
    if address in ("auto", "local"):
        return None
    hint = "; unset RAY_ADDRESS for a private local Ray" if source == "RAY_ADDRESS" else ""
    scheme, _, target = address.rpartition("://")
    if scheme in ("http", "https"):
        return (f"Ray address {redact(address)!r} (from {source}) is a dashboard (Jobs API) address: "
                f"'optsweep run' needs HOST:6379 or ray://HOST:10001, 'optsweep submit' takes http://{hint}")
    hostport = target.split("/", 1)[0].rpartition("@")[2]
    host, _, port = hostport.rpartition(":")
    if scheme not in ("", "ray") or not host or not port.isdigit():
        return (f"Ray address {redact(address)!r} (from {source}) must be HOST:PORT, ray://HOST:PORT, "
                f"auto or local{hint}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"cannot reach the Ray cluster at {redact(address)} (from {source}): {reason.lower()}{hint}"
    return None


def token_configured() -> bool:
    """A Ray auth token exists: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_path))


def enable_token_auth_if_available() -> bool:
    """Send the Ray auth token when one is configured, as ``ray job`` does.

    Ray 2.60 clusters started with a token require it on every request, but a client only sends
    it in token mode (``RAY_AUTH_MODE=token``). Without an explicit mode, token mode is switched
    on here when a token exists (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``). An explicit ``RAY_AUTH_MODE`` is respected; auth is never disabled.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if not token_configured():
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config at import; refresh it, as Ray's own CLI does
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")
    except (ImportError, AttributeError):
        pass
    return True


def connect(address: str | None) -> tuple[JobSubmissionClient, str]:
    """A Jobs client for ``address`` (see :func:`resolve_address`); checks the cluster answers."""
    addr = resolve_address(address)
    enable_token_auth_if_available()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(addr), addr
    except Exception as exc:  # noqa: BLE001 - connection, auth and version errors all end here
        raise ClusterError(f"cannot reach the Ray cluster at {redact(addr)}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, redacted, printable and at most 300 characters."""
    text = str(exc).strip() or type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in redact_text(text.splitlines()[0]))[:300]


@contextmanager
def as_cluster_errors(addr: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the Jobs client's exceptions into :class:`ClusterError` one-liners."""
    try:
        yield
    except ClusterError:
        raise
    except Exception as exc:  # noqa: BLE001
        msg = first_line(exc)
        if job_id and ("does not exist" in msg or "404" in msg):
            raise ClusterUsageError(f"no job {job_id!r} on the cluster at {redact(addr)}") from None
        raise ClusterError(f"request to {redact(addr)} failed: {msg}") from None


# -- submit ------------------------------------------------------------------------------------
def package_dirs() -> list[str]:
    """The optsweep package dirs shipped as ``py_modules``."""
    root = Path(__file__).resolve().parents[1]
    return [str(root / name) for name in _PACKAGES if (root / name).is_dir()]


def resolve_submit_out(out: str, config_dir: Path) -> str:
    """Where the job's driver writes: absolute paths and URIs as given; a relative path is made
    absolute against the config's folder on this machine (the job's own copy is temporary).

    >>> resolve_submit_out("runs/a", Path("/home/me/proj"))
    '/home/me/proj/runs/a'
    >>> resolve_submit_out("s3://bucket/runs/a", Path("/x"))
    's3://bucket/runs/a'
    """
    if "://" in out or os.path.isabs(out):
        return out
    return os.path.normpath(str(config_dir / out))


def load_runtime_env(path: Path | None) -> dict[str, Any]:
    """A ``--runtime-env`` file (YAML or JSON mapping); ``{}`` for none."""
    if path is None:
        return {}
    try:
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ClusterUsageError(f"cannot read runtime env {str(path)!r}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - YAML errors
        raise ClusterUsageError(f"runtime env {str(path)!r} is not valid YAML/JSON: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ClusterUsageError(f"runtime env {str(path)!r} must be a mapping; got {type(data).__name__}")
    return data


def build_submission(config: Path, *, out: str | None = None, working_dir: Path | None = None,
                     runtime_env: Mapping[str, Any] | None = None, ship_code: bool = True,
                     new_settings: bool = False) -> dict[str, Any]:
    """The ``submit_job`` arguments for a sweep config; validates the config locally first.

    Returns ``entrypoint``, ``runtime_env``, ``metadata`` and ``out`` (the resolved ``out``).
    ``out`` travels in ``runtime_env["env_vars"]["OPTSWEEP_OUT"]``; the entrypoint carries no
    part of it (metadata has it redacted, for ``jobs list``).
    """
    cfg, config_dir = load_config(config, {"out": out})
    work = (working_dir or config_dir).resolve()
    config_path = Path(config).resolve()
    try:
        rel_config = config_path.relative_to(work)
    except ValueError:
        raise ClusterUsageError(f"the config {str(config)!r} must be inside the working dir {str(work)!r}") from None
    resolved_out = resolve_submit_out(cfg.out, config_dir)
    env: dict[str, Any] = dict(runtime_env or {})
    env["working_dir"] = str(work)
    excludes = list(env.get("excludes", [])) + [".git", "__pycache__", "*.pyc"]
    if "://" not in resolved_out:
        with suppress(ValueError):  # never upload the results themselves
            excludes.append("/" + str(Path(resolved_out).resolve().relative_to(work)))
    env["excludes"] = excludes
    if ship_code:
        env["py_modules"] = list(env.get("py_modules", [])) + package_dirs()
    env["env_vars"] = {**dict(env.get("env_vars") or {}), OUT_ENV: resolved_out}
    args = ["python", "-m", "sweep.cli", "run", str(rel_config), "--address", "auto"]
    if new_settings:
        args.append("--new-settings")
    entrypoint = " ".join(shlex.quote(a) for a in args)
    metadata = {"optsweep_sweep": cfg.name, "optsweep_out": redact(resolved_out) or ""}
    return {"entrypoint": entrypoint, "runtime_env": env, "metadata": metadata, "out": resolved_out}


def job_out(job: Any) -> str | None:
    """The ``out`` a job writes: its runtime env's ``OPTSWEEP_OUT`` (redacted metadata otherwise)."""
    env_vars = ((getattr(job, "runtime_env", None) or {}).get("env_vars") or {})
    if env_vars.get(OUT_ENV):
        return str(env_vars[OUT_ENV])
    return (getattr(job, "metadata", None) or {}).get("optsweep_out")


def find_running_job(client: JobSubmissionClient, out: str) -> JobDetails | None:
    """A job not yet finished that writes to ``out`` (best effort: one ``list_jobs`` call)."""
    for job in client.list_jobs():
        if str(job.status.value) not in TERMINAL and job_out(job) in (out, redact(out)):
            return job
    return None


def _running_here(out: str) -> str | None:
    """One line when a local ``out`` visible on this machine is locked by a live driver."""
    if "://" in out or not os.path.isdir(out):
        return None
    from .guard import describe_holder, probe_out_lock

    state, holder = probe_out_lock(out)
    if state != "held":
        return None
    return (f"out {redact(out)} is in use by a running optsweep driver ({describe_holder(holder)}); "
            "run one driver per out, or wait for it to end")


def submit(config: Path, address: str | None, *, out: str | None = None, working_dir: Path | None = None,
           runtime_env: Mapping[str, Any] | None = None, ship_code: bool = True,
           new_settings: bool = False) -> tuple[str, str, str]:
    """Submit a sweep as a Ray job; returns ``(job_id, address, out)``.

    Refused (:class:`ClusterUsageError`) when a job of the cluster still writes to the same
    ``out``, naming it, or when a local ``out`` is locked by a driver running elsewhere.
    """
    sub = build_submission(config, out=out, working_dir=working_dir, runtime_env=runtime_env,
                           ship_code=ship_code, new_settings=new_settings)
    client, addr = connect(address)
    with as_cluster_errors(addr):
        running = find_running_job(client, sub["out"])
    if running is not None:
        job_id = running.submission_id or running.job_id
        raise ClusterUsageError(f"a sweep is already running on out {redact(sub['out'])}: job {job_id} is "
                                f"{running.status.value}; follow it with: optsweep jobs logs {job_id} --follow")
    here = _running_here(sub["out"])
    if here:
        raise ClusterUsageError(here)
    with as_cluster_errors(addr):
        job_id = client.submit_job(entrypoint=sub["entrypoint"], runtime_env=sub["runtime_env"],
                                   metadata=sub["metadata"])
    return job_id, addr, sub["out"]


async def _tail(client: JobSubmissionClient, job_id: str, write: Any) -> None:
    async for chunk in client.tail_job_logs(job_id):
        write(redact_text(chunk))


def follow(client: JobSubmissionClient, addr: str, job_id: str, *, write: Any = None,
           poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; returns its final status name."""
    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    with as_cluster_errors(addr, job_id):
        asyncio.run(_tail(client, job_id, write))
        while True:  # the log stream can close a moment before the status turns terminal
            status = str(client.get_job_status(job_id).value)
            if status in TERMINAL:
                return status
            time.sleep(poll_s)


def stop(client: JobSubmissionClient, addr: str, job_id: str, *, wait_s: float = 60.0) -> str:
    """Ask the job to stop and wait (up to ``wait_s``) until it has; returns its status."""
    with as_cluster_errors(addr, job_id):
        client.stop_job(job_id)
        deadline = time.monotonic() + wait_s
        while True:
            status = str(client.get_job_status(job_id).value)
            if status in TERMINAL or time.monotonic() > deadline:
                return status
            time.sleep(0.5)

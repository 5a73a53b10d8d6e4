"""Run sweeps on a Ray cluster through Ray's Jobs API: ``optsweep submit`` and ``optsweep jobs``.

The driver (``python -m sweep.cli run CONFIG --address auto``) runs on the cluster as a Ray job.
What travels with it:

- the working dir (default: the config's folder): the config and the user's model module;
- optsweep itself as ``py_modules`` (the ``optimizers``, ``sweep`` and ``analysis`` package
  dirs of this client), so client and cluster run the same optsweep code. The cluster's Python
  must already have optsweep's dependencies (torch, optuna, pyarrow, ...).

``out`` must outlive the job: Ray extracts the working dir to a fresh temp dir per job, so a
relative ``out`` is resolved on the client, against the config's folder, to an absolute path
(read on the node that runs the driver) before it is passed on; absolute paths and URIs pass
unchanged. Submitting the same config again therefore resumes the same sweep.

Exit codes of ``submit`` (following the job): SUCCEEDED 0, FAILED 1, STOPPED 130.
Errors print one ``error: ...`` line: 2 for usage/config errors (no address, unknown job id,
bad runtime env file), 1 for anything else (unreachable cluster, auth refused).

>>> to_http_address("127.0.0.1:8265")
'http://127.0.0.1:8265'
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .config import SECRET_QUERY, load_config, redact
from .errors import ConfigError, OptsweepError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
TERMINAL = frozenset(EXIT_CODES)
_CREDENTIALS = re.compile(r"([A-Za-z][\w+.-]*://)([^/\s@]+)@")
_PACKAGES = ("optimizers", "sweep", "analysis")


class ClusterError(OptsweepError):
    """The cluster could not be reached or refused a request (exit 1)."""


class ClusterUsageError(ClusterError, ValueError):
    """The request itself is wrong: no address, unknown job id, bad runtime env (exit 2)."""


def redact_text(text: str) -> str:
    """Hide ``user:password@`` in every URL of a text (job entrypoints, log lines).

    >>> redact_text("run c.yaml --out s3://AKIA:secret@bucket/x")
    'run c.yaml --out s3://***@bucket/x'
    """
    text = SECRET_QUERY.sub(lambda m: f"{m.group(1)}***", text)
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)}***@", text)


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
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_path)):
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
        raise ClusterError(f"cannot reach the Ray cluster at {redact(addr)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return redact_text(text.splitlines()[0])[:300]


@contextmanager
def _requests(addr: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the Jobs client's exceptions into :class:`ClusterError` one-liners."""
    try:
        yield
    except ClusterError:
        raise
    except Exception as exc:  # noqa: BLE001
        msg = _first_line(exc)
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


def _load_runtime_env(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ClusterUsageError(f"cannot read runtime env {str(path)!r}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - YAML errors
        raise ClusterUsageError(f"runtime env {str(path)!r} is not valid YAML/JSON: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ClusterUsageError(f"runtime env {str(path)!r} must be a mapping; got {type(data).__name__}")
    return data


def build_submission(config: Path, *, out: str | None = None, working_dir: Path | None = None,
                     runtime_env: Mapping[str, Any] | None = None, ship_code: bool = True) -> dict[str, Any]:
    """The ``submit_job`` arguments for a sweep config; validates the config locally first.

    Returns ``entrypoint``, ``runtime_env``, ``metadata`` and ``out`` (the resolved ``out``).
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
    entrypoint = " ".join(shlex.quote(a) for a in (
        "python", "-m", "sweep.cli", "run", str(rel_config), "--address", "auto", "--out", resolved_out))
    metadata = {"optsweep_sweep": cfg.name, "optsweep_out": redact(resolved_out) or ""}
    return {"entrypoint": entrypoint, "runtime_env": env, "metadata": metadata, "out": resolved_out}


def submit(config: Path, address: str | None, *, out: str | None = None, working_dir: Path | None = None,
           runtime_env: Mapping[str, Any] | None = None, ship_code: bool = True) -> tuple[str, str, str]:
    """Submit a sweep as a Ray job; returns ``(job_id, address, out)``."""
    sub = build_submission(config, out=out, working_dir=working_dir, runtime_env=runtime_env, ship_code=ship_code)
    client, addr = connect(address)
    with _requests(addr):
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
    with _requests(addr, job_id):
        asyncio.run(_tail(client, job_id, write))
        while True:  # the log stream can close a moment before the status turns terminal
            status = str(client.get_job_status(job_id).value)
            if status in TERMINAL:
                return status
            time.sleep(poll_s)


def stop(client: JobSubmissionClient, addr: str, job_id: str, *, wait_s: float = 60.0) -> str:
    """Ask the job to stop and wait (up to ``wait_s``) until it has; returns its status."""
    with _requests(addr, job_id):
        client.stop_job(job_id)
        deadline = time.monotonic() + wait_s
        while True:
            status = str(client.get_job_status(job_id).value)
            if status in TERMINAL or time.monotonic() > deadline:
                return status
            time.sleep(0.5)


# -- CLI ---------------------------------------------------------------------------------------
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray dashboard address, http://HOST:8265 (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS)")]


def _fail(exc: Exception) -> typer.Exit:
    from .cli import fail

    usage = isinstance(exc, (ConfigError, ClusterUsageError))
    return fail(redact_text(str(exc)), 2 if usage else 1)


def _submit_cmd(
    config: Annotated[Path, typer.Argument(help="sweep YAML")],
    address: AddressOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="print the job id and return")] = False,
    working_dir: Annotated[Path | None, typer.Option(help="uploaded with the job (default: the config's folder)")] = None,
    runtime_env: Annotated[Path | None, typer.Option(help="YAML/JSON Ray runtime env merged into the job's")] = None,
    out: Annotated[str | None, typer.Option(help="results location (overrides 'out'; path on the cluster or URI)")] = None,
    ship_code: Annotated[bool, typer.Option("--ship-code/--use-installed",
                                            help="upload this optsweep as py_modules (default) or use the cluster's")] = True,
) -> None:
    """Run a sweep on a Ray cluster as a Ray job; follows its logs unless --no-wait.

    Submitting the same config again resumes the sweep. Exit code: the job's (SUCCEEDED 0,
    FAILED 1, STOPPED 130).
    """
    try:
        job_id, addr, resolved = submit(config, address, out=out, working_dir=working_dir,
                                        runtime_env=_load_runtime_env(runtime_env), ship_code=ship_code)
    except (ConfigError, ClusterError) as exc:
        raise _fail(exc) from None
    typer.echo(f"submitted job {job_id} to {redact(addr)}; results: {redact(resolved)}", err=True)
    typer.echo(job_id)
    if no_wait:
        typer.echo(f"follow with: optsweep jobs logs {job_id} --follow", err=True)
        return
    try:
        client, addr = connect(addr)
        status = follow(client, addr, job_id)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following; job {job_id} keeps running (optsweep jobs stop {job_id})", err=True)
        raise typer.Exit(130) from None
    except ClusterError as exc:
        raise _fail(exc) from None
    typer.echo(f"job {job_id}: {status}", err=True)
    raise typer.Exit(EXIT_CODES[status])


jobs_app = typer.Typer(help="List, inspect, follow and stop sweeps submitted to a Ray cluster.",
                       no_args_is_help=True, pretty_exceptions_enable=False)


@jobs_app.command("list")
def _list_cmd(address: AddressOpt = None) -> None:
    """One line per job: id, status, sweep, entrypoint."""
    try:
        client, addr = connect(address)
        with _requests(addr):
            jobs = client.list_jobs()
    except ClusterError as exc:
        raise _fail(exc) from None
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        sweep = (job.metadata or {}).get("optsweep_sweep", "-")
        typer.echo(f"{job.submission_id or job.job_id}\t{job.status.value}\t{sweep}\t{redact_text(job.entrypoint)}")


@jobs_app.command("status")
def _status_cmd(job_id: Annotated[str, typer.Argument()], address: AddressOpt = None) -> None:
    """Status and message of one job (JSON)."""
    try:
        client, addr = connect(address)
        with _requests(addr, job_id):
            info = client.get_job_info(job_id)
    except ClusterError as exc:
        raise _fail(exc) from None
    typer.echo(redact_text(json.dumps({
        "job_id": job_id, "status": info.status.value, "message": info.message,
        "entrypoint": info.entrypoint, "metadata": info.metadata,
        "start_time": info.start_time, "end_time": info.end_time,
    }, indent=2)))


@jobs_app.command("logs")
def _logs_cmd(job_id: Annotated[str, typer.Argument()], address: AddressOpt = None,
              follow_: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False) -> None:
    """The job's driver output so far (or followed to the end)."""
    try:
        client, addr = connect(address)
        if follow_:
            status = follow(client, addr, job_id)
            raise typer.Exit(EXIT_CODES[status])
        with _requests(addr, job_id):
            typer.echo(redact_text(client.get_job_logs(job_id)), nl=False)
    except ClusterError as exc:
        raise _fail(exc) from None


@jobs_app.command("stop")
def _stop_cmd(job_id: Annotated[str, typer.Argument()], address: AddressOpt = None,
              wait_s: Annotated[float, typer.Option("--wait-s", help="wait this long for it to stop")] = 60.0) -> None:
    """Stop a job; finished trials stay in ``out`` and a new submit continues from them."""
    try:
        client, addr = connect(address)
        status = stop(client, addr, job_id, wait_s=wait_s)
    except ClusterError as exc:
        raise _fail(exc) from None
    typer.echo(f"job {job_id}: {status}")
    if status not in TERMINAL:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``submit`` and ``jobs`` to the ``optsweep`` command."""
    app.command("submit")(_submit_cmd)
    app.add_typer(jobs_app, name="jobs")

"""The ``optsweep`` command. Thin: every verb calls a library function.

Exit codes: 0 the sweep finished (even if some trials failed), 2 usage or config error,
1 anything else, 130 interrupted (Ctrl-C; everything finished so far is kept).

Start-up stays fast: this module imports only typer at the top. torch, Ray, Optuna and the
config model (which needs torch through ``optimizers``) are imported inside the commands that
use them, so ``optsweep --help`` does not pay for them. Locations (``out``, ``OUT``) are plain
strings: a ``Path`` would turn ``s3://bucket`` into ``s3:/bucket``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search pruning x quantization x precision for a PyTorch model, on your hardware.")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error (no traceback) and return the Exit to raise."""
    first = message.splitlines()[0] if message.strip() else message
    line = "".join(c if c.isprintable() else "?" for c in first)
    typer.echo(f"error: {line}", err=True)
    return typer.Exit(code)


def _load(config: Path, overrides: dict[str, Any]) -> tuple[Any, Path]:
    from .config import load_config
    from .errors import ConfigError

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="sweep YAML")]) -> None:
    """Check a config without running anything; also resolves the model/data references."""
    cfg, config_dir = _load(config, {})
    from optimizers._utils import load_callable

    from .errors import ConfigError

    try:
        for key in ("model", "example_inputs", "evaluate", "calibration", "train_step"):
            spec = getattr(cfg, key)
            if spec:
                load_callable(spec, config_dir)
    except ConfigError as exc:
        raise fail(f"config key '{key}': {exc}") from None
    from .space import grid

    typer.echo(f"ok: {cfg.name}: {cfg.n_trials} trials, sampler {cfg.sampler}, "
               f"{len(grid(cfg.search))} distinct configurations, objectives "
               + ", ".join(f"{k}:{v[:3]}" for k, v in cfg.objectives.items()))


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="sweep YAML")],
    out: Annotated[str | None, typer.Option(envvar="OPTSWEEP_OUT",
                                            help="output folder or URI (overrides 'out')")] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="total trials (resume counts)")] = None,
    workers: Annotated[int | None, typer.Option(help="max concurrent trials")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe, nsga2, random or grid")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster: HOST:PORT, ray://HOST:PORT or auto (default: RAY_ADDRESS, else a private local Ray)")] = None,
    new_settings: Annotated[bool, typer.Option(
        "--new-settings", help="resume with changed measurement settings as a new, labelled segment")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Run (or resume) a sweep. Running the same command again continues it."""
    overrides = {"out": out, "n_trials": n_trials, "workers": workers, "sampler": sampler, "seed": seed}
    cfg, config_dir = _load(config, overrides)
    from .cluster import ray_address, ray_address_problem
    from .config import redact
    from .errors import ConfigError, OptsweepError

    addr, source = ray_address(address)
    problem = ray_address_problem(addr, source) if addr else None
    if problem:  # before anything is written to out
        raise fail(problem)
    from .driver import run_sweep

    extra: dict[str, Any] = {"new_settings": True} if new_settings else {}
    try:
        summary = run_sweep(cfg, config_dir, address=address, progress=False if quiet else None, **extra)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except OptsweepError as exc:
        raise fail(str(exc), 1) from None
    states = ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items()))
    repeats = summary.n_rows - summary.distinct - summary.infeasible
    typer.echo(f"{summary.n_rows} trials in {redact(summary.out)} ({states}); {summary.distinct} distinct"
               f"{f', {summary.infeasible} infeasible (not run, no budget)' if summary.infeasible else ''}"
               f"{f', {repeats} repeats (not re-measured, no budget)' if repeats > 0 else ''}; "
               f"{summary.duration_s:.0f} s", err=True)
    if summary.exhausted:
        typer.echo(f"the search space is exhausted: all {summary.distinct} distinct configurations are measured "
                   f"(n_trials {cfg.n_trials})", err=True)
    _print_front(summary.out)
    if summary.interrupted:
        typer.echo("interrupted: finished trials are kept; run the same command to continue", err=True)
        raise typer.Exit(130)


def _print_front(out: str) -> None:
    """The Pareto-optimal trials, exactly as ``optsweep pareto OUT`` prints them."""
    from analysis.cli import pareto_cmd

    try:
        pareto_cmd(out)  # type: ignore[arg-type]  # a str: an s3:// URI must stay one
    except Exception as exc:  # noqa: BLE001 - the sweep succeeded; the summary is best-effort
        from .cluster import first_line

        typer.echo(f"(no Pareto table: {first_line(exc)})", err=True)


@app.command()
def doctor(
    out: Annotated[str, typer.Argument(help="a sweep's out folder or URI")],
    fix: Annotated[bool, typer.Option("--fix", help="repair what is safe to repair")] = False,
    storage: Annotated[str | None, typer.Option(
        help="the study's storage URL (when sweep.json has it redacted)")] = None,
) -> None:
    """List damaged row files, study/row mismatches and stale locks; --fix repairs them.

    Exit code: 0 healthy (after --fix: nothing left it could not repair), 1 problems remain.
    """
    from .doctor import diagnose, report_lines
    from .errors import ConfigError

    try:
        diag = diagnose(out, fix=fix, storage=storage)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    for line in report_lines(diag, fix):
        typer.echo(line)
    if not diag.healthy:
        raise typer.Exit(1)


# -- Ray cluster: submit and jobs (library: sweep/cluster.py) ----------------------------------
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray dashboard address, http://HOST:8265 (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS)")]


def _cluster_fail(exc: Exception) -> typer.Exit:
    from .cluster import ClusterUsageError, redact_text
    from .errors import ConfigError

    usage = isinstance(exc, (ConfigError, ClusterUsageError))
    return fail(redact_text(str(exc)), 2 if usage else 1)


def _connect(address: str | None) -> tuple[JobSubmissionClient, str]:
    from .cluster import ClusterError, connect

    try:
        return connect(address)
    except ClusterError as exc:
        raise _cluster_fail(exc) from None


@app.command("submit")
def submit_cmd(
    config: Annotated[Path, typer.Argument(help="sweep YAML")],
    address: AddressOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="print the job id and return")] = False,
    working_dir: Annotated[Path | None, typer.Option(help="uploaded with the job (default: the config's folder)")] = None,
    runtime_env: Annotated[Path | None, typer.Option(help="YAML/JSON Ray runtime env merged into the job's")] = None,
    out: Annotated[str | None, typer.Option(help="results location (overrides 'out'; path on the cluster or URI)")] = None,
    ship_code: Annotated[bool, typer.Option("--ship-code/--use-installed",
                                            help="upload this optsweep as py_modules (default) or use the cluster's")] = True,
    new_settings: Annotated[bool, typer.Option(
        "--new-settings", help="resume with changed measurement settings as a new, labelled segment")] = False,
) -> None:
    """Run a sweep on a Ray cluster as a Ray job; follows its logs unless --no-wait.

    Submitting the same config again resumes the sweep (refused while a job of it still runs).
    Exit code: the job's (SUCCEEDED 0, FAILED 1, STOPPED 130).
    """
    from .cluster import EXIT_CODES, ClusterError, follow, load_runtime_env, submit
    from .config import redact
    from .errors import ConfigError

    try:
        job_id, addr, resolved = submit(config, address, out=out, working_dir=working_dir,
                                        runtime_env=load_runtime_env(runtime_env), ship_code=ship_code,
                                        new_settings=new_settings)
    except (ConfigError, ClusterError) as exc:
        raise _cluster_fail(exc) from None
    typer.echo(f"submitted job {job_id} to {redact(addr)}; results: {redact(resolved)}", err=True)
    typer.echo(job_id)
    if no_wait:
        typer.echo(f"follow with: optsweep jobs logs {job_id} --follow", err=True)
        return
    try:
        client, addr = _connect(addr)
        status = follow(client, addr, job_id)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following; job {job_id} keeps running (optsweep jobs stop {job_id})", err=True)
        raise typer.Exit(130) from None
    except ClusterError as exc:
        raise _cluster_fail(exc) from None
    typer.echo(f"job {job_id}: {status}", err=True)
    raise typer.Exit(EXIT_CODES[status])


jobs_app = typer.Typer(help="List, inspect, follow and stop sweeps submitted to a Ray cluster.",
                       no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list_cmd(address: AddressOpt = None) -> None:
    """One line per job: id, status, sweep, entrypoint."""
    from .cluster import ClusterError, as_cluster_errors, redact_text

    client, addr = _connect(address)
    try:
        with as_cluster_errors(addr):
            jobs = client.list_jobs()
    except ClusterError as exc:
        raise _cluster_fail(exc) from None
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        sweep = (job.metadata or {}).get("optsweep_sweep", "-")
        typer.echo(redact_text(f"{job.submission_id or job.job_id}\t{job.status.value}\t{sweep}\t{job.entrypoint}"))


@jobs_app.command("status")
def jobs_status_cmd(job_id: Annotated[str, typer.Argument()], address: AddressOpt = None) -> None:
    """Status and message of one job (JSON)."""
    from .cluster import ClusterError, as_cluster_errors, redact_text

    client, addr = _connect(address)
    try:
        with as_cluster_errors(addr, job_id):
            info = client.get_job_info(job_id)
    except ClusterError as exc:
        raise _cluster_fail(exc) from None
    typer.echo(redact_text(json.dumps({
        "job_id": job_id, "status": info.status.value, "message": info.message,
        "entrypoint": info.entrypoint, "metadata": info.metadata,
        "start_time": info.start_time, "end_time": info.end_time,
    }, indent=2)))


@jobs_app.command("logs")
def jobs_logs_cmd(job_id: Annotated[str, typer.Argument()], address: AddressOpt = None,
                  follow_: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
                  ) -> None:
    """The job's driver output so far (or followed to the end)."""
    from .cluster import EXIT_CODES, ClusterError, as_cluster_errors, follow, redact_text

    client, addr = _connect(address)
    try:
        if follow_:
            status = follow(client, addr, job_id)
            raise typer.Exit(EXIT_CODES[status])
        with as_cluster_errors(addr, job_id):
            typer.echo(redact_text(client.get_job_logs(job_id)), nl=False)
    except ClusterError as exc:
        raise _cluster_fail(exc) from None


@jobs_app.command("stop")
def jobs_stop_cmd(job_id: Annotated[str, typer.Argument()], address: AddressOpt = None,
                  wait_s: Annotated[float, typer.Option("--wait-s", help="wait this long for it to stop")] = 60.0,
                  ) -> None:
    """Stop a job; finished trials stay in ``out`` and a new submit continues from them."""
    from .cluster import TERMINAL, ClusterError, stop

    client, addr = _connect(address)
    try:
        status = stop(client, addr, job_id, wait_s=wait_s)
    except ClusterError as exc:
        raise _cluster_fail(exc) from None
    typer.echo(f"job {job_id}: {status}")
    if status not in TERMINAL:
        raise typer.Exit(1)


def _register_extensions() -> None:
    try:
        from analysis.cli import register as register_analysis
    except ImportError:
        pass
    else:
        register_analysis(app)


_register_extensions()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

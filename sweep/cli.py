"""The ``optsweep`` command. Thin: every verb calls a library function.

Exit codes: 0 the sweep finished (even if some trials failed), 2 usage or config error,
1 anything else, 130 interrupted (Ctrl-C; everything finished so far is kept).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import ConfigError, OptsweepError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search pruning x quantization x precision for a PyTorch model, on your hardware.")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error (no traceback) and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load(config: Path, overrides: dict[str, Any]) -> tuple[Any, Path]:
    from .config import load_config

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="sweep YAML")]) -> None:
    """Check a config without running anything; also resolves the model/data references."""
    cfg, config_dir = _load(config, {})
    from optimizers._utils import load_callable

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
    out: Annotated[str | None, typer.Option(help="output folder (overrides 'out')")] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="total trials (resume counts)")] = None,
    workers: Annotated[int | None, typer.Option(help="max concurrent trials")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe, nsga2, random or grid")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a private local Ray)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Run (or resume) a sweep. Running the same command again continues it."""
    overrides = {"out": out, "n_trials": n_trials, "workers": workers, "sampler": sampler, "seed": seed}
    cfg, config_dir = _load(config, overrides)
    from .driver import run_sweep

    address = address or os.environ.get("OPTSWEEP_RAY_ADDRESS")
    try:
        summary = run_sweep(cfg, config_dir, address=address, progress=False if quiet else None)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except OptsweepError as exc:
        raise fail(str(exc), 1) from None
    states = ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items()))
    from .config import redact

    typer.echo(f"{summary.n_rows} trials in {redact(summary.out)} ({states}); {summary.duration_s:.0f} s", err=True)
    _print_front(summary.out)
    if summary.interrupted:
        typer.echo("interrupted: finished trials are kept; run the same command to continue", err=True)
        raise typer.Exit(130)


def _print_front(out: str) -> None:
    """The Pareto-optimal trials, exactly as ``optsweep pareto OUT`` prints them."""
    from analysis.cli import pareto_cmd

    try:
        pareto_cmd(Path(out))
    except Exception as exc:  # noqa: BLE001 - the sweep succeeded; the summary is best-effort
        typer.echo(f"(no Pareto table: {exc})", err=True)


def _register_extensions() -> None:
    try:
        from analysis.cli import register as register_analysis
    except ImportError:
        pass
    else:
        register_analysis(app)
    try:
        from .cluster import register as register_cluster
    except ImportError:
        pass
    else:
        register_cluster(app)


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

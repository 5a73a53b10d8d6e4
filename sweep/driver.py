"""The driver: owns the Optuna study (ask/tell) and the pool of in-flight Ray trials.

Flow per trial: ask → params → recipe → (known-impossible? INFEASIBLE row) → (seen before?
reuse the result, never measure twice) → dispatch to a free worker → row written atomically →
tell. Rows are written *before* tell, so a crash between the two is repaired on resume from the
row. ``n_trials`` is the total number of trial rows the output folder should hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from analysis.schema import BASELINE_TRIAL
from optimizers.recipe import check_feasible

from .config import SweepConfig, redact, resolve_out
from .errors import ConfigError, SweepError
from .progress import Progress
from .results import ResultsWriter
from .scheduler import Scheduler
from .space import complete, grid, suggest, to_recipe
from .trial import TrialSpec, constraint_values

log = logging.getLogger("optsweep")
WORKER_START_TIMEOUT_S = float(os.environ.get("OPTSWEEP_WORKER_START_TIMEOUT_S", 300))
ENV_COLUMNS = ("hardware", "device", "threads", "torch_version", "quantized_engine", "cpu_capability")
optuna.logging.set_verbosity(optuna.logging.WARNING)


MAX_REPEATS = int(os.environ.get("OPTSWEEP_MAX_REPEATS", 8))
"""Duplicates the sampler may propose in a row before the driver picks an unmeasured point."""


@dataclass
class SweepSummary:
    out: str
    n_rows: int
    states: dict[str, int]
    interrupted: bool = False
    duration_s: float = 0.0
    distinct: int = 0    # configurations measured (n_trials counts these)
    exhausted: bool = False
    infeasible: int = 0  # configurations refused before running (INFEASIBLE rows, no budget)


def make_storage(cfg: SweepConfig, out: str) -> Any:
    """Default: Optuna's journal file in OUT (≈3 ms per ask+tell, crash-safe appends)."""
    if cfg.storage:
        return cfg.storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(out).mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(Path(out) / "study.journal")))


def make_sampler(cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    # Constraints reach the samplers through Trial.set_constraint (Optuna 5), see Driver._tell.
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, constant_liar=True, multivariate=True)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=cfg.seed)
    # grid: the distinct points are enqueued in order; random fills nothing else.
    return optuna.samplers.RandomSampler(seed=cfg.seed)


def _values(row: dict[str, Any], cfg: SweepConfig) -> list[float] | None:
    vals = []
    for metric in cfg.objectives:
        v = row.get(metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        vals.append(float(v))
    return vals


def _worst(cfg: SweepConfig) -> list[float]:
    return [math.inf if d == "minimize" else -math.inf for d in cfg.objectives.values()]


class Driver:
    """Runs one sweep. Construct, then :meth:`run`."""

    def __init__(self, cfg: SweepConfig, config_dir: Path, *, address: str | None = None,
                 progress: bool | None = None, worker_cls: type | None = None,
                 new_settings: bool = False) -> None:
        self.cfg = cfg
        self.new_settings = new_settings
        self.segment: str | None = None
        self._lock: Any = None
        self.worker_cls = worker_cls
        self.config_dir = Path(config_dir)
        self.address = address
        self.out = resolve_out(cfg, self.config_dir)
        try:
            self.writer = ResultsWriter(self.out, cfg.objectives, cfg.constraints, cfg.name)
        except (OSError, ValueError) as exc:  # pyarrow: bad URI, no bucket, no permission
            raise ConfigError(f"config key 'out': cannot write to {redact(self.out)}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        self.progress = Progress(cfg, enabled=progress)
        self.study: optuna.Study | None = None
        self.seen: dict[str, dict[str, Any]] = {}  # recipe key -> row (never measure twice)
        self._open_trials: dict[int, optuna.Trial] = {}  # asked here, not yet told
        self.effective_seen: dict[str, dict[str, Any]] = {}  # effective recipe key -> first row measured
        self.by_number: dict[int, dict[str, Any]] = {}
        self.scheduler = Scheduler()
        self.exhausted = False
        self.baseline: dict[str, Any] | None = None
        self._first_segment: str | None = None
        self._old_segments: dict[str, Any] = {}  # sweep.json's segments when this run started
        self._my_rows: set[int] = set()  # trial numbers of this segment's rows (resume)
        self._resumed_infeasible = 0

    # -- setup ---------------------------------------------------------------------------------
    def _write_manifest(self) -> None:
        manifest = {
            "config_dir": str(self.config_dir), "name": self.cfg.name, "model": self.cfg.model,
            "example_inputs": self.cfg.example_inputs, "evaluate": self.cfg.evaluate,
            "calibration": self.cfg.calibration, "train_step": self.cfg.train_step,
            "device": self.cfg.device, "pruning": self.cfg.pruning, "quantization": self.cfg.quantization,
            "objectives": self.cfg.objectives, "constraints": self.cfg.constraints,
            "plugins": list(self.cfg.plugins),
            "storage": redact(self.cfg.storage), "config": json.loads(_config_json(self.cfg)),
            "segment": self.segment,
        }
        segments = dict(self._old_segments)
        segments[str(self.segment)] = {k: manifest[k] for k in ("config", "pruning", "quantization", "device")}
        manifest["segments"] = segments
        self.writer.write_text("sweep.json", json.dumps(manifest, indent=2))

    def _open_study(self) -> optuna.Study:
        directions = self.cfg.directions()
        try:
            study = optuna.create_study(storage=make_storage(self.cfg, self.out), sampler=make_sampler(self.cfg),
                                        study_name=self.cfg.name, directions=directions,  # type: ignore[arg-type]
                                        load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - storage errors are user-facing
            raise SweepError(f"cannot open study storage {redact(self.cfg.storage) or self.out}: {exc}") from None
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise ConfigError(f"config key 'objectives': directions {directions} differ from the existing study's "
                              f"{stored} in {redact(self.out)}; use a new 'out' or 'name'")
        # The study is told values in objective order: a reordered objectives map would swap them.
        names = list(self.cfg.objectives)
        if study.metric_names is None:
            with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged since
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
        elif list(study.metric_names) != names:
            raise ConfigError(f"config key 'objectives': order {names} differs from the existing study's "
                              f"{list(study.metric_names)} in {redact(self.out)}; keep the order, or use a new "
                              "'out' or 'name'")
        return study

    def _reconcile(self, study: optuna.Study) -> int:
        """Resume: repair the study from the rows; fail + re-queue trials a dead driver left."""
        moved = self.writer.quarantine_damaged()  # unreadable rows go to results/.damaged/ and re-run
        have = self.writer.existing_trials()
        self.writer.clean_partials()  # safe: this driver holds the out's lock
        if moved:
            log.warning("moved %d unreadable result file(s) to results/.damaged/: %s", len(moved), ", ".join(moved))
            by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
            for name in moved:
                n = ResultsWriter.number_of(name)
                if n is None or n < 0 or n in have:
                    continue
                ft = by_number.get(n)
                if ft is not None and ft.params:
                    study.enqueue_trial(complete(dict(ft.params), self.cfg.search), user_attrs={"requeued_from": n})
        for ft in study.get_trials(deepcopy=False):
            if ft.state != TrialState.RUNNING:
                continue
            row = self.writer.read(ft.number) if ft.number in have else None
            if row is not None:
                self._tell(study, ft.number, row)
            else:
                study.tell(ft.number, state=TrialState.FAIL)
                if ft.params:
                    study.enqueue_trial(complete(dict(ft.params), self.cfg.search),
                                        user_attrs={"requeued_from": ft.number})
        distinct = 0
        for n in sorted(have):
            row = self.writer.read(n)
            if row is None or not self._mine(row):  # another segment's rows: other settings
                continue
            self._my_rows.add(n)
            if row.get("duplicate_of") is None and row["state"] != "INFEASIBLE":
                distinct += 1  # INFEASIBLE rows ran nothing: no budget
            elif row.get("duplicate_of") is None:
                self._resumed_infeasible += 1
            if row["state"] in ("COMPLETE", "INFEASIBLE") and row.get("duplicate_of") is None:
                self.seen.setdefault(_key_of(row), row)
                self._remember(row)
        return distinct  # n_trials counts distinct configurations: repeats are rows, not budget

    # -- tell ----------------------------------------------------------------------------------
    def _tell(self, study: optuna.Study, number: int, row: dict[str, Any]) -> None:
        state = row["state"]
        values = _values(row, self.cfg) if state == "COMPLETE" else None
        if state == "INFEASIBLE":
            values = _worst(self.cfg)
        if values is None:
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            return
        cons: dict[str, float] = {}
        if self.cfg.constraints:
            vals = [1.0] * len(self.cfg.constraints) if state == "INFEASIBLE" else constraint_values(
                row, self.cfg.constraints)
            cons = dict(zip(self.cfg.constraints, vals, strict=True))
        trial = self._open_trials.pop(number, None)
        if trial is None:
            # A trial a dead driver asked (resume): Optuna's public API offers no handle to set its
            # constraints, so it is failed and its result added as a new, complete trial.
            frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            if frozen is not None:
                study.add_trial(optuna.trial.create_trial(
                    params=frozen.params, distributions=frozen.distributions, values=values,
                    constraints=cons or None, user_attrs={"row_trial_number": number}))
            return
        for name, value in cons.items():
            trial.set_constraint(name, value)
        study.tell(trial, values, skip_if_finished=True)

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> SweepSummary:
        """Run under the out's lock (one driver per out), after the config-drift check."""
        from .guard import out_lock, resume_segment

        with out_lock(self.out) as lock:
            self._lock = lock
            self.segment = resume_segment(self.writer, self.cfg, self.new_settings)  # before any write
            self._old_segments = self._stored_segments()
            return self._run()

    def _stored_segments(self) -> dict[str, Any]:
        """The segments ``sweep.json`` lists (in the order they started), and the segment that rows
        without one belong to (an older optsweep wrote no segment column): the out's first."""
        from .guard import segment_id

        segments: dict[str, Any] = {}
        try:
            old = json.loads(self.writer.read_text("sweep.json") or "{}")
            segments = dict(old.get("segments") or {})
            if segments:
                self._first_segment = str(next(iter(segments)))  # JSON keeps insertion order
            elif isinstance(old.get("config"), dict):
                self._first_segment = segment_id(old["config"])
        except (OSError, ValueError, AttributeError, TypeError):
            pass
        if self._first_segment is None:
            self._first_segment = self.segment
        return segments

    def _mine(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` was measured under this run's settings (its segment)."""
        return (row.get("segment") or self._first_segment) == self.segment

    def _run(self) -> SweepSummary:
        from . import executor

        t_start = time.perf_counter()
        study = self.study = self._open_study()
        done = self._reconcile(study)
        self._write_manifest()  # only once the study accepted this config
        remaining = self.cfg.n_trials - done
        if self.cfg.sampler == "grid":
            self._enqueue_grid(study)
        resources = executor.init_ray(self.address, str(self.config_dir))
        device = self._device(resources)
        payload_ref = [self._payload(executor)]
        refs = {"evaluate": self.cfg.evaluate, "train_step": self.cfg.train_step,
                "plugins": ",".join(self.cfg.plugins) or None}
        cpus, gpus = self.cfg.resources.cpus_per_trial, (self.cfg.resources.gpus_per_trial if device == "cuda" else 0)
        if device == "cuda" and gpus == 0:
            gpus = 1
        custom = executor.trial_resources(resources, cpus, gpus, self.cfg.resources.custom)
        needs = {"CPU": cpus, "GPU": gpus, **custom}
        # Every resource a worker asks for bounds the pool, or surplus workers would never be placed.
        capacity = min(int(resources.get(k, 0) // v) for k, v in needs.items() if v > 0)
        if capacity < 1:
            raise SweepError(f"the cluster cannot hold one trial: needs {needs}, has {resources}")
        n_workers = max(1, min(self.cfg.workers or capacity, capacity, max(remaining, 1)))
        base_spec = TrialSpec(
            trial_number=0, params={}, study_name=self.cfg.name, device=device,
            warmup=self.cfg.measure.warmup, min_run_time_s=self.cfg.measure.min_run_time_s,
            pruning_options=dict(self.cfg.pruning), quantization_options=dict(self.cfg.quantization),
            constraints=dict(self.cfg.constraints),
            latency_shared=bool(gpus and gpus < 1), exclusive_latency=self.cfg.measure.exclusive,
            rounds=self.cfg.measure.rounds, measure_artifact=self.cfg.measure.artifact,
        )
        pool = _Pool(executor, n_workers, (str(self.config_dir), refs, cpus, gpus, self.cfg.measure.pin_cores,
                                           self.worker_cls or executor.TrialWorker, custom), payload_ref)
        interrupted = False
        self.progress.start(total=self.cfg.n_trials, done=done)
        restore = self._defer_sigint()
        try:
            self.baseline = self._baseline(pool, payload_ref, base_spec)
            self.seen.setdefault(_key_of(self.baseline), self.baseline)  # the untouched model is a config too
            self._remember(self.baseline)
            interrupted = self._loop(study, pool, payload_ref, base_spec, remaining)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for row in self.scheduler.take_finished():  # measured but not yet persisted
                self._finish(study, row)
            running = [f.spec for f in pool.inflight.values() if f.spec.trial_number >= 0]  # not the baseline
            for spec in self.scheduler.unfinished(running):  # asked but not finished: fail in the study, re-queue for resume
                study.tell(spec.trial_number, state=TrialState.FAIL, skip_if_finished=True)
                study.enqueue_trial(dict(spec.params), user_attrs={"requeued_from": spec.trial_number})
            pool.close()
            self.progress.stop()
            restore()
        states = self._states()
        return SweepSummary(out=self.out, n_rows=sum(states.values()), states=states,
                            interrupted=interrupted, duration_s=time.perf_counter() - t_start,
                            distinct=done + self.scheduler.distinct, exhausted=self.exhausted,
                            infeasible=self._resumed_infeasible + self.scheduler.infeasible)

    def _defer_sigint(self) -> Any:
        """Ctrl-C sets a flag the loop checks between steps, so it never lands inside a storage
        write (Optuna's journal lock, a Parquet rename); a second Ctrl-C interrupts at once."""
        import signal
        import threading

        self._stop = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _check_stop(self) -> None:
        if getattr(self, "_stop", False):
            raise KeyboardInterrupt

    def _device(self, resources: dict[str, float]) -> str:
        if self.cfg.device == "auto":
            return "cuda" if resources.get("GPU", 0) > 0 else "cpu"
        if self.cfg.device == "cuda" and resources.get("GPU", 0) <= 0:
            raise SweepError("device: cuda, but the Ray cluster has no GPU")
        return self.cfg.device

    def _payload(self, executor: Any) -> Any:
        """Build the user's model and data once in the driver; ship it once via the object store."""
        import ray

        from optimizers._utils import load_callable

        fns = {}
        for key in ("model", "example_inputs", "evaluate", "calibration", "train_step"):
            spec = getattr(self.cfg, key)
            if spec:  # resolve all of them here: a typo must not surface from inside a worker
                try:
                    fns[key] = load_callable(spec, self.config_dir)
                except ConfigError as exc:
                    raise ConfigError(f"config key '{key}': {exc}") from None

        def call(key: str) -> Any:
            spec = getattr(self.cfg, key)
            if not spec:
                return None
            fn = fns[key]
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - the user's code: one line naming the key, exit 1
                raise SweepError(f"config key '{key}': {spec}() raised {type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None

        inputs = call("example_inputs")
        if not isinstance(inputs, (tuple, list)):
            inputs = (inputs,)
        calib = call("calibration")
        calib = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in calib] if calib is not None else None
        model = call("model")
        if not isinstance(model, torch.nn.Module):
            raise SweepError(f"config key 'model': {self.cfg.model}() must return a torch.nn.Module; "
                             f"got {type(model).__name__}")
        return ray.put({"model": model.eval(), "example_inputs": tuple(inputs), "calibration": calib})

    def _enqueue_grid(self, study: optuna.Study) -> None:
        # Keys here compare requested recipes (``auto`` unresolved): the grid lists requests.
        existing = set()
        for t in study.get_trials(deepcopy=False):
            if t.state != TrialState.WAITING and t.number not in self._my_rows:
                continue  # another segment's point: measured under other settings, so not done here
            # Enqueued (WAITING) trials hold their point in system attrs; asked ones in params.
            params = {**t.system_attrs.get("fixed_params", {}), **t.params}
            try:
                existing.add(to_recipe(complete(params, self.cfg.search)).key())
            except (KeyError, ValueError):
                continue
        for params in grid(self.cfg.search):
            if to_recipe(params).key() not in existing:
                study.enqueue_trial(params)

    def _baseline_file_segment(self) -> str | None:
        """Which baseline file is this segment's: ``None`` for ``baseline.parquet`` (the out's
        first segment; rows of an older optsweep have no segment there), else the segment id
        (``baseline-<segment>.parquet``). A segment's rows are relative to its own baseline:
        new settings (model, data, device, measure) mean a new untouched model."""
        first = self.writer.read(BASELINE_TRIAL)
        if first is None:
            return None
        owner = first.get("segment") or self._first_segment
        return None if owner in (None, self.segment) else self.segment

    def _baseline(self, pool: _Pool, payload_ref: list[Any], spec: TrialSpec) -> dict[str, Any]:
        seg_file = self._baseline_file_segment()
        row = self.writer.read(BASELINE_TRIAL, baseline_segment=seg_file)
        if row is None or row["state"] != "COMPLETE":
            row = pool.run_sync(payload_ref, TrialSpec(**{**spec.__dict__, "trial_number": BASELINE_TRIAL}), None,
                                self.cfg.trial_timeout_s, self._check_stop)
            row["segment"] = self.segment
            self.writer.write(row, baseline_segment=seg_file)
        elif not row.get("segment"):
            row["segment"] = self.segment  # an older optsweep's baseline: its first segment's
        if row["state"] != "COMPLETE":
            raise SweepError(f"the baseline (untouched model) failed: {row.get('error')}")
        self.progress.baseline(row)
        return row

    def _loop(self, study: optuna.Study, pool: _Pool, payload_ref: list[Any], base: TrialSpec,
              remaining: int) -> bool:
        """Keep every worker busy. The driver's own per-trial work (ask, suggest, Parquet write,
        tell) happens while the workers run: freed workers are refilled first from trials asked
        ahead of time, then finished rows are persisted, then the next trial is asked ahead."""
        sched = self.scheduler
        max_asks = 20 * max(remaining, 1) + 100  # a sampler stuck on known points cannot spin forever

        def want() -> bool:
            """Ask more? ``n_trials`` counts distinct configurations; a repeat is told the known
            values and costs no budget; the space running out ends the sweep early."""
            return not self.exhausted and sched.distinct < remaining and sched.asked < max_asks

        def ask_one() -> None:
            """Ask one trial; INFEASIBLE and duplicates are finished here and take no worker."""
            if sched.repeats >= MAX_REPEATS:
                self._enqueue_unmeasured(study, base.device)
                sched.repeats = 0
                if self.exhausted:
                    return
            trial = study.ask()
            self._open_trials[trial.number] = trial
            params = suggest(trial, self.cfg.search)
            spec = TrialSpec(**{**base.__dict__, "trial_number": trial.number, "params": params})
            recipe = to_recipe(params)
            reason = check_feasible(recipe, base.device)
            key = recipe.resolved(base.device).key()
            if reason and key not in self.seen:
                sched.admit_infeasible()
                row = self._infeasible(spec, reason)
                self.seen[key] = row
                self._finish(study, row)
                return
            sched.admit(spec, key, self.seen.get(key), self._duplicate)

        while True:
            self._check_stop()
            while pool.has_free() and (sched.ready or want()):
                if sched.ready:
                    pool.submit(payload_ref, self._with_known(sched.next_ready()), self.baseline)
                else:
                    ask_one()
            for row in sched.take_finished():  # workers are busy again: now persist + tell
                self._finish(study, row)
            if not sched.ready and want():
                ask_one()  # prepare the next trial while the workers run
            if not pool.inflight and not sched.ready:
                if not want() and sched.idle():
                    for row in sched.take_finished():
                        self._finish(study, row)
                    return False
                continue
            self.progress.update(running=len(pool.inflight))
            for row in pool.wait(self.cfg.trial_timeout_s, self.cfg.max_retries, self.baseline):
                twin = row.get("state") == "COMPLETE" and row.get("duplicate_of") is not None \
                    and row.get("latency_ms") is None  # the worker found a no-op twin, not timed
                if twin:
                    original = self.by_number.get(int(row["duplicate_of"]))
                    spec = _spec_of(row, base)
                    if original is not None:
                        row = self._duplicate(spec, original, own=row)
                was_new = row.get("duplicate_of") is None
                row = self._remember(row)
                if twin or (was_new and row.get("duplicate_of") is not None):
                    sched.not_distinct_after_all()  # its effective recipe was measured: ask again
                key = sched.key_of(int(row["trial_number"]))
                if row["state"] in ("COMPLETE", "INFEASIBLE"):  # reusable: a failure is measured again
                    self.seen[key] = row
                sched.done(row, self._duplicate)
            if not pool.inflight and sched.idle() and not want():
                for row in sched.take_finished():
                    self._finish(study, row)
                return False

    def _enqueue_unmeasured(self, study: optuna.Study, device: str) -> None:
        """After MAX_REPEATS repeats, queue a point of the space nothing has measured yet; with none
        left in a discrete space, mark the space exhausted."""
        import random

        busy = set(self.scheduler.inflight)
        fresh = []
        runnable = 0
        for params in grid(self.cfg.search):
            try:
                recipe = to_recipe(params)
                key = recipe.resolved(device).key()
            except (KeyError, ValueError):
                continue
            if check_feasible(recipe, device):
                continue  # refused here: it would measure nothing
            runnable += 1
            if key not in self.seen and key not in busy:
                fresh.append(params)
        if fresh:
            study.enqueue_trial(random.Random(self.cfg.seed + len(self.seen)).choice(fresh),
                                user_attrs={"after_repeats": MAX_REPEATS})
        elif not runnable:
            # Feasibility depends on the techniques, not on a continuous amount, so the grid's
            # sample of amounts speaks for the whole space: nothing in it can run on this device.
            self.exhausted = True
            log.warning("nothing in the search space can run on %s: every configuration is INFEASIBLE "
                        "(their rows say why)", device)
        elif self._discrete_space():
            self.exhausted = True
            log.warning("the search space is exhausted: every distinct configuration has a row")

    def _discrete_space(self) -> bool:
        from .space import amount_choices

        pruning = [m for m in self.cfg.search.pruning_method if m != "none"]
        return not pruning or bool(amount_choices(self.cfg.search))

    def _finish(self, study: optuna.Study, row: dict[str, Any]) -> None:
        if self.baseline is not None and not row.get("hardware"):
            # Rows made in the driver (infeasible, timeout, dead worker) carry the sweep's
            # environment, so reports never show a phantom "unknown" hardware group.
            for k in ENV_COLUMNS:
                row.setdefault(k, self.baseline.get(k))
                if row[k] is None:
                    row[k] = self.baseline.get(k)
        if self._lock is not None:
            self._lock.ensure_held()  # an object-store lease lost: stop before writing
        row["segment"] = self.segment
        self.writer.write(row)
        self._tell(study, int(row["trial_number"]), row)
        self.progress.trial_done(row)  # duplicates say "same as trial N"

    def _infeasible(self, spec: TrialSpec, reason: str) -> dict[str, Any]:
        from .trial import _base_row

        row = _base_row(spec, to_recipe(dict(spec.params)))
        row.update(state="INFEASIBLE", error_type="UnsupportedOnDevice", error=reason, device=spec.device,
                   duration_s=0.0)
        return row

    def _duplicate(self, spec: TrialSpec, original: dict[str, Any],
                   own: dict[str, Any] | None = None) -> dict[str, Any]:
        """The original's measurement under this trial's number and requested recipe. ``own``:
        what this trial's build reported (its effective recipe and stages) when the duplicate
        was found after building (a no-op stage)."""
        from .trial import _base_row

        row = dict(original)
        requested = {k: v for k, v in _base_row(spec, to_recipe(dict(spec.params))).items()
                     if k in _RECIPE_COLUMNS}
        row.update(requested)
        row.update(trial_number=spec.trial_number, duplicate_of=original["trial_number"],
                   params_json=json.dumps(dict(spec.params), sort_keys=True), duration_s=0.0,
                   attempts=spec.attempts)
        if own:
            row.update({k: own[k] for k in ("effective_recipe", "stages_json", "duration_s") if k in own})
        return row

    def _remember(self, row: dict[str, Any]) -> dict[str, Any]:
        """Track measured rows by effective recipe; a concurrent twin becomes a duplicate."""
        if row.get("state") != "COMPLETE":
            return row
        self.by_number[int(row["trial_number"])] = row
        eff = _effective_key(row)
        if eff is None:
            return row
        first = self.effective_seen.get(eff)
        if first is None:
            self.effective_seen[eff] = row
        elif row.get("duplicate_of") is None and int(first["trial_number"]) != int(row["trial_number"]):
            row = {**row, "duplicate_of": int(first["trial_number"])}  # measured twice by a race: one label
        return row

    def _with_known(self, spec: TrialSpec) -> TrialSpec:
        from dataclasses import replace

        known = {k: int(r["trial_number"]) for k, r in self.effective_seen.items()}
        return replace(spec, known_effective=known)

    def _states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.writer.existing_trials():
            row = self.writer.read(n)
            if row and self._mine(row):  # this segment's rows (the summary is about this run's settings)
                counts[row["state"]] = counts.get(row["state"], 0) + 1
        return counts


def _key_of(row: dict[str, Any]) -> str:
    """A row's configuration key: its recipe with ``auto`` resolved to the backend that ran it."""
    from dataclasses import replace

    from optimizers.recipe import Recipe

    recipe = Recipe.from_row(row)
    backend = row.get("quant_backend")
    if recipe.quantization_type != "none" and recipe.quantization_backend == "auto":
        if isinstance(backend, str) and backend:
            recipe = replace(recipe, quantization_backend=backend)
        else:
            recipe = recipe.resolved(str(row.get("device") or "cpu"))
    return recipe.key()


_RECIPE_COLUMNS = ("pruning_method", "pruning_amount", "quantization_type", "quantization_bits", "precision",
                   "compile", "quantization_backend")


def _effective_key(row: dict[str, Any]) -> str | None:
    """Key of the recipe a row's model really is (its stages that changed something)."""
    from optimizers.recipe import Recipe

    raw = row.get("effective_recipe")
    if int(row.get("trial_number", 0)) < 0:
        return Recipe().key()
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return Recipe.from_params(json.loads(raw)).key()
    except (ValueError, TypeError):
        return None


def _spec_of(row: dict[str, Any], base: TrialSpec) -> TrialSpec:
    params = json.loads(row.get("params_json") or "{}")
    return TrialSpec(**{**base.__dict__, "trial_number": int(row["trial_number"]), "params": params,
                        "attempts": int(row.get("attempts") or 1)})


def _config_json(cfg: SweepConfig) -> str:
    from .config import config_json

    return config_json(cfg)


@dataclass
class _Inflight:
    ref: Any
    actor: Any
    spec: TrialSpec
    started: float


class _Pool:
    """Worker actors and their in-flight trials; handles timeouts, dead workers and OOM."""

    def __init__(self, executor: Any, n: int, args: tuple[Any, ...], payload_ref: list[Any]) -> None:
        self.ex = executor
        self.args = args  # make_worker(config_dir, refs, cpus, gpus, pin, worker_cls, resources)
        self._payload = payload_ref
        self.inflight: dict[int, _Inflight] = {}
        self.free: list[Any] = []
        self._start(n)

    def _start(self, n: int) -> None:
        """Start ``n`` workers and wait until each holds the model: start-up is not trial time."""
        import ray

        # A worker placed on a host that just died (Ray declares a node dead ~13 s after it goes)
        # dies while starting: start another in its place until the deadline.
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        pending = [self.ex.make_worker(*self.args) for _ in range(n)]
        while pending:
            refs = [a.prepare.remote(self._payload) for a in pending]
            died = 0
            for i, (actor, ref) in enumerate(zip(pending, refs, strict=True)):
                try:
                    ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                    self.free.append(actor)
                except self.ex.ActorDied:
                    died += 1
                except self.ex.GetTimeout:
                    for a in pending[i:]:
                        ray.kill(a, no_restart=True)
                    raise SweepError(
                        f"no worker could start within {WORKER_START_TIMEOUT_S:.0f} s: no node can place "
                        f"a worker with {self.args[2]} CPU / {self.args[3]} GPU / {self.args[6]} "
                        "(resources.* larger than any single node, or a node was lost?)") from None
            if died and time.monotonic() >= deadline:
                raise SweepError(f"workers kept dying while starting for {WORKER_START_TIMEOUT_S:.0f} s "
                                 "(a lost node, or the model does not fit in a worker's memory)")
            if died:
                time.sleep(1.0)
            pending = [self.ex.make_worker(*self.args) for _ in range(died)]

    def has_free(self) -> bool:
        return bool(self.free)

    def submit(self, payload_ref: list[Any], spec: TrialSpec, baseline: dict[str, Any] | None) -> None:
        actor = self.free.pop()
        ref = actor.run.remote(payload_ref, spec, baseline)
        self.inflight[spec.trial_number] = _Inflight(ref, actor, spec, time.monotonic())

    def run_sync(self, payload_ref: list[Any], spec: TrialSpec, baseline: dict[str, Any] | None,
                 timeout_s: float, check_stop: Any = None) -> dict[str, Any]:
        self.submit(payload_ref, spec, baseline)
        while True:
            if check_stop is not None:
                check_stop()
            rows = self.wait(timeout_s, 0, baseline)
            if rows:
                return rows[0]

    def wait(self, timeout_s: float, max_retries: int, baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
        import ray

        if not self.inflight:
            return []
        now = time.monotonic()
        next_deadline = min(f.started + timeout_s for f in self.inflight.values())
        ready, _ = ray.wait([f.ref for f in self.inflight.values()], num_returns=1,
                            timeout=max(0.0, min(1.0, next_deadline - now)))
        rows = []
        by_ref = {f.ref: n for n, f in self.inflight.items()}
        for ref in ready:
            number = by_ref[ref]
            fl = self.inflight.pop(number)
            try:
                rows.append(ray.get(ref))
                self.free.append(fl.actor)
            except self.ex.OutOfMemory as exc:
                self._replace(fl.actor)
                rows.append(self._fail_row(fl, "OOM", f"worker killed for memory: {str(exc).splitlines()[0]}"))
            except self.ex.ActorDied as exc:
                self._replace(fl.actor)
                if fl.spec.attempts <= max_retries:
                    from dataclasses import replace

                    spec = replace(fl.spec, attempts=fl.spec.attempts + 1)
                    self.submit(self._payload, spec, baseline)
                else:
                    rows.append(self._fail_row(fl, "WORKER_DIED",
                                               f"worker process died {fl.spec.attempts} time(s): "
                                               f"{str(exc).splitlines()[0][:300]}"))
            except Exception as exc:  # noqa: BLE001 - e.g. deserialization errors: still a row
                self.free.append(fl.actor)
                rows.append(self._fail_row(fl, type(exc).__name__, str(exc).splitlines()[0][:500]))
        now = time.monotonic()
        for number, fl in list(self.inflight.items()):
            if now - fl.started > timeout_s:
                self.inflight.pop(number)
                ray.kill(fl.actor, no_restart=True)
                self._start(1)
                rows.append(self._fail_row(fl, "TIMEOUT", f"trial exceeded trial_timeout_s={timeout_s:g}"))
        return rows

    def _replace(self, actor: Any) -> None:
        import ray

        with contextlib.suppress(Exception):  # already dead
            ray.kill(actor, no_restart=True)
        self._start(1)

    @staticmethod
    def _fail_row(fl: _Inflight, error_type: str, error: str) -> dict[str, Any]:
        from .trial import _base_row

        spec = fl.spec
        row = _base_row(spec, to_recipe(dict(spec.params)) if spec.params else to_recipe(
            {"pruning_method": "none", "quantization_type": "none", "precision": "fp32"}))
        row.update(state="FAIL", error_type=error_type, error=error, device=spec.device,
                   duration_s=time.monotonic() - fl.started)
        return row

    def close(self) -> None:
        import ray

        for fl in self.inflight.values():
            ray.kill(fl.actor, no_restart=True)
        for a in self.free:
            ray.kill(a, no_restart=True)
        self.inflight.clear()
        self.free.clear()


def run_sweep(cfg: SweepConfig, config_dir: Path, *, address: str | None = None,
              progress: bool | None = None, worker_cls: type | None = None,
              new_settings: bool = False) -> SweepSummary:
    """Run (or resume) the sweep described by ``cfg``; returns counts per state."""
    return Driver(cfg, config_dir, address=address, progress=progress, worker_cls=worker_cls,
                  new_settings=new_settings).run()

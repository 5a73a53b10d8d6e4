"""One driver per out (flock / lease), private per-user folders, config drift, safe writes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from sweep import guard
from sweep.config import SweepConfig, parse_config
from sweep.errors import ConfigError, SweepError
from sweep.guard import (
    LEASE_NAME,
    LOCK_NAME,
    FileLock,
    LeaseLock,
    OutLockedError,
    UnsafeDirError,
    check_drift,
    describe_holder,
    out_lock,
    probe_out_lock,
    secure_dir,
    segment_id,
)
from sweep.results import ResultsWriter

ROOT = Path(__file__).resolve().parents[1]


def _refused(out: str, holder: dict[str, object]) -> str:
    return re.escape(f"config key 'out': {out} is in use by another optsweep driver ({describe_holder(holder)}); "
                     "run one driver per out, or wait for it to end")


# -- private folders ---------------------------------------------------------------------------
def test_secure_dir_creates_0700_and_refuses_unsafe_folders(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    secure_dir(str(mine), "lock folder", "fix it")
    assert (mine.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UnsafeDirError, match=re.escape(f"lock folder {str(shared)!r} is writable by others "
                                                       "(mode 1777); fix it")):
        secure_dir(str(shared), "lock folder", "fix it")
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(UnsafeDirError, match="is not a folder \\(a symlink or file is in its place\\)"):
        secure_dir(str(link), "lock folder", "fix it")


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another uid needs root")
def test_secure_dir_refuses_another_users_folder(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(UnsafeDirError, match=re.escape(f"is owned by uid 4242, not by you (uid {os.geteuid()})")):
        secure_dir(str(theirs), "core lock folder", "fix it")


def test_a_squatted_private_folder_is_refused_with_a_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squat = tmp_path / "squatted"
    squat.mkdir(mode=0o777)
    squat.chmod(0o777)  # what another user's pre-made /tmp/optsweep-<uid> looks like to us
    monkeypatch.setenv(guard.PRIVATE_DIR_ENV, str(squat))
    with pytest.raises(UnsafeDirError, match=re.escape(
            f"optsweep's private folder {str(squat)!r} is writable by others (mode 0777); "
            f"set {guard.PRIVATE_DIR_ENV} to a folder of your own (or remove it, if it is yours)")):
        guard.private_dir("cores")
    monkeypatch.setenv(guard.PRIVATE_DIR_ENV, str(tmp_path / "mine"))
    assert guard.private_dir("cores") == str(tmp_path / "mine" / "cores")
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o700


def test_core_locks_live_in_a_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from sweep.executor import claim_cores
    from sweep.trial import latency_lock

    assert guard.private_root().endswith(f"optsweep-{os.geteuid()}")
    locks = tmp_path / "locks"
    monkeypatch.setenv("OPTSWEEP_CORE_LOCK_DIR", str(locks))
    with latency_lock(torch.device("cpu")):
        assert (locks / "latency-cpu.lock").stat().st_mode & 0o777 == 0o600
    assert locks.stat().st_mode & 0o777 == 0o700
    cores, fds = claim_cores(1)
    assert len(cores) == 1 and (locks / f"core-{cores[0]}.lock").exists()
    for fd in fds:
        os.close(fd)
    locks.chmod(0o777)  # another user could now hold every lock
    with pytest.raises(UnsafeDirError, match="core lock folder \\(OPTSWEEP_CORE_LOCK_DIR\\) .* is writable by others"), \
            latency_lock(torch.device("cpu")):
        pass
    with caplog.at_level(logging.WARNING, logger="optsweep"):
        assert claim_cores(1) == ([], [])  # unpinned (rows say 'shared'), never someone else's lock
    assert "not pinning cores: core lock folder" in caplog.text


# -- one driver per out ------------------------------------------------------------------------
def test_second_driver_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with out_lock(out) as first:
        assert first.holder["pid"] == os.getpid() and first.holder["host"] == socket.gethostname()
        assert probe_out_lock(out) == ("held", first.holder)
        with pytest.raises(OutLockedError, match=_refused(out, first.holder)):
            FileLock(out)  # another open file description: what another process would get
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released cleanly: nothing stale left
    assert probe_out_lock(out) == ("free", None)
    with out_lock(out) as again:
        assert again.previous is None


def test_a_dead_drivers_lock_is_taken_over(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    code = ("import sys, time; from sweep.guard import acquire_out_lock; acquire_out_lock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, out], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        state, holder = probe_out_lock(out)
        assert state == "held" and holder is not None and holder["pid"] == proc.pid
        with pytest.raises(OutLockedError, match=_refused(out, holder)):
            FileLock(out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert probe_out_lock(out) == ("stale", holder)  # the OS released the flock; the file remains
    with out_lock(out) as lock:
        assert lock.previous == holder and lock.holder["pid"] == os.getpid()


class _Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_lease_refuses_a_live_holder_and_takes_over_an_expired_one(tmp_path: Path) -> None:
    fs, clock = pafs.LocalFileSystem(), _Clock()
    a = LeaseLock("s3://b/out", fs, str(tmp_path), ttl_s=60, settle_s=0, clock=clock, refresh=False)
    assert json.loads((tmp_path / LEASE_NAME).read_text())["expires"] == clock.t + 60
    clock.t += 30
    assert a.refresh_once()  # now valid until +90
    with pytest.raises(OutLockedError, match=_refused("s3://b/out", a.holder)):  # at +0: live
        LeaseLock("s3://b/out", fs, str(tmp_path), ttl_s=60, settle_s=0, clock=_Clock(), refresh=False)
    assert "lease until" in describe_holder(a.holder)
    clock.t += 61  # +91: a stopped refreshing (dead, or stalled)
    b = LeaseLock("s3://b/out", fs, str(tmp_path), ttl_s=60, settle_s=0, clock=clock, refresh=False)
    assert b.previous is not None and b.previous["id"] == a.holder["id"]
    assert not a.refresh_once() and a.lost  # a stalled holder learns it lost the lease
    with pytest.raises(SweepError, match="lost the lease on s3://b/out: another driver took it over; stopping"):
        a.ensure_held()
    a.release()  # not a's any more: left alone
    assert (tmp_path / LEASE_NAME).exists()
    b.release()
    assert not (tmp_path / LEASE_NAME).exists()


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid, "started": "2025-01-01T00:00:00Z", "id": "x",
              "expires": 9e10}
    (tmp_path / LEASE_NAME).write_text(json.dumps(holder))
    uri = f"file://{tmp_path}"
    assert probe_out_lock(uri) == ("stale", holder)
    with out_lock(uri, settle_s=0, refresh=False) as lock:  # a URI: the lease, not flock
        assert isinstance(lock, LeaseLock) and lock.previous == holder
        assert probe_out_lock(uri)[0] == "held"


def test_clean_partials_leaves_a_live_drivers_temp_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = ResultsWriter(out, {"latency_ms": "minimize"}, {}, "t")
    partial = w.dir / ".tmp-trial-000001.parquet-abc.parquet.partial"
    partial.write_bytes(b"PAR1 half")
    other = FileLock(str(out))  # another driver's lock
    try:
        assert w.clean_partials() == 0 and partial.exists()
    finally:
        other.release()
    with out_lock(str(out)):
        assert w.clean_partials() == 1 and not partial.exists()


class _Job:
    def __init__(self, job_id: str, status: str, out: str | None, *, via_env: bool = True) -> None:
        from ray.job_submission import JobStatus

        self.submission_id, self.job_id, self.status = job_id, job_id, JobStatus(status)
        self.runtime_env = {"env_vars": {"OPTSWEEP_OUT": out}} if via_env else {}
        self.metadata = {} if via_env else {"optsweep_out": out}


class _Client:
    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs

    def list_jobs(self) -> list[_Job]:
        return self.jobs


def test_find_running_job_matches_the_same_out() -> None:
    from sweep.cluster import find_running_job

    client = _Client([_Job("done", "SUCCEEDED", "/o"), _Job("other", "RUNNING", "/p"),
                      _Job("mine", "RUNNING", "/o"),
                      _Job("old", "PENDING", "s3://k:***@b/x", via_env=False)])  # redacted metadata only
    assert find_running_job(client, "/o").submission_id == "mine"  # type: ignore[arg-type, union-attr]
    assert find_running_job(client, "s3://k:secret@b/x").submission_id == "old"  # type: ignore[arg-type, union-attr]
    assert find_running_job(client, "/q") is None  # type: ignore[arg-type]


# -- config drift ------------------------------------------------------------------------------
BASE = {"name": "d", "model": "m:model", "example_inputs": "m:inputs", "evaluate": "m:evaluate",
        "search": {"pruning_method": ["none", "magnitude"], "precision": ["fp32"]},
        "pruning": {"n_iterations": 1}, "measure": {"warmup": 5}, "resources": {"cpus_per_trial": 1}}


def _stored(**over: object) -> dict[str, object]:
    from sweep.config import config_json

    return dict(json.loads(config_json(parse_config({**BASE, **over}))))


def _cfg(**over: object) -> SweepConfig:
    return parse_config({**BASE, **over})


@pytest.mark.parametrize("over", [
    {"n_trials": 99}, {"workers": 3}, {"sampler": "random"}, {"seed": 7}, {"trial_timeout_s": 5},
    {"max_retries": 4}, {"out": "/elsewhere"}, {"resources": {"cpus_per_trial": 1, "custom": {"nic": 1}}},
    {"search": {"pruning_method": ["none", "magnitude", "random"], "precision": ["fp32", "fp16"]}},  # added
    {"search": {"pruning_method": ["magnitude"], "precision": ["fp32"]}},  # removed: old rows still comparable
    {"storage": None},
], ids=lambda o: next(iter(o)))
def test_drift_that_keeps_rows_comparable_is_allowed(over: dict[str, object]) -> None:
    assert check_drift(_stored(), _cfg(**over), new_settings=False) == segment_id(_cfg())


@pytest.mark.parametrize(("over", "keys"), [
    ({"model": "m:other"}, "model (\"m:model\" -> \"m:other\")"),
    ({"example_inputs": "m:x"}, "example_inputs (\"m:inputs\" -> \"m:x\")"),
    ({"evaluate": None}, "evaluate (\"m:evaluate\" -> unset)"),
    ({"calibration": "m:calib"}, "calibration (unset -> \"m:calib\")"),
    ({"train_step": "m:step"}, "train_step (unset -> \"m:step\")"),
    ({"pruning": {"n_iterations": 3}}, "pruning.n_iterations (1 -> 3)"),
    ({"quantization": {"reduce_range": True}}, "quantization.reduce_range (unset -> true)"),
    ({"measure": {"warmup": 1}}, "measure.warmup (5 -> 1)"),
    ({"device": "auto"}, "device (\"cpu\" -> \"auto\")"),
    ({"constraints": {"max_accuracy_drop": 0.01}}, "constraints.max_accuracy_drop (unset -> 0.01)"),
    ({"resources": {"cpus_per_trial": 2}}, "resources.cpus_per_trial (1.0 -> 2.0)"),
    ({"objectives": {"latency_ms": "minimize", "accuracy": "minimize"}},
     "objectives.accuracy (\"maximize\" -> \"minimize\"), objectives.size_bytes (\"minimize\" -> unset)"),
], ids=lambda o: next(iter(o)) if isinstance(o, dict) else "")
def test_drift_in_what_a_row_means_is_refused_in_one_line(over: dict[str, object], keys: str) -> None:
    msg = (f"config changed since this out was started: {keys}; these change what a row measures: "
           "use a new 'out', or pass --new-settings to start a new segment")
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        check_drift(_stored(), _cfg(**over), new_settings=False)
    new = check_drift(_stored(), _cfg(**over), new_settings=True)
    assert new == segment_id(_cfg(**over)) != segment_id(_cfg())
    assert check_drift(_stored(**over), _cfg(), new_settings=True) == segment_id(_cfg())  # back: the old segment


def test_drift_names_every_changed_key() -> None:
    with pytest.raises(ConfigError, match=r"measure\.min_run_time_s \(0\.3 -> 1\.0\), measure\.warmup \(5 -> 1\), "
                                          r"model \(\"m:model\" -> \"m:b\"\); these change"):
        check_drift(_stored(), _cfg(model="m:b", measure={"warmup": 1, "min_run_time_s": 1.0}), False)


def test_study_identity_changes_are_refused_even_with_new_settings() -> None:
    with pytest.raises(ConfigError, match=re.escape("config key 'name': \"other\" differs from this out's study "
                                                    "\"d\"; rows are keyed by that study's trials: use a new 'out'")):
        check_drift(_stored(), _cfg(name="other"), new_settings=True)
    stored = _stored(storage="postgresql://u:old@db/x")
    assert check_drift(stored, _cfg(storage="postgresql://u:rotated@db/x"), False)  # new password: same study
    with pytest.raises(ConfigError, match=re.escape("config key 'storage': \"postgresql://u:***@other/x\" is not "
                                                    "the study storage this out was started with")):
        check_drift(stored, _cfg(storage="postgresql://u:old@other/x"), new_settings=True)


def test_keys_an_older_optsweep_did_not_store_count_as_their_default() -> None:
    stored = _stored()
    del stored["train_step"]
    stored["measure"] = {"warmup": 5}  # no min_run_time_s, pin_cores, exclusive yet
    assert check_drift(stored, _cfg(), new_settings=False) == segment_id(_cfg())


def test_resume_segment_reads_the_manifest(tmp_path: Path) -> None:
    from sweep.guard import resume_segment

    w = ResultsWriter(tmp_path / "out", {"latency_ms": "minimize"}, {}, "d")
    assert resume_segment(w, _cfg(), False) == segment_id(_cfg())  # a new out
    w.write_text("sweep.json", json.dumps({"name": "d", "config": _stored()}))
    assert resume_segment(w, _cfg(n_trials=50), False) == segment_id(_cfg())
    with pytest.raises(ConfigError, match=r"^config changed since this out was started: model "):
        resume_segment(w, _cfg(model="m:b"), False)
    w.write_text("sweep.json", "{truncated")
    with pytest.raises(ConfigError, match=re.escape(f"{w.out}/sweep.json is not a sweep manifest (no 'config'); "
                                                    "restore it or use a new 'out'")):
        resume_segment(w, _cfg(), False)


def test_hostile_lock_and_manifest_files_are_one_line_errors(tmp_path: Path) -> None:
    from sweep.guard import resume_segment

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").write_text("x")
    (out / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    msg = re.escape(f"config key 'out': {out}/{LOCK_NAME} is a symlink; optsweep never writes through one: remove it")
    with pytest.raises(ConfigError, match=f"^{msg}$"):
        FileLock(str(out))
    with pytest.raises(ConfigError, match=f"^{msg}$"):
        probe_out_lock(str(out))
    assert (tmp_path / "elsewhere").read_text() == "x"  # not written through
    w = ResultsWriter(tmp_path / "out2", {"latency_ms": "minimize"}, {}, "d")
    (tmp_path / "out2" / "sweep.json").write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{w.out}/sweep.json cannot be read (UnicodeDecodeError); "
                                                    "restore it or use a new 'out'")):
        resume_segment(w, _cfg(), False)


@pytest.mark.parametrize("expires", ["soon", 1e300, float("nan"), True, [1], -5])
def test_a_lease_with_a_hostile_expiry_reads_as_expired(expires: object) -> None:
    holder = guard._parse_holder(json.dumps({"host": "h", "pid": 1, "started": "t", "expires": expires}))
    assert holder is not None and holder["expires"] == 0.0
    assert describe_holder(holder) == "host h, pid 1, started t"


# -- writes ------------------------------------------------------------------------------------
def test_writes_never_follow_symlinks_and_leave_no_temp_files(tmp_path: Path) -> None:
    w = ResultsWriter(tmp_path / "out", {"latency_ms": "minimize"}, {}, "t")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (w.dir / "trial-000001.parquet").symlink_to(victim)
    (w.out / "sweep.json").symlink_to(victim)
    (w.out / ".sweep.json.tmp").symlink_to(victim)  # the old fixed temp name
    w.write({"trial_number": 1, "state": "FAIL"})
    w.write_text("sweep.json", '{"name": "t"}')
    assert victim.read_text() == "precious"
    assert not (w.dir / "trial-000001.parquet").is_symlink() and w.read(1)["state"] == "FAIL"  # type: ignore[index]
    assert json.loads((w.out / "sweep.json").read_text()) == {"name": "t"}
    assert w.partials() == []


def test_damaged_row_files_are_moved_aside_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = ResultsWriter(tmp_path / "out", {"latency_ms": "minimize"}, {}, "t")
    for n in (0, 1, 2):
        w.write({"trial_number": n, "state": "COMPLETE", "latency_ms": 1.0})
    good = (w.dir / "trial-000001.parquet").read_bytes()
    (w.dir / "trial-000001.parquet").write_bytes(good[: len(good) // 2])  # a copy cut short
    (w.dir / "trial-000002.parquet").write_bytes(b"not parquet at all")
    with caplog.at_level(logging.WARNING, logger="optsweep"):
        assert w.read(1) is None
    assert f"skipping unreadable result file {w.dir / 'trial-000001.parquet'}" in caplog.text
    assert sorted(w.find_damaged()) == ["trial-000001.parquet", "trial-000002.parquet"]
    assert w.quarantine_damaged() == ["trial-000001.parquet", "trial-000002.parquet"]
    assert w.existing_trials() == {0}  # their trials run again on resume
    assert sorted(p.name for p in (w.dir / ".damaged").iterdir()) == ["trial-000001.parquet", "trial-000002.parquet"]
    (w.dir / "trial-000002.parquet").write_bytes(b"damaged again")
    assert w.quarantine_damaged() == ["trial-000002.parquet"]
    assert (w.dir / ".damaged" / "trial-000002.parquet.1").exists()  # the earlier copy is kept


def test_reordered_objectives_are_refused_on_resume(tmp_path: Path) -> None:
    # Same directions, swapped names: without the stored names the study would be told swapped values.
    from sweep.driver import Driver

    first = {"latency_ms": "minimize", "size_bytes": "minimize"}
    d = Driver(_cfg(objectives=first, out=str(tmp_path / "out")), tmp_path)
    assert d._open_study().metric_names == ["latency_ms", "size_bytes"]
    again = Driver(_cfg(objectives=dict(first), out=str(tmp_path / "out")), tmp_path)
    assert again._open_study().metric_names == ["latency_ms", "size_bytes"]
    swapped = Driver(_cfg(objectives={"size_bytes": "minimize", "latency_ms": "minimize"},
                          out=str(tmp_path / "out")), tmp_path)
    with pytest.raises(ConfigError, match=re.escape(
            "config key 'objectives': order ['size_bytes', 'latency_ms'] differs from the existing study's "
            f"['latency_ms', 'size_bytes'] in {tmp_path / 'out'}; keep the order, or use a new 'out' or 'name'")):
        swapped._open_study()

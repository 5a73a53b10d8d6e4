"""What keeps a sweep's ``out`` whole: one driver at a time, per-user private folders, no silent
config drift.

- :func:`out_lock` holds ``out`` for one driver: an ``flock`` on ``OUT/.optsweep.lock`` for a
  local (or shared POSIX) folder, a lease object ``OUT/.optsweep.lease`` on an object store. A
  second driver is refused at once with one line naming the holder. A dead driver's ``flock``
  is released by the OS; its lease expires (or, on the same host, is taken over at once when
  its pid no longer exists).
- :func:`private_dir` is this user's folder under ``/tmp`` (``/tmp/optsweep-<uid>``, mode 0700):
  the private Ray's session files and the core-pinning locks live there, so another user can
  neither read, block nor break them.
- :func:`check_drift` compares a resumed sweep's config with the one its rows were measured
  under, and returns the segment id (:func:`segment_id`) the rows carry.

Contract: :func:`out_lock` is the only writer lock. Holding it, the driver may treat every
temp file in ``out`` as a dead writer's leftover. Lock and lease are advisory: code that does
not take them (a hand-run script) is not stopped.

>>> import tempfile
>>> with out_lock(tempfile.mkdtemp()) as lock:
...     sorted(lock.holder)
['host', 'id', 'pid', 'started', 'user']
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import hashlib
import json
import logging
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, SweepError

if TYPE_CHECKING:
    from .config import SweepConfig

log = logging.getLogger("optsweep")

LOCK_NAME = ".optsweep.lock"
LEASE_NAME = ".optsweep.lease"
LEASE_TTL_S = 60.0
LEASE_SETTLE_S = 1.0


class OutLockedError(ConfigError):
    """Another driver holds ``out`` (exit 2: run one driver per ``out``)."""


class UnsafeDirError(ConfigError):
    """A folder that must be private is not (owned by someone else, writable by others)."""


# -- private folders ---------------------------------------------------------------------------
def secure_dir(path: str, what: str, hint: str) -> str:
    """Create ``path`` (mode 0700) or accept it only if it is a real folder of this user that no
    one else can write. Raises :class:`UnsafeDirError` with one line ending in ``hint``."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirError(f"{what} {path!r} is not a folder (a symlink or file is in its place); {hint}")
    if st.st_uid != os.geteuid():
        raise UnsafeDirError(f"{what} {path!r} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); {hint}")
    if st.st_mode & 0o022:
        raise UnsafeDirError(f"{what} {path!r} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); {hint}")
    return path


PRIVATE_DIR_ENV = "OPTSWEEP_PRIVATE_DIR"


def private_root() -> str:
    """``OPTSWEEP_PRIVATE_DIR``, else ``/tmp/optsweep-<uid>``: short (Ray's socket paths have a
    length limit) and per user. Another user can create ``/tmp/optsweep-<uid>`` first (``/tmp``
    is shared), and it is then refused; the variable is the way out that needs nobody's help."""
    explicit = os.environ.get(PRIVATE_DIR_ENV)
    if explicit:
        return os.path.abspath(explicit)
    base = "/tmp" if os.path.isdir("/tmp") else os.path.realpath(os.environ.get("TMPDIR", "."))
    return os.path.join(base, f"optsweep-{os.geteuid()}")


def private_dir(*parts: str) -> str:
    """This user's folder ``/tmp/optsweep-<uid>/<parts...>``; the root is checked as
    :func:`secure_dir` (sub-folders inherit its protection: nobody else can traverse it)."""
    path = secure_dir(private_root(), "optsweep's private folder",
                      f"set {PRIVATE_DIR_ENV} to a folder of your own (or remove it, if it is yours)")
    for part in parts:
        path = os.path.join(path, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    return path


def core_lock_dir() -> str:
    """Where core-pinning and latency locks live: ``OPTSWEEP_CORE_LOCK_DIR`` or the private
    ``/tmp/optsweep-<uid>/cores``. Either way it must be this user's and not writable by others,
    or another user could hold every lock (block all trials) or swap the files."""
    explicit = os.environ.get("OPTSWEEP_CORE_LOCK_DIR")
    if not explicit:
        return secure_dir(private_dir("cores"), "core lock folder", "remove it or set OPTSWEEP_CORE_LOCK_DIR")
    parent = os.path.dirname(os.path.abspath(explicit))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    return secure_dir(explicit, "core lock folder (OPTSWEEP_CORE_LOCK_DIR)",
                      "point OPTSWEEP_CORE_LOCK_DIR at a folder of your own")


def open_lock_file(path: str) -> int:
    """An fd for an ``flock`` file: created 0600, never through a symlink."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


# -- one driver per out ------------------------------------------------------------------------
def _now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _me() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.geteuid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user, "started": _now_iso(),
            "id": uuid.uuid4().hex}


def describe_holder(holder: Mapping[str, Any] | None) -> str:
    """``host h, pid 42, started 2025-01-01T00:00:00Z`` (``unknown holder`` for an empty lock)."""
    if not holder:
        return "holder unknown: the lock file is empty"
    text = f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
    if holder.get("expires"):
        text += f", lease until {_now_iso(float(holder['expires']))}"
    return "".join(c if c.isprintable() else "?" for c in text)


def _redacted(out: str) -> str:
    from .config import redact

    return redact(out) or out


def _locked_error(out: str, holder: Mapping[str, Any] | None, extra: str = "") -> OutLockedError:
    return OutLockedError(f"config key 'out': {_redacted(out)} is in use by another optsweep driver "
                          f"({describe_holder(holder)}){extra}; run one driver per out, or wait for it to end")


_MAX_EXPIRES = 253402300799.0  # 9999-12-31T23:59:59Z, the last time a datetime can show


def _parse_holder(data: bytes | str) -> dict[str, Any] | None:
    try:
        holder = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(holder, dict):
        return None
    # The file is data anyone with write access to out may have edited: a lease's expiry must be a
    # finite time a datetime can show, or it is treated as expired.
    expires = holder.get("expires")
    if expires is not None:
        try:
            ok = isinstance(expires, (int, float)) and not isinstance(expires, bool) and 0 <= expires < _MAX_EXPIRES
        except TypeError:
            ok = False
        if not ok:
            holder["expires"] = 0.0
    return holder


def _pid_dead_here(holder: Mapping[str, Any]) -> bool:
    """The holder ran on this host and its pid no longer exists (so it cannot come back)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


_HELD: dict[str, OutLock] = {}  # out -> the lock this process holds on it


class OutLock:
    """A held lock on ``out``. ``holder`` is what a refused driver is told; ``previous`` is the
    holder recorded by a dead driver whose lock this one took over (``None`` if there was none)."""

    out: str
    holder: dict[str, Any]
    previous: dict[str, Any] | None = None

    def ensure_held(self) -> None:
        """Raise :class:`SweepError` if the lock was lost (a lease that expired under us)."""

    def release(self) -> None:
        raise NotImplementedError


def _unusable_lock(out: str, exc: OSError) -> ConfigError:
    """One line for a lock file optsweep will not or cannot use (exit 2)."""
    where = f"{_redacted(out)}/{LOCK_NAME}"
    if exc.errno == errno.ELOOP:
        why = "is a symlink; optsweep never writes through one: remove it"
    elif exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        why = ("cannot be locked: this filesystem has no flock; use a local folder, or an object store URI "
               "(which takes a lease instead)")
    else:
        why = f"cannot be opened: {os.strerror(exc.errno) if exc.errno else exc}"
    return ConfigError(f"config key 'out': {where} {why}")


class FileLock(OutLock):
    """``flock(LOCK_EX | LOCK_NB)`` on ``OUT/.optsweep.lock``; the file holds the holder as JSON.

    Released by the OS when the process dies, however it dies. On a clean release the file is
    removed while still locked. A new holder checks, after locking, that the path still names the
    file it locked (a releaser may have removed it in between) and retries otherwise, so two
    drivers can never both hold "the" lock.
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.path = os.path.join(out, LOCK_NAME)
        os.makedirs(out, exist_ok=True)
        while True:
            try:
                fd = open_lock_file(self.path)
            except OSError as exc:
                raise _unusable_lock(out, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _parse_holder(os.pread(fd, 4096, 0))
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _locked_error(out, holder) from None
                raise _unusable_lock(out, exc) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        self.previous = _parse_holder(os.pread(fd, 4096, 0))
        self.holder = _me()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        os.fsync(fd)
        if self.previous:
            log.info("took over the lock of a driver that is gone (%s)", describe_holder(self.previous))

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


class LeaseLock(OutLock):
    """A lease object ``OUT/.optsweep.lease`` on a pyarrow filesystem (object stores).

    Object stores have no lock and pyarrow no conditional write, so the lease is write, wait
    ``settle_s``, read back: of two drivers starting together, the one whose write landed last
    keeps it and the other is refused. The holder refreshes it every ``ttl_s / 3``; a lease not
    refreshed for ``ttl_s`` (its driver is dead) is taken over. Expiry uses the holder's clock.
    """

    def __init__(self, out: str, fs: Any, base: str, *, ttl_s: float = LEASE_TTL_S,
                 settle_s: float = LEASE_SETTLE_S, clock: Callable[[], float] = time.time,
                 refresh: bool = True) -> None:
        self.out, self.fs, self.ttl_s, self.clock = out, fs, ttl_s, clock
        self.path = f"{base.rstrip('/')}/{LEASE_NAME}"
        self.lost = False
        self._stop = threading.Event()
        current = self.read()
        if current and current.get("expires", 0) > clock() and not _pid_dead_here(current):
            raise _locked_error(out, current)
        self.previous = current
        self.holder = {**_me(), "expires": 0.0}
        self._write()
        if settle_s:
            time.sleep(settle_s)
            now = self.read()
            if not now or now.get("id") != self.holder["id"]:
                raise _locked_error(out, now, " (it took the lease at the same moment)")
        self._thread: threading.Thread | None = None
        if refresh:
            self._thread = threading.Thread(target=self._refresh, name="optsweep-lease", daemon=True)
            self._thread.start()

    def read(self) -> dict[str, Any] | None:
        return _read_lease(self.fs, self.path)

    def _write(self) -> None:
        self.holder["expires"] = self.clock() + self.ttl_s
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(self.holder).encode())

    def refresh_once(self) -> bool:
        """Extend the lease; ``False`` (and :attr:`lost`) when someone else holds it now."""
        current = self.read()
        if current is None or current.get("id") != self.holder["id"]:
            self.lost = True
            log.error("lost the lease on %s to %s: another driver writes here too",
                      _redacted(self.out), describe_holder(current))
            return False
        self._write()
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.refresh_once():
                    return
            except OSError as exc:  # a blip: the next refresh may succeed before expiry
                log.warning("cannot refresh the lease on %s: %s", _redacted(self.out), exc)

    def ensure_held(self) -> None:
        if self.lost:
            raise SweepError(f"lost the lease on {_redacted(self.out)}: another driver took it over; stopping")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            current = self.read()
            if current and current.get("id") == self.holder["id"]:
                self.fs.delete_file(self.path)


def _read_lease(fs: Any, path: str) -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        with fs.open_input_stream(path) as f:
            return _parse_holder(f.read())
    except FileNotFoundError:  # removed between the two calls
        return None


def _key(out: str) -> str:
    return out if "://" in out else os.path.abspath(out)


def acquire_out_lock(out: str, **lease_options: Any) -> OutLock:
    """Take ``out`` for this driver or raise :class:`OutLockedError` naming the holder."""
    lock: OutLock
    if "://" in out:
        import pyarrow.fs as pafs

        try:
            fs, base = pafs.FileSystem.from_uri(out)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"config key 'out': cannot open {_redacted(out)}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        lock = LeaseLock(out, fs, base, **lease_options)
    else:
        lock = FileLock(out)
    _HELD[_key(out)] = lock
    return lock


@contextlib.contextmanager
def out_lock(out: str, **lease_options: Any) -> Iterator[OutLock]:
    """Hold ``out`` for the duration of the block (see :class:`FileLock`, :class:`LeaseLock`)."""
    lock = acquire_out_lock(out, **lease_options)
    try:
        yield lock
    finally:
        _HELD.pop(_key(out), None)
        lock.release()


def held_here(out: str) -> bool:
    """This process holds the lock on ``out``."""
    return _key(out) in _HELD


def probe_out_lock(out: str) -> tuple[str, dict[str, Any] | None]:
    """``("free" | "held" | "stale", holder)`` of a local out's lock, without taking it.

    ``stale``: a lock file a dead driver left (nobody holds its ``flock``). Object stores: the
    lease is ``held`` until it expires, then ``stale``.
    """
    if "://" in out:
        import pyarrow.fs as pafs

        fs, base = pafs.FileSystem.from_uri(out)
        current = _read_lease(fs, f"{base.rstrip('/')}/{LEASE_NAME}")
        if current is None:
            return "free", None
        live = current.get("expires", 0) > time.time() and not _pid_dead_here(current)
        return ("held" if live else "stale"), current
    path = os.path.join(out, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "free", None
    except OSError as exc:  # a symlink or unreadable file where the lock should be
        raise _unusable_lock(out, exc) from None
    try:
        holder = _parse_holder(os.pread(fd, 4096, 0))
        if held_here(out):
            return "held", holder
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return "held", holder
        return "stale", holder
    finally:
        os.close(fd)


# -- config drift ------------------------------------------------------------------------------
COMPARABLE_KEYS = frozenset({
    "n_trials", "workers", "sampler", "seed", "trial_timeout_s", "max_retries", "out", "search",
    "resources.custom", "plugins",
})
"""Keys that may change on resume: they decide which and how many trials run, where, and on
what, not what a row's numbers mean. ``search`` may gain or lose choices: every row records its
own parameters, so old rows stay comparable with new ones (a front over both is still honest).
``storage`` may change only in its credentials (see :func:`check_drift`). Every other key,
including keys this list does not know yet, is meaning-bearing: ``resources.cpus_per_trial`` and
``gpus_per_trial`` too, since they set the trial's threads and GPU share, and so its latency."""


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))


def _defaults(cls: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in getattr(cls, "model_fields", {}).items():
        if field.is_required():
            continue
        out[name] = _jsonable(field.get_default(call_default_factory=True))
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):  # objectives too: their order is the study's, checked there
            flat.update(_flatten(value, f"{path}."))  # an empty mapping adds nothing: {} == unset
        else:
            flat[path] = value
    return flat


def _comparable(path: str) -> bool:
    return any(path == k or path.startswith(f"{k}.") for k in COMPARABLE_KEYS)


def _meaning(flat: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not _comparable(k) and k != "storage"}


def _config_dict(cfg: SweepConfig) -> dict[str, Any]:
    from .config import config_json

    return dict(json.loads(config_json(cfg)))


def segment_id(cfg: SweepConfig | Mapping[str, Any]) -> str:
    """A short hash of what makes a row's numbers mean what they mean (not n_trials, workers,
    sampler, search, ...). Rows measured under the same settings share it; returning to earlier
    settings rejoins their segment.

    >>> from sweep.config import parse_config
    >>> a = parse_config({"name": "x", "model": "m:f", "example_inputs": "m:g"})
    >>> b = parse_config({"name": "x", "model": "m:f", "example_inputs": "m:g", "n_trials": 5})
    >>> segment_id(a) == segment_id(b), len(segment_id(a))
    (True, 10)
    """
    data = cfg if isinstance(cfg, Mapping) else _config_dict(cfg)
    blob = json.dumps(_meaning(_flatten(data)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if value is not None else "unset"
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 40 else text[:37] + "..."


def check_drift(stored_config_json: Mapping[str, Any], new_cfg: SweepConfig, new_settings: bool = False) -> str:
    """Compare a resumed sweep's config with the stored one (``sweep.json``'s ``config``).

    Returns the segment id the new rows carry: the stored settings' when nothing meaning-bearing
    changed, else (only with ``new_settings``) the new settings'. Raises :class:`ConfigError`
    with one line naming the changed keys when the meaning changed without ``new_settings``, and
    always when ``name`` changed or ``storage`` names another database (rows are keyed by the
    study's trial numbers, so a different study would overwrite them).

    Keys the stored config lacks (written by an older optsweep) count as their default.
    """
    from .config import redact

    cls = type(new_cfg)
    stored = {**_defaults(cls), **dict(stored_config_json)}
    for key, value in list(stored.items()):
        sub = getattr(cls.model_fields.get(key), "annotation", None)
        if isinstance(value, Mapping) and hasattr(sub, "model_fields"):
            stored[key] = {**_defaults(sub), **value}
    new = _config_dict(new_cfg)
    if stored.get("name") != new.get("name"):
        raise ConfigError(f"config key 'name': {_short(new.get('name'))} differs from this out's study "
                          f"{_short(stored.get('name'))}; rows are keyed by that study's trials: use a new 'out'")
    if redact(stored.get("storage")) != redact(new.get("storage")):
        raise ConfigError(f"config key 'storage': {_short(redact(new.get('storage')))} is not the study storage "
                          f"this out was started with ({_short(redact(stored.get('storage')))}); "
                          "rows are keyed by that study's trials: use a new 'out'")
    old_m, new_m = _meaning(_flatten(stored)), _meaning(_flatten(new))
    changed = sorted(k for k in old_m.keys() | new_m.keys() if old_m.get(k) != new_m.get(k))
    if not changed or new_settings:
        return segment_id(new)
    detail = ", ".join(f"{k} ({_short(old_m.get(k))} -> {_short(new_m.get(k))})" for k in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise ConfigError(f"config changed since this out was started: {detail}{more}; these change what a row "
                      "measures: use a new 'out', or pass --new-settings to start a new segment")


def resume_segment(writer: Any, cfg: SweepConfig, new_settings: bool = False) -> str:
    """The segment id for this run of ``cfg`` on ``writer``'s out: :func:`check_drift` against
    ``sweep.json`` when the out has one, else the new settings' :func:`segment_id`. Raises
    :class:`ConfigError` for refused drift and for a ``sweep.json`` that cannot be read."""
    try:
        text = writer.read_text("sweep.json")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{_redacted(str(writer.out))}/sweep.json cannot be read ({type(exc).__name__}); "
                          "restore it or use a new 'out'") from None
    if text is None:
        return segment_id(cfg)
    try:
        stored = json.loads(text)["config"]
        if not isinstance(stored, Mapping):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{_redacted(str(writer.out))}/sweep.json is not a sweep manifest (no 'config'); "
                          "restore it or use a new 'out'") from None
    return check_drift(stored, cfg, new_settings)

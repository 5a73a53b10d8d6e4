"""The results writer: one Parquet file per trial, written atomically (temp file + rename).

Layout of ``OUT/``::

    results/baseline.parquet        the untouched model (trial_number -1)
    results/baseline-<segment>.parquet  the untouched model of a --new-settings segment
    results/trial-000012.parquet    one file per finished trial, any state
    results/.damaged/               unreadable row files moved aside on resume (re-run)
    sweep.json                      how to rebuild the model (for export), redacted config
    study.journal                   the Optuna study (default storage)
    .optsweep.lock                  held by the running driver (``sweep.guard.out_lock``)

A crash can never leave a half-written file visible: readers only see ``*.parquet`` names, and
each appears by ``os.replace`` of a complete, fsynced temp file, followed by an fsync of the
folder so the rename itself survives a power cut. Temp files get unique names from
``mkstemp`` (``O_CREAT | O_EXCL``: never an existing file, never through a symlink) and are
written through that descriptor, never reopened by name. Object stores (``s3://...``) have no
atomic rename; there a single writer (the driver) uploads each complete file in one PUT.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import BASELINE_TRIAL, SCHEMA, schema_with_metadata

log = logging.getLogger("optsweep")
DAMAGED = ".damaged"
TMP_PREFIX = ".tmp-"


def _clean(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and (math.isnan(value)) and not pa.types.is_floating(typ):
        return None
    if pa.types.is_integer(typ):
        return int(value)
    if pa.types.is_floating(typ):
        return float(value)
    if pa.types.is_boolean(typ):
        return bool(value)
    if pa.types.is_string(typ) and not isinstance(value, str):
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return value


def to_table(rows: list[Mapping[str, Any]], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Rows (dicts keyed by column) -> a table with exactly the schema's columns and types."""
    arrays = {}
    for f in SCHEMA:
        arrays[f.name] = pa.array([_clean(r.get(f.name), f.type) for r in rows], type=f.type)
    return pa.Table.from_pydict(arrays, schema=schema)


def is_uri(out: str | Path) -> bool:
    """True for an object-store/filesystem URI (``s3://...``); False for a local path."""
    return "://" in str(out)


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(final: str | Path, write: Any, *, suffix: str = ".partial") -> None:
    """Write ``final`` as temp + fsync + ``os.replace`` + folder fsync.

    ``write(f)`` fills the binary file object of a fresh ``mkstemp`` temp file in the same
    folder (``O_CREAT | O_EXCL``, mode 0600 widened to 0644 like a plain file): it never opens
    an existing file or follows a symlink, and ``os.replace`` replaces a symlink at ``final``
    rather than writing through it.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f"{TMP_PREFIX}{final.name}-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o644 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class ResultsWriter:
    """Writes trial rows under ``OUT/results`` with the sweep's metadata.

    ``out`` is a local or shared-filesystem path (temp file + fsync + ``os.replace``: atomic), or
    a pyarrow filesystem URI such as ``s3://bucket/prefix?endpoint_override=...`` (no rename
    exists; each row is one object that appears only when its upload completes, and only the
    driver writes, so no reader sees a partial row).

    >>> import tempfile
    >>> w = ResultsWriter(tempfile.mkdtemp(), {"latency_ms": "minimize"}, {}, "demo")
    >>> w.existing_trials()
    set()
    """

    def __init__(self, out: str | Path, objectives: Mapping[str, str], constraints: Mapping[str, Any],
                 study_name: str) -> None:
        self.remote = is_uri(out)
        if self.remote:
            import pyarrow.fs as pafs

            self.fs, base = pafs.FileSystem.from_uri(str(out))
            self._rdir = f"{base.rstrip('/')}/results"
            self._base = base.rstrip("/")
            self.fs.create_dir(self._rdir, recursive=True)
        self.out = Path(str(out)) if not self.remote else Path(self._base)
        self.dir = self.out / "results"
        if not self.remote:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema_with_metadata(objectives, constraints, study_name)

    @staticmethod
    def _name(trial_number: int, baseline_segment: str | None = None) -> str:
        """``trial-000012.parquet``; the baseline is ``baseline.parquet``, or, for a segment
        started with ``--new-settings`` (its own untouched model), ``baseline-<segment>.parquet``."""
        if trial_number == BASELINE_TRIAL:
            return f"baseline-{baseline_segment}.parquet" if baseline_segment else "baseline.parquet"
        return f"trial-{trial_number:06d}.parquet"

    def path_for(self, trial_number: int) -> Path:
        return self.dir / self._name(trial_number)

    def write(self, row: Mapping[str, Any], *, baseline_segment: str | None = None) -> str:
        """Write one row atomically; returns its path. ``baseline_segment``: see :meth:`_name`."""
        table = to_table([row], self.schema)
        name = self._name(int(row["trial_number"]), baseline_segment)
        if self.remote:
            path = f"{self._rdir}/{name}"
            pq.write_table(table, path, filesystem=self.fs)  # one object, visible once complete
            return path
        final = self.dir / name
        atomic_write(final, lambda f: pq.write_table(table, f), suffix=".parquet.partial")
        return str(final)

    def write_text(self, name: str, text: str) -> None:
        """A small side file next to ``results/`` (e.g. ``sweep.json``), replaced atomically."""
        if self.remote:
            with self.fs.open_output_stream(f"{self._base}/{name}") as f:
                f.write(text.encode())
            return
        atomic_write(self.out / name, lambda f: f.write(text.encode("utf-8")))

    def read_text(self, name: str) -> str | None:
        """A side file's text (``sweep.json``), or ``None`` when there is none."""
        if self.remote:
            import pyarrow.fs as pafs

            path = f"{self._base}/{name}"
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(path) as f:
                return bytes(f.read()).decode("utf-8")
        try:
            return (self.out / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _names(self) -> list[str]:
        if self.remote:
            import pyarrow.fs as pafs

            infos = self.fs.get_file_info(pafs.FileSelector(self._rdir, allow_not_found=True))
            return [i.base_name for i in infos if i.type == pafs.FileType.File]
        return [p.name for p in self.dir.iterdir()]

    def existing_trials(self) -> set[int]:
        """Trial numbers that already have a row (baseline excluded)."""
        out = set()
        for name in self._names():
            if not (name.startswith("trial-") and name.endswith(".parquet")):
                continue
            try:
                out.add(int(name[len("trial-"):-len(".parquet")]))
            except ValueError:
                continue
        return out

    def _read_rows(self, name: str) -> list[dict[str, Any]] | None:
        """The rows of one result file; ``None`` when it does not exist. Raises on damage."""
        if self.remote:
            import pyarrow.fs as pafs

            remote_path = f"{self._rdir}/{name}"
            if self.fs.get_file_info(remote_path).type == pafs.FileType.NotFound:  # one HEAD, not a LIST
                return None
            return pq.read_table(remote_path, filesystem=self.fs).to_pylist()  # type: ignore[no-any-return]
        local = self.dir / name
        if not local.exists():
            return None
        return pq.read_table(local).to_pylist()  # type: ignore[no-any-return]

    def read(self, trial_number: int, *, baseline_segment: str | None = None) -> dict[str, Any] | None:
        """The row of one trial; ``None`` when it has none, or (with a warning naming the file)
        when its file is unreadable: :meth:`quarantine_damaged` moves such files aside."""
        name = self._name(trial_number, baseline_segment)
        try:
            rows = self._read_rows(name)
        except (OSError, ValueError, pa.ArrowException) as exc:
            log.warning("skipping unreadable result file %s: %s", self.dir / name, _first_line(exc))
            return None
        return rows[0] if rows else None

    def _row_names(self) -> list[str]:
        return sorted(n for n in self._names()
                      if n.endswith(".parquet") and self.number_of(n) is not None)

    def find_damaged(self) -> dict[str, str]:
        """Row files that cannot be read back as one row: ``{file name: reason}``.

        Truncated files (a full disk, a copy cut short) and foreign bytes under a row's name
        both count; the atomic writer never produces either.
        """
        damaged = {}
        for name in self._row_names():
            try:
                rows = self._read_rows(name)
            except (OSError, ValueError, pa.ArrowException) as exc:
                damaged[name] = _first_line(exc)
                continue
            if rows is not None and len(rows) != 1:
                damaged[name] = f"holds {len(rows)} rows, not 1"
        return damaged

    def quarantine_damaged(self) -> list[str]:
        """Move every damaged row file to ``results/.damaged/`` (kept for inspection) and return
        their names. Their trials then have no row, so a resume runs trials until ``n_trials``
        rows exist again (the driver re-enqueues their parameters to re-measure the same points).
        Call it before :meth:`existing_trials` on resume, holding the out lock."""
        damaged = self.find_damaged()
        for name, reason in damaged.items():
            log.warning("moving damaged result file %s aside (%s); it no longer counts as a row", self.dir / name, reason)
            self._move_aside(name)
        return sorted(damaged)

    def moved_aside(self) -> set[int]:
        """Trial numbers whose row file was moved to ``results/.damaged/`` (baseline: -1)."""
        import pyarrow.fs as pafs

        if self.remote:
            infos = self.fs.get_file_info(pafs.FileSelector(f"{self._rdir}/{DAMAGED}", allow_not_found=True))
            names = [i.base_name for i in infos]
        else:
            folder = self.dir / DAMAGED
            names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return {n for n in map(self.number_of, names) if n is not None}

    @staticmethod
    def number_of(name: str) -> int | None:
        """The trial number of a row file name (``trial-000012.parquet`` -> 12, baseline -1).

        >>> ResultsWriter.number_of("trial-000012.parquet"), ResultsWriter.number_of("notes.txt")
        (12, None)
        >>> ResultsWriter.number_of("baseline-3f2a9c01de.parquet")
        -1
        """
        stem = name.split(".parquet", 1)[0]
        if (stem == "baseline" or (stem.startswith("baseline-") and stem[9:].isalnum())) and name != stem:
            return BASELINE_TRIAL
        if stem.startswith("trial-") and stem[6:].isdigit() and name != stem:
            return int(stem[6:])
        return None

    def _move_aside(self, name: str) -> None:
        if self.remote:
            dest_dir = f"{self._rdir}/{DAMAGED}"
            self.fs.create_dir(dest_dir, recursive=True)
            self.fs.move(f"{self._rdir}/{name}", self._free_name(dest_dir, name))
            return
        local_dir = self.dir / DAMAGED
        local_dir.mkdir(mode=0o700, exist_ok=True)
        os.replace(self.dir / name, self._free_name(str(local_dir), name))
        fsync_dir(self.dir)

    def _free_name(self, folder: str, name: str) -> str:
        """``folder/name``, or ``folder/name.N`` when an earlier damaged copy is there already."""
        import pyarrow.fs as pafs

        def exists(p: str) -> bool:
            if self.remote:
                return bool(self.fs.get_file_info(p).type != pafs.FileType.NotFound)
            return os.path.lexists(p)

        candidate, n = f"{folder}/{name}", 1
        while exists(candidate):
            candidate, n = f"{folder}/{name}.{n}", n + 1
        return candidate

    def partials(self) -> list[Path]:
        """Temp files of interrupted writes (rows and side files); never visible as results."""
        if self.remote:
            return []  # uploads are all-or-nothing: nothing partial to clean
        return sorted([*self.dir.glob(f"{TMP_PREFIX}*"), *self.out.glob(f"{TMP_PREFIX}*")])

    def clean_partials(self) -> int:
        """Remove temp files a crashed writer left behind; they were never visible as rows.

        Only a dead writer's files may go, so this runs only when no other driver can be writing:
        when this process holds the out lock (:func:`sweep.guard.out_lock`, which the driver
        takes first), or when nobody holds it. Otherwise it removes nothing and returns 0.
        """
        from .guard import held_here, probe_out_lock

        if self.remote:
            return 0
        state, _ = probe_out_lock(str(self.out))
        if state == "held" and not held_here(str(self.out)):
            log.warning("not removing temp files in %s: another driver holds its lock", self.out)
            return 0
        n = 0
        for p in self.partials():
            p.unlink(missing_ok=True)
            n += 1
        return n


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in text.splitlines()[0])[:300]

"""The archive: rows scored below the threshold, as hourly Parquet files, for retraining.

Layout::

    <path>/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet

The hour is the flow's own ``ts`` (UTC), not the time it was scored. Each file
holds the canonical flow columns plus ``score`` (higher = more anomalous) and
``model_version`` (the bundle that scored the row). Files are written under a
temporary name and renamed, so a reader never sees half a file, and several
``serve`` instances can share one archive: file names never collide.

Only rows scored *below* the threshold are given to the writer (the loop
selects them), so flagged records never enter training data unreviewed.

The archive is best-effort: rows still buffered when a process is killed are
not archived (they were scored and committed; only the retraining sample is
smaller), and a failed write is logged and dropped rather than stopping the
detector.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from detector.logs import get_logger
from detector.settings import ArchiveSettings
from features.records import NUMERIC_FIELDS, STRING_FIELDS, FlowBatch, from_columns

log = get_logger("archive")

#: Columns of every archive file, in order.
SCHEMA = pa.schema(
    [
        *(pa.field(name, pa.float64()) for name in NUMERIC_FIELDS),
        *(pa.field(name, pa.string()) for name in STRING_FIELDS),
        pa.field("score", pa.float64()),
        pa.field("model_version", pa.string()),
    ]
)
HOUR_S = 3600


class ArchiveWriter:
    """Buffers below-threshold rows and writes them as hourly Parquet files.

    Called by the loop as ``writer(batch, scores, model_version)``. Buffered
    rows are written once ``flush_rows`` have gathered, every
    ``flush_interval_s`` seconds (from a background thread), and at
    :meth:`close`. After each write, hour partitions that end
    ``retention_hours`` or more before the end of the newest one are deleted.

    Args:
        path: Root directory of the archive (created if absent).
        retention_hours: How much data to keep, counted back from the newest.
        flush_rows: Buffered rows that trigger a write.
        flush_interval_s: Longest time a row waits in the buffer, in seconds.
    """

    def __init__(
        self,
        path: Path,
        retention_hours: float = 168.0,
        flush_rows: int = 50_000,
        flush_interval_s: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.retention_hours = retention_hours
        self.flush_rows = flush_rows
        self.path.mkdir(parents=True, exist_ok=True)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self.written = 0
        self.dropped = 0
        self._timer = threading.Thread(
            target=self._flush_periodically,
            args=(flush_interval_s,),
            name="archive-flush",
            daemon=True,
        )
        self._timer.start()

    @classmethod
    def from_settings(cls, settings: ArchiveSettings) -> ArchiveWriter:
        """A writer for ``[archive]``, whose ``path`` must be set."""
        if settings.path is None:
            raise ValueError("archive.path is not set")
        return cls(
            settings.path, settings.retention_hours, settings.flush_rows, settings.flush_interval_s
        )

    def __call__(
        self, batch: FlowBatch, scores: npt.NDArray[np.float64], model_version: str
    ) -> None:
        """Buffer rows scored below the threshold; write when enough have gathered."""
        if len(batch) == 0:
            return
        table = to_table(batch, scores, model_version)
        with self._lock:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            due = self._pending_rows >= self.flush_rows
        if due:
            self.flush()

    def flush(self) -> int:
        """Write every buffered row now; return how many were written."""
        with self._write_lock:
            with self._lock:
                pending, self._pending, self._pending_rows = self._pending, [], 0
            if not pending:
                return 0
            table = pa.concat_tables(pending)
            try:
                files = write_hours(self.path, table)
                prune(self.path, self.retention_hours)
            except (OSError, pa.ArrowException) as exc:
                self.dropped += table.num_rows
                log.error(
                    "archive_write_failed", path=str(self.path), rows=table.num_rows, error=str(exc)
                )
                return 0
            rows = int(table.num_rows)
            self.written += rows
            log.debug("archive_written", rows=rows, files=len(files))
            return rows

    def close(self) -> None:
        """Stop the timer and write what is still buffered."""
        self._stop.set()
        self._timer.join(timeout=5)
        self.flush()
        log.info("archive_closed", path=str(self.path), written=self.written, dropped=self.dropped)

    def _flush_periodically(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.flush()


def to_table(batch: FlowBatch, scores: npt.NDArray[np.float64], model_version: str) -> pa.Table:
    """Canonical columns of ``batch`` plus its scores and the model version."""
    columns: list[pa.Array] = [pa.array(batch.num(name), pa.float64()) for name in NUMERIC_FIELDS]
    columns += [pa.array(batch.text(name), pa.string()) for name in STRING_FIELDS]
    columns.append(pa.array(np.asarray(scores, np.float64), pa.float64()))
    columns.append(pa.array([model_version] * len(batch), pa.string()))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def write_hours(root: Path, table: pa.Table) -> list[Path]:
    """Write ``table`` as one new file per hour of its ``ts``; return the files."""
    hours = np.floor(table.column("ts").to_numpy() / HOUR_S).astype(np.int64)
    files = []
    for hour in np.unique(hours):
        part = table.filter(pa.array(hours == hour))
        directory = root / partition_name(int(hour) * HOUR_S)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        staging = directory / f".{name}.tmp"
        pq.write_table(part, staging)
        os.replace(staging, directory / name)
        files.append(directory / name)
    return files


def partition_name(hour_start: float) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of the hour starting at ``hour_start`` (epoch s)."""
    moment = datetime.fromtimestamp(hour_start, UTC)
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"


def partitions(root: Path) -> list[tuple[float, Path]]:
    """Every hour partition as (hour start in epoch seconds, directory), oldest first."""
    out = []
    for directory in root.glob("date=*/hour=*"):
        try:
            day = datetime.strptime(directory.parent.name, "date=%Y-%m-%d").replace(tzinfo=UTC)
            hour = int(directory.name.removeprefix("hour="))
        except ValueError:
            continue  # not ours; leave it alone
        out.append((day.timestamp() + hour * HOUR_S, directory))
    return sorted(out)


def prune(root: Path, retention_hours: float) -> list[Path]:
    """Delete hour partitions ending ``retention_hours`` or more before the newest one ends.

    Returns:
        The deleted partition directories.
    """
    found = partitions(root)
    if not found:
        return []
    newest_end = found[-1][0] + HOUR_S
    cutoff = newest_end - retention_hours * HOUR_S
    deleted = []
    for start, directory in found:
        if start + HOUR_S <= cutoff:
            shutil.rmtree(directory, ignore_errors=True)
            deleted.append(directory)
    for day in {d.parent for d in deleted}:
        if day.is_dir() and not any(day.iterdir()):
            day.rmdir()
    if deleted:
        log.info("archive_pruned", partitions=len(deleted), retention_hours=retention_hours)
    return deleted


def newest_ts(root: Path) -> float | None:
    """The latest ``ts`` in the archive (``None`` when it is empty)."""
    for _, directory in reversed(partitions(root)):
        table = _read_files(sorted(directory.glob("part-*.parquet")))
        if table is not None and table.num_rows:
            return float(np.nanmax(table.column("ts").to_numpy()))
    return None


def read_archive(path: Path, since: float | None = None, until: float | None = None) -> FlowBatch:
    """Archived rows with ``since <= ts < until`` (epoch seconds), sorted by ``ts``.

    Whole hour partitions outside the range are not opened. ``score`` and
    ``model_version`` come back in the batch's ``extras``.
    """
    lo = -np.inf if since is None else since
    hi = np.inf if until is None else until
    files = [
        f
        for start, directory in partitions(Path(path))
        if start + HOUR_S > lo and start < hi
        for f in sorted(directory.glob("part-*.parquet"))
    ]
    table = _read_files(files)
    if table is None:
        return FlowBatch.empty()
    ts = table.column("ts").to_numpy()
    keep = np.flatnonzero((ts >= lo) & (ts < hi))
    order = keep[np.argsort(ts[keep], kind="stable")]
    return to_batch(table.take(pa.array(order)))


def to_batch(table: pa.Table) -> FlowBatch:
    """A FlowBatch of archive rows; ``score`` and ``model_version`` as extras."""
    values: dict[str, npt.NDArray[np.generic] | list[object]] = {
        name: table.column(name).to_numpy() for name in NUMERIC_FIELDS
    }
    values.update({name: table.column(name).to_pylist() for name in STRING_FIELDS})
    extras = {
        "score": table.column("score").to_pylist(),
        "model_version": table.column("model_version").to_pylist(),
    }
    return from_columns(values, table.num_rows, extras=extras)


def _read_files(files: list[Path]) -> pa.Table | None:
    # ParquetFile, not read_table: the hive-style directory names must not be
    # turned into extra columns.
    tables = [pq.ParquetFile(f).read(columns=SCHEMA.names).cast(SCHEMA) for f in files]
    return pa.concat_tables(tables) if tables else None

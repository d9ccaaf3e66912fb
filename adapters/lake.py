"""The Parquet lake: one dataset directory per resource, files that appear atomically.

A run writes its Parquet files into ``<lake>/_staging/<run id>/`` first. Only after the run's
cloud transaction commits are they renamed into ``<lake>/<resource code>/``; a rename inside one
file system is atomic, so a reader sees a whole file or none. If the process dies between the
commit and the rename, the next run of the resource publishes the staged files of a committed
run and deletes those of a run that never committed (``govbus.sync`` decides which is which from
the cloud's load markers): the lake gets each run's rows exactly once.

The dataset is a log of row versions: every file carries ``_govbus_run_id`` and
``_govbus_loaded_at``; the current state of a row is its latest version by primary key.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from govbus.errors import SinkError
from govbus.fsutil import fsync_dir

__all__ = ["Lake", "LakeRun"]

log = logging.getLogger(__name__)

STAGING = "_staging"


#: rows of a file's first table looked at to choose the columns worth a dictionary
DICTIONARY_SAMPLE = 10_000


def _repeating_columns(table: pa.Table) -> list[str]:
    """Columns whose values repeat enough that Parquet dictionary encoding pays.

    The writer would try a dictionary on every column and give up on a column of unique values
    (keys, codes, timestamps) only after building a page of it; that attempt cost a fifth of the
    writing time of the benchmark's table and made the file larger. A column with at most half as
    many distinct values as rows in the first ``DICTIONARY_SAMPLE`` rows gets a dictionary.
    """
    sample = table.slice(0, DICTIONARY_SAMPLE)
    return [
        name
        for name, column in zip(sample.column_names, sample.columns, strict=True)
        if pc.count_distinct(column).as_py() * 2 <= sample.num_rows
    ]


class LakeRun:
    """Parquet files of one run, staged until the run commits.

    Encoding and compressing Parquet is done by a writer thread (pyarrow releases the GIL), so it
    overlaps with reading and validating the next batch; ``write`` blocks only when ``QUEUED``
    tables are already waiting. A failed write is raised by the next ``write`` or by ``close``,
    which a run must call before its cloud transaction commits.
    """

    QUEUED = 2

    def __init__(self, lake: Lake, code: str, run_id: str) -> None:
        self.lake = lake
        self.code = code
        self.run_id = run_id
        self.dir = lake.root / STAGING / run_id / code
        self._writer: pq.ParquetWriter | None = None
        self._part = 0
        self._rows_in_part = 0
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=self.QUEUED)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, table: pa.Table) -> None:
        self._raise_failure()
        if table.num_rows == 0:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._drain, name=f"govbus-lake-{self.run_id[:8]}", daemon=True
            )
            self._thread.start()
        self._queue.put(table)

    def _drain(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking tables so a blocked ``write`` can return and see the error
            try:
                self._write_now(table)
            except BaseException as exc:
                self._error = exc

    def _write_now(self, table: pa.Table) -> None:
        if self._writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"part-{self.run_id}-{self._part:05d}.parquet"
            self._writer = pq.ParquetWriter(
                path, table.schema, compression="zstd", use_dictionary=_repeating_columns(table)
            )
        self._writer.write_table(table.cast(self._writer.schema))
        self._rows_in_part += table.num_rows
        if self._rows_in_part >= self.lake.rows_per_file:
            self._close_part()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise SinkError(
                f"{self.code}: writing the lake's staged Parquet files of run {self.run_id} "
                f"failed under {self.dir}: {self._error}"
            ) from self._error

    def _finish_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._part += 1
            self._rows_in_part = 0

    def close(self) -> None:
        """Finish every queued write and the open file; raises if any write failed."""
        self._finish_thread()
        self._raise_failure()
        self._close_part()

    def discard(self) -> None:
        self._finish_thread()
        try:
            self._close_part()
        except Exception:  # the files are deleted next; a broken one does not matter
            self._writer = None
        self.lake.discard(self.run_id)

    def publish(self) -> list[Path]:
        self.close()
        return self.lake.publish(self.run_id)


class Lake:
    def __init__(self, root: Path, rows_per_file: int = 1_000_000) -> None:
        self.root = root
        self.rows_per_file = rows_per_file
        root.mkdir(parents=True, exist_ok=True)

    def dataset_dir(self, code: str) -> Path:
        return self.root / code

    def begin(self, code: str, run_id: str) -> LakeRun:
        return LakeRun(self, code, run_id)

    def staged_runs(self) -> list[str]:
        staging = self.root / STAGING
        return sorted(p.name for p in staging.iterdir()) if staging.exists() else []

    def publish(self, run_id: str) -> list[Path]:
        """Move a committed run's staged files into their datasets."""
        run_dir = self.root / STAGING / run_id
        published: list[Path] = []
        if not run_dir.exists():
            return published
        for code_dir in run_dir.iterdir():
            target = self.dataset_dir(code_dir.name)
            target.mkdir(parents=True, exist_ok=True)
            for file in sorted(code_dir.glob("*.parquet")):
                os.replace(file, target / file.name)
                published.append(target / file.name)
            fsync_dir(target)
        shutil.rmtree(run_dir, ignore_errors=True)
        return published

    def discard(self, run_id: str) -> None:
        """Drop the staged files of a run that never committed."""
        shutil.rmtree(self.root / STAGING / run_id, ignore_errors=True)

    def read(self, code: str, columns: Iterable[str] | None = None) -> pa.Table:
        directory = self.dataset_dir(code)
        files = sorted(directory.glob("*.parquet")) if directory.exists() else []
        if not files:
            return pa.table({})
        return pq.ParquetDataset(files).read(columns=list(columns) if columns else None)

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
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Lake", "LakeRun"]

log = logging.getLogger(__name__)

STAGING = "_staging"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LakeRun:
    """Parquet files of one run, staged until the run commits."""

    def __init__(self, lake: Lake, code: str, run_id: str) -> None:
        self.lake = lake
        self.code = code
        self.run_id = run_id
        self.dir = lake.root / STAGING / run_id / code
        self._writer: pq.ParquetWriter | None = None
        self._part = 0
        self._rows_in_part = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"part-{self.run_id}-{self._part:05d}.parquet"
            self._writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        self._writer.write_table(table.cast(self._writer.schema))
        self._rows_in_part += table.num_rows
        if self._rows_in_part >= self.lake.rows_per_file:
            self._close_part()

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._part += 1
            self._rows_in_part = 0

    def close(self) -> None:
        self._close_part()

    def discard(self) -> None:
        self._close_part()
        self.lake.discard(self.run_id)

    def publish(self) -> list[Path]:
        self._close_part()
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
            _fsync_dir(target)
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

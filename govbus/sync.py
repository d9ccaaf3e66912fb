"""The sync pipeline: source → validation → cloud database and lake, exactly once.

One run of one resource:

1. finish what an earlier run of the same resource left behind (a run still marked running is
   either committed — its lake files are published — or abandoned and discarded);
2. compare the source's columns with the registered items (drift);
3. read from the checkpoint (``cursor >= value``, inclusive) in Arrow batches, skipping rows the
   checkpoint names as already loaded;
4. coerce and validate each batch; good rows are upserted by primary key and staged for the lake,
   bad rows go to ``govbus_rejects`` with their reasons;
5. in the same cloud transaction, save the new checkpoint and a load marker, then commit;
6. publish the lake files and record the run in the registry.

The checkpoint lives in the cloud database and moves in the load's transaction, so it can never
pass data that did not commit; a run killed at any point is simply run again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from adapters import open_source
from adapters.cloud import DELETED_AT, LOADED_AT, RUN_ID, CloudStore
from adapters.lake import Lake
from adapters.sql_source import KeyRange, SqlSource
from govbus.checkpoint import Checkpoint
from govbus.errors import ConfigError, GovbusError, SchemaDrift
from govbus.settings import Settings, load_settings
from registry.catalogue import DriftPolicy, ResourceSpec
from registry.db import make_engine, registry_engine
from registry.models import Run
from registry.resources import Registered, get_resource
from schemas.mask import mask_id
from schemas.types import arrow_type
from schemas.validate import ROW, BatchValidator

__all__ = ["RunResult", "Cloud", "sync", "plan_partitions", "finish_partitions", "key_expr"]

log = logging.getLogger(__name__)

KEY_SEPARATOR = "\x1f"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RunResult:
    run_id: str
    code: str
    status: str
    read: int
    loaded: int
    rejected: int
    seconds: float
    target: str
    lake: str | None
    drift: tuple[str, ...] = ()
    cursor: str | None = None


@dataclass
class _Counts:
    read: int = 0
    loaded: int = 0
    rejected: int = 0
    top: Any = None
    top_keys: set[str] = field(default_factory=set)


class Cloud:
    """The cloud side of one settings: its database store and its lake."""

    def __init__(self, settings: Settings) -> None:
        settings.ensure_dirs()
        self.settings = settings
        self.engine: Engine = make_engine(settings.cloud_url)
        self.store = CloudStore(self.engine)
        self.lake = Lake(settings.lake)


_clouds: dict[Settings, Cloud] = {}


def cloud_for(settings: Settings) -> Cloud:
    if settings not in _clouds:
        _clouds[settings] = Cloud(settings)
    return _clouds[settings]


def key_expr(keys: tuple[str, ...]) -> pl.Expr:
    """A row's primary key as one text value, the same way in every run."""
    return pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator=KEY_SEPARATOR)


def _check_drift(spec: ResourceSpec, source: SqlSource) -> list[str]:
    offered = source.columns()
    registered = [item.name for item in spec.items]
    missing = [name for name in registered if name not in offered]
    if missing:
        raise SchemaDrift(
            f"{spec.code}: registered item(s) {', '.join(missing)} are not in the source any "
            f"more; restore them in the source or apply a new resource version without them "
            f"(`govbus registry apply`)"
        )
    extra = [name for name in offered if name not in registered]
    notes = [f"new source column {name!r} is not a registered item" for name in extra]
    if extra and spec.source.drift is DriftPolicy.FREEZE:
        raise SchemaDrift(
            f"{spec.code}: source has column(s) {', '.join(extra)} that the registry does not "
            f"list and the drift policy is freeze; register them as items or set "
            f"source.drift to evolve or ignore"
        )
    for note in notes:
        log.warning("%s: %s", spec.code, note)
    return notes


def _finish_stale_runs(reg: Engine, cloud: Cloud, code: str, partition: str | None) -> None:
    """Settle runs of this resource that a dead process left marked as running."""
    with Session(reg) as session, session.begin():
        stale = session.scalars(
            select(Run).where(
                Run.resource_code == code, Run.status == "running", Run.partition == partition
            )
        ).all()
        if not stale:
            return
        committed = cloud.store.committed_runs([r.id for r in stale])
        for run in stale:
            if run.id in committed:
                cloud.lake.publish(run.id)
                run.status = "success"
                run.message = "completed after its process ended: the load had committed"
            else:
                cloud.lake.discard(run.id)
                run.status = "failed"
                run.message = "abandoned: the process ended before the load committed"
            run.finished_at = run.finished_at or datetime.now(UTC)
            log.warning("%s: settled stale run %s as %s", code, run.id, run.status)


def _lake_schema(spec: ResourceSpec) -> pa.Schema:
    fields = [pa.field(i.name, arrow_type(i)) for i in spec.items]
    fields += [
        pa.field(RUN_ID, pa.large_string()),
        pa.field(LOADED_AT, pa.timestamp("us", tz="UTC")),
    ]
    return pa.schema(fields)


def _row_keys(spec: ResourceSpec, frame: pl.DataFrame) -> pl.Series:
    parts = []
    for key in spec.source.primary_key:
        col = pl.col(key).cast(pl.String)
        if "resident_id" in spec.item(key).checks:
            col = col.map_elements(mask_id, return_dtype=pl.String)
        parts.append(col)
    return frame.select(pl.concat_str(parts, separator=",", ignore_nulls=True)).to_series()


def sync(
    code: str,
    *,
    full: bool = False,
    settings: Settings | None = None,
    key_range: KeyRange | None = None,
    partition: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run one sync of a registered resource and return its counts.

    ``full`` reads the whole source whatever the checkpoint says. ``key_range`` and ``partition``
    restrict a full load to one primary-key range (see ``plan_partitions``); such a run does not
    move the resource's checkpoint.
    """
    if key_range is not None and not full:
        raise ConfigError("a primary-key range can only be read by a full load (--full)")

    settings = settings or load_settings()
    settings.ensure_dirs()
    reg = registry_engine(settings.registry_url)
    registered = get_resource(reg, code)
    spec = registered.spec
    cloud = cloud_for(settings)
    _finish_stale_runs(reg, cloud, code, partition)

    run_id = str(uuid.uuid4())
    started = time.monotonic()
    point = None if full else cloud.store.checkpoint(code)
    mode = "full" if full else "incremental"
    _record_start(reg, run_id, registered, mode, partition, point)
    log.info(
        "%s: run %s started (%s)", code, run_id, mode, extra={"resource": code, "run_id": run_id}
    )

    lake_run = cloud.lake.begin(code, run_id) if spec.target.lake else None
    counts = _Counts()
    drift: list[str] = []
    try:
        source = open_source(spec)
        drift = _check_drift(spec, source)
        with cloud.engine.begin() as conn:
            table = cloud.store.ensure_target(conn, spec) if spec.target.database else None
            validator = BatchValidator(spec)
            names = [item.name for item in spec.items]
            cursor_from = None if point is None else point.value
            for batch in source.read(names, cursor_from=cursor_from, key_range=key_range):
                _load_batch(
                    spec, batch, point, validator, cloud, conn, table, lake_run, run_id, counts
                )
                if progress is not None:
                    progress(counts.read)
            if key_range is None:
                new_point = _next_checkpoint(point, counts)
                if new_point is not None:
                    cloud.store.save_checkpoint(conn, code, new_point, run_id)
            cloud.store.mark_loaded(conn, run_id, code, counts.read, counts.loaded, counts.rejected)
        source.dispose()
    except BaseException as exc:
        if lake_run is not None:
            lake_run.discard()
        message = str(exc) if isinstance(exc, GovbusError) else f"{type(exc).__name__}: {exc}"
        _record_end(reg, run_id, "failed", counts, time.monotonic() - started, drift, message)
        log.error("%s: run %s failed: %s", code, run_id, message)
        raise

    if lake_run is not None:
        lake_run.publish()
    seconds = time.monotonic() - started
    _record_end(reg, run_id, "success", counts, seconds, drift, None)
    log.info(
        "%s: run %s read %d, loaded %d, rejected %d in %.1f s",
        code,
        run_id,
        counts.read,
        counts.loaded,
        counts.rejected,
        seconds,
        extra={"resource": code, "run_id": run_id, "rows": counts.read},
    )
    return RunResult(
        run_id=run_id,
        code=code,
        status="success",
        read=counts.read,
        loaded=counts.loaded,
        rejected=counts.rejected,
        seconds=seconds,
        target=spec.target.table,
        lake=str(cloud.lake.dataset_dir(code)) if spec.target.lake else None,
        drift=tuple(drift),
        cursor=None if counts.top is None else str(counts.top),
    )


def _load_batch(
    spec: ResourceSpec,
    batch: pa.RecordBatch,
    point: Checkpoint | None,
    validator: BatchValidator,
    cloud: Cloud,
    conn: Any,
    table: Any,
    lake_run: Any,
    run_id: str,
    counts: _Counts,
) -> None:
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    keys = spec.source.primary_key
    cursor = spec.source.cursor

    # Rows at exactly the checkpoint's value were read by the previous run if their key is listed.
    if point is not None and point.boundary_keys and cursor is not None:
        seen = (pl.col(cursor) == point.value) & key_expr(keys).is_in(list(point.boundary_keys))
        frame = frame.filter(~seen)
    if frame.is_empty():
        return

    frame = frame.with_row_index(ROW, offset=counts.read).with_columns(pl.col(ROW).cast(pl.Int64))
    counts.read += frame.height
    if cursor is not None:
        _track_cursor(frame, cursor, keys, counts)

    checked = validator.check(frame)
    now = datetime.now(UTC)
    good = checked.good.drop(ROW).with_columns(
        pl.lit(run_id).alias(RUN_ID),
        pl.lit(now).dt.convert_time_zone("UTC").alias(LOADED_AT),
    )
    if table is None:
        counts.loaded += good.height
    else:
        counts.loaded += cloud.store.upsert(
            conn, table, good.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias(DELETED_AT))
        )
    if lake_run is not None and good.height:
        lake_run.write(good.to_arrow().cast(_lake_schema(spec)))

    if checked.rejected_rows:
        counts.rejected += checked.rejected_rows
        bad = frame.filter(pl.col(ROW).is_in(checked.rejects["row"].unique().implode()))
        row_keys = pl.DataFrame({"row": bad[ROW], "row_key": _row_keys(spec, bad)})
        rejects = checked.rejects.join(row_keys, on="row", how="left").rename({"row": "row_number"})
        cloud.store.write_rejects(conn, spec.code, run_id, rejects)


def _track_cursor(frame: pl.DataFrame, cursor: str, keys: tuple[str, ...], counts: _Counts) -> None:
    top = frame[cursor].max()
    if top is None:
        return
    if counts.top is None or top > counts.top:
        counts.top = top
        counts.top_keys = set()
    if top == counts.top:
        at_top = frame.filter(pl.col(cursor) == top).select(key_expr(keys)).to_series()
        counts.top_keys.update(at_top.to_list())


def _next_checkpoint(point: Checkpoint | None, counts: _Counts) -> Checkpoint | None:
    if counts.top is None:
        return point
    if point is not None and counts.top == point.value:
        # Nothing newer arrived: rows seen at the same value join those seen before.
        return Checkpoint(point.value, point.boundary_keys | frozenset(counts.top_keys))
    if len(counts.top_keys) > 10_000:
        log.warning(
            "%d rows share the newest cursor value %s; the checkpoint lists each of their keys",
            len(counts.top_keys),
            counts.top,
        )
    return Checkpoint(counts.top, frozenset(counts.top_keys))


def _record_start(
    reg: Engine,
    run_id: str,
    registered: Registered,
    mode: str,
    partition: str | None,
    point: Checkpoint | None,
) -> None:
    with Session(reg) as session, session.begin():
        session.add(
            Run(
                id=run_id,
                resource_code=registered.spec.code,
                resource_version=registered.version,
                mode=mode,
                status="running",
                started_at=datetime.now(UTC),
                read=0,
                loaded=0,
                rejected=0,
                partition=partition,
                cursor_from=None if point is None else point.describe(),
            )
        )


def _record_end(
    reg: Engine,
    run_id: str,
    status: str,
    counts: _Counts,
    seconds: float,
    drift: list[str],
    message: str | None,
) -> None:
    with Session(reg) as session, session.begin():
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(
                status=status,
                finished_at=datetime.now(UTC),
                read=counts.read,
                loaded=counts.loaded,
                rejected=counts.rejected,
                seconds=round(seconds, 3),
                cursor_to=None if counts.top is None else str(counts.top),
                drift=drift or None,
                message=message,
            )
        )


# -- partitioned full loads -------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionPlan:
    code: str
    ranges: tuple[KeyRange, ...]
    high_water: Any  # the source's newest cursor value when the plan was made

    def label(self, index: int) -> str:
        return f"{index + 1}/{len(self.ranges)}"


def plan_partitions(code: str, partitions: int, settings: Settings | None = None) -> PartitionPlan:
    """Split a full load into primary-key ranges, noting the cursor's high-water mark first."""
    settings = settings or load_settings()
    spec = get_resource(registry_engine(settings.registry_url), code).spec
    source = open_source(spec)
    high_water = source.max_cursor() if spec.source.cursor else None
    ranges = tuple(source.key_bounds(partitions))
    source.dispose()
    return PartitionPlan(code, ranges, high_water)


def finish_partitions(plan: PartitionPlan, settings: Settings | None = None) -> None:
    """After every range loaded, start incremental syncs from the plan's high-water mark.

    Rows changed while the ranges loaded have a cursor at or above the mark, so the next
    incremental run (inclusive lower bound) reads them again.
    """
    if plan.high_water is None:
        return
    settings = settings or load_settings()
    cloud = cloud_for(settings)
    with cloud.engine.begin() as conn:
        cloud.store.save_checkpoint(conn, plan.code, Checkpoint(plan.high_water), "partitioned")

"""The sync pipeline: source → validation → cloud database and lake, exactly once.

One run of one resource:

0. take the resource's run lock in the cloud database, so two runs never interleave;
1. finish what an earlier run of the same resource left behind (a run still marked running is
   either committed — its lake files are published — or abandoned and discarded);
2. compare the source's columns with the registered items (drift): a registered item missing or
   changed to a type it cannot hold stops the run; a new column is carried (evolve, with one full
   re-read so existing rows get its values), refused (freeze) or left behind (ignore);
3. read from the checkpoint (``cursor >= value``, inclusive) in Arrow batches, skipping rows the
   checkpoint names as already loaded, then the rows whose cursor is NULL (loaded again only when
   their values changed);
4. coerce and validate each batch; good rows are upserted by primary key and staged for the lake,
   bad rows go to ``govbus_rejects`` with their reasons; a row the provider soft-deleted is kept
   with ``_govbus_deleted_at`` set;
5. with ``reconcile``, compare the source's primary keys with the cloud's and mark the rows that
   vanished from the source as deleted;
6. in the same cloud transaction, save the new checkpoint and a load marker, then commit;
7. publish the lake files and record the run in the registry.

The checkpoint lives in the cloud database and moves in the load's transaction, so it can never
pass data that did not commit; a run killed at any point is simply run again. The guarantees and
policies are written out in ``docs/sync-guarantees.md``.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from adapters import open_source
from adapters.cloud import DELETED_AT, LOADED_AT, RUN_ID, CloudStore, CloudWriter
from adapters.lake import Lake
from adapters.sql_source import KeyRange
from govbus.checkpoint import Checkpoint, NullRow
from govbus.errors import ConfigError, GovbusError, RunInProgress, SchemaDrift
from govbus.settings import Settings, load_settings
from registry.catalogue import DriftPolicy, ResourceSpec
from registry.db import make_engine, registry_engine
from registry.models import Run
from registry.resources import Registered, get_resource
from schemas.mask import mask_id_expr
from schemas.types import arrow_type, describe_item, item_for_column, misfit
from schemas.validate import ROW, BatchValidator

__all__ = [
    "RunResult",
    "Cloud",
    "sync",
    "plan_partitions",
    "prepare_target",
    "finish_partitions",
    "key_expr",
]

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
    deleted: int = 0


@dataclass
class _Counts:
    read: int = 0
    loaded: int = 0
    rejected: int = 0
    deleted: int = 0
    top: Any = None
    top_keys: set[str] = field(default_factory=set)
    # rows read with a NULL cursor this run, and keys of tracked NULL rows that now have a value
    null_seen: dict[str, NullRow] = field(default_factory=dict)
    null_gone: set[str] = field(default_factory=set)


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


# -- the run lock -------------------------------------------------------------------------------

LOCK_WAIT_SECONDS = 30.0


@contextmanager
def run_lock(cloud: Cloud, code: str, partition: str | None) -> Iterator[None]:
    """Hold the resource's (or one partition's) run lock for the length of a run.

    Two runs of one resource must not interleave: the second would settle the first's lake files
    as abandoned while it still writes them. The lock lives where the checkpoint does: a session
    advisory lock on PostgreSQL, ``GET_LOCK`` on MySQL/MariaDB, a file lock beside the lake for
    SQLite. Each is released by the operating system or the server when the process dies, so a
    killed run never leaves it behind; a new run waits for it up to ``LOCK_WAIT_SECONDS``.
    """
    name = f"govbus:{code}:{partition or ''}"
    number = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    dialect = cloud.engine.dialect.name
    deadline = time.monotonic() + LOCK_WAIT_SECONDS

    def wait(try_once: Callable[[], bool]) -> None:
        while not try_once():
            if time.monotonic() > deadline:
                raise RunInProgress(
                    f"{code}: another run of this resource{f' ({partition})' if partition else ''}"
                    f" is in progress; wait for it (`govbus runs {code}`) and run again"
                )
            time.sleep(0.2)

    if dialect == "postgresql":
        with cloud.engine.connect() as conn:
            take = sa.text("SELECT pg_try_advisory_lock(:n)")
            wait(lambda: bool(conn.execute(take, {"n": number}).scalar_one()))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:n)"), {"n": number})
                conn.commit()
        return
    if dialect in ("mysql", "mariadb"):
        with cloud.engine.connect() as conn:
            take = sa.text("SELECT GET_LOCK(:n, 0)")
            wait(lambda: conn.execute(take, {"n": name[:64]}).scalar_one() == 1)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name[:64]})
        return
    locks = cloud.lake.root / "_locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{number & 0xFFFFFFFFFFFF:012x}.lock", "w") as handle:

        def try_file() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait(try_file)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- drift --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Survey:
    """What the source offers now, against the registry."""

    spec: ResourceSpec  # the registered items, plus columns a drift policy of evolve carries
    notes: list[str]
    columns: dict[str, str]  # source column -> its type as the source names it
    evolved: tuple[str, ...]


def _survey(spec: ResourceSpec, source: Any, point: Checkpoint | None) -> _Survey:
    """Compare the source's columns with the registered items; stop the run where a person must act.

    A registered item gone from the source, or changed to a type its registered type cannot hold,
    stops the run (the message names the column, the old and new types and the registry change
    to make). A column the registry does not list is reported and, by ``source.drift``, carried
    to the cloud as an inferred item (evolve), refused (freeze) or left behind (ignore).
    """
    offered = source.columns()
    kinds: dict[str, Any] = source.column_kinds() if hasattr(source, "column_kinds") else {}
    columns = {name: str(kinds[name]) if name in kinds else "" for name in offered}
    registered = [item.name for item in spec.items]
    missing = [name for name in registered if name not in offered]
    if missing:
        raise SchemaDrift(
            f"{spec.code}: registered item(s) {', '.join(missing)} are not in the source any "
            f"more; restore them in the source or apply a new resource version without them "
            f"(`govbus registry apply`)"
        )

    before = point.columns if point is not None else {}
    for item in spec.items:
        kind = kinds.get(item.name)
        changed = bool(before.get(item.name)) and before[item.name] != columns[item.name]
        problem = None if kind is None else misfit(item, kind, changed=changed)
        if problem is None:
            continue
        now = columns[item.name]
        was = before.get(item.name) or f"a type fitting {describe_item(item)}"
        wanted = describe_item(item_for_column(item.name, kind))
        raise SchemaDrift(
            f"{spec.code}: source column {item.name!r} changed type from {was} to {now}; "
            f"{problem}: the registered item {item.name} is {describe_item(item)}. Change the "
            f"item to `type: {wanted}` (or change the column back) in the resource definition, "
            f"apply it with `govbus registry apply FILE` and run `govbus sync {spec.code} --full`"
        )

    notes = [
        f"source column {name!r} changed type from {before[name]} to {columns[name]}"
        for name in registered
        if before.get(name) and columns.get(name) and before[name] != columns[name]
    ]
    skip = {spec.source.soft_delete} if spec.source.soft_delete else set()
    extra = [name for name in offered if name not in registered and name not in skip]
    policy = spec.source.drift
    if extra and policy is DriftPolicy.FREEZE:
        raise SchemaDrift(
            f"{spec.code}: source has column(s) {', '.join(extra)} that the registry does not "
            f"list and the drift policy is freeze; register them as items or set "
            f"source.drift to evolve or ignore"
        )
    carried: list[Any] = []
    for name in extra:
        if policy is DriftPolicy.EVOLVE:
            item = item_for_column(name, kinds.get(name))
            carried.append(item)
            notes.append(
                f"new source column {name!r} ({columns[name] or 'untyped'}) is not a registered "
                f"item; carried to the cloud as {describe_item(item)} (drift policy evolve)"
            )
        else:
            notes.append(
                f"new source column {name!r} is not a registered item; left behind (drift policy "
                f"ignore)"
            )
    for note in notes:
        log.warning("%s: %s", spec.code, note)
    effective = spec.model_copy(update={"items": (*spec.items, *carried)}) if carried else spec
    return _Survey(effective, notes, columns, tuple(i.name for i in carried))


def _needs_full_read(
    survey: _Survey, point: Checkpoint | None, conn: Any, spec: ResourceSpec
) -> bool:
    """Whether an evolved column is new since the last run, so every row must be read once more."""
    if point is None or not survey.evolved:
        return False
    if point.columns and any(name not in point.columns for name in survey.evolved):
        return True
    if not spec.target.database:
        return False
    inspector = sa.inspect(conn)
    if not inspector.has_table(spec.target.table):
        return False
    existing = {c["name"] for c in inspector.get_columns(spec.target.table)}
    return any(name not in existing for name in survey.evolved)


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
        pa.field(DELETED_AT, pa.timestamp("us", tz="UTC")),
    ]
    return pa.schema(fields)


def _row_keys(spec: ResourceSpec, frame: pl.DataFrame) -> pl.Series:
    parts = []
    for key in spec.source.primary_key:
        col = pl.col(key).cast(pl.String)
        if "resident_id" in spec.item(key).checks:
            col = mask_id_expr(col)
        parts.append(col)
    return frame.select(pl.concat_str(parts, separator=",", ignore_nulls=True)).to_series()


@dataclass
class _Run:
    """What every batch of one run needs."""

    spec: ResourceSpec
    point: Checkpoint | None
    by_cursor: bool  # the checkpoint's value filters rows (false for file sources)
    validator: BatchValidator
    cloud: Cloud
    conn: Any
    table: Any
    lake_run: Any
    run_id: str
    counts: _Counts
    writer: CloudWriter  # the only user of ``conn`` while batches load


def sync(
    code: str,
    *,
    full: bool = False,
    settings: Settings | None = None,
    key_range: KeyRange | None = None,
    partition: str | None = None,
    progress: Progress | None = None,
    reconcile: bool = False,
) -> RunResult:
    """Run one sync of a registered resource and return its counts.

    ``full`` reads the whole source whatever the checkpoint says. ``key_range`` and ``partition``
    restrict a full load to one primary-key range (see ``plan_partitions``); such a run does not
    move the resource's checkpoint. ``reconcile`` also compares the source's primary keys with
    the cloud's and marks rows that vanished from the source as deleted.
    """
    if key_range is not None and not full:
        raise ConfigError("a primary-key range can only be read by a full load (--full)")
    if reconcile and key_range is not None:
        raise ConfigError("--reconcile compares all keys and cannot run on one key range")

    settings = settings or load_settings()
    settings.ensure_dirs()
    reg = registry_engine(settings.registry_url)
    registered = get_resource(reg, code)
    spec = registered.spec
    if reconcile and not spec.target.database:
        raise ConfigError(f"{code}: --reconcile needs a cloud table (target.database is false)")
    cloud = cloud_for(settings)
    with run_lock(cloud, code, partition):
        return _locked_sync(reg, registered, cloud, full, key_range, partition, progress, reconcile)


def _locked_sync(
    reg: Engine,
    registered: Registered,
    cloud: Cloud,
    full: bool,
    key_range: KeyRange | None,
    partition: str | None,
    progress: Progress | None,
    reconcile: bool,
) -> RunResult:
    spec = registered.spec
    code = spec.code
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
        survey = _survey(spec, source, point)
        drift = survey.notes
        spec = survey.spec
        if point is not None and point.source_state and hasattr(source, "resume"):
            source.resume(point.source_state)
        with cloud.engine.begin() as conn:
            if _needs_full_read(survey, point, conn, spec):
                drift.append("read every row again so existing rows carry the new column(s)")
                point = None
            table = cloud.store.ensure_target(conn, spec) if spec.target.database else None
            by_cursor = spec.source.cursor is not None and getattr(source, "by_cursor", True)
            run = _Run(
                spec, point, by_cursor, BatchValidator(spec), cloud, conn, table, lake_run,
                run_id, counts, CloudWriter(cloud.store, conn),
            )  # fmt: skip
            try:
                _load_all(run, source, _read_names(spec), key_range, progress)
            except BaseException:
                run.writer.abandon()  # no thread may use the connection while it rolls back
                raise
            run.writer.close()
            if reconcile:
                counts.deleted = _reconcile(spec, open_source(spec), run)
            if key_range is None:
                new_point = _next_checkpoint(run, survey, source)
                cloud.store.save_checkpoint(conn, code, new_point, run_id)
            if lake_run is not None:
                lake_run.close()  # every staged file complete before the load commits
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
        "%s: run %s read %d, loaded %d, rejected %d, deleted %d in %.1f s",
        code,
        run_id,
        counts.read,
        counts.loaded,
        counts.rejected,
        counts.deleted,
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
        deleted=counts.deleted,
    )


def _read_names(spec: ResourceSpec) -> list[str]:
    """The source columns a run reads: the items, and the soft-delete flag if it is not one."""
    names = [item.name for item in spec.items]
    soft = spec.source.soft_delete
    if soft is not None and soft not in names:
        names.append(soft)
    return names


def _load_all(
    run: _Run,
    source: Any,
    names: list[str],
    key_range: KeyRange | None,
    progress: Progress | None,
) -> None:
    """Read every batch the run is due and load it (the writes may still be queued on return)."""
    point = run.point
    cursor_from = point.value if point is not None and run.by_cursor else None
    for batch in source.read(names, cursor_from=cursor_from, key_range=key_range):
        _load_batch(run, batch)
        if progress is not None:
            progress(run.counts.read)
    if cursor_from is not None and hasattr(source, "read_nulls"):
        # Rows whose cursor is NULL, and tracked ones that got a value below the checkpoint
        # since: the inclusive lower bound does not reach either.
        tracked = [row.key for row in point.null_rows.values()]  # type: ignore[union-attr]
        for batch in source.read_nulls(names, cursor_from, tracked):
            _load_batch(run, batch)


def _row_digest(values: tuple[Any, ...]) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:32]


def _skip_seen(run: _Run, frame: pl.DataFrame) -> pl.DataFrame:
    """Drop rows an earlier committed run loaded as they are now; note NULL-cursor rows."""
    keys = run.spec.source.primary_key
    cursor = run.spec.source.cursor
    point = run.point
    if cursor is None:
        return frame
    frame = frame.with_columns(key_expr(keys).alias(_KEY))

    # Rows at exactly the checkpoint's value were read by the previous run if their key is listed.
    if run.by_cursor and point is not None and point.boundary_keys:
        seen = (pl.col(cursor) == point.value) & pl.col(_KEY).is_in(list(point.boundary_keys))
        frame = frame.filter(~seen)

    # A NULL cursor says nothing about change: such a row is compared with its last loaded values.
    nulls = frame.filter(pl.col(cursor).is_null())
    drop: list[str] = []
    if not nulls.is_empty():
        data = nulls.drop(_KEY)
        for key_text, row in zip(nulls[_KEY].to_list(), data.iter_rows(), strict=True):
            digest = _row_digest(row)
            key_values = tuple(row[data.columns.index(k)] for k in keys)
            run.counts.null_seen[key_text] = NullRow(key_values, digest)
            before = point.null_rows.get(key_text) if point is not None else None
            if before is not None and before.digest == digest:
                drop.append(key_text)
    if point is not None and point.null_rows:
        valued = frame.filter(
            pl.col(cursor).is_not_null() & pl.col(_KEY).is_in(list(point.null_rows))
        )
        run.counts.null_gone.update(valued[_KEY].to_list())
    if drop:
        frame = frame.filter(~(pl.col(cursor).is_null() & pl.col(_KEY).is_in(drop)))
    return frame.drop(_KEY)


_KEY = "__govbus_key"
_DELETED = "__govbus_deleted"


def _deleted_flags(run: _Run, frame: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """Per row position, when the provider soft-deleted it (null: not deleted)."""
    column = run.spec.source.soft_delete
    assert column is not None
    dtype = frame.schema[column]
    col = pl.col(column)
    if dtype == pl.Boolean:
        flag = col.fill_null(False)
    elif dtype.is_numeric():
        flag = col.fill_null(0) != 0
    elif dtype == pl.String:
        lowered = col.str.strip_chars().str.to_lowercase()
        flag = col.is_not_null() & ~lowered.is_in(["", "0", "false", "f", "n", "no", "否"])
    else:
        flag = col.is_not_null()
    when = pl.lit(now).dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if isinstance(dtype, pl.Datetime) or dtype == pl.String:
        # A deletion time the provider wrote is kept (read in the source's time zone).
        stamp = run.validator._timestamp_expr(col, dtype)
        if dtype == pl.String:
            stamp = pl.coalesce(stamp, when)
        when = stamp
    return frame.select(pl.col(ROW), pl.when(flag).then(when).otherwise(None).alias(_DELETED))


def _load_batch(run: _Run, batch: pa.RecordBatch) -> None:
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    spec, counts = run.spec, run.counts
    frame = _skip_seen(run, frame)
    if frame.is_empty():
        return

    frame = frame.with_row_index(ROW, offset=counts.read).with_columns(pl.col(ROW).cast(pl.Int64))
    counts.read += frame.height
    if spec.source.cursor is not None:
        _track_cursor(frame, spec.source.cursor, spec.source.primary_key, counts)

    checked = run.validator.check(frame)
    now = datetime.now(UTC)
    good = checked.good.with_columns(
        pl.lit(run.run_id).alias(RUN_ID),
        pl.lit(now).dt.convert_time_zone("UTC").alias(LOADED_AT),
    )
    if spec.source.soft_delete is not None:
        flags = _deleted_flags(run, frame, now)
        good = good.join(flags, on=ROW, how="left").rename({_DELETED: DELETED_AT})
    else:
        good = good.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias(DELETED_AT))
    good = good.drop(ROW)
    if run.table is None:
        counts.loaded += good.height
    else:
        counts.loaded += run.writer.upsert(run.table, good)
    if run.lake_run is not None and good.height:
        run.lake_run.write(good.to_arrow().cast(_lake_schema(spec)))

    if checked.rejected_rows:
        counts.rejected += checked.rejected_rows
        bad = frame.filter(pl.col(ROW).is_in(checked.rejects["row"].unique().implode()))
        row_keys = pl.DataFrame({"row": bad[ROW], "row_key": _row_keys(spec, bad)})
        rejects = checked.rejects.join(row_keys, on="row", how="left").rename({"row": "row_number"})
        run.writer.write_rejects(spec.code, run.run_id, rejects)


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


def _next_checkpoint(run: _Run, survey: _Survey, source: Any) -> Checkpoint:
    point, counts = run.point, run.counts
    nulls = {} if point is None else dict(point.null_rows)
    for key in counts.null_gone:
        nulls.pop(key, None)
    nulls.update(counts.null_seen)
    state = source.state() if hasattr(source, "state") else {}
    if counts.top is None or (
        point is not None and point.value is not None and counts.top < point.value
    ):
        # Nothing at or above the checkpoint (rows read by key below it do not move it back).
        value, keys = (None, frozenset()) if point is None else (point.value, point.boundary_keys)
    elif point is not None and counts.top == point.value:
        # Nothing newer arrived: rows seen at the same value join those seen before.
        value, keys = point.value, point.boundary_keys | frozenset(counts.top_keys)
    else:
        if len(counts.top_keys) > 10_000:
            log.warning(
                "%d rows share the newest cursor value %s; the checkpoint lists each of their keys",
                len(counts.top_keys),
                counts.top,
            )
        value, keys = counts.top, frozenset(counts.top_keys)
    return Checkpoint(value, keys, nulls, state, survey.columns)


# -- reconcile ----------------------------------------------------------------------------------


def _reconcile(spec: ResourceSpec, source: Any, run: _Run) -> int:
    """Mark cloud rows whose primary key is no longer in the source as deleted; returns how many.

    The source's keys (all of them, whatever the checkpoint) go into a temporary table in the
    cloud, and one ``UPDATE`` in the run's transaction sets ``_govbus_deleted_at`` on the rows
    missing there. Rows are kept, not removed; the lake gets each such row as a new version with
    its deletion time.
    """
    keys = list(spec.source.primary_key)
    conn, table = run.conn, run.table
    key_spec = spec.model_copy(update={"items": tuple(spec.item(k) for k in keys)})
    validator = BatchValidator(key_spec)
    temp = sa.Table(
        f"govbus_keys_{uuid.uuid4().hex[:12]}",
        sa.MetaData(),
        *[sa.Column(k, table.c[k].type, primary_key=True) for k in keys],
        prefixes=["TEMPORARY"],
    )
    temp.create(conn)
    try:
        for batch in source.read(keys):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            frame = frame.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
            coerced, _ = validator.coerce(frame)
            coerced = coerced.drop(ROW).drop_nulls().unique()
            for chunk in coerced.iter_slices(10_000):
                conn.execute(sa.insert(temp), chunk.to_dicts())
        source.dispose()

        now = datetime.now(UTC)
        vanished = sa.and_(
            table.c[DELETED_AT].is_(None),
            ~sa.exists().where(sa.and_(*[temp.c[k] == table.c[k] for k in keys])),
        )
        gone = conn.execute(sa.select(table).where(vanished)).mappings().all()
        if not gone:
            return 0
        conn.execute(
            sa.update(table)
            .where(vanished)
            .values({DELETED_AT: now, RUN_ID: run.run_id, LOADED_AT: now})
        )
    finally:
        temp.drop(conn)

    if run.lake_run is not None:
        schema = _lake_schema(spec)
        rows = [{**dict(r), DELETED_AT: now, RUN_ID: run.run_id, LOADED_AT: now} for r in gone]
        columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
        run.lake_run.write(pa.table(columns, schema=schema))
    log.info("%s: %d row(s) vanished from the source, marked deleted", spec.code, len(gone))
    return len(gone)


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
    high_water_keys: frozenset[str] = frozenset()  # keys of the rows holding it then

    def label(self, index: int) -> str:
        return f"{index + 1}/{len(self.ranges)}"


def plan_partitions(code: str, partitions: int, settings: Settings | None = None) -> PartitionPlan:
    """Split a full load into primary-key ranges, noting the cursor's high-water mark first.

    The rows holding the mark are noted too: every range reads them, so the incremental run after
    the load need not read them again (a row committed later with the same value is not listed,
    and arrives then).
    """
    settings = settings or load_settings()
    spec = get_resource(registry_engine(settings.registry_url), code).spec
    source = open_source(spec)
    cursor = spec.source.cursor
    high_water = source.max_cursor() if cursor else None
    keys: set[str] = set()
    if high_water is not None:
        names = [*spec.source.primary_key, cursor]
        for batch in source.read(names, cursor_from=high_water):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            at_top = frame.filter(pl.col(cursor) == high_water)
            keys.update(at_top.select(key_expr(spec.source.primary_key)).to_series().to_list())
    ranges = tuple(source.key_bounds(partitions))
    source.dispose()
    return PartitionPlan(code, ranges, high_water, frozenset(keys))


def prepare_target(code: str, settings: Settings | None = None) -> None:
    """Create or evolve a resource's cloud table before parallel range loads race to do it."""
    settings = settings or load_settings()
    spec = get_resource(registry_engine(settings.registry_url), code).spec
    if not spec.target.database:
        return
    cloud = cloud_for(settings)
    with cloud.engine.begin() as conn:
        cloud.store.ensure_target(conn, spec)


def finish_partitions(plan: PartitionPlan, settings: Settings | None = None) -> None:
    """After every range loaded, start incremental syncs from the plan's high-water mark.

    Rows changed while the ranges loaded have a cursor at or above the mark, so the next
    incremental run (inclusive lower bound) reads them again.
    """
    if plan.high_water is None:
        return
    settings = settings or load_settings()
    cloud = cloud_for(settings)
    point = Checkpoint(plan.high_water, plan.high_water_keys)
    with cloud.engine.begin() as conn:
        cloud.store.save_checkpoint(conn, plan.code, point, "partitioned")

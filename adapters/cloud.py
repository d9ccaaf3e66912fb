"""The cloud SQL database: target tables, upserts by primary key, rejects and checkpoints.

Everything one run writes to the cloud (rows, rejects, the new checkpoint and the load marker)
is written in one transaction, so a checkpoint can never pass data that did not commit.
On PostgreSQL rows go through ``COPY`` into a temporary staging table and then one
``INSERT ... ON CONFLICT DO UPDATE`` (or, into a table that was empty when the run began, straight
through ``COPY``); elsewhere through batched ``INSERT ... ON CONFLICT``.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime

import polars as pl
import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from govbus.checkpoint import Checkpoint
from govbus.errors import SinkError, SinkUnavailable
from registry.catalogue import ResourceSpec
from schemas.types import sql_type

__all__ = ["CloudStore", "CloudWriter", "META_COLUMNS", "RUN_ID", "LOADED_AT", "DELETED_AT"]

log = logging.getLogger(__name__)

RUN_ID = "_govbus_run_id"
LOADED_AT = "_govbus_loaded_at"
DELETED_AT = "_govbus_deleted_at"
META_COLUMNS = (RUN_ID, LOADED_AT, DELETED_AT)

internal = sa.MetaData()

checkpoints = sa.Table(
    "govbus_checkpoints",
    internal,
    sa.Column("resource_code", sa.String(64), primary_key=True),
    sa.Column("partition", sa.String(64), primary_key=True, default=""),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

loads = sa.Table(
    "govbus_loads",
    internal,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("resource_code", sa.String(64), nullable=False, index=True),
    sa.Column("read", sa.BigInteger, nullable=False),
    sa.Column("loaded", sa.BigInteger, nullable=False),
    sa.Column("rejected", sa.BigInteger, nullable=False),
    sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
)

rejects = sa.Table(
    "govbus_rejects",
    internal,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("resource_code", sa.String(64), nullable=False, index=True),
    sa.Column("run_id", sa.String(36), nullable=False, index=True),
    sa.Column("row_number", sa.BigInteger, nullable=False),
    sa.Column("row_key", sa.Text),
    sa.Column("item", sa.String(200)),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("value", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def _translate(exc: Exception, what: str) -> Exception:
    if isinstance(exc, OperationalError):
        return SinkUnavailable(f"{what}: the cloud database is unreachable: {exc.orig}")
    if isinstance(exc, DBAPIError):
        return SinkError(f"{what}: the cloud database refused the write: {exc.orig}")
    return exc


class CloudStore:
    """Writes resources into the cloud database; one instance per process and database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # per open transaction: target tables and whether each was empty at its first write
        self._empty_at_start: weakref.WeakKeyDictionary[sa.RootTransaction, dict[str, bool]] = (
            weakref.WeakKeyDictionary()
        )
        internal.create_all(engine, checkfirst=True)

    # -- tables ---------------------------------------------------------------------------------

    def target(self, spec: ResourceSpec) -> sa.Table:
        keys = set(spec.source.primary_key)
        columns = [
            sa.Column(
                item.name,
                sql_type(item),
                primary_key=item.name in keys,
                nullable=item.nullable and item.name not in keys,
                comment=item.title,
            )
            for item in spec.items
        ]
        columns += [
            sa.Column(RUN_ID, sa.String(36), nullable=False),
            sa.Column(LOADED_AT, sa.DateTime(timezone=True), nullable=False),
            sa.Column(DELETED_AT, sa.DateTime(timezone=True)),
        ]
        return sa.Table(spec.target.table, sa.MetaData(), *columns, comment=spec.name)

    def ensure_target(self, conn: Connection, spec: ResourceSpec) -> sa.Table:
        """Create the target table, or add columns for items registered since it was made."""
        table = self.target(spec)
        inspector = sa.inspect(conn)
        if not inspector.has_table(table.name):
            table.create(conn)
            return table
        existing = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            ddl = column.type.compile(dialect=conn.dialect)
            log.warning(
                "adding column %s.%s (%s) for a newly registered item", table.name, column.name, ddl
            )
            conn.execute(
                sa.text(
                    f"ALTER TABLE {_q(conn, table.name)} ADD COLUMN {_q(conn, column.name)} {ddl}"
                )
            )
        return table

    # -- checkpoints and load markers -----------------------------------------------------------

    def checkpoint(self, code: str, partition: str = "") -> Checkpoint | None:
        query = sa.select(checkpoints.c.state).where(
            checkpoints.c.resource_code == code, checkpoints.c.partition == partition
        )
        with self.engine.connect() as conn:
            state = conn.execute(query).scalar_one_or_none()
        return None if state is None else Checkpoint.from_json(state)

    def save_checkpoint(
        self, conn: Connection, code: str, point: Checkpoint, run_id: str, partition: str = ""
    ) -> None:
        where = (checkpoints.c.resource_code == code) & (checkpoints.c.partition == partition)
        conn.execute(sa.delete(checkpoints).where(where))
        conn.execute(
            sa.insert(checkpoints).values(
                resource_code=code,
                partition=partition,
                state=point.to_json(),
                run_id=run_id,
                updated_at=datetime.now(UTC),
            )
        )

    def reset_checkpoint(self, code: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(checkpoints).where(checkpoints.c.resource_code == code))

    def mark_loaded(
        self, conn: Connection, run_id: str, code: str, read: int, loaded: int, rejected: int
    ) -> None:
        conn.execute(
            sa.insert(loads).values(
                run_id=run_id,
                resource_code=code,
                read=read,
                loaded=loaded,
                rejected=rejected,
                committed_at=datetime.now(UTC),
            )
        )

    def committed_runs(self, run_ids: list[str]) -> set[str]:
        if not run_ids:
            return set()
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(loads.c.run_id).where(loads.c.run_id.in_(run_ids)))
            return set(found.scalars())

    # -- rows -----------------------------------------------------------------------------------

    def upsert(self, conn: Connection, table: sa.Table, frame: pl.DataFrame) -> int:
        """Insert or replace rows by primary key; returns the number of rows written."""
        if frame.is_empty():
            return 0
        try:
            if self.dialect == "postgresql" and not _has_binary(table):
                self._upsert_copy(conn, table, frame)
            else:
                self._upsert_rows(conn, table, frame)
        except DBAPIError as exc:
            raise _translate(exc, f"loading {table.name}") from exc
        return frame.height

    def _upsert_rows(self, conn: Connection, table: sa.Table, frame: pl.DataFrame) -> None:
        keys = [c.name for c in table.primary_key.columns]
        names = frame.columns
        updates = [n for n in names if n not in keys]
        match self.dialect:
            case "sqlite":
                stmt = sqlite.insert(table)
                stmt = stmt.on_conflict_do_update(
                    index_elements=keys, set_={n: stmt.excluded[n] for n in updates}
                )
            case "postgresql":
                stmt = postgresql.insert(table)
                stmt = stmt.on_conflict_do_update(
                    index_elements=keys, set_={n: stmt.excluded[n] for n in updates}
                )
            case "mysql" | "mariadb":
                stmt = mysql.insert(table)
                stmt = stmt.on_duplicate_key_update({n: stmt.inserted[n] for n in updates})
            case other:
                raise SinkError(f"cloud database dialect {other!r} is not supported")
        for chunk in frame.iter_slices(5_000):
            conn.execute(stmt, chunk.to_dicts())

    def _was_empty(self, conn: Connection, table: sa.Table) -> bool:
        """Whether ``table`` held no rows when this transaction first wrote to it."""
        transaction = conn.get_transaction()
        seen = self._empty_at_start.setdefault(transaction, {})  # type: ignore[arg-type]
        if table.name not in seen:
            query = f"SELECT NOT EXISTS (SELECT 1 FROM {_q(conn, table.name)})"
            seen[table.name] = bool(conn.exec_driver_sql(query).scalar())
        return seen[table.name]

    def _copy_direct(self, conn: Connection, table: sa.Table, frame: pl.DataFrame) -> bool:
        """COPY the rows straight into a table that was empty when the run began.

        No staging table and no ``INSERT ... ON CONFLICT``: a first load of a million rows takes
        a third of the time. A key already present (a source without a real primary key, or a
        concurrent load of an overlapping key range) rolls this batch back to its savepoint and
        returns False, and the batch is upserted after all.
        """
        cols = ", ".join(_q(conn, n) for n in frame.columns)
        savepoint = conn.begin_nested()
        try:
            self._copy_in(conn, f"COPY {_q(conn, table.name)} ({cols}) FROM STDIN", frame)
        except Exception as exc:  # psycopg's own error: the COPY runs on the driver connection
            savepoint.rollback()
            if getattr(exc, "sqlstate", None) != "23505":  # unique_violation
                raise
            self._empty_at_start[conn.get_transaction()][table.name] = False  # type: ignore[index]
            log.info("%s: a key is already present; upserting through a staging table", table.name)
            return False
        savepoint.commit()
        return True

    @staticmethod
    def _copy_in(conn: Connection, copy_sql: str, frame: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.write_csv(
            buffer,
            include_header=False,
            null_value="",
            quote_style="non_numeric",
            datetime_format="%Y-%m-%dT%H:%M:%S%.6f%z",
        )
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            with cur.copy(f"{copy_sql} (FORMAT csv)") as copy:
                copy.write(buffer.getbuffer())

    def _upsert_copy(self, conn: Connection, table: sa.Table, frame: pl.DataFrame) -> None:
        if self._was_empty(conn, table) and self._copy_direct(conn, table, frame):
            return
        stage = f"govbus_stage_{table.name}"[:63]
        names = frame.columns
        cols = ", ".join(_q(conn, n) for n in names)
        keys = ", ".join(_q(conn, c.name) for c in table.primary_key.columns)
        updates = ", ".join(
            f"{_q(conn, n)} = EXCLUDED.{_q(conn, n)}"
            for n in names
            if n not in {c.name for c in table.primary_key.columns}
        )
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {_q(conn, stage)} "
            f"(LIKE {_q(conn, table.name)} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        conn.exec_driver_sql(f"TRUNCATE {_q(conn, stage)}")
        self._copy_in(conn, f"COPY {_q(conn, stage)} ({cols}) FROM STDIN", frame)
        conn.exec_driver_sql(
            f"INSERT INTO {_q(conn, table.name)} ({cols}) SELECT {cols} FROM {_q(conn, stage)} "
            f"ON CONFLICT ({keys}) DO UPDATE SET {updates}"
        )

    def write_rejects(self, conn: Connection, code: str, run_id: str, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        now = datetime.now(UTC)
        records = [
            {**row, "resource_code": code, "run_id": run_id, "created_at": now}
            for row in frame.to_dicts()
        ]
        conn.execute(sa.insert(rejects), records)

    def count(self, table_name: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text(f"SELECT count(*) FROM {_q(conn, table_name)}")
            ).scalar_one()


class CloudWriter:
    """The rows and rejects of one run, written by a thread of their own on the run's connection.

    On PostgreSQL most of a load's time is the server parsing and storing the ``COPY``; while it
    does, the run reads and validates the next batch. The writer thread is the only user of the
    connection between the first write and ``close``: the writes stay inside the run's single
    transaction and in the order they were handed over. ``write`` blocks when ``QUEUED`` writes
    already wait, so memory stays bounded. A failed write is raised by the next ``upsert`` or
    ``write_rejects`` or by ``close``, which a run must call before it uses the connection again.
    """

    QUEUED = 2

    def __init__(self, store: CloudStore, conn: Connection) -> None:
        self.store = store
        self.conn = conn
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue(maxsize=self.QUEUED)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._abandoned = False

    def upsert(self, table: sa.Table, frame: pl.DataFrame) -> int:
        """Hand rows over for ``CloudStore.upsert``; returns how many will be written."""
        if not frame.is_empty():
            self._submit(lambda: self.store.upsert(self.conn, table, frame))
        return frame.height

    def write_rejects(self, code: str, run_id: str, frame: pl.DataFrame) -> None:
        if not frame.is_empty():
            self._submit(lambda: self.store.write_rejects(self.conn, code, run_id, frame))

    def _submit(self, work: Callable[[], object]) -> None:
        self._raise_failure()
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="govbus-cloud", daemon=True)
            self._thread.start()
        self._queue.put(work)

    def _drain(self) -> None:
        while (work := self._queue.get()) is not None:
            if self._error is not None or self._abandoned:
                continue  # keep taking work so a blocked ``_submit`` returns
            try:
                work()
            except BaseException as exc:
                self._error = exc

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Drop the writes still queued and wait for the one under way; the run is failing."""
        self._abandoned = True
        self.stop()

    def stop(self) -> None:
        """Wait for the thread to finish what it holds, without raising; safe to call twice."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Finish every handed-over write; raises the first that failed."""
        self.stop()
        self._raise_failure()


def _has_binary(table: sa.Table) -> bool:
    return any(isinstance(c.type, sa.LargeBinary) for c in table.columns)


def _q(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)

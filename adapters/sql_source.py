"""Reading a department's relational table as a stream of Arrow record batches.

Works for any database SQLAlchemy reaches (SQLite, PostgreSQL, MySQL/MariaDB through PyMySQL).
Rows are fetched through a server-side cursor in batches of ``source.batch_size``, so memory holds
one batch at a time whatever the table's size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, NoSuchTableError, OperationalError

from govbus.errors import ConfigError, SourceError, SourceUnavailable
from registry.catalogue import ResourceSpec, expand_env

__all__ = ["SqlSource", "KeyRange", "to_arrow_batch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRange:
    """A half-open range of a single-column primary key: ``low <= key < high``; None is open."""

    low: Any = None
    high: Any = None


def _decimals(values: Sequence[Any]) -> pa.Array | None:
    """Exact decimals: one Arrow decimal type when every value has the same scale, else text.

    A ``numeric`` column without declared precision holds values of differing scale (and up to
    a thousand digits); Arrow would widen them all to one scale or fail, so such a column
    travels as each value's plain decimal text, digit for digit.
    """
    present = [v for v in values if v is not None]
    if not present or not all(isinstance(v, Decimal) for v in present):
        return None
    exponents = {v.as_tuple().exponent for v in present}
    if len(exponents) == 1 and all(
        v.is_finite() and len(v.as_tuple().digits) <= 38 for v in present
    ):
        return pa.array(values, from_pandas=False)
    return pa.array([None if v is None else format(v, "f") for v in values], pa.large_string())


def to_arrow_batch(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    """Rows of Python values to a record batch, types inferred; aware timestamps become UTC."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    arrays = []
    for values in columns:
        array = _decimals(values)
        if array is None:
            array = pa.array(values, from_pandas=False)
        if pa.types.is_timestamp(array.type) and array.type.tz is not None:
            array = pc.cast(array, pa.timestamp(array.type.unit, tz="UTC"))
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


class SqlSource:
    """A table or query of a relational database, as declared in the resource's ``source``."""

    def __init__(self, spec: ResourceSpec) -> None:
        self.spec = spec
        self.url = expand_env(spec.source.url)
        try:
            self.engine = sa.create_engine(self.url)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise ConfigError(f"{spec.code}: source url is not a usable SQLAlchemy URL") from exc

    def _relation(self) -> sa.FromClause:
        src = self.spec.source
        if src.table is not None:
            schema, _, name = src.table.rpartition(".")
            return sa.table(name, schema=schema or None)
        return sa.text(src.query).columns().subquery("govbus_source")  # type: ignore[arg-type]

    def columns(self) -> list[str]:
        """The columns the source offers now, in its own order."""
        src = self.spec.source
        try:
            if src.table is not None:
                schema, _, name = src.table.rpartition(".")
                return [
                    c["name"] for c in sa.inspect(self.engine).get_columns(name, schema or None)
                ]
            with self.engine.connect() as conn:
                result = conn.execute(sa.text(f"SELECT * FROM ({src.query}) q WHERE 1 = 0"))
                return list(result.keys())
        except NoSuchTableError:
            raise SourceError(
                f"{self.spec.code}: source table {src.table!r} does not exist"
            ) from None
        except OperationalError as exc:
            raise SourceUnavailable(
                f"{self.spec.code}: cannot reach the source: {exc.orig}"
            ) from exc

    def column_types(self) -> dict[str, str]:
        """Source column types as the database names them (for drift reports)."""
        src = self.spec.source
        if src.table is None:
            return {}
        schema, _, name = src.table.rpartition(".")
        cols = sa.inspect(self.engine).get_columns(name, schema or None)
        return {c["name"]: str(c["type"]) for c in cols}

    def read(
        self,
        names: Sequence[str],
        cursor_from: Any = None,
        key_range: KeyRange | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the chosen columns; with ``cursor_from``, only rows whose cursor is >= it."""
        src = self.spec.source
        relation = self._relation()
        query = sa.select(*[sa.column(n) for n in names]).select_from(relation)
        if cursor_from is not None:
            query = query.where(sa.column(src.cursor) >= sa.bindparam("cursor_from", cursor_from))
        if key_range is not None:
            key = sa.column(src.primary_key[0])
            if key_range.low is not None:
                query = query.where(key >= sa.bindparam("low", key_range.low))
            if key_range.high is not None:
                query = query.where(key < sa.bindparam("high", key_range.high))

        yield from self._stream(query)

    def key_bounds(self, partitions: int) -> list[KeyRange]:
        """Split a single-column primary key into ranges holding about the same number of rows."""
        src = self.spec.source
        if partitions <= 1 or len(src.primary_key) != 1:
            return [KeyRange()]
        key = sa.column(src.primary_key[0])
        numbered = (
            sa.select(key.label("k"), sa.func.ntile(partitions).over(order_by=key).label("tile"))
            .select_from(self._relation())
            .subquery()
        )
        query = (
            sa.select(sa.func.min(numbered.c.k))
            .group_by(numbered.c.tile)
            .order_by(sa.func.min(numbered.c.k))
        )
        with self.engine.connect() as conn:
            starts = [row[0] for row in conn.execute(query)]
        if not starts:
            return [KeyRange()]
        bounds = [None, *starts[1:], None]
        return [KeyRange(low, high) for low, high in zip(bounds, bounds[1:], strict=False)]

    def max_cursor(self) -> Any:
        cursor = sa.column(self.spec.source.cursor)
        query = sa.select(sa.func.max(cursor)).select_from(self._relation())
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- what incremental syncs need besides ``read`` ------------------------------------------

    #: the checkpoint's cursor value filters rows in the source (``read(cursor_from=...)``)
    by_cursor = True

    def column_kinds(self) -> dict[str, sa.types.TypeEngine[Any]]:
        """Source column types as SQLAlchemy reflects them, to compare with registered items.

        Empty for a query (its types are not declared) and for SQLite, whose columns take any
        value whatever their declared type.
        """
        src = self.spec.source
        if src.table is None or self.engine.dialect.name == "sqlite":
            return {}
        schema, _, name = src.table.rpartition(".")
        try:
            cols = sa.inspect(self.engine).get_columns(name, schema or None)
        except OperationalError as exc:
            raise SourceUnavailable(
                f"{self.spec.code}: cannot reach the source: {exc.orig}"
            ) from exc
        return {c["name"]: c["type"] for c in cols}

    def read_nulls(
        self, names: Sequence[str], cursor_from: Any, tracked: Sequence[tuple[Any, ...]]
    ) -> Iterator[pa.RecordBatch]:
        """Rows an inclusive cursor bound misses: a NULL cursor, or a tracked key below the bound.

        ``tracked`` holds the keys of rows last read with a NULL cursor; one that got a value
        below ``cursor_from`` since is read here so it is updated in place.
        """
        src = self.spec.source
        cursor = sa.column(src.cursor)
        condition = cursor.is_(None)
        keys = [sa.column(k) for k in src.primary_key]
        below = cursor < sa.bindparam("below", cursor_from)
        for start in range(0, len(tracked), 1_000):
            chunk = [tuple(k) for k in tracked[start : start + 1_000]]
            if len(keys) == 1:
                member = keys[0].in_([k[0] for k in chunk])
            else:
                member = sa.tuple_(*keys).in_(chunk)
            condition = condition | (member & below)
        query = sa.select(*[sa.column(n) for n in names]).select_from(self._relation())
        yield from self._stream(query.where(condition))

    def _stream(self, query: sa.Select[Any]) -> Iterator[pa.RecordBatch]:
        names = list(query.selected_columns.keys())
        size = self.spec.source.batch_size
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=size).execute(query)
                for rows in result.partitions(size):
                    yield to_arrow_batch(names, rows)
        except OperationalError as exc:
            raise SourceUnavailable(
                f"{self.spec.code}: reading the source failed: {exc.orig}"
            ) from exc
        except DBAPIError as exc:
            raise SourceError(
                f"{self.spec.code}: the source refused the query: {exc.orig}"
            ) from exc

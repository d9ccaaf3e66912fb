"""The PostgreSQL fast path (ADBC binary COPY) on the real server: exact values, as SqlSource."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
import sqlalchemy as sa

from adapters import open_source
from adapters.postgres_source import PostgresSource, libpq_url
from adapters.sql_source import KeyRange, SqlSource
from registry.catalogue import ResourceSpec

pytestmark = pytest.mark.postgres

NAMES = ["id", "code", "name", "note", "capital", "amount", "born", "seen_at", "local_at", "active"]

ROWS: list[tuple[Any, ...]] = [
    (
        1,
        "91110000600037341L",
        "嘉兴市南湖区「星辰」科技有限公司",
        "",
        Decimal("12345678901234567.89"),
        Decimal("3.14159265358979323846264338327950288419716939937510"),
        date(1949, 10, 1),
        datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2024, 3, 10, 2, 30, 0, 999999),
        True,
    ),
    (
        2,
        "91350100M000100Y43",
        "O'Brien; DROP TABLE x",
        None,
        None,
        None,
        None,
        datetime(2024, 1, 2, 23, 59, 59, 999999, tzinfo=UTC),
        None,
        None,
    ),
    (
        3,
        "91110000600037341M",
        '换行\n制表\t引号"反斜杠\\',
        "  ",
        Decimal("-0.01"),
        Decimal("-1E+30"),
        date(2000, 2, 29),
        datetime(2024, 1, 3, 12, 0, tzinfo=UTC),
        datetime(1970, 1, 1),
        False,
    ),
]


def spec_for(url: str, **source: Any) -> ResourceSpec:
    return ResourceSpec.model_validate(
        {
            "code": "330400-SCJG-0001",
            "name": "企业",
            "provider": {"code": "11330400MB1234562E", "name": "嘉兴市市场监督管理局"},
            "format": "database",
            "update_cycle": "daily",
            "sharing": {"type": "unconditional"},
            "source": {"url": url, "cursor": "seen_at", "primary_key": ["id"], **source},
            "target": {"table": "enterprise"},
            "items": [
                {"name": "id", "type": "I", "nullable": False},
                {"name": "code", "type": "C", "length": 18, "checks": ["uscc"]},
                {"name": "name", "type": "C", "length": 200},
                {"name": "note", "type": "C", "length": 10},
                {"name": "capital", "type": "Y", "precision": 19, "scale": 2},
                {"name": "amount", "type": "N"},
                {"name": "born", "type": "D"},
                {"name": "seen_at", "type": "T"},
                {"name": "local_at", "type": "T"},
                {"name": "active", "type": "L"},
            ],
        }
    )


@pytest.fixture
def source_url(pg_url: str) -> Iterator[str]:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'CREATE TABLE "Enterprise" (id bigint PRIMARY KEY, code varchar(18), name text,'
            " note text, capital numeric(19, 2), amount numeric, born date,"
            " seen_at timestamptz, local_at timestamp, active boolean)"
        )
        conn.exec_driver_sql(
            'INSERT INTO "Enterprise" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)', ROWS
        )
    engine.dispose()
    yield pg_url


def read_all(source: Any, names: list[str] = NAMES, **kwargs: Any) -> pa.Table:
    batches = list(source.read(names, **kwargs))
    return pa.Table.from_batches(batches) if batches else pa.table({})


def test_postgresql_urls_get_the_fast_path(source_url: str) -> None:
    assert type(open_source(spec_for(source_url, table="Enterprise"))) is PostgresSource
    generic = spec_for(source_url, table="Enterprise", options={"reader": "sqlalchemy"})
    assert type(open_source(generic)) is SqlSource
    sqlite = spec_for("sqlite:///x.db", table="Enterprise")
    assert type(open_source(sqlite)) is SqlSource


def test_libpq_url_drops_the_driver_and_keeps_the_rest() -> None:
    url = "postgresql+psycopg://gov:p%40ss@db.example:6432/src?sslmode=require"
    assert libpq_url(url) == "postgresql://gov:p%40ss@db.example:6432/src?sslmode=require"


def test_values_arrive_exactly(source_url: str) -> None:
    table = read_all(PostgresSource(spec_for(source_url, table="Enterprise")))

    assert table.column_names == NAMES
    assert table.schema.field("capital").type == pa.decimal128(19, 2)
    assert table.schema.field("seen_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("local_at").type == pa.timestamp("us")
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    got = [tuple(r[n] for n in NAMES) for r in rows]
    # unconstrained numeric travels as the server's own text, every digit kept
    expected = [(*r[:5], None if r[5] is None else format(r[5], "f"), *r[6:]) for r in ROWS]
    expected[2] = (*expected[2][:5], "-1000000000000000000000000000000", *expected[2][6:])
    assert got == expected


def test_same_batches_as_the_generic_reader_after_validation(source_url: str) -> None:
    from schemas.validate import ROW, BatchValidator

    # SqlSource cannot hold the 51-digit unconstrained numeric (Arrow infers a decimal wider than
    # 76 digits), so the comparison leaves that column out.
    full = spec_for(source_url, table="Enterprise")
    spec = full.model_copy(update={"items": tuple(i for i in full.items if i.name != "amount")})
    names = [i.name for i in spec.items]
    validator = BatchValidator(spec)

    def checked(source: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
        frame = pl.from_arrow(read_all(source, names))
        assert isinstance(frame, pl.DataFrame)
        result = validator.check(frame.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64)))
        return result.good.sort("id"), result.rejects.sort("row", "item")

    fast_good, fast_rejects = checked(PostgresSource(spec))
    slow_good, slow_rejects = checked(SqlSource(spec))
    assert fast_good.to_dicts() == slow_good.to_dicts()
    assert fast_rejects.to_dicts() == slow_rejects.to_dicts()
    assert fast_good["capital"].to_list() == [Decimal("12345678901234567.89"), None]
    assert fast_rejects["reason"].to_list() == ["uscc.check_char"]


def test_cursor_and_key_range_are_rendered_as_literals(source_url: str) -> None:
    source = PostgresSource(spec_for(source_url, table="Enterprise"))

    newer = read_all(source, cursor_from=datetime(2024, 1, 2, 23, 59, 59, 999999, tzinfo=UTC))
    assert sorted(newer["id"].to_pylist()) == [2, 3]
    ranged = read_all(source, key_range=KeyRange(low=2, high=3))
    assert ranged["id"].to_pylist() == [2]


def test_naive_cursor_and_text_literals(source_url: str) -> None:
    spec = spec_for(
        source_url,
        query="SELECT * FROM \"Enterprise\" WHERE name <> 'x''y'",
        cursor="local_at",
    )
    source = PostgresSource(spec)
    rows = read_all(source, cursor_from=datetime(2024, 3, 10, 2, 30, 0, 999999))
    assert rows["id"].to_pylist() == [1]
    spec = spec_for(source_url, table="Enterprise", primary_key=["name"])
    quoted = read_all(
        PostgresSource(spec), key_range=KeyRange("O'Brien; DROP TABLE x", "O'Brien; DROP TABLE y")
    )
    assert quoted["id"].to_pylist() == [2]


def test_an_empty_result_gives_no_rows(source_url: str) -> None:
    source = PostgresSource(spec_for(source_url, table="Enterprise"))
    rows = read_all(source, cursor_from=datetime(2030, 1, 1, tzinfo=UTC))
    assert rows.num_rows == 0


def test_a_missing_table_is_a_source_error(source_url: str) -> None:
    from govbus.errors import SourceError

    source = PostgresSource(spec_for(source_url, table="nowhere"))
    with pytest.raises(SourceError, match="refused the query"):
        read_all(source)


def test_a_reader_left_early_stops_its_thread(
    source_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import adapters.postgres_source as module

    monkeypatch.setattr(module, "BATCH_BYTES", 1)  # one row a batch
    monkeypatch.setattr(module, "PREFETCH", 1)
    source = PostgresSource(spec_for(source_url, table="Enterprise"))
    batches = source.read(NAMES)
    first = next(batches)
    batches.close()

    assert first.num_rows == 1
    assert not [t for t in threading.enumerate() if t.name == "govbus-pg-reader"]


def test_numeric_is_asked_for_as_text_and_a_nan_keeps_it(source_url: str) -> None:
    spec = spec_for(source_url, table="Enterprise")
    query = PostgresSource(spec)._select(["id", "capital"], None, None, as_text={"capital"})
    assert query.as_string() == 'SELECT "id", "capital"::text AS "capital" FROM "Enterprise"'

    engine = sa.create_engine(source_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE \"Enterprise\" SET capital = 'NaN' WHERE id = 2")
    engine.dispose()
    table = read_all(PostgresSource(spec), ["id", "capital"])
    # a batch holding NaN cannot be decimal128: it keeps the server's text, every digit kept
    assert table.schema.field("capital").type == pa.string()
    values = dict(zip(table["id"].to_pylist(), table["capital"].to_pylist(), strict=True))
    assert values == {1: "12345678901234567.89", 2: "NaN", 3: "-0.01"}

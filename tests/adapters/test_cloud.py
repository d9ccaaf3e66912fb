"""The cloud store's PostgreSQL load paths: direct COPY into an empty table, staged upsert after."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pytest
import sqlalchemy as sa

from adapters.cloud import DELETED_AT, LOADED_AT, RUN_ID, CloudStore, CloudWriter
from registry.catalogue import ResourceSpec

pytestmark = pytest.mark.postgres

SPEC = ResourceSpec.model_validate(
    {
        "code": "330400-TEST-0001",
        "name": "测试",
        "provider": {"code": "11330400MB1234562E", "name": "测试局"},
        "format": "database",
        "update_cycle": "daily",
        "sharing": {"type": "unconditional"},
        "source": {"url": "sqlite://", "table": "t", "primary_key": ["id"]},
        "target": {"table": "things"},
        "items": [
            {"name": "id", "type": "I", "nullable": False},
            {"name": "name", "type": "C", "length": 20},
            {"name": "amount", "type": "Y", "precision": 18, "scale": 2},
        ],
    }
)


def frame(rows: list[tuple[int, str | None, str]], run: str) -> pl.DataFrame:
    now = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    return pl.DataFrame(
        {
            "id": [r[0] for r in rows],
            "name": [r[1] for r in rows],
            "amount": [Decimal(r[2]) for r in rows],
            RUN_ID: [run] * len(rows),
            LOADED_AT: [now] * len(rows),
            DELETED_AT: [None] * len(rows),
        },
        schema_overrides={"amount": pl.Decimal(18, 2), DELETED_AT: pl.Datetime("us", "UTC")},
    )


def contents(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(f"SELECT id, name, amount, {RUN_ID} FROM things ORDER BY id")
            )
        ]


def test_first_load_copies_directly_and_a_clash_falls_back_to_upsert(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    store = CloudStore(engine)
    with engine.begin() as conn:
        table = store.ensure_target(conn, SPEC)
        assert store.upsert(conn, table, frame([(1, "甲", "1.10"), (2, "乙", "2.20")], "r1")) == 2
        # same transaction, key 2 again: the direct COPY clashes and the batch is upserted
        assert store.upsert(conn, table, frame([(2, "", "9.99"), (3, None, "3.30")], "r1")) == 2
    assert contents(engine) == [
        (1, "甲", Decimal("1.10"), "r1"),
        (2, "", Decimal("9.99"), "r1"),
        (3, None, Decimal("3.30"), "r1"),
    ]

    with engine.begin() as conn:
        table = store.ensure_target(conn, SPEC)
        store.upsert(conn, table, frame([(1, "甲改", "1.11"), (4, "丁", "4.40")], "r2"))
    assert contents(engine) == [
        (1, "甲改", Decimal("1.11"), "r2"),
        (2, "", Decimal("9.99"), "r1"),
        (3, None, Decimal("3.30"), "r1"),
        (4, "丁", Decimal("4.40"), "r2"),
    ]


def test_a_rolled_back_first_load_leaves_nothing(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    store = CloudStore(engine)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        table = store.ensure_target(conn, SPEC)
        store.upsert(conn, table, frame([(1, "甲", "1.10")], "r1"))
        raise RuntimeError("the run died before its commit")
    # PostgreSQL's DDL is transactional: not even the table stays
    assert not sa.inspect(engine).has_table("things")

    with engine.begin() as conn:
        table = store.ensure_target(conn, SPEC)
        store.upsert(conn, table, frame([(1, "甲", "1.10")], "r2"))
    assert contents(engine) == [(1, "甲", Decimal("1.10"), "r2")]


def test_the_writer_thread_writes_in_order_inside_the_callers_transaction(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    store = CloudStore(engine)
    with engine.begin() as conn:
        table = store.ensure_target(conn, SPEC)
        writer = CloudWriter(store, conn)
        assert writer.upsert(table, frame([(1, "甲", "1.10"), (2, "𠀋", "2.20")], "r1")) == 2
        assert writer.upsert(table, frame([(2, "", "9.99")], "r1")) == 1  # later wins
        assert writer.upsert(table, frame([], "r1")) == 0
        writer.close()
        # the caller may use the connection again, and sees the rows before the commit
        assert conn.execute(sa.text("SELECT count(*) FROM things")).scalar_one() == 2
    assert contents(engine) == [(1, "甲", Decimal("1.10"), "r1"), (2, "", Decimal("9.99"), "r1")]


def test_a_failed_write_is_raised_by_close_and_nothing_commits(pg_url: str) -> None:
    # a COPY refused by the server surfaces as the driver's own error (not yet a SinkError)
    engine = sa.create_engine(pg_url)
    store = CloudStore(engine)
    with engine.begin() as conn:
        store.ensure_target(conn, SPEC)
    with pytest.raises(Exception, match="not-null constraint"), engine.begin() as conn:
        table = store.ensure_target(conn, SPEC)
        writer = CloudWriter(store, conn)
        writer.upsert(table, frame([(1, "甲", "1.10")], "r1"))
        writer.upsert(
            table, frame([(2, "乙", "1.10")], "r1").with_columns(pl.lit(None).alias(RUN_ID))
        )
        writer.close()
    assert contents(engine) == []


def test_an_abandoned_writer_drops_what_is_queued(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    store = CloudStore(engine)
    with engine.begin() as conn:
        table = store.ensure_target(conn, SPEC)
        writer = CloudWriter(store, conn)
        writer.abandon()  # before any write: nothing runs, and it may be called again
        writer._abandoned = True
        writer.upsert(table, frame([(1, "甲", "1.10")], "r1"))
        writer.abandon()
        writer.stop()
    assert contents(engine) == []

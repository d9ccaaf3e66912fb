"""Incremental sync semantics against real PostgreSQL and MariaDB sources, into a PostgreSQL cloud.

Each test is one case of the cursor contract, with the exact rows the cloud must hold after each
run. The source is PostgreSQL or MariaDB (parametrized); the cloud and registry are PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

import adapters
from govbus.errors import SchemaDrift
from govbus.settings import Settings
from govbus.sync import cloud_for, sync
from registry.db import registry_engine
from registry.resources import apply_files

CODE = "330400-TEST-0001"

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["postgresql", "mariadb"])
def source_url(request: pytest.FixtureRequest) -> str:
    fixture = "pg_url2" if request.param == "postgresql" else "mariadb_url"
    return request.getfixturevalue(fixture)


def dialect(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "mariadb"


# column types that differ between the two servers
TYPES = {
    "postgresql": {"ts": "timestamp(6)", "json": "json", "num": "numeric", "bool": "boolean"},
    "mariadb": {"ts": "datetime(6)", "json": "json", "num": "decimal(40,20)", "bool": "boolean"},
}


def register(
    settings: Settings,
    tmp_path: Path,
    url: str,
    items: list[str],
    *,
    cursor: str | None = "updated_at",
    extra: str = "",
) -> None:
    lines = "\n".join(f"  - {item}" for item in items)
    source_extra = textwrap.indent(textwrap.dedent(extra), "  ")
    text = textwrap.dedent(f"""\
        code: "{CODE}"
        name: 测试资源
        provider: {{code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}}
        format: database
        update_cycle: daily
        sharing: {{type: unconditional}}
        source:
          url: "{url}"
          table: src
          primary_key: [id]
        """)
    if cursor:
        text += f"  cursor: {cursor}\n"
    text += source_extra
    text += "target: {table: dest}\nitems:\n" + lines + "\n"
    path = tmp_path / "resource.yaml"
    path.write_text(text, encoding="utf-8")
    apply_files(registry_engine(settings.registry_url), [path])


def execute(url: str, *statements: str, params: list[dict[str, Any]] | None = None) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            if params is not None and statement.lstrip().upper().startswith("INSERT"):
                conn.execute(sa.text(statement), params)
            else:
                conn.execute(sa.text(statement))
    engine.dispose()


def cloud(settings: Settings, columns: str = "*") -> dict[int, dict[str, Any]]:
    with cloud_for(settings).engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {columns} FROM dest ORDER BY id")).mappings().all()
    return {r["id"]: dict(r) for r in rows}


def counts(run) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    return run.read, run.loaded, run.rejected


BASIC = [
    "{name: id, type: I, nullable: false}",
    "{name: name, type: M}",
    "{name: updated_at, type: T}",
]


def basic_table(url: str) -> None:
    t = TYPES[dialect(url)]
    execute(url, f"CREATE TABLE src (id integer PRIMARY KEY, name text, updated_at {t['ts']})")


def insert(url: str, rows: list[tuple[int, str, str | None]]) -> None:
    execute(
        url,
        "INSERT INTO src (id, name, updated_at) VALUES (:id, :name, :ts)",
        params=[{"id": i, "name": n, "ts": ts} for i, n, ts in rows],
    )


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- case 1 -------------------------------------------------------------------------------------


def test_null_cursor_rows_load_once_and_update_in_place(pg_home, source_url, tmp_path) -> None:
    basic_table(source_url)
    insert(source_url, [(1, "有值", "2025-03-01 10:00:00"), (2, "无值", None)])
    register(pg_home, tmp_path, source_url, BASIC)

    assert counts(sync(CODE, settings=pg_home)) == (2, 2, 0)
    assert counts(sync(CODE, settings=pg_home)) == (0, 0, 0)  # the NULL row is unchanged

    # changed while its cursor is still NULL: compared by its values, loaded again
    execute(source_url, "UPDATE src SET name = '仍无值' WHERE id = 2")
    assert counts(sync(CODE, settings=pg_home)) == (1, 1, 0)
    assert counts(sync(CODE, settings=pg_home)) == (0, 0, 0)

    # it gets a value below the checkpoint: still found by its key, updated in place
    execute(source_url, "UPDATE src SET updated_at = '2025-02-01 08:00:00' WHERE id = 2")
    assert counts(sync(CODE, settings=pg_home)) == (1, 1, 0)
    rows = cloud(pg_home, "id, name, updated_at")
    assert rows == {
        1: {"id": 1, "name": "有值", "updated_at": utc("2025-03-01 02:00:00")},
        2: {"id": 2, "name": "仍无值", "updated_at": utc("2025-02-01 00:00:00")},
    }
    assert counts(sync(CODE, settings=pg_home)) == (0, 0, 0)

    # and a later edit with a new value arrives as any other
    execute(
        source_url, "UPDATE src SET name = '新值', updated_at = '2025-03-02 09:00:00' WHERE id = 2"
    )
    assert counts(sync(CODE, settings=pg_home)) == (1, 1, 0)
    assert cloud(pg_home, "id, name")[2] == {"id": 2, "name": "新值"}
    assert len(cloud(pg_home)) == 2


# -- case 2 -------------------------------------------------------------------------------------


def test_no_change_reads_nothing_and_a_same_value_row_arrives(
    pg_home, source_url, tmp_path
) -> None:
    basic_table(source_url)
    insert(source_url, [(i, f"第{i}行", f"2025-03-01 10:00:0{i}") for i in range(1, 4)])
    register(pg_home, tmp_path, source_url, BASIC)

    assert counts(sync(CODE, settings=pg_home)) == (3, 3, 0)
    assert counts(sync(CODE, settings=pg_home)) == (0, 0, 0)
    assert len(cloud(pg_home)) == 3

    insert(source_url, [(4, "同一时刻", "2025-03-01 10:00:03")])
    assert counts(sync(CODE, settings=pg_home)) == (1, 1, 0)
    assert sorted(cloud(pg_home)) == [1, 2, 3, 4]
    assert counts(sync(CODE, settings=pg_home)) == (0, 0, 0)


# -- case 3 -------------------------------------------------------------------------------------


def test_a_row_committed_after_the_read_at_the_checkpoint_arrives(
    pg_home, source_url, tmp_path, monkeypatch
) -> None:
    basic_table(source_url)
    insert(source_url, [(1, "一", "2025-03-01 10:00:00"), (2, "二", "2025-03-01 10:00:05")])
    register(pg_home, tmp_path, source_url, BASIC)

    # A transaction that commits right after this run finished reading, with the same cursor
    # value the run is about to save as its checkpoint.
    real_open = adapters.open_source

    def open_and_commit_late(spec):  # type: ignore[no-untyped-def]
        source = real_open(spec)
        read = source.read

        def read_then_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
            yield from read(*args, **kwargs)
            insert(source_url, [(3, "迟到", "2025-03-01 10:00:05")])

        source.read = read_then_commit
        return source

    monkeypatch.setattr("govbus.sync.open_source", open_and_commit_late)
    assert counts(sync(CODE, settings=pg_home)) == (2, 2, 0)
    monkeypatch.undo()
    assert sorted(cloud(pg_home)) == [1, 2]

    assert counts(sync(CODE, settings=pg_home)) == (1, 1, 0)
    assert cloud(pg_home, "id, name") == {
        1: {"id": 1, "name": "一"},
        2: {"id": 2, "name": "二"},
        3: {"id": 3, "name": "迟到"},
    }
    assert counts(sync(CODE, settings=pg_home)) == (0, 0, 0)


# -- case 4 -------------------------------------------------------------------------------------


def test_naive_timestamps_are_read_in_the_source_zone_and_stored_as_utc(
    pg_home, source_url, tmp_path
) -> None:
    basic_table(source_url)
    insert(
        source_url,
        [
            (1, "winter, UTC+1", "2025-03-01 11:30:00.123456"),
            (2, "in the spring-forward gap", "2025-03-30 02:30:00"),
            (3, "repeated hour", "2025-10-26 02:30:00"),
            (4, "repeated hour, again", "2025-10-26 02:30:00"),
            (5, "summer, UTC+2", "2025-07-01 12:00:00.000001"),
        ],
    )
    register(pg_home, tmp_path, source_url, BASIC, extra="timezone: Europe/Berlin\n")

    assert counts(sync(CODE, settings=pg_home)) == (5, 5, 0)
    stored = {k: v["updated_at"] for k, v in cloud(pg_home, "id, updated_at").items()}
    assert stored == {
        1: utc("2025-03-01 10:30:00.123456"),
        2: utc("2025-03-30 01:30:00"),  # the offset before the gap (+01:00)
        3: utc("2025-10-26 00:30:00"),  # the first occurrence (+02:00)
        4: utc("2025-10-26 00:30:00"),
        5: utc("2025-07-01 10:00:00.000001"),
    }
    assert utc("2025-03-01 10:00:00") <= stored[1] < utc("2025-03-01 11:00:00")
    assert counts(sync(CODE, settings=pg_home)) == (0, 0, 0)
    lake = pl.read_parquet(pg_home.lake / CODE)
    assert sorted(lake["id"].to_list()) == [1, 2, 3, 4, 5]


# -- case 5 -------------------------------------------------------------------------------------

MONEY = [*BASIC, "{name: amount, type: N, precision: 18, scale: 2}"]


def money_table(url: str) -> None:
    t = TYPES[dialect(url)]
    execute(
        url,
        f"CREATE TABLE src (id integer PRIMARY KEY, name text, updated_at {t['ts']},"
        " amount numeric(18,2))",
        "INSERT INTO src VALUES (1, '甲', '2025-03-01 10:00:00', 1.50),"
        " (2, '乙', '2025-03-01 10:00:01', 2.25)",
    )


def test_a_new_not_null_column_is_carried_with_its_values(pg_home, source_url, tmp_path) -> None:
    money_table(source_url)
    register(pg_home, tmp_path, source_url, MONEY)
    assert counts(sync(CODE, settings=pg_home)) == (2, 2, 0)

    execute(source_url, "ALTER TABLE src ADD COLUMN level integer NOT NULL DEFAULT 0")
    run = sync(CODE, settings=pg_home)
    assert run.status == "success"
    assert run.drift == (
        "new source column 'level' (INTEGER) is not a registered item; carried to the cloud as I "
        "(drift policy evolve)",
        "read every row again so existing rows carry the new column(s)",
    )
    assert counts(run) == (2, 2, 0)
    assert cloud(pg_home, "id, amount, level") == {
        1: {"id": 1, "amount": Decimal("1.50"), "level": 0},
        2: {"id": 2, "amount": Decimal("2.25"), "level": 0},
    }
    # reported again while unregistered, but not read again
    again = sync(CODE, settings=pg_home)
    assert counts(again) == (0, 0, 0)
    assert len(again.drift) == 1


def test_a_type_change_of_a_registered_item_stops_the_run(pg_home, source_url, tmp_path) -> None:
    money_table(source_url)
    register(pg_home, tmp_path, source_url, MONEY)
    assert counts(sync(CODE, settings=pg_home)) == (2, 2, 0)

    change = {
        "postgresql": "ALTER TABLE src ALTER COLUMN amount TYPE varchar(40)",
        "mariadb": "ALTER TABLE src MODIFY amount varchar(40)",
    }
    execute(source_url, change[dialect(source_url)])
    with pytest.raises(SchemaDrift) as caught:
        sync(CODE, settings=pg_home)
    old = {"postgresql": "NUMERIC(18, 2)", "mariadb": "DECIMAL(18, 2)"}[dialect(source_url)]
    assert str(caught.value) == (
        f"{CODE}: source column 'amount' changed type from {old} to VARCHAR(40); its values are "
        "not of the registered type: the registered item amount is N(18,2). Change the item to "
        "`type: C(40)` (or change the column back) in the resource definition, apply it with "
        f"`govbus registry apply FILE` and run `govbus sync {CODE} --full`"
    )
    assert cloud(pg_home, "id, amount")[1] == {"id": 1, "amount": Decimal("1.50")}


def test_a_new_column_is_refused_under_freeze(pg_home, source_url, tmp_path) -> None:
    money_table(source_url)
    register(pg_home, tmp_path, source_url, MONEY, extra="drift: freeze\n")
    assert counts(sync(CODE, settings=pg_home)) == (2, 2, 0)

    execute(source_url, "ALTER TABLE src ADD COLUMN level integer NOT NULL DEFAULT 0")
    with pytest.raises(SchemaDrift, match="source has column\\(s\\) level .* policy is freeze"):
        sync(CODE, settings=pg_home)
    assert "level" not in cloud(pg_home)[1]


def test_a_new_column_is_reported_and_left_behind_under_ignore(
    pg_home, source_url, tmp_path
) -> None:
    money_table(source_url)
    register(pg_home, tmp_path, source_url, MONEY, extra="drift: ignore\n")
    execute(source_url, "ALTER TABLE src ADD COLUMN level integer NOT NULL DEFAULT 0")
    run = sync(CODE, settings=pg_home)
    assert counts(run) == (2, 2, 0)
    assert run.drift == (
        "new source column 'level' is not a registered item; left behind (drift policy ignore)",
    )
    assert "level" not in cloud(pg_home)[1]


# -- case 6 and text ----------------------------------------------------------------------------

TEXTS = [
    '{"fóo": "bär"}',
    '{"春江潮水连海平": "海上明月共潮生"}',
    '{"emoji": "😀🎉", "tab": "a\\tb"}',
    '[1, 2.50, {"𠮷": null}]',
]


def test_json_and_text_arrive_byte_identical(pg_home, source_url, tmp_path) -> None:
    t = TYPES[dialect(source_url)]
    execute(
        source_url,
        f"CREATE TABLE src (id integer PRIMARY KEY, doc {t['json']}, name text,"
        f" updated_at {t['ts']})",
    )
    names = ["𠮷野家", "mixed 中文 English العربية ελληνικά 😀", " 前后空格 ", "", 'quote " , \n']
    execute(
        source_url,
        "INSERT INTO src VALUES (:id, :doc, :name, '2025-03-01 10:00:00')",
        params=[
            {"id": i, "doc": d, "name": n}
            for i, (d, n) in enumerate(zip(TEXTS, names[:4], strict=True))
        ]
        + [{"id": 4, "doc": None, "name": names[4]}],
    )
    register(
        pg_home,
        tmp_path,
        source_url,
        [
            "{name: id, type: I, nullable: false}",
            "{name: doc, type: M}",
            "{name: name, type: M}",
            "{name: updated_at, type: T}",
        ],
    )
    assert counts(sync(CODE, settings=pg_home)) == (5, 5, 0)
    rows = cloud(pg_home, "id, doc, name")
    assert [rows[i]["doc"] for i in range(5)] == [*TEXTS, None]
    assert [rows[i]["name"] for i in range(5)] == names
    assert [rows[i]["doc"].encode() for i in range(4)] == [d.encode() for d in TEXTS]
    lake = pl.read_parquet(pg_home.lake / CODE).sort("id")
    assert lake["doc"].to_list() == [*TEXTS, None]
    assert lake["name"].to_list() == names


# -- case 7 -------------------------------------------------------------------------------------


def test_numeric_values_arrive_exact(pg_home, source_url, tmp_path) -> None:
    t = TYPES[dialect(source_url)]
    execute(
        source_url,
        f"CREATE TABLE src (id integer PRIMARY KEY, exact {t['num']}, money {t['num']},"
        f" updated_at {t['ts']})",
        "INSERT INTO src VALUES"
        " (1, 0.12345678901234567890, 1.50, '2025-03-01 10:00:00'),"
        " (2, 12345.678901, 2, '2025-03-01 10:00:00'),"
        " (3, 1e-20, 1.234, '2025-03-01 10:00:00'),"
        " (4, -98765432109876543210.5, 12345678901234567.5, '2025-03-01 10:00:00')",
    )
    register(
        pg_home,
        tmp_path,
        source_url,
        [
            "{name: id, type: I, nullable: false}",
            "{name: exact, type: N}",
            "{name: money, type: N, precision: 18, scale: 2}",
            "{name: updated_at, type: T}",
        ],
    )
    assert counts(sync(CODE, settings=pg_home)) == (4, 2, 2)
    rows = cloud(pg_home, "id, exact, money")
    assert rows == {
        1: {"id": 1, "exact": Decimal("0.12345678901234567890"), "money": Decimal("1.50")},
        2: {"id": 2, "exact": Decimal("12345.678901"), "money": Decimal("2.00")},
    }
    assert str(rows[1]["exact"]).rstrip("0") == "0.1234567890123456789"
    with cloud_for(pg_home).engine.connect() as conn:
        rejected = conn.execute(
            sa.text("SELECT row_key, item, reason, value FROM govbus_rejects ORDER BY row_key")
        ).all()
    assert [tuple(r) for r in rejected] == [
        (
            "3",
            "money",
            "decimal.scale",
            "1.234" if dialect(source_url) == "postgresql" else rejected[0][3],
        ),
        ("4", "money", "decimal.precision", rejected[1][3]),
    ]
    # the value is named as the source holds it
    assert Decimal(rejected[0][3]) == Decimal("1.234")
    assert Decimal(rejected[1][3]) == Decimal("12345678901234567.5")
    # the exact column of the rejected rows is exact too: load them through a wider registration
    lake = pl.read_parquet(pg_home.lake / CODE).sort("id")
    assert [Decimal(v) for v in lake["exact"].to_list()] == [
        Decimal("0.12345678901234567890"),
        Decimal("12345.678901"),
    ]


def test_tiny_and_huge_unconstrained_numerics_arrive_exact(pg_home, pg_url2, tmp_path) -> None:
    execute(
        pg_url2,
        "CREATE TABLE src (id integer PRIMARY KEY, exact numeric, updated_at timestamp)",
        "INSERT INTO src VALUES (1, 1e-20, '2025-03-01'),"
        " (2, 0.12345678901234567890, '2025-03-01'),"
        " (3, 123456789012345678901234567890123456789012.000000000000000000001, '2025-03-01'),"
        " (4, 'NaN', '2025-03-01')",
    )
    register(
        pg_home,
        tmp_path,
        pg_url2,
        [
            "{name: id, type: I, nullable: false}",
            "{name: exact, type: N}",
            "{name: updated_at, type: T}",
        ],
    )
    assert counts(sync(CODE, settings=pg_home)) == (4, 3, 1)
    assert {k: v["exact"] for k, v in cloud(pg_home, "id, exact").items()} == {
        1: Decimal("1E-20"),
        2: Decimal("0.12345678901234567890"),
        3: Decimal("123456789012345678901234567890123456789012.000000000000000000001"),
    }


# -- case 8 -------------------------------------------------------------------------------------


def test_soft_deletes_and_reconcile_keep_deleted_rows_marked(pg_home, source_url, tmp_path) -> None:
    t = TYPES[dialect(source_url)]
    execute(
        source_url,
        f"CREATE TABLE src (id integer PRIMARY KEY, name text, updated_at {t['ts']},"
        f" is_deleted {t['bool']} NOT NULL DEFAULT false)",
    )
    insert(source_url, [(i, f"第{i}行", f"2025-03-01 10:00:0{i}") for i in range(1, 5)])
    register(pg_home, tmp_path, source_url, BASIC, extra="soft_delete: is_deleted\n")
    assert counts(sync(CODE, settings=pg_home)) == (4, 4, 0)

    execute(
        source_url,
        "UPDATE src SET is_deleted = true, updated_at = '2025-03-02 10:00:00' WHERE id = 2",
        "DELETE FROM src WHERE id = 3",
    )
    run = sync(CODE, settings=pg_home)
    assert (counts(run), run.deleted) == ((1, 1, 0), 0)
    deleted = {k: v["_govbus_deleted_at"] is not None for k, v in cloud(pg_home).items()}
    assert deleted == {1: False, 2: True, 3: False, 4: False}

    run = sync(CODE, settings=pg_home, reconcile=True)
    assert (counts(run), run.deleted) == ((0, 0, 0), 1)
    rows = cloud(pg_home)
    assert {k: v["_govbus_deleted_at"] is not None for k, v in rows.items()} == {
        1: False,
        2: True,
        3: True,
        4: False,
    }
    assert rows[3]["name"] == "第3行"  # kept, not removed
    assert rows[3]["_govbus_run_id"] == run.run_id
    visible = sorted(k for k, v in rows.items() if v["_govbus_deleted_at"] is None)
    assert visible == [1, 4]

    # reconciling again from the command line finds nothing new
    env = {
        **os.environ,
        "GOVBUS_REGISTRY_URL": pg_home.registry_url,
        "GOVBUS_CLOUD_URL": pg_home.cloud_url,
        "GOVBUS_LAKE": str(pg_home.lake),
    }
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "govbus"), "sync", CODE, "--reconcile"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert "marked deleted" not in cli.stderr
    assert cloud(pg_home)[3]["_govbus_run_id"] == run.run_id

    # the lake holds each deletion as a row version
    lake = pl.read_parquet(pg_home.lake / CODE).sort("id", "_govbus_loaded_at")
    versions = lake.select("id", pl.col("_govbus_deleted_at").is_not_null().alias("deleted"))
    assert versions.rows() == [
        (1, False),
        (2, False),
        (2, True),
        (3, False),
        (3, True),
        (4, False),
    ]

    # the provider restores row 2: it is visible again
    execute(
        source_url,
        "UPDATE src SET is_deleted = false, updated_at = '2025-03-03 10:00:00' WHERE id = 2",
    )
    sync(CODE, settings=pg_home)
    assert cloud(pg_home)[2]["_govbus_deleted_at"] is None

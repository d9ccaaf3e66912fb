"""The sync pipeline on real data: SQLite and PostgreSQL sources and clouds."""

from __future__ import annotations

import random
import textwrap
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from govbus.settings import Settings
from govbus.sync import cloud_for, sync
from registry.db import registry_engine
from registry.resources import apply_files
from schemas.checks import make_resident_id, make_uscc

CODE = "330400-SCJG-0001"


def resource_yaml(url: str, table: str = "enterprise") -> str:
    return textwrap.dedent(f"""\
        code: "{CODE}"
        name: 企业登记基本信息
        provider: {{code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}}
        format: database
        update_cycle: daily
        sharing: {{type: conditional, condition: 审批用, method: platform}}
        source:
          url: "{url}"
          table: {table}
          cursor: updated_at
          primary_key: [credit_code]
          timezone: Asia/Shanghai
        target: {{table: enterprise}}
        items:
          - {{name: credit_code, type: C, length: 18, nullable: false, checks: [uscc]}}
          - {{name: name, type: C, length: 200, nullable: false}}
          - {{name: rep_id, type: C, length: 18, checks: [resident_id]}}
          - {{name: reg_capital, type: Y, precision: 18, scale: 2}}
          - {{name: established, type: D}}
          - {{name: updated_at, type: T, nullable: false}}
        """)


def make_source(url: str, rows: list[tuple]) -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE TABLE enterprise (credit_code varchar(18) PRIMARY KEY, name text,"
                " rep_id varchar(18), reg_capital numeric(18,2), established date,"
                " updated_at timestamp NOT NULL)"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TABLE enterprise (credit_code TEXT PRIMARY KEY, name TEXT, rep_id TEXT,"
                " reg_capital, established, updated_at TEXT NOT NULL)"
            )
        insert(engine, conn, rows)
    return engine


def insert(engine: sa.Engine, conn, rows) -> None:  # type: ignore[no-untyped-def]
    marks = "%s" if engine.dialect.name == "postgresql" else "?"
    conn.exec_driver_sql(
        f"INSERT INTO enterprise VALUES ({', '.join([marks] * 6)})", [tuple(r) for r in rows]
    )


def register(settings: Settings, tmp_path: Path, url: str) -> None:
    path = tmp_path / "enterprise.yaml"
    path.write_text(resource_yaml(url), encoding="utf-8")
    apply_files(registry_engine(settings.registry_url), [path])


def good_rows(n: int, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    return [
        (
            make_uscc(rng, division="330402"),
            f"嘉兴第{i}有限公司",
            make_resident_id(rng, division="330402", born=date(1970, 1, 1)),
            f"{i}.25",
            "2010-03-01",
            f"2025-03-01 10:{i // 60:02d}:{i % 60:02d}",
        )
        for i in range(n)
    ]


def cloud_rows(settings: Settings) -> dict[str, dict]:
    with cloud_for(settings).engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM enterprise")).mappings().all()
    return {r["credit_code"]: dict(r) for r in rows}


def rejects(settings: Settings) -> list[tuple]:
    with cloud_for(settings).engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT row_key, item, reason, value FROM govbus_rejects ORDER BY row_number"
                )
            )
        ]


def test_sqlite_source_to_embedded_cloud(home: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dept.db'}"
    rows = good_rows(50)
    bad_check = rows[0][0][:17] + ("0" if rows[0][0][17] != "0" else "1")
    bad_id = rows[1][2][:17] + ("0" if rows[1][2][17] != "0" else "1")
    broken = [
        (bad_check, "坏代码", None, "1.00", "2010-01-01", "2025-03-01 11:00:00"),
        (
            make_uscc(random.Random(1)),
            "坏身份证",
            bad_id,
            "1.00",
            "2010-01-01",
            "2025-03-01 11:00:01",
        ),
        (make_uscc(random.Random(2)), None, None, "1.00", "2010-01-01", "2025-03-01 11:00:02"),
        (make_uscc(random.Random(3)), "坏日期", None, "1.00", "2023-02-30", "2025-03-01 11:00:03"),
    ]
    source = make_source(url, rows + broken)
    register(home, tmp_path, url)

    first = sync(CODE, settings=home)

    assert (first.read, first.loaded, first.rejected) == (54, 50, 4)
    loaded = cloud_rows(home)
    assert len(loaded) == 50
    row = loaded[rows[3][0]]
    assert row["name"] == "嘉兴第3有限公司"
    assert Decimal(row["reg_capital"]) == Decimal("3.25")
    # 10:00:03 in Shanghai is 02:00:03 UTC
    assert str(row["updated_at"]).startswith("2025-03-01 02:00:03")
    masked_id = bad_id[:6] + "********" + bad_id[-4:]
    assert rejects(home) == [
        (bad_check, "credit_code", "uscc.check_char", bad_check),
        (broken[1][0], "rep_id", "resident_id.check_digit", masked_id),
        (broken[2][0], "name", "null.not_allowed", None),
        (broken[3][0], "established", "type.D", "2023-02-30"),
    ]
    lake = pq.read_table(home.lake / CODE)
    assert lake.num_rows == 50
    assert sorted(lake["credit_code"].to_pylist()) == sorted(r[0] for r in rows)

    second = sync(CODE, settings=home)
    assert (second.read, second.loaded, second.rejected) == (0, 0, 0)

    with source.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE enterprise SET name = '改名公司', updated_at = '2025-03-02 09:00:00'"
            " WHERE credit_code = ?",
            (rows[5][0],),
        )
    third = sync(CODE, settings=home)
    assert (third.read, third.loaded, third.rejected) == (1, 1, 0)
    loaded = cloud_rows(home)
    assert len(loaded) == 50
    assert loaded[rows[5][0]]["name"] == "改名公司"
    assert pq.read_table(home.lake / CODE).num_rows == 51


def test_a_row_committed_later_with_the_checkpoint_value_arrives(home: Settings, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'dept.db'}"
    rows = good_rows(3)
    source = make_source(url, rows)
    register(home, tmp_path, url)
    assert sync(CODE, settings=home).read == 3

    late = (make_uscc(random.Random(99)), "迟到公司", None, "5.00", "2011-01-01", rows[2][5])
    with source.begin() as conn:
        insert(source, conn, [late])
    run = sync(CODE, settings=home)
    assert (run.read, run.loaded) == (1, 1)
    assert set(cloud_rows(home)) == {r[0] for r in rows} | {late[0]}
    assert sync(CODE, settings=home).read == 0


def test_a_failed_run_loads_nothing_and_keeps_the_checkpoint(home, tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'dept.db'}"
    make_source(url, good_rows(10))
    register(home, tmp_path, url)

    from adapters.cloud import CloudStore

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(CloudStore, "mark_loaded", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        sync(CODE, settings=home)
    assert cloud_rows(home) == {}
    assert cloud_for(home).store.checkpoint(CODE) is None
    assert not (home.lake / CODE).exists()
    monkeypatch.undo()

    run = sync(CODE, settings=home)
    assert (run.read, run.loaded) == (10, 10)
    assert len(cloud_rows(home)) == 10


@pytest.mark.postgres
def test_postgres_source_to_postgres_cloud(pg_home: Settings, pg_url2: str, tmp_path) -> None:
    rows = good_rows(120)
    rows = [
        (r[0], r[1], r[2], Decimal(r[3]), date(2010, 3, 1), datetime.fromisoformat(r[5]))
        for r in rows
    ]
    rows.append(
        (
            make_uscc(random.Random(5)),
            '引号"和,逗号',
            None,
            Decimal("12345678.91"),
            None,
            datetime(2025, 3, 1, 11, 0, 0),
        )
    )
    rows.append((make_uscc(random.Random(6)), "", None, None, None, datetime(2025, 3, 1, 11, 0, 1)))
    bad = rows[0][0][:10] + "I" + rows[0][0][11:]
    rows.append((bad, "坏", None, None, None, datetime(2025, 3, 1, 12, 0, 0)))
    make_source(pg_url2, rows)
    register(pg_home, tmp_path, pg_url2)

    run = sync(CODE, settings=pg_home)

    assert (run.read, run.loaded, run.rejected) == (123, 122, 1)
    loaded = cloud_rows(pg_home)
    assert len(loaded) == 122
    quoted = loaded[rows[120][0]]
    assert quoted["name"] == '引号"和,逗号'
    assert quoted["reg_capital"] == Decimal("12345678.91")
    assert quoted["established"] is None
    assert loaded[rows[121][0]]["name"] == ""  # empty text stays empty, not NULL
    assert quoted["updated_at"] == datetime(2025, 3, 1, 3, 0, 0, tzinfo=UTC)
    assert rejects(pg_home) == [(bad, "credit_code", "uscc.charset", bad)]
    assert sync(CODE, settings=pg_home).read == 0
    frame = pl.read_parquet(pg_home.lake / CODE)
    assert frame.height == 122

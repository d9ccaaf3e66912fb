"""A full load split into primary-key ranges (``govbus sync CODE --full --partitions N``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from govbus.settings import Settings
from govbus.sync import plan_partitions, sync

CODE = "330400-PART-0001"
ROWS = 10_000

pytestmark = pytest.mark.postgres


def govbus(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GOVBUS_HOME": str(settings.home),
        "GOVBUS_REGISTRY_URL": settings.registry_url,
        "GOVBUS_CLOUD_URL": settings.cloud_url,
        "GOVBUS_LAKE": str(settings.lake),
    }
    script = Path(sys.executable).parent / "govbus"
    return subprocess.run([str(script), *args], env=env, capture_output=True, text=True)


def test_a_full_load_in_four_key_ranges_holds_exactly_the_source(
    pg_home, pg_url2, tmp_path
) -> None:
    engine = sa.create_engine(pg_url2)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE src (id integer PRIMARY KEY, name text, amount numeric(12,2),"
            " updated_at timestamp NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO src SELECT g, '行' || g, g / 100.0,"
            " timestamp '2025-03-01 00:00:00' + (g / 7) * interval '1 second'"
            f" FROM generate_series(1, {ROWS}) g"
        )
    (tmp_path / "part.yaml").write_text(
        textwrap.dedent(f"""\
            code: "{CODE}"
            name: 分区全量
            provider: {{code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}}
            format: database
            update_cycle: daily
            sharing: {{type: unconditional}}
            source:
              url: "{pg_url2}"
              table: src
              cursor: updated_at
              primary_key: [id]
            target: {{table: parted}}
            items:
              - {{name: id, type: I, nullable: false}}
              - {{name: name, type: M}}
              - {{name: amount, type: N, precision: 12, scale: 2}}
              - {{name: updated_at, type: T, nullable: false}}
            """),
        encoding="utf-8",
    )
    assert govbus(pg_home, "registry", "apply", str(tmp_path / "part.yaml")).returncode == 0

    plan = plan_partitions(CODE, 4, settings=pg_home)
    assert [(r.low, r.high) for r in plan.ranges] == [
        (None, 2501),
        (2501, 5001),
        (5001, 7501),
        (7501, None),
    ]
    assert plan.high_water == datetime(2025, 3, 1) + timedelta(seconds=ROWS // 7)
    assert plan.high_water_keys == frozenset(str(i) for i in range(9996, 10001))

    done = govbus(pg_home, "sync", CODE, "--full", "--partitions", "4")
    assert done.returncode == 0, done.stderr

    with sa.create_engine(pg_home.cloud_url).connect() as conn:
        cloud = conn.exec_driver_sql("SELECT id, name, amount, updated_at FROM parted").all()
    expected = {
        i: (
            f"行{i}",
            Decimal(i) / 100,
            datetime(2025, 3, 1, tzinfo=UTC) + timedelta(seconds=i // 7, hours=-8),
        )
        for i in range(1, ROWS + 1)
    }
    assert {r[0]: (r[1], r[2], r[3]) for r in cloud} == expected

    history = json.loads(govbus(pg_home, "runs", CODE, "--json").stdout)
    assert sorted((r["partition"], r["status"], r["read"]) for r in history) == [
        ("1/4", "success", 2500),
        ("2/4", "success", 2500),
        ("3/4", "success", 2500),
        ("4/4", "success", 2500),
    ]
    lake = pl.read_parquet(pg_home.lake / CODE)
    assert sorted(lake["id"].to_list()) == list(range(1, ROWS + 1))

    # The next incremental run starts at the plan's high-water mark: nothing to read, then a row
    # committed with that same value arrives.
    assert sync(CODE, settings=pg_home).read == 0
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO src VALUES ({ROWS + 1}, '迟到', 1, %s)", (plan.high_water,)
        )
    run = sync(CODE, settings=pg_home)
    assert (run.read, run.loaded) == (1, 1)
    engine.dispose()


def test_partitions_need_a_full_load(pg_home) -> None:
    refused = govbus(pg_home, "sync", CODE, "--partitions", "4")
    assert refused.returncode == 2
    assert "--partitions needs --full" in refused.stderr

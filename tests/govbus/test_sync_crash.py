"""Crash safety: ``govbus sync`` killed with SIGKILL at random points, then run again.

The source changes between attempts (updates and inserts), each attempt is killed at a random
moment of its extract, validate and load, and after every kill the checkpoint must not have
passed a row the cloud does not hold. At the end one run completes and the cloud and the lake
must hold exactly the source's rows: no duplicates, nothing missing, no row version from a
killed run that did not commit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
import sqlalchemy as sa

from govbus.checkpoint import Checkpoint
from govbus.settings import Settings

CODE = "330400-CRASH-0001"
ROWS = 200_000
KILLS = 30
ZONE = ZoneInfo("Asia/Shanghai")
BASE = datetime(2025, 1, 1, 8, 0, 0)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def govbus(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GOVBUS_HOME": str(settings.home),
        "GOVBUS_REGISTRY_URL": settings.registry_url,
        "GOVBUS_CLOUD_URL": settings.cloud_url,
        "GOVBUS_LAKE": str(settings.lake),
    }
    script = Path(sys.executable).parent / "govbus"
    return subprocess.Popen(
        [str(script), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def source_rows(url: str) -> dict[int, tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, name, amount, updated_at FROM src").all()
    engine.dispose()
    return {r[0]: (r[1], r[2], r[3].replace(tzinfo=ZONE).astimezone(UTC)) for r in rows}


def cloud_rows(settings: Settings) -> dict[int, tuple]:
    engine = sa.create_engine(settings.cloud_url)
    with engine.connect() as conn:
        rows = (
            conn.exec_driver_sql("SELECT id, name, amount, updated_at FROM dest").all()
            if sa.inspect(conn).has_table("dest")
            else []
        )
    engine.dispose()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def checkpoint(settings: Settings) -> Checkpoint | None:
    engine = sa.create_engine(settings.cloud_url)
    with engine.connect() as conn:
        state = conn.exec_driver_sql(
            "SELECT state FROM govbus_checkpoints WHERE resource_code = %s", (CODE,)
        ).scalar_one_or_none()
    engine.dispose()
    return None if state is None else Checkpoint.from_json(state)


def change_source(url: str, attempt: int, next_id: int) -> int:
    """Update a tenth of the rows and insert 200, with cursor values above every earlier one."""
    stamp = f"{BASE + timedelta(days=1, minutes=attempt):%Y-%m-%d %H:%M:%S}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE src SET name = '第{attempt}次修改', amount = amount + 1,"
            f" updated_at = '{stamp}' WHERE mod(id, 10) = {attempt % 10}"
        )
        conn.exec_driver_sql(
            f"INSERT INTO src SELECT g, '新增' || g, g + 0.05, '{stamp}'"
            f" FROM generate_series({next_id}, {next_id + 199}) g"
        )
    engine.dispose()
    return next_id + 200


def test_sigkill_at_random_points_never_loses_or_duplicates(pg_home, pg_url2, tmp_path) -> None:
    engine = sa.create_engine(pg_url2)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE src (id integer PRIMARY KEY, name text, amount numeric(18,2),"
            " updated_at timestamp NOT NULL)"
        )
        # many rows share each cursor value, so checkpoints land inside groups of equal values
        conn.exec_driver_sql(
            "INSERT INTO src SELECT g, '企业' || g, g * 1.25,"
            f" timestamp '{BASE:%Y-%m-%d %H:%M:%S}' + (g / 100) * interval '1 second'"
            f" FROM generate_series(1, {ROWS}) g"
        )
    engine.dispose()
    (tmp_path / "crash.yaml").write_text(
        textwrap.dedent(f"""\
            code: "{CODE}"
            name: 崩溃测试
            provider: {{code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}}
            format: database
            update_cycle: hourly
            sharing: {{type: unconditional}}
            source:
              url: "{pg_url2}"
              table: src
              cursor: updated_at
              primary_key: [id]
              batch_size: 20000
            target: {{table: dest}}
            items:
              - {{name: id, type: I, nullable: false}}
              - {{name: name, type: C, length: 50}}
              - {{name: amount, type: Y, precision: 18, scale: 2}}
              - {{name: updated_at, type: T, nullable: false}}
            """),
        encoding="utf-8",
    )
    assert govbus(pg_home, "registry", "apply", str(tmp_path / "crash.yaml")).wait() == 0

    # How long a first full load and an incremental run of one change take here, to spread
    # the kills over their whole length.
    def timed(*args: str) -> float:
        started = time.monotonic()
        proc = govbus(pg_home, "sync", CODE, *args)
        assert proc.wait() == 0, proc.stderr.read().decode()  # type: ignore[union-attr]
        return time.monotonic() - started

    rng = random.Random(20261203)
    took = {"full": timed("--full")}
    next_id = change_source(pg_url2, 0, ROWS + 1)
    took["incremental"] = timed()
    engine = sa.create_engine(pg_home.cloud_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM govbus_checkpoints")
        conn.exec_driver_sql("DROP TABLE dest")
    engine.dispose()

    outcomes = []
    for attempt in range(1, KILLS + 1):
        # Every third attempt reads everything; the source changes before every other one.
        kind = "full" if attempt % 3 == 0 else "incremental"
        if attempt % 2 == 1:
            next_id = change_source(pg_url2, attempt, next_id)
        proc = govbus(pg_home, "sync", CODE, *(["--full"] if kind == "full" else []))
        time.sleep(rng.uniform(0.2, 1.0) * took[kind])
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        outcomes.append("killed" if code == -signal.SIGKILL else f"exit {code}")
        if code not in (0, -signal.SIGKILL):
            pytest.fail(f"attempt {attempt} exited {code}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]

        # The checkpoint never passes a row the cloud does not hold as the source has it.
        point = checkpoint(pg_home)
        if point is not None:
            source, cloud = source_rows(pg_url2), cloud_rows(pg_home)
            limit = point.value.replace(tzinfo=ZONE).astimezone(UTC)
            behind = {k for k, v in source.items() if v[2] < limit}
            at = {k for k, v in source.items() if v[2] == limit and str(k) in point.boundary_keys}
            assert {k: source[k] for k in behind | at} == {k: cloud.get(k) for k in behind | at}

    # Enough kills landed mid-run for the loop to mean something.
    print(f"{outcomes.count('killed')} of {KILLS} runs killed mid-way; timings {took}")
    assert outcomes.count("killed") >= KILLS // 2, outcomes

    final = govbus(pg_home, "sync", CODE)
    assert final.wait() == 0, final.stderr.read().decode()  # type: ignore[union-attr]

    source, cloud = source_rows(pg_url2), cloud_rows(pg_home)
    assert len(source) == ROWS + 200 * (1 + (KILLS + 1) // 2)
    assert cloud == source

    # The lake: only committed runs, each row version once, the newest equal to the source.
    engine = sa.create_engine(pg_home.cloud_url)
    with engine.connect() as conn:
        committed = set(conn.exec_driver_sql("SELECT run_id FROM govbus_loads").scalars())
    engine.dispose()
    assert not list((pg_home.lake / "_staging").glob("*/*/*.parquet"))
    lake = pl.read_parquet(pg_home.lake / CODE)
    assert set(lake["_govbus_run_id"].unique()) <= committed
    assert lake.select("id", "_govbus_run_id").is_duplicated().sum() == 0
    newest = lake.sort("_govbus_loaded_at").group_by("id").last()
    assert {
        r["id"]: (r["name"], r["amount"], r["updated_at"])
        for r in newest.select("id", "name", "amount", "updated_at").iter_rows(named=True)
    } == source

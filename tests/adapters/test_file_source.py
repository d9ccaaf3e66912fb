"""CSV and Excel files in a directory into a PostgreSQL cloud: encodings, changes, refusal."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import openpyxl
import polars as pl
import pytest
import sqlalchemy as sa

from govbus.errors import SourceError
from govbus.settings import Settings
from govbus.sync import cloud_for, sync
from registry.db import registry_engine
from registry.resources import apply_files

CODE = "330400-FILE-0001"

pytestmark = pytest.mark.postgres


def register(settings: Settings, tmp_path: Path, drop: Path) -> None:
    path = tmp_path / "files.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            code: "{CODE}"
            name: 报送文件
            provider: {{code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}}
            format: file
            update_cycle: daily
            sharing: {{type: unconditional}}
            source:
              kind: files
              url: "{drop}"
              primary_key: [id]
            target: {{table: filed}}
            items:
              - {{name: id, type: I, nullable: false}}
              - {{name: name, type: M}}
              - {{name: amount, type: N, precision: 18, scale: 2}}
              - {{name: seen_at, type: T}}
            """),
        encoding="utf-8",
    )
    apply_files(registry_engine(settings.registry_url), [path])


def rows(settings: Settings) -> dict[int, tuple]:
    with cloud_for(settings).engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id, name, amount, seen_at FROM filed")).all()
    return {r[0]: tuple(r[1:]) for r in found}


def shanghai(text: str) -> datetime:
    """A Shanghai wall-clock time as the UTC instant the cloud stores."""
    naive = datetime.fromisoformat(text)
    return naive.replace(tzinfo=UTC) - (datetime(2000, 1, 1, 8) - datetime(2000, 1, 1))


def test_files_in_every_encoding_load_once_and_changes_are_picked_up(pg_home, tmp_path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    header = "id,name,amount,seen_at\n"
    (drop / "a_utf8_bom.csv").write_bytes(
        ("\ufeff" + header + '1,"𠮷野家, 😀",12.50,2025-03-01 10:00:00.123456\n').encode()
    )
    (drop / "b_gbk.csv").write_bytes((header + "2,嘉兴市南湖区,7,2025-03-01 11:00\n").encode("gbk"))
    (drop / "c_utf8.csv").write_bytes((header + '3,"",,\n4,,0.10,2025-03-01\n').encode())
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["id", "name", "amount", "seen_at"])
    sheet.append([5, "表格行", 1234.5, datetime(2025, 3, 2, 9, 30, 0, 250000)])
    sheet.append([6, "第二行", None, None])
    book.save(drop / "d.xlsx")
    register(pg_home, tmp_path, drop)

    run = sync(CODE, settings=pg_home)
    assert (run.read, run.loaded, run.rejected) == (6, 6, 0)
    assert rows(pg_home) == {
        1: ("𠮷野家, 😀", Decimal("12.50"), shanghai("2025-03-01 10:00:00.123456")),
        2: ("嘉兴市南湖区", Decimal("7.00"), shanghai("2025-03-01 11:00:00")),
        3: ("", None, None),  # quoted "" is an empty string, an empty field is NULL
        4: (None, Decimal("0.10"), shanghai("2025-03-01 00:00:00")),
        5: ("表格行", Decimal("1234.50"), shanghai("2025-03-02 09:30:00.250")),
        6: ("第二行", None, None),
    }
    assert sync(CODE, settings=pg_home).read == 0

    # A changed file is read again, whole; the others are not.
    (drop / "b_gbk.csv").write_bytes(
        (header + "2,嘉兴市南湖区（改）,8,2025-03-03 11:00\n20,新行,1.234,\n").encode("gb18030")
    )
    run = sync(CODE, settings=pg_home)
    assert (run.read, run.loaded, run.rejected) == (2, 1, 1)
    assert rows(pg_home)[2] == ("嘉兴市南湖区（改）", Decimal("8.00"), shanghai("2025-03-03 11:00"))
    with cloud_for(pg_home).engine.connect() as conn:
        reject = conn.execute(sa.text("SELECT row_key, item, reason, value FROM govbus_rejects"))
        assert [tuple(r) for r in reject] == [("20", "amount", "decimal.scale", "1.234")]
    assert sync(CODE, settings=pg_home).read == 0
    lake = pl.read_parquet(pg_home.lake / CODE)
    assert sorted(lake["id"].to_list()) == [1, 2, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"id,name,amount,seen_at\n7,ok,1,\n8,short\n", "Expected 4 columns, got 2"),
        (b"id,name,amount,seen_at\n7,\xff\xfe bad,1,\n", "neither UTF-8 nor GBK/GB18030"),
        (b"id,name,seen_at\n7,ok,\n", "header lacks the registered column(s) amount"),
    ],
)
def test_a_bad_file_is_refused_by_name_and_nothing_of_the_run_loads(
    pg_home, tmp_path, content: bytes, problem: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_bytes(b"id,name,amount,seen_at\n1,one,1,\n")
    register(pg_home, tmp_path, drop)
    assert sync(CODE, settings=pg_home).read == 1

    (drop / "b_good.csv").write_bytes(b"id,name,amount,seen_at\n2,two,2,\n")
    (drop / "c_bad.csv").write_bytes(content)
    with pytest.raises(SourceError) as caught:
        sync(CODE, settings=pg_home)
    message = str(caught.value)
    assert message.startswith(f"{CODE}: file 'c_bad.csv' in {drop} refused, nothing of this run")
    assert problem in message
    assert message.endswith("fix or remove the file and run again")
    assert sorted(rows(pg_home)) == [1]  # the good file of the same run is not loaded either

    (drop / "c_bad.csv").unlink()
    run = sync(CODE, settings=pg_home)
    assert (run.read, run.loaded) == (1, 1)
    assert sorted(rows(pg_home)) == [1, 2]

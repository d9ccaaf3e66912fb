"""A synced resource crosses the gap over SFTP and the far side's cloud reproduces it exactly.

Two govbus homes, a department's and the cloud's, each with its own registry, cloud database and
lake. The department syncs the shipped market-supervision example from a generated SQLite source,
exports the lake files as a bundle, uploads it to the real sshd (host key pinned), and the cloud
home downloads, verifies and imports it. The library is called in-process; each side sees only its
own home through ``GOVBUS_HOME``, as two separate machines would.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from adapters.cloud import DELETED_AT, LOADED_AT, RUN_ID
from ferry.keys import TrustStore, keygen, load_identity
from ferry.ledger import ImportStatus, Receiver, create_ledger, import_inbox
from ferry.outbox import Sender, export_payload
from ferry.transports import SftpTransport
from govbus import ferrying
from govbus.settings import Settings, load_settings
from govbus.sync import cloud_for, sync
from registry.db import registry_engine
from registry.resources import apply_files
from schemas.checks import make_resident_id, make_uscc

CODE = "330400-SCJG-0001"
EXAMPLE = Path(__file__).resolve().parents[2] / "govbus" / "examples" / "market_enterprises.yaml"
ITEMS = [
    "credit_code",
    "name",
    "legal_rep",
    "legal_rep_id",
    "address",
    "division_code",
    "reg_capital",
    "established",
    "status",
    "updated_at",
]
CHANNEL = "scjg-enterprise"


def make_market(path: Path, rows: int, seed: int) -> list[str]:
    """Enterprises with valid codes and ids; every column varies so a swapped value shows."""
    rng = random.Random(seed)
    codes = [make_uscc(rng, division="330402") for _ in range(rows)]
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS enterprise (credit_code TEXT PRIMARY KEY, name TEXT,"
            " legal_rep TEXT, legal_rep_id TEXT, address TEXT, division_code TEXT, reg_capital,"
            " established, status TEXT, updated_at TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT OR REPLACE INTO enterprise VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    c,
                    f"企业{seed}-{i}",
                    ["李四", "王五", None][i % 3],
                    make_resident_id(rng, division="330402", born=date(1960 + i % 40, 5, 5)),
                    f"嘉兴市南湖区{i}号",
                    "330402",
                    f"{i * 7 + 0.25:.2f}",
                    f"20{i % 20:02d}-02-{1 + i % 28:02d}",
                    ["存续", "注销"][i % 2],
                    f"2025-0{seed}-01 08:{i // 60:02d}:{i % 60:02d}",
                )
                for i, c in enumerate(codes)
            ],
        )
    return codes


@contextmanager
def as_site(monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[Settings]:
    """Run the library as the site whose govbus home is ``home``."""
    with monkeypatch.context() as m:
        m.setenv("GOVBUS_HOME", str(home))
        settings = load_settings()
        settings.ensure_dirs()
        yield settings


def cloud_rows(settings: Settings) -> list[tuple]:
    engine = sa.create_engine(settings.cloud_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT {', '.join(ITEMS)}, {DELETED_AT} FROM enterprise ORDER BY credit_code")
        )
        return [tuple(r) for r in rows]


def lake_rows(settings: Settings) -> list[dict]:
    table = pq.read_table(settings.lake / CODE)
    return sorted(
        table.select(ITEMS).to_pylist(), key=lambda r: (r["credit_code"], r["updated_at"])
    )


@pytest.fixture
def sftp(sshd, tmp_path) -> SftpTransport:
    remote = sshd.root / f"roundtrip-{tmp_path.name}"
    remote.mkdir()
    return SftpTransport(
        host=sshd.host,
        port=sshd.port,
        username=sshd.username,
        key_file=sshd.client_key,
        known_hosts=sshd.known_hosts,
        remote_dir=str(remote),
    )


def test_synced_resource_crosses_sftp_and_is_reproduced_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sftp: SftpTransport
) -> None:
    for var in ("GOVBUS_REGISTRY_URL", "GOVBUS_CLOUD_URL", "GOVBUS_LAKE"):
        monkeypatch.delenv(var, raising=False)
    sources = tmp_path / "sources"
    sources.mkdir()
    monkeypatch.setenv("GOVBUS_DEMO_SOURCES", str(sources))
    dept_home, cloud_home = tmp_path / "dept", tmp_path / "cloud"
    keygen(tmp_path / "dept-keys", "scjg")
    keygen(tmp_path / "cloud-keys", "cloud")
    dept_id, cloud_id = (
        load_identity(tmp_path / "dept-keys"),
        load_identity(tmp_path / "cloud-keys"),
    )
    first = make_market(sources / "market.db", 120, seed=1)

    # The department: the same resource definition as the cloud, a sync, then an export.
    with as_site(monkeypatch, dept_home) as dept:
        apply_files(registry_engine(dept.registry_url), [EXAMPLE])
        assert sync(CODE, settings=dept).loaded == 120
        payload = ferrying.lake_payload(
            CODE,
            ferry_home=dept_home / "ferry",
            channel=CHANNEL,
            source_domain="scjg",
            destination_domain="cloud",
            settings=dept,
        )
        assert payload is not None
        sender = Sender(dept_home / "ferry", dept_id, (cloud_id.public,))
        exported = export_payload(sender, payload)
        ferrying.record_exported(dept_home / "ferry", payload)
        assert exported.envelope.records == 120
        sftp.send(exported.path)

    # The cloud: download over SFTP into a local inbox, verify, import into its database and lake.
    with as_site(monkeypatch, cloud_home) as cloud:
        apply_files(registry_engine(cloud.registry_url), [EXAMPLE])
        inbox = cloud_home / "inbox"
        assert sftp.receive(inbox) == [inbox / exported.path.name]
        receiver = Receiver(
            cloud_id, TrustStore.of(dept_id.public), cloud_home / "ferry", {CHANNEL}, "cloud"
        )
        engine = cloud_for(cloud).engine
        create_ledger(engine)
        [result] = import_inbox(engine, inbox, receiver=receiver, load=ferrying.load_into_cloud)
        assert result.status is ImportStatus.IMPORTED
        assert ferrying.publish_imported(cloud) == 1

    dept_rows, far_rows = cloud_rows(dept), cloud_rows(cloud)
    assert len(far_rows) == 120
    assert [r[0] for r in far_rows] == sorted(first)
    assert far_rows == dept_rows
    # One row spelled out, so equality is not the equality of two wrong copies.
    row = next(r for r in far_rows if r[0] == first[4])
    assert row == (
        first[4],
        "企业1-4",
        "王五",
        "330402196405050005",
        "嘉兴市南湖区4号",
        "330402",
        "28.25",
        "2004-02-05",
        "存续",
        "2025-01-01 00:00:04.000000",  # 08:00:04 in Asia/Shanghai, stored as UTC
        None,
    )
    assert lake_rows(cloud) == lake_rows(dept)
    assert len(lake_rows(cloud)) == 120
    far_lake = pq.read_table(cloud.lake / CODE)
    assert set(far_lake.column(RUN_ID).to_pylist()) == {exported.envelope.bundle_id}
    assert far_lake.column(LOADED_AT).null_count == 0

    # A second sync's changes (new rows and a changed row) travel as sequence 2 and land the same.
    second = make_market(sources / "market.db", 7, seed=2)
    with sqlite3.connect(sources / "market.db") as conn:
        conn.execute(
            "UPDATE enterprise SET status = '吊销', updated_at = '2025-03-01 00:00:00'"
            " WHERE credit_code = ?",
            (first[5],),
        )
    with as_site(monkeypatch, dept_home) as dept:
        assert sync(CODE, settings=dept).loaded == 8
        payload = ferrying.lake_payload(
            CODE,
            ferry_home=dept_home / "ferry",
            channel=CHANNEL,
            source_domain="scjg",
            destination_domain="cloud",
            settings=dept,
        )
        assert payload is not None and sum(f.records for f in payload.files) == 8
        exported = export_payload(sender, payload)
        ferrying.record_exported(dept_home / "ferry", payload)
        assert exported.sequence == 2
        sftp.send(exported.path)
    with as_site(monkeypatch, cloud_home) as cloud:
        sftp.receive(inbox)
        [result] = import_inbox(engine, inbox, receiver=receiver, load=ferrying.load_into_cloud)
        assert result.status is ImportStatus.IMPORTED and result.sequence == 2
        ferrying.publish_imported(cloud)

    far_rows = cloud_rows(cloud)
    assert far_rows == cloud_rows(dept)
    assert len(far_rows) == 127 and {r[0] for r in far_rows} == set(first + second)
    changed = next(r for r in far_rows if r[0] == first[5])
    assert changed[ITEMS.index("status")] == "吊销"
    # The lake keeps every row version, on both sides alike.
    assert lake_rows(cloud) == lake_rows(dept)
    assert len(lake_rows(cloud)) == 128

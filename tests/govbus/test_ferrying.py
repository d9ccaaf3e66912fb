"""Sync output carried by the ferry from a department network to the cloud, end to end."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import sqlalchemy as sa

from schemas.checks import make_resident_id, make_uscc

CODE = "330400-SCJG-0001"
EXAMPLES = Path(__file__).resolve().parents[2] / "govbus" / "examples"


def govbus(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVBUS_")}
    environ.update(GOVBUS_HOME=str(home), COLUMNS="200", **env)
    done = subprocess.run(
        [sys.executable, "-m", "govbus.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=False,
    )
    return done


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def make_market(path: Path, rows: int, seed: int) -> list[str]:
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
                    "李四",
                    make_resident_id(rng, division="330402", born=date(1975, 5, 5)),
                    "嘉兴",
                    "330402",
                    "10.50",
                    "2001-02-03",
                    "存续",
                    f"2025-0{seed}-01 08:{i // 60:02d}:{i % 60:02d}",
                )
                for i, c in enumerate(codes)
            ],
        )
    return codes


def cloud_codes(home: Path) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{home / 'cloud.db'}")
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT credit_code FROM enterprise")).scalars())


def test_department_sync_crosses_the_gap_exactly_once(tmp_path: Path) -> None:
    dept, cloud = tmp_path / "dept", tmp_path / "cloud"
    sources = tmp_path / "sources"
    sources.mkdir()
    env = {"GOVBUS_DEMO_SOURCES": str(sources)}
    drop, inbox = tmp_path / "drop", tmp_path / "inbox"
    first = make_market(sources / "market.db", 40, seed=1)

    # keys: the department signs, the cloud decrypts; each pins the other's public half
    ok(govbus(dept, "ferry", "keygen", str(tmp_path / "dept-keys"), "--name", "scjg"))
    ok(govbus(cloud, "ferry", "keygen", str(tmp_path / "cloud-keys"), "--name", "cloud"))
    ok(
        govbus(
            dept,
            "ferry",
            "pin",
            str(tmp_path / "cloud-keys/public.json"),
            "--trust",
            str(tmp_path / "dept-trust.json"),
        )
    )
    ok(
        govbus(
            cloud,
            "ferry",
            "pin",
            str(tmp_path / "dept-keys/public.json"),
            "--trust",
            str(tmp_path / "cloud-trust.json"),
        )
    )
    import json

    cloud_key = json.loads((tmp_path / "cloud-keys/public.json").read_text())["key_id"]

    for home in (dept, cloud):
        ok(govbus(home, "registry", "apply", str(EXAMPLES / "market_enterprises.yaml"), **env))
    ok(govbus(dept, "sync", CODE, **env))

    export = [
        "ferry",
        "export",
        "--home",
        str(dept / "ferry"),
        "--keys",
        str(tmp_path / "dept-keys"),
        "--trust",
        str(tmp_path / "dept-trust.json"),
        "--recipient",
        cloud_key,
        "--channel",
        "scjg-enterprise",
        "--resource",
        CODE,
        "--source-domain",
        "scjg",
        "--destination-domain",
        "cloud",
    ]
    out = ok(govbus(dept, *export, **env))
    assert "sequence 1" in out
    bundle = Path(out.split(": ", 1)[1].strip())
    ok(govbus(dept, "ferry", "send", str(bundle), "--drop", str(drop)))
    assert "nothing new" in ok(govbus(dept, *export, **env))

    receive = ["ferry", "receive", "--inbox", str(inbox), "--drop", str(drop)]
    import_ = [
        "ferry",
        "import",
        "--inbox",
        str(inbox),
        "--home",
        str(cloud / "ferry"),
        "--keys",
        str(tmp_path / "cloud-keys"),
        "--trust",
        str(tmp_path / "cloud-trust.json"),
        "--channel",
        "scjg-enterprise",
    ]
    ok(govbus(cloud, *receive))
    assert "imported" in ok(govbus(cloud, *import_, **env))
    assert cloud_codes(cloud) == sorted(first)
    assert pq.read_table(cloud / "lake" / CODE).num_rows == 40

    # the same bundle again (a second copy in the drop) is skipped, nothing doubles
    ok(
        govbus(
            dept,
            "ferry",
            "resend",
            "--home",
            str(dept / "ferry"),
            "--channel",
            "scjg-enterprise",
            "--sequence",
            "1",
            "--drop",
            str(drop),
        )
    )
    ok(govbus(cloud, *receive))
    assert "skipped" in ok(govbus(cloud, *import_, **env))
    assert pq.read_table(cloud / "lake" / CODE).num_rows == 40

    # the next sync's changes travel as sequence 2
    second = make_market(sources / "market.db", 5, seed=2)
    ok(govbus(dept, "sync", CODE, **env))
    out = ok(govbus(dept, *export, **env))
    assert "sequence 2" in out
    bundle = Path(out.split(": ", 1)[1].strip())
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered / bundle.name)
    payload = next((tampered / bundle.name / "data").iterdir())
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0x01
    payload.write_bytes(bytes(data))
    ok(govbus(dept, "ferry", "send", str(tampered / bundle.name), "--drop", str(drop)))
    ok(govbus(cloud, *receive))
    refused = govbus(cloud, *import_, **env)
    assert refused.returncode == 1
    assert "refused" in refused.stdout
    assert cloud_codes(cloud) == sorted(first)

    ok(govbus(dept, "ferry", "send", str(bundle), "--drop", str(drop)))
    ok(govbus(cloud, *receive))
    ok(govbus(cloud, *import_, **env))
    assert cloud_codes(cloud) == sorted(first + second)
    assert pq.read_table(cloud / "lake" / CODE).num_rows == 45
    status = ok(govbus(cloud, "ferry", "status"))
    assert "scjg-enterprise" in status and "1-2" in status

"""A small government: certificate and record resources synced into the cloud, and consumers.

The ``world`` fixture runs each test twice, on the embedded SQLite default and on the real
PostgreSQL server, with the departments' sources in a SQLite file beside the home.
"""

from __future__ import annotations

import random
import sqlite3
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

from govbus.certificates import ingest
from govbus.settings import Settings
from govbus.sync import sync
from registry.db import registry_engine
from registry.resources import apply_files
from schemas.checks import cert_id_with_check, make_resident_id, make_uscc

#: the official example identifier of the electronic certificate standard
VECTOR = "1.2.156.3005.2.11100000000013338W032.11220000013544541J.2430599.001.F"
CERT_TYPE = "11100000000013338W032"
CERT_ISSUER = "11220000013544541J"
LICENCE_TYPE = "11100000000013127D001"
MARKET = "11330400MB1234562E"
TAX = "11330400MB0000001X"

CERT_CODE = "220000-ZZK-0001"  # unconditional: certificates issued to citizens (111)
LICENCE_CODE = "330400-SCJG-0002"  # conditional: business licences issued to companies (001)
ENTERPRISE_CODE = "330400-SCJG-0001"  # conditional: enterprise records
TAX_CODE = "330400-SWJ-0001"  # not shared

CERT_ITEMS = """\
  - {name: identifier, type: C, length: 200, nullable: false}
  - {name: cert_name, type: C, length: 200}
  - {name: cert_number, type: C, length: 100}
  - {name: issuer_name, type: C, length: 200}
  - {name: issuer_code, type: C, length: 18}
  - {name: issue_date, type: D}
  - {name: division_code, type: C, length: 6}
  - {name: holder_name, type: C, length: 200}
  - {name: holder_id, type: C, length: 32}
  - {name: holder_id_type, type: C, length: 3}
  - {name: valid_from, type: D}
  - {name: valid_to, type: D}
  - {name: status, type: C, length: 16}
  - {name: file_hash, type: C, length: 128}
  - {name: updated_at, type: T, nullable: false}
"""


def cert_resource(code, provider, name, sharing, type_code, type_name, table, db) -> str:
    sharing_yaml = (
        "{type: conditional, condition: 办理行政许可时, method: interface}"
        if sharing == "conditional"
        else f"{{type: {sharing}}}"
    )
    return (
        textwrap.dedent(f"""\
        code: "{code}"
        name: {name}
        provider: {{code: "{provider}", name: {name}发证机关}}
        format: database
        update_cycle: daily
        sharing: {sharing_yaml}
        certificate: {{type_name: {type_name}, type_code: "{type_code}"}}
        source:
          url: "sqlite:///{db}"
          table: {table}
          cursor: updated_at
          primary_key: [identifier]
        target: {{table: {table}}}
        items:
        """)
        + CERT_ITEMS
    )


def record_resource(code, provider, name, sharing, table, db) -> str:
    sharing_yaml = (
        "{type: conditional, condition: 审批用, method: interface}"
        if sharing == "conditional"
        else f"{{type: {sharing}}}"
    )
    return textwrap.dedent(f"""\
        code: "{code}"
        name: {name}
        provider: {{code: "{provider}", name: {name}提供部门}}
        format: database
        update_cycle: daily
        sharing: {sharing_yaml}
        source:
          url: "sqlite:///{db}"
          table: {table}
          cursor: updated_at
          primary_key: [credit_code]
        target: {{table: {table}}}
        items:
          - {{name: credit_code, type: C, length: 18, nullable: false, checks: [uscc]}}
          - {{name: name, type: C, length: 200}}
          - {{name: legal_rep_id, type: C, length: 18, checks: [resident_id]}}
          - {{name: updated_at, type: T, nullable: false}}
        """)


CERT_COLUMNS = (
    "identifier, cert_name, cert_number, issuer_name, issuer_code, issue_date, division_code, "
    "holder_name, holder_id, holder_id_type, valid_from, valid_to, status, file_hash, updated_at"
)


def cert_row(identifier, holder, holder_type="111", **changes) -> dict:
    parts = identifier.split(".")
    row = {
        "identifier": identifier,
        "cert_name": "示例证照",
        "cert_number": f"No.{parts[7]}",
        "issuer_name": "示例发证机关",
        "issuer_code": parts[6],
        "issue_date": "2024-05-06",
        "division_code": "220000",
        "holder_name": "张三",
        "holder_id": holder,
        "holder_id_type": holder_type,
        "valid_from": "2024-05-06",
        "valid_to": "2034-05-05",
        "status": "valid",
        "file_hash": "9f" * 32,
        "updated_at": "2025-01-01 09:00:00",
    }
    row.update(changes)
    return row


@dataclass
class World:
    settings: Settings
    source: Path
    citizen: str  # holds VECTOR and a second certificate
    citizen2: str  # holds one certificate, whose first version was corrected
    company: str  # holds a business licence, is an enterprise record
    legal_rep: str
    certs: dict[str, str] = field(default_factory=dict)  # label -> identifier

    def add_certs(self, table: str, rows: list[dict]) -> None:
        with sqlite3.connect(self.source) as db:
            marks = ", ".join("?" * len(rows[0]))
            db.executemany(
                f"INSERT OR REPLACE INTO {table} ({CERT_COLUMNS}) VALUES ({marks})",
                [tuple(r.values()) for r in rows],
            )

    def sync_and_ingest(self, code: str, today: date = date(2026, 12, 3)):
        sync(code, settings=self.settings)
        return ingest(code, settings=self.settings, today=today)


def build_world(settings: Settings, tmp_path: Path) -> World:
    rng = random.Random(20261203)
    source = tmp_path / "departments.db"
    citizen = make_resident_id(rng, division="220102", born=date(1985, 7, 1))
    citizen2 = make_resident_id(rng, division="330402", born=date(1990, 2, 28))
    company = make_uscc(rng, division="330402")
    legal_rep = make_resident_id(rng, division="330402", born=date(1970, 1, 1))
    world = World(settings, source, citizen, citizen2, company, legal_rep)

    with sqlite3.connect(source) as db:
        for table in ("certs", "licences"):
            db.execute(f"CREATE TABLE {table} ({CERT_COLUMNS}, PRIMARY KEY (identifier))")
        for table in ("enterprise", "tax"):
            db.execute(
                f"CREATE TABLE {table} (credit_code TEXT PRIMARY KEY, name TEXT, "
                "legal_rep_id TEXT, updated_at TEXT NOT NULL)"
            )
            db.execute(
                f"INSERT INTO {table} VALUES (?, ?, ?, ?)",
                (company, "嘉兴示例有限公司", legal_rep, "2025-01-01 09:00:00"),
            )

    def ident(type_code: str, issuer: str, serial: str, version: str = "001") -> str:
        return cert_id_with_check(f"1.2.156.3005.2.{type_code}.{issuer}.{serial}.{version}")

    world.certs = {
        "vector": VECTOR,
        "second": ident(CERT_TYPE, CERT_ISSUER, "2430600"),
        "citizen2": ident(CERT_TYPE, CERT_ISSUER, "2430601"),
        "licence": ident(LICENCE_TYPE, MARKET, "0000001"),
    }
    unregistered = make_uscc(rng, division="220102")
    bad_check = world.certs["second"][:-1] + ("A" if world.certs["second"][-1] != "A" else "B")
    world.add_certs(
        "certs",
        [
            cert_row(VECTOR, citizen),
            cert_row(world.certs["second"], citizen.lower(), cert_name="第二证照"),
            cert_row(world.certs["citizen2"], citizen2, holder_name="李四"),
            # failures
            cert_row(bad_check, citizen, cert_number="bad-check"),
            cert_row(ident(CERT_TYPE, unregistered, "9000001"), citizen),
            cert_row(
                ident(CERT_TYPE, CERT_ISSUER, "9000002"),
                citizen[:17] + "0" if citizen[17] != "0" else citizen[:17] + "1",
            ),
            cert_row(
                ident(CERT_TYPE, CERT_ISSUER, "9000003"),
                citizen,
                valid_from="2030-01-01",
                valid_to="2029-12-31",
            ),
        ],
    )
    world.add_certs(
        "licences",
        [cert_row(world.certs["licence"], company, "001", holder_name="嘉兴示例有限公司")],
    )

    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "certs.yaml").write_text(
        cert_resource(
            CERT_CODE,
            CERT_ISSUER,
            "示例证照库",
            "unconditional",
            CERT_TYPE,
            "示例证照",
            "certs",
            source,
        ),
        encoding="utf-8",
    )
    (folder / "licences.yaml").write_text(
        cert_resource(
            LICENCE_CODE,
            MARKET,
            "营业执照库",
            "conditional",
            LICENCE_TYPE,
            "营业执照",
            "licences",
            source,
        ),
        encoding="utf-8",
    )
    (folder / "enterprise.yaml").write_text(
        record_resource(
            ENTERPRISE_CODE, MARKET, "企业登记基本信息", "conditional", "enterprise", source
        ),
        encoding="utf-8",
    )
    (folder / "tax.yaml").write_text(
        record_resource(TAX_CODE, TAX, "企业纳税信息", "none", "tax", source), encoding="utf-8"
    )
    apply_files(registry_engine(settings.registry_url), [folder])
    for code in (ENTERPRISE_CODE, TAX_CODE):
        sync(code, settings=settings)
    for code in (CERT_CODE, LICENCE_CODE):
        world.sync_and_ingest(code)
    return world


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest) -> Settings:
    """The embedded default, then registry and cloud on the real PostgreSQL server."""
    return request.getfixturevalue("home" if request.param == "sqlite" else "pg_home")


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    return build_world(settings, tmp_path)


@dataclass
class Desk:
    """The service in process, with two consumers: a window clerk and a revoked old system."""

    world: World
    client: object
    token: str
    revoked_token: str

    def get(
        self, url: str, *, token: str | None = "default", case: str | None = "2026-0001", **params
    ):
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        if case is not None:
            headers["X-Case-Number"] = case
        return self.client.get(url, headers=headers, params=params)  # type: ignore[attr-defined]


@pytest.fixture
def desk(world: World) -> Iterator[Desk]:
    from fastapi.testclient import TestClient
    from sqlalchemy.orm import Session

    from govbus.api import create_app
    from registry.access import add_consumer, revoke_consumer

    with Session(registry_engine(world.settings.registry_url)) as session, session.begin():
        token = add_consumer(session, "window-1", department_name="市民中心一号窗口").token
        old = add_consumer(session, "old-system").token
        revoke_consumer(session, "old-system")
    with TestClient(create_app(world.settings)) as client:
        yield Desk(world, client, token, old)

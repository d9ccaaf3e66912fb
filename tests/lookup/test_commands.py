"""The lookup commands as a user runs them: subprocesses on the world's home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from typer.testing import CliRunner

from govbus.cli import app
from govbus.errors import GovbusError
from registry.audit import AuditEntry
from registry.db import registry_engine

from .conftest import CERT_CODE, ENTERPRISE_CODE, MARKET, TAX_CODE, Desk, World

GOVBUS = [sys.executable, "-m", "govbus.cli"]


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run(world: World, *args: str) -> Ran:
    """Run a command in process, with the exit code and message ``govbus.cli.main`` gives."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if isinstance(result.exception, GovbusError):
        return Ran(result.exception.exit_code, result.stdout, str(result.exception))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def test_exit_codes_through_main(world: World) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVBUS_")}
    s = world.settings
    environ.update(
        GOVBUS_HOME=str(s.home),
        GOVBUS_REGISTRY_URL=s.registry_url,
        GOVBUS_CLOUD_URL=s.cloud_url,
        GOVBUS_LAKE=str(s.lake),
    )
    result = subprocess.run(
        [*GOVBUS, "consumers", "revoke", "nobody"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "consumer 'nobody' is not registered" in result.stderr


def test_consumers_and_applications(world: World) -> None:
    added = run(world, "consumers", "add", "window-9", "--department-name", "市民中心")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("gbt_")

    listed = json.loads(run(world, "consumers", "list", "--json").stdout)
    assert [(c["name"], c["status"]) for c in listed] == [("window-9", "active")]
    assert token not in json.dumps(listed)

    submitted = run(
        world,
        "applications",
        "submit",
        "--consumer",
        "window-9",
        "--resource",
        ENTERPRISE_CODE,
        "--purpose",
        "企业变更登记",
        "--on",
        "2026-02-12",
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "reply by 2026-03-04" in submitted.stdout
    overdue = run(world, "applications", "list", "--overdue", "--today", "2026-03-05", "--json")
    assert [(a["id"], a["deadline"], a["overdue"]) for a in json.loads(overdue.stdout)] == [
        (1, "2026-03-04", True)
    ]

    wrong = run(world, "applications", "approve", "1", "--provider", "91110000600037341L")
    assert wrong.returncode == 1
    assert "only the provider of 330400-SCJG-0001" in wrong.stderr
    assert run(world, "applications", "approve", "1", "--provider", MARKET).returncode == 0
    again = run(world, "applications", "deny", "1", "--provider", MARKET)
    assert (again.returncode, "already approved" in again.stderr) == (1, True)
    assert json.loads(run(world, "applications", "list", "--json").stdout)[0]["status"] == (
        "approved"
    )

    not_conditional = run(
        world,
        "applications",
        "submit",
        "--consumer",
        "window-9",
        "--resource",
        TAX_CODE,
        "--purpose",
        "x",
    )
    assert not_conditional.returncode == 2

    assert run(world, "consumers", "revoke", "window-9").returncode == 0
    listed = json.loads(run(world, "consumers", "list", "--json").stdout)
    assert listed[0]["status"] == "revoked"
    assert run(world, "consumers", "revoke", "nobody").returncode == 2


def test_certificates_ingest_command(world: World) -> None:
    result = run(world, "certificates", "ingest", CERT_CODE)
    assert result.returncode == 0, result.stderr
    assert "0" in result.stdout
    refused = run(world, "certificates", "ingest", ENTERPRISE_CODE)
    assert refused.returncode == 2
    assert "has no `certificate:` section" in refused.stderr


def test_audit_commands(desk: Desk) -> None:
    world = desk.world
    desk.get("/v1/certificates", holder_id=world.citizen, case="2026-0777")
    desk.get("/v1/certificates", token=None, holder_id=world.citizen, case="2026-0778")

    holder = run(world, "audit", "holder", world.citizen, "--json")
    assert holder.returncode == 0, holder.stderr
    rows = json.loads(holder.stdout)
    assert [(r["consumer"], r["case_number"], r["outcome"]) for r in rows] == [
        ("window-1", "2026-0777", "allowed"),
        (None, "2026-0778", "missing_token"),
    ]
    assert world.citizen not in holder.stdout

    intact = run(world, "audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert "audit trail intact: 2 entries" in intact.stdout

    entries = AuditEntry.__table__
    with registry_engine(world.settings.registry_url).begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 1).values(case_number="2026-0000"))
    broken = run(world, "audit", "verify")
    assert broken.returncode == 1
    assert "altered entry 1 was altered" in broken.stderr

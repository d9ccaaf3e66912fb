"""The demo and the command line, run as a user runs them: as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from govbus.demo import BROKEN_COMPANIES

GOVBUS = [sys.executable, "-m", "govbus.cli"]


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVBUS_")}
    environ.update(GOVBUS_HOME=str(home), COLUMNS="200", **env)
    return subprocess.run(
        [*GOVBUS, *args], capture_output=True, text=True, env=environ, timeout=600, check=False
    )


def test_demo_loads_real_division_data_and_rejects_broken_rows(tmp_path: Path) -> None:
    home = tmp_path / "home"

    first = run(["demo"], home)

    assert first.returncode == 0, first.stderr
    cloud = sa.create_engine(f"sqlite:///{home / 'cloud.db'}")
    with cloud.connect() as conn:
        count = lambda table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: E731
        assert count("division") == 6823
        assert count("street") == 41352
        assert count("enterprise") == 2000
        assert (
            conn.execute(sa.text("SELECT name FROM division WHERE code = '440524'")).scalar_one()
            == "潮阳县"
        )
        reasons = (
            conn.execute(sa.text("SELECT reason FROM govbus_rejects ORDER BY row_number"))
            .scalars()
            .all()
        )
    assert sorted(reasons) == sorted(BROKEN_COMPANIES.values())
    assert "330400-SCJG-0001" in first.stdout and "2,007" in first.stdout

    second = run(["demo"], home)
    assert second.returncode == 0, second.stderr
    runs = json.loads(run(["runs", "100000-MZB-0002", "--json"], home).stdout)
    assert [(r["status"], r["read"], r["loaded"], r["rejected"]) for r in runs] == [
        ("success", 0, 0, 0),
        ("success", 41352, 41352, 0),
    ]
    assert all(isinstance(r["seconds"], float) for r in runs)
    market = json.loads(run(["runs", "330400-SCJG-0001", "--json"], home).stdout)
    assert [(r["read"], r["loaded"], r["rejected"]) for r in market] == [(0, 0, 0), (2007, 2000, 7)]


def test_exit_codes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = tmp_path / "bad.yaml"
    bad.write_text("code: x\n", encoding="utf-8")

    refused = run(["registry", "apply", str(bad)], home)
    assert refused.returncode == 2
    assert "field `code`" in refused.stderr and "bad.yaml" in refused.stderr

    assert run(["sync", "999999-NONE-0001"], home).returncode == 2
    assert run(["sync", "--bogus-flag", "x"], home).returncode == 2

    resource = Path(__file__).resolve().parents[2] / "govbus/examples/civil_streets.yaml"
    assert run(["registry", "apply", str(resource)], home).returncode == 0
    failed = run(["sync", "100000-MZB-0002"], home, GOVBUS_DEMO_SOURCES=str(tmp_path / "none"))
    assert failed.returncode == 1
    runs = json.loads(run(["runs", "100000-MZB-0002", "--json"], home).stdout)
    assert [r["status"] for r in runs] == ["failed"]
    assert runs[0]["message"]


def test_registry_list_and_show(tmp_path: Path) -> None:
    home = tmp_path / "home"
    examples = Path(__file__).resolve().parents[2] / "govbus/examples"
    assert run(["registry", "apply", str(examples)], home).returncode == 0
    listed = json.loads(run(["registry", "list", "--json"], home).stdout)
    assert [r["code"] for r in listed] == ["100000-MZB-0001", "100000-MZB-0002", "330400-SCJG-0001"]
    assert listed[2]["sharing"] == "conditional"
    shown = run(["registry", "show", "330400-SCJG-0001"], home)
    assert "name: 企业登记基本信息" in shown.stdout
    assert "${GOVBUS_DEMO_SOURCES}" in shown.stdout

"""``govbus demo``: the main job end to end on real public data, with nothing but SQLite.

It builds two department sources under ``$GOVBUS_HOME/sources`` the first time it runs:

- ``civil.db``, the civil-affairs source: all 6,823 rows of the division-code history and all
  41,352 street-level codes, from the reference data shipped in ``govbus/data``;
- ``market.db``, the market-supervision source: companies generated with Faker's zh_CN locale,
  their credit codes and legal representatives' id numbers valid by construction, plus a few
  deliberately broken rows that must end in the rejects table.

Then it registers the resources shipped in ``govbus/examples`` and syncs each one. A second run
finds the sources in place and reads only what changed since: nothing.
"""

from __future__ import annotations

import os
import random
import sqlite3
from datetime import date, datetime, timedelta
from importlib.resources import files
from pathlib import Path

from faker import Faker

from govbus.settings import Settings
from govbus.sync import RunResult, sync
from registry.db import registry_engine
from registry.resources import apply_files
from schemas.checks import make_resident_id, make_uscc
from schemas.reference import division_rows, street_rows

__all__ = ["run_demo", "build_sources", "BROKEN_COMPANIES"]

SOURCES_ENV = "GOVBUS_DEMO_SOURCES"
RESOURCES = ("100000-MZB-0001", "100000-MZB-0002", "330400-SCJG-0001")

# Jiaxing's county-level codes: where the generated companies are registered.
_JIAXING = ["330402", "330411", "330421", "330424", "330481", "330482", "330483"]
_BASE_TIME = datetime(2025, 1, 1, 8, 0, 0)

#: rows that must be rejected, with the reason each one carries
BROKEN_COMPANIES = {
    "check character": "uscc.check_char",
    "letter O in code": "uscc.charset",
    "missing name": "null.not_allowed",
    "bad id check digit": "resident_id.check_digit",
    "unknown division": "division_code.unknown",
    "impossible date": "type.D",
    "capital not a number": "type.Y",
}


def examples_dir() -> Path:
    return Path(str(files("govbus").joinpath("examples")))


def build_sources(directory: Path, companies: int, seed: int = 2026) -> None:
    """Create the demo's source databases unless they exist already."""
    directory.mkdir(parents=True, exist_ok=True)
    civil = directory / "civil.db"
    if not civil.exists():
        _build_civil(civil)
    market = directory / "market.db"
    if not market.exists():
        _build_market(market, companies, seed)


def _write_atomically(path: Path, build) -> None:  # type: ignore[no-untyped-def]
    partial = path.with_suffix(".part")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as conn:
        build(conn)
    os.replace(partial, path)


def _build_civil(path: Path) -> None:
    def build(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE division (code TEXT NOT NULL, name TEXT NOT NULL, level TEXT NOT NULL,"
            " province_name TEXT, prefecture_name TEXT, status TEXT NOT NULL,"
            " first_year INTEGER NOT NULL, last_year INTEGER, replacement_code TEXT,"
            " updated_at TEXT NOT NULL, PRIMARY KEY (code, first_year))"
        )
        rows = division_rows().to_pylist()
        conn.executemany(
            "INSERT INTO division VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r["code"],
                    r["name"],
                    r["level"],
                    r["province_name"],
                    r["prefecture_name"],
                    r["status"],
                    r["first_year"],
                    r["last_year"],
                    r["replacement_code"],
                    _stamp(i),
                )
                for i, r in enumerate(rows)
            ],
        )
        conn.execute(
            "CREATE TABLE street (code TEXT PRIMARY KEY, name TEXT NOT NULL,"
            " area_code TEXT NOT NULL, city_code TEXT NOT NULL, province_code TEXT NOT NULL,"
            " updated_at TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO street VALUES (?,?,?,?,?,?)",
            [
                (
                    r["code"],
                    r["name"],
                    r["area_code"],
                    r["city_code"],
                    r["province_code"],
                    _stamp(i),
                )
                for i, r in enumerate(street_rows().to_pylist())
            ],
        )

    _write_atomically(path, build)


def _stamp(index: int) -> str:
    """Distinct local times, one a minute, as text the way many department systems keep them."""
    return (_BASE_TIME + timedelta(minutes=index)).strftime("%Y-%m-%d %H:%M:%S")


def _build_market(path: Path, companies: int, seed: int) -> None:
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    rows = []
    codes: set[str] = set()
    while len(rows) < companies:
        division = rng.choice(_JIAXING)
        code = make_uscc(rng, division=division)
        if code in codes:
            continue
        codes.add(code)
        birth = date(1950, 1, 1) + timedelta(days=rng.randrange(0, 365 * 50))
        rows.append(
            (
                code,
                fake.company(),
                fake.name(),
                make_resident_id(rng, division=division, born=birth),
                fake.address()[:200],
                division,
                f"{rng.randrange(10, 10_000_000) / 100:.2f}",
                (date(1990, 1, 1) + timedelta(days=rng.randrange(0, 12_000))).isoformat(),
                rng.choice(["存续", "存续", "存续", "在业", "注销", "吊销"]),
                _stamp(len(rows) * 7 + rng.randrange(7)),
            )
        )
    rows.extend(_broken_rows(rng, len(rows)))

    def build(conn: sqlite3.Connection) -> None:
        # Types are as loose as a department's SQLite often is, so bad values can exist at all.
        conn.execute(
            "CREATE TABLE enterprise (credit_code TEXT PRIMARY KEY, name TEXT, legal_rep TEXT,"
            " legal_rep_id TEXT, address TEXT, division_code TEXT, reg_capital,"
            " established, status TEXT, updated_at TEXT NOT NULL)"
        )
        conn.executemany("INSERT INTO enterprise VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    _write_atomically(path, build)


def _broken_rows(rng: random.Random, start: int) -> list[tuple[object, ...]]:
    good_id = make_resident_id(rng, division="330402", born=date(1980, 5, 17))
    bad_id = good_id[:17] + ("0" if good_id[17] != "0" else "1")

    def company(**changes: object) -> tuple[object, ...]:
        nonlocal start
        start += 1
        row = {
            "credit_code": make_uscc(rng, division="330402"),
            "name": "嘉兴示例有限公司",
            "legal_rep": "张三",
            "legal_rep_id": good_id,
            "address": "浙江省嘉兴市南湖区",
            "division_code": "330402",
            "reg_capital": "100.00",
            "established": "2010-03-01",
            "status": "存续",
            "updated_at": _stamp(start * 7),
        }
        row.update(changes)
        return tuple(row.values())

    wrong_check = make_uscc(rng, division="330402")
    wrong_check = wrong_check[:17] + ("0" if wrong_check[17] != "0" else "1")
    with_o = make_uscc(rng, division="330402")
    with_o = with_o[:10] + "O" + with_o[11:]
    return [
        company(credit_code=wrong_check),
        company(credit_code=with_o),
        company(name=None),
        company(legal_rep_id=bad_id),
        company(division_code="999999"),
        company(established="2023-02-30"),
        company(reg_capital="一百万"),
    ]


def run_demo(settings: Settings, companies: int = 2_000) -> list[RunResult]:
    settings.ensure_dirs()
    sources = settings.home / "sources"
    os.environ.setdefault(SOURCES_ENV, str(sources))
    build_sources(Path(os.environ[SOURCES_ENV]), companies)
    apply_files(registry_engine(settings.registry_url), [examples_dir()])
    return [sync(code, settings=settings) for code in RESOURCES]

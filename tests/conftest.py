"""Shared fixtures: an isolated govbus home, and fresh databases on the real local servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from govbus.settings import Settings, load_settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """GOVBUS_HOME in a temporary folder, with the embedded default (SQLite and files)."""
    for var in ("GOVBUS_REGISTRY_URL", "GOVBUS_CLOUD_URL", "GOVBUS_LAKE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOVBUS_HOME", str(tmp_path / "govbus"))
    settings = load_settings()
    settings.ensure_dirs()
    return settings


def _fresh_database(admin_url: str, prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with admin.connect() as conn:
            if admin.dialect.name == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database on the local server, dropped afterwards."""
    for name in _fresh_database(PG_ADMIN, "govbus_test"):
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
def pg_url2() -> Iterator[str]:
    """A second, independent PostgreSQL database (a source beside a cloud, say)."""
    for name in _fresh_database(PG_ADMIN, "govbus_test"):
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A new, empty MariaDB database on the local server, dropped afterwards."""
    for name in _fresh_database(MARIADB_ADMIN, "govbus_test"):
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"


@pytest.fixture
def pg_home(home: Settings, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Registry and cloud on the real PostgreSQL; the lake stays in the temporary home."""
    monkeypatch.setenv("GOVBUS_REGISTRY_URL", pg_url)
    monkeypatch.setenv("GOVBUS_CLOUD_URL", pg_url)
    return load_settings()

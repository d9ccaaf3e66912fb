"""The ledger and a loader on the real local PostgreSQL, in a schema of its own."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from sqlalchemy import create_engine, text

from ferry.ledger import ImportStatus, channel_status, create_ledger, import_bundle
from ferry.outbox import export_payload

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_engine(cloud_metadata):
    schema = f"ferry_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server
        if os.environ.get("CI"):
            pytest.fail(f"local PostgreSQL not reachable: {exc}")
        pytest.skip(f"local PostgreSQL not reachable: {exc}")
    engine = admin.execution_options(schema_translate_map={None: schema})
    create_ledger(engine)
    cloud_metadata.create_all(engine)
    yield engine
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.mark.postgres
def test_import_into_postgres_exactly_once_and_atomic(site, pg_engine):
    site.engine = pg_engine
    b1 = export_payload(site.sender, site.payload(rows=1000, start=1, files=2))
    b2 = export_payload(site.sender, site.payload(rows=10, start=1))  # ids clash with b1's rows
    b3 = export_payload(site.sender, site.payload(rows=5, start=2001))

    def deliver(b):
        return shutil.copytree(b.path, site.inbox / b.path.name)

    first = import_bundle(pg_engine, deliver(b1), receiver=site.receiver, load=site.load)
    dup = import_bundle(pg_engine, deliver(b1), receiver=site.receiver, load=site.load)
    with pytest.raises(Exception, match="duplicate key value violates unique constraint"):
        import_bundle(pg_engine, deliver(b2), receiver=site.receiver, load=site.load)
    held = import_bundle(pg_engine, deliver(b3), receiver=site.receiver, load=site.load)

    assert (first.status, dup.status, held.status) == (
        ImportStatus.IMPORTED,
        ImportStatus.SKIPPED,
        ImportStatus.PENDING,
    )
    assert len(site.rows()) == 1000
    assert site.ledger() == [("ch-a", 1, "imported"), ("ch-a", 3, "pending")]
    [status] = channel_status(pg_engine)
    assert (status.imported, status.pending, status.missing) == ((1,), (3,), (2,))
    assert (site.inbox / b2.path.name).is_dir()  # the failed bundle stays to be imported again

"""The ferry DAG file under real Airflow 3: DAGs from GOVBUS_FERRY_CONFIG, and an import run.

A department home syncs the demo's enterprises and exports them as a bundle into a drop folder
(in this process, through the library); the cloud side is an Airflow site whose ferry
configuration reads that folder. ``airflow dags test ferry_import`` must find the bundle, import
it, and leave the cloud table holding the department's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from ferry.keys import TrustStore, keygen, load_identity
from ferry.outbox import Sender, export_payload
from ferry.transports import DirectoryDrop
from govbus import ferrying
from govbus.demo import examples_dir
from govbus.ferry_orchestration import build_ferry_dags, export_dag_id, load_config
from govbus.settings import load_settings
from govbus.sync import sync
from registry.db import registry_engine
from registry.resources import apply_files

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

ENTERPRISES = "330400-SCJG-0001"
CHANNEL = "scjg-enterprise"


def test_no_config_means_no_ferry_dags() -> None:
    assert load_config({}) is None
    assert build_ferry_dags({}) == {}


@pytest.fixture(scope="module")
def ferry_site(
    tmp_path_factory: pytest.TempPathFactory,
    demo_sources: Path,
    site_factory: Callable[..., Any],
) -> Any:
    root = tmp_path_factory.mktemp("airflow-ferry")
    keygen(root / "dept-keys", "scjg")
    keygen(root / "cloud-keys", "cloud")
    dept_id, cloud_id = load_identity(root / "dept-keys"), load_identity(root / "cloud-keys")
    TrustStore().pin(dept_id.public, root / "cloud-trust.json")
    drop = root / "drop"
    drop.mkdir()

    config = root / "ferry.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "home": str(root / "cloud-ferry"),
                "keys": str(root / "cloud-keys"),
                "trust": str(root / "cloud-trust.json"),
                "transport": {"drop": str(drop)},
                # An export section too, so the export DAG of the resource is built and listed.
                "export": {
                    "recipients": [cloud_id.key_id],
                    "source_domain": "cloud",
                    "destination_domain": "archive",
                    "resources": [{"resource": ENTERPRISES, "channel": "cloud-archive"}],
                },
                "import": {
                    "inbox": str(root / "cloud-inbox"),
                    "domain": "cloud",
                    "channels": [{"channel": CHANNEL, "resource": ENTERPRISES}],
                    "poke_seconds": 1,
                    "wait_seconds": 30,
                },
            }
        )
    )
    site = site_factory(root / "cloud", demo_sources, {}, {"GOVBUS_FERRY_CONFIG": str(config)})
    # The department: sync the demo source, export the lake files, drop the bundle. (The site
    # above has set GOVBUS_DEMO_SOURCES, which the registered source URL refers to.)
    dept = load_settings({"GOVBUS_HOME": str(root / "dept")})
    dept.ensure_dirs()
    apply_files(registry_engine(dept.registry_url), [examples_dir()])
    synced = sync(ENTERPRISES, settings=dept)
    payload = ferrying.lake_payload(
        ENTERPRISES,
        ferry_home=root / "dept" / "ferry",
        channel=CHANNEL,
        source_domain="scjg",
        destination_domain="cloud",
        settings=dept,
    )
    assert payload is not None
    sender = Sender(root / "dept" / "ferry", dept_id, (cloud_id.public,))
    exported = export_payload(sender, payload)
    DirectoryDrop(drop).send(exported.path)

    site.airflow("db", "migrate")
    site.airflow("dags", "reserialize")
    site.exported = exported
    site.synced = synced
    site.drop = drop
    site.dept = dept
    return site


def test_ferry_dags_are_listed_from_the_config(ferry_site) -> None:
    listed = ferry_site.airflow_json("dags", "list")
    ferry = {d["dag_id"]: d["fileloc"].rsplit("/", 1)[-1] for d in listed if "ferry" in d["dag_id"]}

    assert ferry == {
        export_dag_id(ENTERPRISES): "govbus_ferry.py",
        "ferry_import": "govbus_ferry.py",
    }
    assert export_dag_id(ENTERPRISES) == "ferry_export_330400_scjg_0001"


def test_export_dag_is_scheduled_on_the_cloud_asset_the_sync_dag_announces(ferry_site) -> None:
    metadata = sa.create_engine(f"sqlite:///{ferry_site.root / 'airflow' / 'airflow.db'}")
    with metadata.connect() as conn:
        scheduled = conn.execute(
            sa.text(
                "SELECT a.name, a.uri FROM dag_schedule_asset_reference r"
                " JOIN asset a ON a.id = r.asset_id WHERE r.dag_id = :d"
            ),
            {"d": export_dag_id(ENTERPRISES)},
        ).all()
        announced = conn.execute(
            sa.text(
                "SELECT DISTINCT r.dag_id, a.uri FROM task_outlet_asset_reference r"
                " JOIN asset a ON a.id = r.asset_id WHERE a.uri = 'govbus://cloud/enterprise'"
                " ORDER BY r.dag_id"
            )
        ).all()

    assert [tuple(r) for r in scheduled] == [
        ("govbus.cloud.enterprise", "govbus://cloud/enterprise")
    ]
    # The sync DAG announces it on the department side, the import DAG on the cloud side.
    assert [r.dag_id for r in announced] == ["ferry_import", "sync_330400_scjg_0001"]


def _enterprises(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT credit_code, name, legal_rep_id, reg_capital, established, updated_at"
                    " FROM enterprise ORDER BY credit_code"
                )
            )
        ]


def test_import_dag_imports_a_dropped_bundle_into_the_cloud(ferry_site) -> None:
    ferry_site.airflow("dags", "test", "ferry_import")

    cloud_rows = _enterprises(ferry_site.cloud())
    assert len(cloud_rows) == ferry_site.synced.loaded == 2_000
    assert cloud_rows == _enterprises(sa.create_engine(ferry_site.dept.cloud_url))
    with ferry_site.cloud().connect() as conn:
        ledger = conn.execute(
            sa.text("SELECT channel, sequence, status, records FROM govbus_ferry_ledger")
        ).all()
    assert [tuple(r) for r in ledger] == [(CHANNEL, 1, "imported", 2_000)]
    assert list(ferry_site.drop.iterdir()) == []

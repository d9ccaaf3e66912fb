"""What govbus.orchestration builds from the registry, checked in this process (no scheduler)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from airflow.sdk.exceptions import AirflowFailException

from govbus import orchestration
from govbus.demo import examples_dir
from govbus.errors import ConfigError, SchemaDrift, SourceUnavailable
from govbus.orchestration import (
    DEFAULT_QUEUE,
    build_dags,
    decode_part,
    departments,
    encode_part,
    pools_config,
    schedule_for,
)
from govbus.settings import Settings
from registry.catalogue import UpdateCycle
from registry.db import registry_engine
from registry.resources import apply_files, list_current

MARKET = "11330400MB1234562E"
CIVIL = "11100000000013338W"


@pytest.fixture
def registered(home: Settings) -> Settings:
    apply_files(registry_engine(home.registry_url), [examples_dir()])
    return home


def test_schedules_follow_the_update_cycle() -> None:
    assert {cycle: schedule_for(cycle) for cycle in UpdateCycle} == {
        UpdateCycle.REALTIME: "*/5 * * * *",
        UpdateCycle.HOURLY: "@hourly",
        UpdateCycle.DAILY: "@daily",
        UpdateCycle.WEEKLY: "@weekly",
        UpdateCycle.MONTHLY: "@monthly",
        UpdateCycle.QUARTERLY: "@quarterly",
        UpdateCycle.YEARLY: "@yearly",
        UpdateCycle.IRREGULAR: None,
    }


def test_one_dag_per_resource_with_its_queue_pool_asset_and_tags(registered: Settings) -> None:
    dags = build_dags(registered)

    assert sorted(dags) == ["sync_100000_mzb_0001", "sync_100000_mzb_0002", "sync_330400_scjg_0001"]
    dag = dags["sync_330400_scjg_0001"]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.timetable.timezone.name == "Asia/Shanghai"
    assert set(dag.tags) == {"嘉兴市市场监督管理局", "sharing:conditional"}
    assert dag.params["full"] is False
    assert dag.params["partitions"] == 1

    tasks = {t.task_id: t for t in dag.tasks}
    assert {(t.task_id, t.queue, t.pool) for t in tasks.values()} == {
        ("plan", f"dept_{MARKET}", f"dept_{MARKET}"),
        ("load", f"dept_{MARKET}", f"dept_{MARKET}"),
        ("publish", DEFAULT_QUEUE, "default_pool"),
    }
    assert [a.uri for a in tasks["publish"].outlets] == [
        "govbus://cloud/enterprise",
        "govbus://lake/330400-SCJG-0001",
    ]
    assert tasks["load"].retries == 3
    assert tasks["publish"].upstream_task_ids == {"plan", "load"}


def test_departments_pools_and_worker_services(registered: Settings) -> None:
    specs = [r.spec for r in list_current(registry_engine(registered.registry_url))]

    found = departments(specs)
    assert [(d.code, d.queue, d.worker_service) for d in found] == [
        (CIVIL, f"dept_{CIVIL}", "frontend-mzb"),
        (MARKET, f"dept_{MARKET}", "frontend-scjg"),
    ]
    pools = pools_config(specs, slots=3)
    assert sorted(pools) == [f"dept_{CIVIL}", f"dept_{MARKET}"]
    assert pools[f"dept_{MARKET}"]["slots"] == 3


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("91330402MA0000000X", "91330402MA9999999X"),
        (10, 20),
        (date(2024, 1, 1), None),
        (None, datetime(2025, 1, 1, 8, 30)),
        (Decimal("1.50"), Decimal("9.25")),
    ],
)
def test_key_ranges_survive_json(low, high) -> None:
    import json

    part = json.loads(json.dumps(encode_part(low, high, "2/4", full=True, high_water=high)))

    full, key_range, label = decode_part(part)
    assert (full, key_range.low, key_range.high, label) == (True, low, high, "2/4")
    assert type(key_range.low) is type(low)


def test_a_whole_source_part_has_no_key_range() -> None:
    assert decode_part(encode_part(None, None, None, full=False)) == (False, None, None)


def test_only_retryable_errors_are_left_for_airflow_to_retry() -> None:
    with pytest.raises(AirflowFailException, match="SchemaDrift"):
        with orchestration._retry_policy("330400-SCJG-0001"):
            raise SchemaDrift("column gone")
    with pytest.raises(SourceUnavailable):
        with orchestration._retry_policy("330400-SCJG-0001"):
            raise SourceUnavailable("database down")


def test_an_unreadable_registry_is_an_error_that_names_it_without_the_password(
    home: Settings,
) -> None:
    url = "postgresql+psycopg://govbus:s3cret@127.0.0.1:1/registry"
    broken = Settings(home=home.home, registry_url=url, cloud_url=home.cloud_url, lake=home.lake)

    with pytest.raises(ConfigError) as caught:
        build_dags(broken)
    message = str(caught.value)
    assert "postgresql+psycopg://govbus:***@127.0.0.1:1/registry" in message
    assert "s3cret" not in message
    assert "GOVBUS_REGISTRY_URL" in message


def test_deployment_helpers_print_queues_pools_and_departments(
    registered: Settings, capsys, monkeypatch
) -> None:
    import json

    monkeypatch.delenv("GOVBUS_DEPARTMENT_POOL_SLOTS", raising=False)

    assert orchestration.main(["queues"]) == 0
    assert capsys.readouterr().out.strip() == f"dept_{CIVIL},dept_{MARKET}"

    assert orchestration.main(["pools"]) == 0
    pools = json.loads(capsys.readouterr().out)
    assert {name: p["slots"] for name, p in pools.items()} == {
        f"dept_{CIVIL}": 2,
        f"dept_{MARKET}": 2,
    }

    assert orchestration.main(["departments"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["worker_service"] for r in rows] == ["frontend-mzb", "frontend-scjg"]

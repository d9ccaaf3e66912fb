"""The DAG file under real Airflow 3: one DAG per registered resource, and a run that loads."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from govbus.demo import BROKEN_COMPANIES

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

ENTERPRISES = "330400-SCJG-0001"
DAG_ID = "sync_330400_scjg_0001"


def test_airflow_lists_one_dag_per_registered_resource(serialized_site) -> None:
    listed = serialized_site.airflow_json("dags", "list")

    assert sorted(d["dag_id"] for d in listed) == sorted(s.dag_id for s in serialized_site.specs)
    assert len(listed) == 3
    assert {d["fileloc"].rsplit("/", 1)[-1] for d in listed} == {"govbus_resources.py"}


def _loads(site) -> list[tuple[int, int, int]]:
    with site.cloud().connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT read, loaded, rejected FROM govbus_loads WHERE resource_code = :code "
                "ORDER BY committed_at"
            ),
            {"code": ENTERPRISES},
        )
        return [tuple(r) for r in rows]


def _enterprises(site) -> list[str]:
    with site.cloud().connect() as conn:
        return conn.execute(sa.text("SELECT credit_code FROM enterprise")).scalars().all()


def test_a_generated_dag_loads_the_source_into_the_cloud(serialized_site) -> None:
    serialized_site.airflow("dags", "test", DAG_ID)

    assert _loads(serialized_site) == [(2_007, 2_000, len(BROKEN_COMPANIES))]
    codes = _enterprises(serialized_site)
    assert len(codes) == len(set(codes)) == 2_000


def test_a_partitioned_full_load_maps_one_task_per_key_range(serialized_site) -> None:
    conf = json.dumps({"full": True, "partitions": 3})
    serialized_site.airflow("dags", "test", DAG_ID, "--conf", conf)

    # The three ranges read every source row once between them; the table is the same.
    partitioned = _loads(serialized_site)[-3:]
    assert sum(r[0] for r in partitioned) == 2_007
    assert sum(r[1] for r in partitioned) == 2_000
    assert sum(r[2] for r in partitioned) == len(BROKEN_COMPANIES)
    assert len(_enterprises(serialized_site)) == 2_000

    # Incremental syncs go on from the high-water mark the plan noted before the ranges loaded.
    with serialized_site.cloud().connect() as conn:
        state = conn.execute(
            sa.text("SELECT state, run_id FROM govbus_checkpoints WHERE resource_code = :c"),
            {"c": ENTERPRISES},
        ).one()
    assert state.run_id == "partitioned"
    with sa.create_engine(
        f"sqlite:///{serialized_site.root / 'airflow' / 'airflow.db'}"
    ).connect() as conn:
        mapped = conn.execute(
            sa.text(
                "SELECT map_index, rendered_map_index, queue, pool, state FROM task_instance "
                "WHERE dag_id = :d AND task_id = 'load' AND run_id = ("
                "  SELECT run_id FROM dag_run WHERE dag_id = :d "
                "  ORDER BY id DESC LIMIT 1) ORDER BY map_index"
            ),
            {"d": DAG_ID},
        ).all()
    assert [(m.map_index, m.rendered_map_index, m.state) for m in mapped] == [
        (0, "1/3", "success"),
        (1, "2/3", "success"),
        (2, "3/3", "success"),
    ]
    assert {(m.queue, m.pool) for m in mapped} == {
        ("dept_11330400MB1234562E", "dept_11330400MB1234562E")
    }

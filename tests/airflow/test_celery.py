"""Scale-out on Airflow's CeleryExecutor: department queues, two workers, mapped key ranges, pools.

Everything is real and local: PostgreSQL holds a fresh Airflow metadata database and a fresh
govbus registry and cloud; Redis (a database number of its own) is the Celery broker; the API
server (execution API), scheduler, DAG processor and two Celery workers run as subprocesses.

The two workers play the market-supervision bureau's two front-end nodes: both serve its queue,
so a partitioned full load spreads over them. The second one also serves the default queue,
which a deployment gives a cloud-side worker of its own (see docker/compose.yaml); two processes
are enough to show the routing here.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from govbus.demo import BROKEN_COMPANIES
from govbus.orchestration import (
    CLUSTER_SETTINGS,
    DEFAULT_QUEUE,
    Department,
    department_of,
    pools_config,
)

pytestmark = [pytest.mark.airflow, pytest.mark.postgres, pytest.mark.slow]

PG = "postgres@127.0.0.1:5432"
REDIS_DB = 14  # the broker's own database; flushed before and after
ENTERPRISES = "330400-SCJG-0001"
DAG_ID = "sync_330400_scjg_0001"
RUN_ID = "ci_partitioned_full_load"
PARTITIONS = 4
POOL_SLOTS = 2
WORKERS = ("frontend-scjg-1", "frontend-scjg-2")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def databases() -> Iterator[tuple[str, str]]:
    """A fresh Airflow metadata database and a fresh govbus registry-and-cloud database."""
    names = [f"airflow_ci_{uuid.uuid4().hex[:8]}", f"govbus_ci_{uuid.uuid4().hex[:8]}"]
    admin = sa.create_engine(f"postgresql+psycopg://{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield names[0], names[1]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    client.flushdb()
    client.close()


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text)


@dataclass
class Cluster:
    site: Any  # conftest's AirflowSite
    services: list[Service]
    market: Department
    metadata: sa.Engine

    def diagnostics(self) -> str:
        return "\n".join(s.tail() for s in self.services)

    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for service in self.services:
                if service.process.poll() is not None:
                    raise AssertionError(
                        f"{service.name} exited while waiting for {what}\n{self.diagnostics()}"
                    )
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f} s: {what}\n{self.diagnostics()}")

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.metadata.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()


def _start(site, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Service:
    log = site.root / f"{name}.log"
    env = {**site.env, **(extra_env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), *args],
            env=env,
            cwd=site.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches its children
        )
    return Service(name, process, log)


def _stop(services: list[Service]) -> None:
    """SIGTERM to every service's process group at once, then SIGKILL to what outlives 30 s."""
    running = [s for s in services if s.process.poll() is None]
    for service in running:
        os.killpg(service.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for service in running:
        try:
            service.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    demo_sources: Path,
    databases: tuple[str, str],
    broker: str,
    site_factory: Callable[..., Any],
) -> Iterator[Cluster]:
    metadata_db, govbus_db = databases
    port = _free_port()
    metadata_url = f"postgresql+psycopg2://{PG}/{metadata_db}"
    site = site_factory(
        tmp_path_factory.mktemp("airflow-celery"),
        demo_sources,
        {
            **CLUSTER_SETTINGS,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{PG}/{metadata_db}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
            # Only the test's own run: no scheduled run of a daily DAG whose tick just passed.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        },
        {
            "GOVBUS_REGISTRY_URL": f"postgresql+psycopg://{PG}/{govbus_db}",
            "GOVBUS_CLOUD_URL": f"postgresql+psycopg://{PG}/{govbus_db}",
            "GOVBUS_DEPARTMENT_POOL_SLOTS": str(POOL_SLOTS),
        },
    )
    site.airflow("db", "migrate")
    pools = site.root / "pools.json"
    pools.write_text(json.dumps(pools_config(site.specs, slots=POOL_SLOTS)))
    site.airflow("pools", "import", str(pools))

    market = department_of(next(s for s in site.specs if s.code == ENTERPRISES))
    services: list[Service] = []
    try:
        services.append(
            _start(site, "api-server", ["api-server", "--apps", "execution", "-w", "1"])
        )
        services.append(_start(site, "scheduler", ["scheduler"]))
        services.append(_start(site, "dag-processor", ["dag-processor"]))
        # One slot on the first node, two on the second: three in all, one more than the pool.
        roles = [(market.queue, 1), (f"{DEFAULT_QUEUE},{market.queue}", 2)]
        for name, (queues, slots) in zip(WORKERS, roles, strict=True):
            args = ["celery", "worker", "-q", queues, "-c", str(slots), "-H", f"{name}@%h"]
            worker = _start(site, name, [*args, "--skip-serve-logs"], {"GOVBUS_WORKER_NAME": name})
            services.append(worker)
        cluster = Cluster(site, services, market, sa.create_engine(metadata_url))
        for name in WORKERS:
            log = next(s.log for s in services if s.name == name)
            cluster.wait(
                f"worker {name} ready", lambda log=log: b" ready." in log.read_bytes(), 120
            )
        yield cluster
        cluster.metadata.dispose()
    finally:
        _stop(services)


def test_a_partitioned_full_load_runs_on_both_front_end_workers(cluster: Cluster) -> None:
    site, market = cluster.site, cluster.market
    cluster.wait(
        "the DAG processor to serialize the resource DAGs",
        lambda: cluster.scalar("SELECT count(*) FROM serialized_dag") == len(site.specs),
        180,
    )
    conf = json.dumps({"full": True, "partitions": PARTITIONS})
    site.airflow("dags", "trigger", DAG_ID, "--run-id", RUN_ID, "--conf", conf)
    site.airflow("dags", "unpause", DAG_ID)

    cluster.wait(
        f"run {RUN_ID} to finish",
        lambda: (
            cluster.scalar("SELECT state FROM dag_run WHERE run_id = :r", r=RUN_ID)
            in ("success", "failed")
        ),
        420,
    )
    with cluster.metadata.connect() as conn:
        tis = conn.execute(
            sa.text(
                "SELECT task_id, map_index, state, hostname, queue, pool, start_date, end_date "
                "FROM task_instance WHERE dag_id = :d AND run_id = :r ORDER BY task_id, map_index"
            ),
            {"d": DAG_ID, "r": RUN_ID},
        ).all()
    summary = "\n".join(str(tuple(t)) for t in tis)
    assert {t.state for t in tis} == {"success"}, f"{summary}\n{cluster.diagnostics()}"

    # Extraction ran on the department's queue and pool, on both of its front-end nodes.
    (plan,) = [t for t in tis if t.task_id == "plan"]
    assert (plan.queue, plan.pool, plan.hostname in WORKERS) == (market.queue, market.pool, True)
    loads = [t for t in tis if t.task_id == "load"]
    assert [t.map_index for t in loads] == list(range(PARTITIONS))
    assert {(t.queue, t.pool) for t in loads} == {(market.queue, market.pool)}
    assert {t.hostname for t in loads} == set(WORKERS), summary

    # Publishing the assets ran on the default queue: only the second worker serves it.
    (publish,) = [t for t in tis if t.task_id == "publish"]
    assert (publish.queue, publish.pool, publish.hostname) == (
        DEFAULT_QUEUE,
        "default_pool",
        WORKERS[1],
    )

    # The pool holds the department to two connections although the workers could run three.
    events = sorted([(t.start_date, 1) for t in loads] + [(t.end_date, -1) for t in loads])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= POOL_SLOTS, summary
    assert cluster.scalar("SELECT slots FROM slot_pool WHERE pool = :p", p=market.pool) == 2

    # The cloud holds exactly the source's valid rows, read once across the ranges.
    cloud = sa.create_engine(site.settings.cloud_url)
    with cloud.connect() as conn:
        codes = conn.execute(sa.text("SELECT credit_code FROM enterprise")).scalars().all()
        ranges = conn.execute(
            sa.text(
                "SELECT sum(read), sum(loaded), sum(rejected), count(*) FROM runs "
                "WHERE resource_code = :c AND partition LIKE :p AND status = 'success'"
            ),
            {"c": ENTERPRISES, "p": f"%/{PARTITIONS}"},
        ).one()
    cloud.dispose()
    source = sa.create_engine(f"sqlite:///{site.env['GOVBUS_DEMO_SOURCES']}/market.db")
    with source.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM enterprise")).scalar()
    source.dispose()
    assert len(codes) == len(set(codes)) == total - len(BROKEN_COMPANIES) == 2_000
    assert tuple(ranges) == (total, 2_000, len(BROKEN_COMPANIES), PARTITIONS)

"""Airflow DAGs built from the registry: one DAG per registered resource.

A DAG file only calls :func:`build_dags`; everything a DAG does is decided here from the resource
definition:

- dag id ``spec.dag_id``, schedule from the update cycle (in China Standard Time), no catch-up,
  one active run at a time;
- three tasks: ``plan`` (decide what this run reads), ``load`` (mapped: one ``govbus.sync.sync``
  call per part) and ``publish`` (settle a partitioned load and announce the cloud table and the
  lake dataset as Airflow assets);
- ``plan`` and ``load`` read the department's database, so they run on the department's Celery
  queue (served by the workers on its front-end exchange node, 前置机) and take a slot of the
  department's pool, which bounds the connections open against that database; ``publish`` only
  touches the cloud and runs on the default queue;
- a run triggered with ``{"full": true, "partitions": N}`` reloads the whole source split into N
  primary-key ranges, which Airflow maps to N parallel ``load`` task instances.

Retries follow ``govbus.errors``: an error marked retryable (a source or sink that went away) is
re-raised for Airflow to retry; any other govbus error becomes ``AirflowFailException`` so the task
fails at once, because running it again unchanged cannot help.

``sync()`` extracts, validates and loads in one call, so a ``load`` task on a front-end node also
writes to the cloud database and lake. Splitting extraction from loading would need a staged hand
over (files or a staging table) between the two queues, which the sync pipeline does not offer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from govbus.errors import ConfigError, GovbusError, is_retryable
from govbus.settings import Settings, load_settings
from registry.catalogue import ResourceSpec, UpdateCycle

if TYPE_CHECKING:
    from airflow.sdk import DAG, Asset

__all__ = [
    "DEFAULT_QUEUE",
    "CLUSTER_SETTINGS",
    "Department",
    "department_of",
    "departments",
    "schedule_for",
    "cloud_asset",
    "lake_asset",
    "encode_part",
    "decode_part",
    "pool_slots",
    "pools_config",
    "registered_specs",
    "build_dag",
    "build_dags",
    "worker_hostname",
]

log = logging.getLogger(__name__)

#: the Celery queue of cloud-side work (Airflow's own default, ``[operators] default_queue``)
DEFAULT_QUEUE = "default"
#: connections one department's database accepts from govbus at a time, unless configured
DEFAULT_POOL_SLOTS = 2
POOL_SLOTS_ENV = "GOVBUS_DEPARTMENT_POOL_SLOTS"
WORKER_NAME_ENV = "GOVBUS_WORKER_NAME"
#: Airflow settings every govbus cluster shares: the local CI cluster and docker/compose.yaml
CLUSTER_SETTINGS: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "govbus.orchestration.worker_hostname",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    # A resource's DAG starts paused: someone checks its first run before it runs on schedule.
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
}
#: how many primary-key ranges a partitioned full load may be split into
MAX_PARTITIONS = 64
TIMEZONE = "Asia/Shanghai"

_SCHEDULES: dict[UpdateCycle, str | None] = {
    # A realtime resource is polled: the sync is incremental, so a short interval is cheap.
    UpdateCycle.REALTIME: "*/5 * * * *",
    UpdateCycle.HOURLY: "@hourly",
    UpdateCycle.DAILY: "@daily",
    UpdateCycle.WEEKLY: "@weekly",
    UpdateCycle.MONTHLY: "@monthly",
    UpdateCycle.QUARTERLY: "@quarterly",
    UpdateCycle.YEARLY: "@yearly",
    UpdateCycle.IRREGULAR: None,
}


@dataclass(frozen=True)
class Department:
    """A providing department as the deployment sees it: its front-end node's queue and pool."""

    code: str  # the department's unified social credit code
    name: str
    abbreviation: str  # from its resource codes, e.g. SCJG in 330400-SCJG-0001

    @property
    def queue(self) -> str:
        return f"dept_{self.code}"

    @property
    def pool(self) -> str:
        return f"dept_{self.code}"

    @property
    def worker_service(self) -> str:
        """The name of the department's front-end worker in the container deployment."""
        return f"frontend-{self.abbreviation.lower()}"


def department_of(spec: ResourceSpec) -> Department:
    return Department(
        code=spec.provider.code, name=spec.provider.name, abbreviation=spec.code.split("-")[1]
    )


def departments(specs: Iterable[ResourceSpec]) -> list[Department]:
    """Each providing department once, by credit code; the first resource names it."""
    found: dict[str, Department] = {}
    for spec in sorted(specs, key=lambda s: s.code):
        found.setdefault(spec.provider.code, department_of(spec))
    return sorted(found.values(), key=lambda d: d.code)


def schedule_for(cycle: UpdateCycle) -> str | None:
    return _SCHEDULES[cycle]


def cloud_asset(spec: ResourceSpec) -> Asset:
    from airflow.sdk import Asset

    table = spec.target.table
    return Asset(name=f"govbus.cloud.{table}", uri=f"govbus://cloud/{table}", group="govbus")


def lake_asset(spec: ResourceSpec) -> Asset:
    from airflow.sdk import Asset

    return Asset(name=f"govbus.lake.{spec.code}", uri=f"govbus://lake/{spec.code}", group="govbus")


def pool_slots(environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get(POOL_SLOTS_ENV) or str(DEFAULT_POOL_SLOTS)
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{POOL_SLOTS_ENV} must be a whole number of at least 1, not {raw!r}")
    return int(raw)


def pools_config(specs: Iterable[ResourceSpec], slots: int | None = None) -> dict[str, Any]:
    """The department pools in the format of ``airflow pools import``."""
    size = pool_slots() if slots is None else slots
    return {
        d.pool: {
            "slots": size,
            "description": f"connections to the databases of {d.name} ({d.code})",
            "include_deferred": False,
        }
        for d in departments(specs)
    }


def worker_hostname() -> str:
    """The name a worker records on the task instances it runs (``[core] hostname_callable``).

    ``GOVBUS_WORKER_NAME`` names a worker where several share one machine; otherwise the machine's
    name. Airflow fetches task logs from this host name, so it must resolve where logs are served.
    """
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


# -- key ranges as XCom values ----------------------------------------------------------------


def encode_part(
    low: Any,
    high: Any,
    label: str | None,
    *,
    full: bool,
    high_water: Any = None,
    high_water_keys: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One part of a run as plain JSON (XCom): values keep their type through tagging.

    Every part of a partitioned load carries the plan's cursor high-water mark, so the task that
    settles the load needs nothing but the parts.
    """
    from govbus.checkpoint import encode_value

    return {
        "full": full,
        "low": encode_value(low),
        "high": encode_value(high),
        "label": label,
        "high_water": encode_value(high_water),
        "high_water_keys": sorted(high_water_keys),
    }


def decode_part(part: dict[str, Any]) -> tuple[bool, Any, str | None]:
    """``(full, key_range or None, partition label)`` back from :func:`encode_part`."""
    from adapters.sql_source import KeyRange
    from govbus.checkpoint import decode_value

    if part["label"] is None:
        return part["full"], None, None
    return True, KeyRange(decode_value(part["low"]), decode_value(part["high"])), part["label"]


# -- the DAGs ---------------------------------------------------------------------------------


@contextmanager
def _retry_policy(code: str) -> Iterator[None]:
    """Non-retryable govbus errors end the task without retries; others go back to Airflow."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except GovbusError as exc:
        if is_retryable(exc):
            raise
        raise AirflowFailException(f"{code}: {exc} (not retried: {type(exc).__name__})") from exc


def _plan(code: str, full: bool, partitions: int) -> list[dict[str, Any]]:
    from govbus.sync import plan_partitions, prepare_target

    if not full or partitions <= 1:
        return [encode_part(None, None, None, full=full)]

    plan = plan_partitions(code, partitions)
    if len(plan.ranges) <= 1:
        log.warning("%s: the source cannot be split by its key; loading it whole", code)
        return [encode_part(None, None, None, full=True)]

    # The ranges load in parallel; creating the target table first keeps them from racing to it.
    prepare_target(code)

    return [
        encode_part(
            r.low,
            r.high,
            plan.label(i),
            full=True,
            high_water=plan.high_water,
            high_water_keys=plan.high_water_keys,
        )
        for i, r in enumerate(plan.ranges)
    ]


def _load(code: str, part: dict[str, Any]) -> dict[str, Any]:
    from govbus.sync import sync

    full, key_range, label = decode_part(part)
    result = sync(code, full=full, key_range=key_range, partition=label)
    return {
        "run_id": result.run_id,
        "partition": label,
        "read": result.read,
        "loaded": result.loaded,
        "rejected": result.rejected,
    }


def _publish(
    code: str, parts: list[dict[str, Any]], results: list[dict[str, Any]]
) -> dict[str, int]:
    from govbus.checkpoint import decode_value
    from govbus.sync import PartitionPlan, finish_partitions

    ranges = [key_range for _, key_range, _ in map(decode_part, parts) if key_range is not None]
    if ranges:
        high_water = decode_value(parts[0]["high_water"])
        keys = frozenset(parts[0].get("high_water_keys", ()))
        finish_partitions(PartitionPlan(code, tuple(ranges), high_water, keys))
    return {key: sum(r[key] for r in results) for key in ("read", "loaded", "rejected")}


def build_dag(spec: ResourceSpec) -> DAG:
    """The DAG that syncs one resource."""
    import pendulum
    from airflow.sdk import DAG, Param, get_current_context, task
    from airflow.sdk.exceptions import AirflowSkipException

    code = spec.code
    dept = department_of(spec)
    assets = [cloud_asset(spec)] + ([lake_asset(spec)] if spec.target.lake else [])
    default_args = {
        "owner": dept.name,
        "retries": 3,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    }
    params = {
        "full": Param(False, type="boolean", description="read the whole source, not the changes"),
        "partitions": Param(
            1,
            type="integer",
            minimum=1,
            maximum=MAX_PARTITIONS,
            description="with full: split the source into this many primary-key ranges",
        ),
    }

    with DAG(
        dag_id=spec.dag_id,
        description=f"{spec.name} ({code}) → cloud table {spec.target.table}",
        schedule=schedule_for(spec.update_cycle),
        start_date=pendulum.datetime(2024, 1, 1, tz=TIMEZONE),
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        params=params,
        tags=[spec.provider.name, f"sharing:{spec.sharing.type.value}"],
        doc_md=(
            f"**{spec.name}** (`{code}`), provided by {spec.provider.name} "
            f"(`{spec.provider.code}`), updated {spec.update_cycle.value}.\n\n{spec.summary or ''}"
        ),
    ) as dag:

        @task(queue=dept.queue, pool=dept.pool)
        def plan() -> list[dict[str, Any]]:
            run_params = get_current_context()["params"]
            with _retry_policy(code):
                return _plan(code, bool(run_params["full"]), int(run_params["partitions"]))

        @task(queue=dept.queue, pool=dept.pool, map_index_template="{{ govbus_part }}")
        def load(part: dict[str, Any]) -> dict[str, Any]:
            get_current_context()["govbus_part"] = part["label"] or "whole"  # type: ignore[typeddict-unknown-key]
            with _retry_policy(code):
                return _load(code, part)

        @task(queue=DEFAULT_QUEUE, outlets=assets)
        def publish(parts: Any, results: Any) -> dict[str, int]:
            with _retry_policy(code):
                # One slice request; iterating the lazy sequence would probe past its end.
                totals = _publish(code, list(parts), list(results[:]))
            if totals["loaded"] == 0:
                # Nothing reached the cloud table, so consumers have nothing new to react to.
                raise AirflowSkipException(f"{code}: no rows loaded, no asset event")
            events = get_current_context()["outlet_events"]
            for asset in assets:
                events[asset].extra = {"resource": code, **totals}
            return totals

        parts = plan()
        publish(parts, load.expand(part=parts))

    return dag


def registered_specs(settings: Settings | None = None) -> list[ResourceSpec]:
    """The current version of every registered resource, or a ConfigError naming the registry.

    Only reads: parsing DAG files must not migrate the registry, so a registry whose schema is
    behind is reported like an unreachable one (`govbus registry list` migrates it).
    """
    from sqlalchemy.engine import make_url

    from registry.db import make_engine
    from registry.resources import list_current

    settings = settings or load_settings()
    engine = make_engine(settings.registry_url)
    try:
        return [r.spec for r in list_current(engine)]
    except Exception as exc:
        where = make_url(settings.registry_url).render_as_string(hide_password=True)
        raise ConfigError(
            f"cannot read the resource registry at {where}: {type(exc).__name__}: {exc}; "
            "check GOVBUS_REGISTRY_URL and that `govbus registry list` works on this machine"
        ) from exc
    finally:
        engine.dispose()


def build_dags(settings: Settings | None = None) -> dict[str, DAG]:
    """One DAG per registered resource, by dag id.

    An unreadable registry raises ConfigError, which Airflow shows as the DAG file's import error;
    returning no DAGs instead would make every resource's DAG vanish without a word.
    """
    try:
        specs = registered_specs(settings)
    except ConfigError:
        log.exception("no govbus DAGs: the registry could not be read")
        raise
    dags = {spec.dag_id: build_dag(spec) for spec in specs}
    log.info("built %d govbus DAGs from the registry", len(dags))
    return dags


# -- deployment helpers: python -m govbus.orchestration ------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m govbus.orchestration",
        description="What an Airflow deployment needs from the registry.",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("pools", help="department pools as JSON for `airflow pools import`")
    sub.add_parser("queues", help="department queues, comma-separated")
    sub.add_parser("departments", help="departments with their queue, pool and worker service")
    args = parser.parse_args(argv)

    try:
        specs = registered_specs()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    if args.what == "pools":
        print(json.dumps(pools_config(specs), ensure_ascii=False, indent=2))
    elif args.what == "queues":
        print(",".join(d.queue for d in departments(specs)))
    else:
        rows = [
            {"code": d.code, "name": d.name, "queue": d.queue, "pool": d.pool,
             "worker_service": d.worker_service}
            for d in departments(specs)
        ]  # fmt: skip
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

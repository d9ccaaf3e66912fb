"""One timed task of the benchmark, run in its own process so its peak memory is its own.

``python bench/tasks.py TASK CONFIG_JSON`` does the work and prints one JSON line with the seconds
the work took (imports and set-up excluded) and the rows it moved. ``bench/run.py`` starts these
and reads the process's peak RSS from the kernel when it ends.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

QUERY = (
    "SELECT id, credit_code, name, address, reg_capital, established, status, updated_at "
    "FROM enterprise"
)

Task = Callable[[dict[str, Any]], dict[str, Any]]
TASKS: dict[str, Task] = {}


def task(name: str) -> Callable[[Task], Task]:
    def register(fn: Task) -> Task:
        TASKS[name] = fn
        return fn

    return register


def _fresh_dir(path: str) -> Path:
    out = Path(path)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


@task("copy")
def copy_binary(cfg: dict[str, Any]) -> dict[str, Any]:
    """The server's read limit: binary COPY of the whole table, bytes thrown away."""
    import psycopg

    with psycopg.connect(cfg["source_dsn"]) as conn, conn.cursor() as cur:
        started = time.monotonic()
        size = 0
        with cur.copy(f"COPY ({QUERY}) TO STDOUT (FORMAT binary)") as copy:
            for block in copy:
                size += len(block)
        return {"seconds": time.monotonic() - started, "bytes": size}


@task("connectorx")
def connectorx_parquet(cfg: dict[str, Any]) -> dict[str, Any]:
    import connectorx as cx
    import pyarrow.parquet as pq

    out = _fresh_dir(cfg["out"])
    started = time.monotonic()
    table = cx.read_sql(cfg["source_dsn"], QUERY, return_type="arrow")
    extracted = time.monotonic() - started
    pq.write_table(table, out / "enterprise.parquet", compression="zstd")
    return {"seconds": time.monotonic() - started, "extract": extracted, "rows": table.num_rows}


@task("adbc")
def adbc_parquet(cfg: dict[str, Any]) -> dict[str, Any]:
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq

    out = _fresh_dir(cfg["out"])
    rows = 0
    with adbc.connect(cfg["source_dsn"]) as conn, conn.cursor() as cur:
        started = time.monotonic()
        cur.execute(QUERY)
        reader = cur.fetch_record_batch()
        with pq.ParquetWriter(out / "enterprise.parquet", reader.schema, compression="zstd") as w:
            for batch in reader:
                w.write_batch(batch)
                rows += batch.num_rows
        return {"seconds": time.monotonic() - started, "rows": rows}


def _dlt_run(cfg: dict[str, Any], destination: Any, dataset: str) -> dict[str, Any]:
    import os

    os.environ["DLT_DATA_DIR"] = str(_fresh_dir(cfg["work"] + "/dlt_data"))
    import dlt
    from dlt.sources.sql_database import sql_table

    pipelines = _fresh_dir(cfg["work"] + "/dlt_pipelines")
    started = time.monotonic()
    source = sql_table(
        credentials=cfg["source_url"], table="enterprise", backend="pyarrow", chunk_size=50_000
    )
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{dataset}",
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=str(pipelines),
    )
    info = pipeline.run(source, loader_file_format="parquet")
    info.raise_on_failed_jobs()
    rows = pipeline.last_trace.last_normalize_info.row_counts.get("enterprise", 0)
    return {"seconds": time.monotonic() - started, "rows": rows}


@task("dlt_parquet")
def dlt_parquet(cfg: dict[str, Any]) -> dict[str, Any]:
    import dlt

    out = _fresh_dir(cfg["out"])
    return _dlt_run(cfg, dlt.destinations.filesystem(bucket_url=out.as_uri()), "bench_lake")


@task("dlt_postgres")
def dlt_postgres(cfg: dict[str, Any]) -> dict[str, Any]:
    import dlt

    return _dlt_run(cfg, dlt.destinations.postgres(credentials=cfg["dlt_dsn"]), "bench_pg")


def _govbus(cfg: dict[str, Any], full: bool) -> dict[str, Any]:
    import os

    os.environ["GOVBUS_HOME"] = cfg["home"]
    for var in ("GOVBUS_REGISTRY_URL", "GOVBUS_CLOUD_URL", "GOVBUS_LAKE"):
        os.environ.pop(var, None)
    if cfg.get("cloud_url"):
        os.environ["GOVBUS_CLOUD_URL"] = cfg["cloud_url"]
    from govbus.settings import load_settings
    from govbus.sync import sync
    from registry.db import registry_engine
    from registry.resources import apply_files

    settings = load_settings()
    settings.ensure_dirs()
    apply_files(registry_engine(settings.registry_url), [Path(cfg["resource"])])
    started = time.monotonic()
    result = sync(cfg["code"], full=full, settings=settings)
    return {
        "seconds": time.monotonic() - started,
        "rows": result.read,
        "loaded": result.loaded,
        "rejected": result.rejected,
    }


@task("govbus_full")
def govbus_full(cfg: dict[str, Any]) -> dict[str, Any]:
    return _govbus(cfg, full=True)


@task("govbus_incremental")
def govbus_incremental(cfg: dict[str, Any]) -> dict[str, Any]:
    return _govbus(cfg, full=False)


@task("build")
def build(cfg: dict[str, Any]) -> dict[str, Any]:
    from source import build_source

    return {"seconds": build_source(cfg["source_dsn"], cfg["rows"]), "rows": cfg["rows"]}


def _peak_rss_kib() -> int:
    """This process's own peak RSS (``VmHWM``).

    ``ru_maxrss`` would do, but Linux starts a new program's count at the RSS of the process that
    forked it, so every task would show the parent's memory as well.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    name, raw = sys.argv[1], sys.argv[2]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    result = TASKS[name](json.loads(raw))
    result["peak_rss_kib"] = _peak_rss_kib()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

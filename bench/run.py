"""govbus against the tools a data engineer would pick instead, on one machine in one run.

    .venv/bin/python bench/run.py                 # 1,000,000 rows (make bench)
    .venv/bin/python bench/run.py --rows 10000000

Builds ``enterprise`` in the local PostgreSQL database ``govbus_bench`` (kept between runs of the
same size; ``--rebuild`` makes it again), then runs each tool in its own process and has that
process report its own peak RSS (``VmHWM``) when it ends. Times are of the work only, imports
and set-up excluded; "process s" is the whole process. Prints a Markdown table and writes it to
``bench/results/latest.md`` and ``bench/results/rows-N.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


SERVER = "postgresql://postgres@127.0.0.1:5432"
SOURCE_DB = "govbus_bench"
CLOUD_DB = "govbus_bench_cloud"
DLT_DB = "govbus_bench_dlt"
CODE = "330400-SCJG-0009"
CHANGED_SHARE = 100  # one row in this many is changed before the incremental runs

RESOURCE = """\
code: "{code}"
name: 企业登记基本信息（基准测试）
provider: {{code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}}
format: database
update_cycle: daily
sharing: {{type: conditional, condition: 基准测试, method: platform}}
source:
  url: "postgresql+psycopg://postgres@127.0.0.1:5432/{source_db}"
  table: enterprise
  cursor: updated_at
  primary_key: [id]
  timezone: Asia/Shanghai
  batch_size: {batch_size}
  options: {{reader: {reader}}}
target: {{table: enterprise, lake: {lake}, database: {database}}}
items:
  - {{name: id, type: I, nullable: false}}
  - {{name: credit_code, type: C, length: 18, nullable: false, checks: [uscc]}}
  - {{name: name, type: C, length: 200, nullable: false}}
  - {{name: address, type: C, length: 200}}
  - {{name: reg_capital, type: Y, precision: 18, scale: 2}}
  - {{name: established, type: D}}
  - {{name: status, type: C, length: 8, nullable: false}}
  - {{name: updated_at, type: T, nullable: false}}
"""


@dataclass
class Result:
    key: str
    label: str
    seconds: float
    process_seconds: float
    rss_mib: float
    rows: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def _admin(sql: str) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def _fresh_database(name: str) -> None:
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin(f"CREATE DATABASE {name}")


def _ensure_source(rows: int, rebuild: bool, log: Path) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (SOURCE_DB,)
        ).fetchone()
    if not exists:
        _admin(f"CREATE DATABASE {SOURCE_DB}")
    dsn = f"{SERVER}/{SOURCE_DB}"
    if not rebuild:
        with psycopg.connect(dsn) as conn:
            have = conn.execute("SELECT obj_description(to_regclass('enterprise'))").fetchone()
        if have and have[0] == f"rows={rows}":
            print(f"source: reusing enterprise with {rows:,} rows in {SOURCE_DB}", flush=True)
            return
    # in a process of its own: the parent stays small (see tasks._peak_rss_kib)
    _run("build", f"build source ({rows:,} rows)", "build", {"source_dsn": dsn, "rows": rows}, log)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"COMMENT ON TABLE enterprise IS 'rows={rows}'")


def _change_rows() -> int:
    """Change one row in CHANGED_SHARE: a new capital and a cursor newer than any before."""
    with psycopg.connect(f"{SERVER}/{SOURCE_DB}", autocommit=True) as conn:
        cur = conn.execute(
            "UPDATE enterprise SET reg_capital = reg_capital + 1, updated_at = clock_timestamp() "
            f"WHERE id % {CHANGED_SHARE} = 0"
        )
        conn.execute("VACUUM ANALYZE enterprise")
        return cur.rowcount


def _run(key: str, label: str, task: str, cfg: dict[str, Any], log: Path) -> Result:
    print(f"run: {label} ...", end=" ", flush=True)
    started = time.monotonic()
    with log.open("a") as err:
        err.write(f"\n===== {label}\n")
        err.flush()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "tasks.py"), task, json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=HERE.parent,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait()
    process_seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}); see {log}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    result = Result(
        key,
        label,
        data.pop("seconds"),
        process_seconds,
        data.pop("peak_rss_kib") / 1024,
        data.get("rows"),
        data,
    )
    print(f"{result.seconds:.2f} s, {result.rss_mib:.0f} MiB", flush=True)
    return result


def _resource(
    work: Path, name: str, *, lake: bool, database: bool, batch_size: int, reader: str
) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(
        RESOURCE.format(
            code=CODE,
            source_db=SOURCE_DB,
            batch_size=batch_size,
            reader=reader,
            lake=str(lake).lower(),
            database=str(database).lower(),
        ),
        encoding="utf-8",
    )
    return path


def run(args: argparse.Namespace) -> list[Result]:
    results_dir = HERE / "results"
    work = results_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = results_dir / "bench.log"
    log.write_text("")

    _ensure_source(args.rows, args.rebuild, log)
    source_dsn = f"{SERVER}/{SOURCE_DB}"
    base = {"source_dsn": source_dsn, "source_url": source_dsn, "work": str(work)}
    skip = set(args.skip or [])
    results: list[Result] = []

    def go(key: str, label: str, task: str, **cfg: Any) -> None:
        if key in skip:
            return
        results.append(_run(key, label, task, {**base, **cfg}, log))

    go("copy", "PostgreSQL `COPY ... TO STDOUT (FORMAT binary)`, discarded", "copy")
    go("connectorx", "connectorx → Parquet", "connectorx", out=str(work / "cx"))
    go("adbc", "ADBC → Parquet", "adbc", out=str(work / "adbc"))
    go("dlt_parquet", "dlt `sql_table` (pyarrow) → Parquet", "dlt_parquet", out=str(work / "dlt"))
    if "dlt_postgres" not in skip:
        _fresh_database(DLT_DB)
    go(
        "dlt_postgres",
        "dlt `sql_table` (pyarrow) → PostgreSQL",
        "dlt_postgres",
        # dlt insists on a password; trust authentication ignores it
        dlt_dsn=f"postgresql://postgres:unused@127.0.0.1:5432/{DLT_DB}",
    )

    lake = {
        "home": str(work / "govbus_lake"),
        "code": CODE,
        "resource": str(
            _resource(
                work,
                "lake",
                lake=True,
                database=False,
                batch_size=args.batch_size,
                reader=args.reader,
            )
        ),
    }
    _fresh_database(CLOUD_DB)
    pg = {
        "home": str(work / "govbus_pg"),
        "code": CODE,
        "cloud_url": f"postgresql+psycopg://postgres@127.0.0.1:5432/{CLOUD_DB}",
        "resource": str(
            _resource(
                work,
                "pg",
                lake=False,
                database=True,
                batch_size=args.batch_size,
                reader=args.reader,
            )
        ),
    }
    go("govbus_lake", "govbus full sync, validated → Parquet lake", "govbus_full", **lake)
    go("govbus_pg", "govbus full sync, validated → PostgreSQL", "govbus_full", **pg)
    changed = _change_rows()
    print(f"source: changed {changed:,} rows", flush=True)
    go(
        "govbus_lake_incr",
        f"govbus incremental ({changed:,} changed) → lake",
        "govbus_incremental",
        **lake,
    )
    go(
        "govbus_pg_incr",
        f"govbus incremental ({changed:,} changed) → PostgreSQL",
        "govbus_incremental",
        **pg,
    )
    return results


# -- report -------------------------------------------------------------------------------------

_VERSUS = {
    "copy": "govbus_pg",
    "connectorx_extract": "govbus_lake",
    "connectorx": "govbus_lake",
    "adbc": "govbus_lake",
    "dlt_parquet": "govbus_lake",
    "dlt_postgres": "govbus_pg",
    "govbus_lake_incr": "govbus_lake",
    "govbus_pg_incr": "govbus_pg",
}


def _rows_with_extract(results: list[Result]) -> list[Result]:
    rows: list[Result] = []
    for r in results:
        if r.key == "connectorx":
            rows.append(
                Result(
                    "connectorx_extract",
                    "connectorx → Arrow in memory (extract only, same process)",
                    r.extra["extract"],
                    r.process_seconds,
                    r.rss_mib,
                    r.rows,
                )
            )
        rows.append(r)
    return rows


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with psycopg.connect(f"{SERVER}/postgres") as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, PostgreSQL {pg}; "
        f"load average at the end {load} (other work on the machine slows every row alike)"
    )


def _goals(by: dict[str, Result], rows: int, others: dict[int, dict[str, float]]) -> list[str]:
    def ratio(a: str, b: str) -> float | None:
        return by[a].seconds / by[b].seconds if a in by and b in by else None

    def line(text: str, value: float | None, ok: bool | None) -> str:
        if value is None:
            return f"- {text}: not measured in this run"
        return f"- {text}: **{value:.2f}** — {'met' if ok else 'NOT met'}"

    out = []
    r = ratio("govbus_lake", "connectorx_extract")
    out.append(
        line(
            "govbus → Parquet ÷ connectorx extract-only (goal ≤ 1.5)", r, r is not None and r <= 1.5
        )
    )
    r = ratio("dlt_parquet", "govbus_lake")
    out.append(line("dlt → Parquet ÷ govbus → Parquet (goal ≥ 10)", r, r is not None and r >= 10))
    r = ratio("govbus_pg", "copy")
    out.append(
        line("govbus → PostgreSQL ÷ COPY read limit (goal ≤ 3)", r, r is not None and r <= 3)
    )
    for incr, full in (("govbus_lake_incr", "govbus_lake"), ("govbus_pg_incr", "govbus_pg")):
        r = ratio(incr, full)
        out.append(line(f"{incr} ÷ {full} (goal < 0.05)", r, r is not None and r < 0.05))
    peak = max((v.rss_mib for k, v in by.items() if k.startswith("govbus")), default=None)
    out.append(line("govbus peak RSS in MiB (goal < 1024)", peak, peak is not None and peak < 1024))
    for other_rows, rss in sorted(others.items()):
        if other_rows == rows:
            continue
        pairs = [f"{k} {rss[k]:.0f} → {by[k].rss_mib:.0f} MiB" for k in sorted(rss) if k in by]
        out.append(f"- peak RSS at {other_rows:,} rows vs {rows:,} rows: " + "; ".join(pairs))
    return out


def report(results: list[Result], rows: int) -> str:
    table = _rows_with_extract(results)
    by = {r.key: r for r in table}
    lines = [
        f"govbus benchmark, {rows:,} rows, {datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"Machine: {_machine()}",
        "",
        "| Run | Rows | Seconds | Process s | Peak RSS MiB | × govbus |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        versus = _VERSUS.get(r.key)
        if versus and versus in by:
            share = r.seconds / by[versus].seconds
            ratio = f"{share:.1%} of full" if r.key.endswith("_incr") else f"{share:.2f}×"
        else:
            ratio = "—"
        shown_rows = f"{r.rows:,}" if r.rows is not None else "—"
        lines.append(
            f"| {r.label} | {shown_rows} | {r.seconds:.2f} | {r.process_seconds:.1f} | "
            f"{r.rss_mib:.0f} | {ratio} |"
        )
    results_dir = HERE / "results"
    others: dict[int, dict[str, float]] = {}
    for path in results_dir.glob("rows-*.json"):
        data = json.loads(path.read_text())
        others[data["rows"]] = {k: v["rss_mib"] for k, v in data["results"].items()}
    lines += [
        "",
        "× govbus: this run's seconds divided by govbus's full sync to the same target.",
        "",
    ]
    lines += ["Goals:", "", *_goals(by, rows, others)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=100_000, help="govbus source.batch_size")
    parser.add_argument(
        "--reader",
        default="auto",
        choices=["auto", "sqlalchemy"],
        help="govbus source reader: auto (ADBC binary COPY for PostgreSQL) or sqlalchemy",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the source table")
    parser.add_argument(
        "--skip",
        nargs="*",
        metavar="RUN",
        help="runs to leave out: copy connectorx adbc dlt_parquet dlt_postgres govbus_lake "
        "govbus_pg govbus_lake_incr govbus_pg_incr",
    )
    args = parser.parse_args()

    results = run(args)
    text = report(results, args.rows)
    results_dir = HERE / "results"
    (results_dir / "latest.md").write_text(text, encoding="utf-8")
    (results_dir / f"rows-{args.rows}.json").write_text(
        json.dumps({"rows": args.rows, "results": {r.key: r.__dict__ for r in results}}, indent=1),
        encoding="utf-8",
    )
    print()
    print(text)


if __name__ == "__main__":
    main()

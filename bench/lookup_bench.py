"""Certificate lookups under load: latency (p50, p99) and throughput at 32 concurrent clients.

    .venv/bin/python bench/lookup_bench.py                          # 1,000,000 certificates
    .venv/bin/python bench/lookup_bench.py --certificates 100000 --seconds 20

Builds a department's certificate table in the local PostgreSQL database
``govbus_bench_lookup_src`` (kept between runs of the same size), registers it as an
unconditional certificate resource, syncs it into ``govbus_bench_lookup`` (registry and cloud),
ingests it into the certificate library (verify + sign each record), then starts ``govbus serve``
and drives ``GET /v1/certificates?holder_id=`` and ``GET /v1/certificates/{identifier}`` from
32 concurrent clients for a fixed time each. Every request goes the whole way: token, grant,
library query, audit append. Prints one line per phase. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.catalogue import CERTIFICATE_ITEMS
from schemas.checks import cert_id_with_check, make_resident_id  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432"
SOURCE_DB = "govbus_bench_lookup_src"
CLOUD_DB = "govbus_bench_lookup"
CODE = "330000-ZZK-0001"
TYPE_CODE = "11100000000013338W032"
ISSUER = "11220000013544541J"
COLUMNS = (*CERTIFICATE_ITEMS, "updated_at")


def say(text: str) -> None:
    print(text, flush=True)


def admin() -> psycopg.Connection:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True)


def holders_for(n: int) -> list[str]:
    rng = random.Random(5)
    return [make_resident_id(rng) for _ in range(max(1, n // 2))]


def build_source(n: int, rebuild: bool) -> None:
    """The issuing department's table: n certificates, two per holder on average."""
    with admin() as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [SOURCE_DB]
        ).fetchone()
        if exists and not rebuild:
            with psycopg.connect(f"{SERVER}/{SOURCE_DB}") as src:
                count = src.execute("SELECT count(*) FROM certs").fetchone()
            if count and count[0] == n:
                say(f"source: {n:,} certificates kept from an earlier run")
                return
        conn.execute(f"DROP DATABASE IF EXISTS {SOURCE_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SOURCE_DB}")

    started = time.perf_counter()
    holders = holders_for(n)
    rng = random.Random(6)
    with psycopg.connect(f"{SERVER}/{SOURCE_DB}") as src:
        src.execute(
            "CREATE TABLE certs (identifier varchar(200) PRIMARY KEY, cert_name text, "
            "cert_number text, issuer_name text, issuer_code varchar(18), issue_date date, "
            "division_code varchar(6), holder_name text, holder_id varchar(32), "
            "holder_id_type varchar(3), valid_from date, valid_to date, status varchar(16), "
            "file_hash varchar(128), updated_at timestamp NOT NULL)"
        )
        with src.cursor().copy(f"COPY certs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for i in range(n):
                identifier = cert_id_with_check(f"1.2.156.3005.2.{TYPE_CODE}.{ISSUER}.{i:08d}.001")
                holder = holders[i % len(holders)] if i < 2 * len(holders) else rng.choice(holders)
                issued = date(2015 + i % 10, 1 + i % 12, 1 + i % 28)
                copy.write_row(
                    (
                        identifier,
                        "示例证照",
                        f"No.{i:08d}",
                        "示例发证机关",
                        ISSUER,
                        issued,
                        holder[:6],
                        "持证人",
                        holder,
                        "111",
                        issued,
                        date(issued.year + 10, issued.month, issued.day),
                        "valid",
                        f"{i:064x}",
                        datetime(2025, 1, 1) + timedelta(seconds=i),
                    )
                )
    say(f"source: {n:,} certificates generated in {time.perf_counter() - started:.1f} s")


def library_size() -> int:
    try:
        with psycopg.connect(f"{SERVER}/{CLOUD_DB}") as conn:
            row = conn.execute("SELECT count(*) FROM govbus_certificates").fetchone()
    except psycopg.Error:
        return -1
    return row[0] if row else -1


def resource_yaml() -> str:
    items = "\n".join(
        f"  - {{name: {name}, type: {kind}}}"
        if kind != "C"
        else f"  - {{name: {name}, type: C, length: 200}}"
        for name, kind in [
            ("identifier", "C"),
            ("cert_name", "C"),
            ("cert_number", "C"),
            ("issuer_name", "C"),
            ("issuer_code", "C"),
            ("issue_date", "D"),
            ("division_code", "C"),
            ("holder_name", "C"),
            ("holder_id", "C"),
            ("holder_id_type", "C"),
            ("valid_from", "D"),
            ("valid_to", "D"),
            ("status", "C"),
            ("file_hash", "C"),
            ("updated_at", "T"),
        ]
    )
    return (
        textwrap.dedent(f"""\
        code: "{CODE}"
        name: 示例证照库
        provider: {{code: "{ISSUER}", name: 示例发证机关}}
        format: database
        update_cycle: daily
        sharing: {{type: unconditional}}
        certificate: {{type_name: 示例证照, type_code: "{TYPE_CODE}"}}
        source:
          url: "postgresql+psycopg://postgres@127.0.0.1:5432/{SOURCE_DB}"
          table: certs
          cursor: updated_at
          primary_key: [identifier]
        target: {{table: certs, lake: false}}
        items:
        """)
        + items
        + "\n"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def drive(
    base: str, token: str, paths: list[str], clients: int, seconds: float
) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {token}", "X-Case-Number": "BENCH-2026-0001"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:
        deadline = time.perf_counter() + seconds
        rng = random.Random(7)

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                path = paths[rng.randrange(len(paths))]
                start = time.perf_counter()
                response = await client.get(path)
                latencies.append(time.perf_counter() - start)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, statuses, elapsed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certificates", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rebuild", action="store_true", help="generate the source again")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the library of an earlier run of the same size"
    )
    args = parser.parse_args()

    build_source(args.certificates, args.rebuild)
    home = Path(tempfile.gettempdir()) / "govbus-lookup-bench"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{CLOUD_DB}"
    os.environ.update(GOVBUS_HOME=str(home), GOVBUS_REGISTRY_URL=url, GOVBUS_CLOUD_URL=url)
    from sqlalchemy.orm import Session

    from govbus.certificates import ingest
    from govbus.settings import load_settings
    from govbus.sync import sync
    from registry.access import add_consumer
    from registry.db import registry_engine
    from registry.resources import apply_files

    if args.reuse and library_size() == args.certificates:
        say(f"library: {args.certificates:,} certificates kept from an earlier run")
    else:
        shutil.rmtree(home, ignore_errors=True)
        with admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {CLOUD_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {CLOUD_DB}")
        settings = load_settings()
        settings.ensure_dirs()
        (home / "certs.yaml").write_text(resource_yaml(), encoding="utf-8")
        apply_files(registry_engine(settings.registry_url), [home / "certs.yaml"])

        started = time.perf_counter()
        result = sync(CODE, settings=settings)
        say(f"sync: {result.loaded:,} rows loaded in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        filed = ingest(CODE, settings=settings, batch_size=10_000)
        seconds = time.perf_counter() - started
        say(
            f"ingest: {filed.verified:,} verified and signed, {filed.failed:,} failed in "
            f"{seconds:.1f} s ({filed.read / seconds:,.0f} certificates/s)"
        )
    settings = load_settings()
    with Session(registry_engine(settings.registry_url)) as session, session.begin():
        token = add_consumer(session, f"bench-window-{time.time_ns()}").token

    port = free_port()
    server = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "govbus.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/v1/signing-key", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        holders = holders_for(args.certificates)
        rng = random.Random(8)
        sample = [holders[rng.randrange(len(holders))] for _ in range(20_000)]
        by_holder = [f"/v1/certificates?holder_id={h}" for h in sample]
        by_identifier = [
            "/v1/certificates/"
            + cert_id_with_check(
                f"1.2.156.3005.2.{TYPE_CODE}.{ISSUER}.{rng.randrange(args.certificates):08d}.001"
            )
            for _ in range(20_000)
        ]
        asyncio.run(drive(base, token, by_holder, args.clients, 3.0))  # warm up
        say(
            f"load: {args.clients} concurrent clients, {args.workers} server worker(s), "
            f"{os.cpu_count()} CPU(s) shared by server, PostgreSQL and clients"
        )
        for name, paths in (("by holder id", by_holder), ("by identifier", by_identifier)):
            latencies, statuses, elapsed = asyncio.run(
                drive(base, token, paths, args.clients, args.seconds)
            )
            say(
                f"{name:<14} {len(latencies):>7,} requests in {elapsed:5.1f} s: "
                f"{len(latencies) / elapsed:7,.0f} req/s, "
                f"p50 {percentile(latencies, 0.50) * 1000:6.1f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:6.1f} ms, "
                f"mean {statistics.fmean(latencies) * 1000:6.1f} ms, statuses {statuses}"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

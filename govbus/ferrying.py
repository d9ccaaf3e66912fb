"""The ferry's seam with the sync pipeline: what a bundle carries and how it lands in the cloud.

**Export.** A bundle carries a resource's lake files: the Parquet row versions that sync runs
published. ``lake_payload`` picks the files of the resource that have not yet left on the channel
(or the files of one run), and ``record_exported`` notes them once the bundle is in the outbox.

**Import.** ``load_into_cloud`` is the ferry's loader: inside the ledger's transaction on the
cloud database it checks that the bundle's schema hash is the one registered here, upserts the
rows by primary key into the target table, writes the load marker and stages the files for the
lake under the bundle id. ``publish_imported`` then moves the staged files of committed bundles
into the lake, the same two-step the sync pipeline uses, so the far side's cloud database and
lake end up as if the sync had run there.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from sqlalchemy import Connection, select

from adapters.cloud import DELETED_AT, LOADED_AT, RUN_ID
from ferry.bundle import Envelope, Payload, PayloadFile
from ferry.ledger import ledger_table
from govbus.errors import BundleRefused, ConfigError
from govbus.settings import Settings, load_settings
from govbus.sync import cloud_for
from registry.db import registry_engine
from registry.resources import get_resource

__all__ = ["lake_payload", "record_exported", "load_into_cloud", "publish_imported"]

log = logging.getLogger(__name__)


def _exported_path(ferry_home: Path, channel: str) -> Path:
    if not channel.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"channel {channel!r}: use letters, digits, '-', '_' and '.' only")
    return ferry_home / "exported" / f"{channel}.json"


def _exported(ferry_home: Path, channel: str) -> set[str]:
    path = _exported_path(ferry_home, channel)
    return set(json.loads(path.read_text())) if path.exists() else set()


def lake_payload(
    code: str,
    *,
    ferry_home: Path,
    channel: str,
    source_domain: str,
    destination_domain: str,
    run_id: str | None = None,
    settings: Settings | None = None,
) -> Payload | None:
    """The resource's lake files not yet exported on the channel; None when there are none."""
    settings = settings or load_settings()
    spec = get_resource(registry_engine(settings.registry_url), code).spec
    dataset = cloud_for(settings).lake.dataset_dir(code)
    files = sorted(dataset.glob("*.parquet")) if dataset.exists() else []
    if run_id is not None:
        files = [f for f in files if f.name.startswith(f"part-{run_id}-")]
        if not files:
            raise ConfigError(f"{code}: run {run_id} left no lake files to export")
    sent = _exported(ferry_home, channel)
    files = [f for f in files if f.name not in sent]
    if not files:
        return None
    return Payload(
        resource=code,
        schema_hash=spec.schema_hash(),
        files=tuple(PayloadFile(f, pq.ParquetFile(f).metadata.num_rows) for f in files),
        source_domain=source_domain,
        destination_domain=destination_domain,
        channel=channel,
    )


def record_exported(ferry_home: Path, payload: Payload) -> None:
    """Note the payload's files as sent on its channel (after the bundle reached the outbox).

    A crash between the export and this note sends the same files again in the next bundle; the
    far side's upsert by primary key absorbs that, but its lake then holds those row versions
    twice, each marked with its bundle.
    """
    path = _exported_path(ferry_home, payload.channel)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = _exported(ferry_home, payload.channel) | {f.path.name for f in payload.files}
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(sorted(names)))
    os.replace(partial, path)


def _batches(files: list[Path], columns: list[str]) -> Iterator[pl.DataFrame]:
    for file in files:
        parquet = pq.ParquetFile(file)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise BundleRefused(f"bundle file lacks registered item(s) {', '.join(missing)}")
        for batch in parquet.iter_batches(batch_size=50_000, columns=columns):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame


def load_into_cloud(conn: Connection, files: list[Path], envelope: Envelope) -> None:
    """The ferry loader: rows into the cloud table and files staged for the lake, in one go."""
    settings = load_settings()
    cloud = cloud_for(settings)
    if envelope.resource is None:
        raise BundleRefused(f"bundle {envelope.bundle_id} names no resource")
    spec = get_resource(registry_engine(settings.registry_url), envelope.resource).spec
    if envelope.schema_hash != spec.schema_hash():
        raise BundleRefused(
            f"bundle {envelope.bundle_id} for {spec.code} carries schema hash "
            f"{(envelope.schema_hash or '')[:12]}, the registry here has "
            f"{spec.schema_hash()[:12]}; apply the same resource version on both sides"
        )

    table = cloud.store.ensure_target(conn, spec)
    lake_run = cloud.lake.begin(spec.code, envelope.bundle_id) if spec.target.lake else None
    columns = [item.name for item in spec.items]
    now = datetime.now(UTC)
    loaded = 0
    for frame in _batches(files, columns):
        stamped = frame.with_columns(
            pl.lit(envelope.bundle_id).alias(RUN_ID),
            pl.lit(now).dt.convert_time_zone("UTC").alias(LOADED_AT),
        )
        loaded += cloud.store.upsert(
            conn,
            table,
            stamped.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias(DELETED_AT)),
        )
        if lake_run is not None:
            lake_run.write(stamped.to_arrow())
    if loaded != envelope.records:
        raise BundleRefused(
            f"bundle {envelope.bundle_id} declares {envelope.records} records, "
            f"its files hold {loaded}"
        )
    if lake_run is not None:
        lake_run.close()
    cloud.store.mark_loaded(conn, envelope.bundle_id, spec.code, loaded, loaded, 0)
    log.info("%s: bundle %s loaded %d rows", spec.code, envelope.bundle_id, loaded)


def publish_imported(settings: Settings | None = None) -> int:
    """Publish the lake files of imported bundles; drop those of bundles that never committed."""
    settings = settings or load_settings()
    cloud = cloud_for(settings)
    staged = cloud.lake.staged_runs()
    if not staged:
        return 0
    with cloud.engine.connect() as conn:
        bundles = set(
            conn.execute(
                select(ledger_table.c.bundle_id).where(ledger_table.c.bundle_id.in_(staged))
            ).scalars()
        )
    committed = cloud.store.committed_runs(staged)
    published = 0
    for run_id in staged:
        if run_id in committed and run_id in bundles:
            published += len(cloud.lake.publish(run_id))
        elif run_id in bundles:
            cloud.lake.discard(run_id)
    return published

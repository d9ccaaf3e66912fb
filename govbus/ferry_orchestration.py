"""Airflow DAGs for the ferry, built from a YAML file named by ``GOVBUS_FERRY_CONFIG``.

Without that variable there are no ferry DAGs. With it:

- one **export DAG per ferried resource** (``ferry_export_<code>``), scheduled on the resource's
  cloud Asset (``govbus.orchestration.cloud_asset``), so it runs after each sync that loaded
  rows: ``export`` puts the lake files not yet sent on the channel into a signed, encrypted
  bundle in the outbox, ``send`` hands it to the transport;
- one **import DAG** (``ferry_import``) on a short interval: ``wait`` is a sensor that looks for
  complete bundles in the drop folder or on the SFTP server (rescheduling between looks, so it
  holds no worker slot), ``receive`` copies them into the local inbox, ``import_bundles``
  verifies and imports each exactly once into the cloud database and lake and announces the
  cloud Assets of the resources it loaded, as a sync there would have.

The configuration (paths are the site's own)::

    home: /var/lib/govbus/ferry          # outbox and sender state, or receiver home
    keys: /etc/govbus/ferry/keys         # this site's identity (govbus ferry keygen)
    trust: /etc/govbus/ferry/trust.json  # pinned peers (govbus ferry pin)
    transport:
      drop: /mnt/gate                    # or:
      # sftp: {host: gate.example, port: 22, user: ferry, key: /etc/govbus/ferry/id_ed25519,
      #        known_hosts: /etc/govbus/ferry/known_hosts, remote_dir: /srv/ferry}
    export:                              # the sending side, if this site sends
      recipients: [5f0c...]              # key ids in the trust store
      source_domain: scjg
      destination_domain: cloud
      resources:
        - {resource: 330400-SCJG-0001, channel: scjg-enterprise}
    import:                              # the receiving side, if this site receives
      inbox: /var/lib/govbus/ferry/inbox
      domain: cloud
      channels:
        - {channel: scjg-enterprise, resource: 330400-SCJG-0001}

Retries follow ``govbus.errors``: a retryable error (a transport that went away) is re-raised
for Airflow to retry; any other govbus error fails the task at once. A refused bundle fails the
import task after the others are imported, so an operator sees it; it lies in ``refused/`` with
its reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ferry.bundle import Compression, parse_bundle_name
from ferry.crypto import Suite
from govbus.errors import ConfigError, GovbusError, is_retryable
from govbus.orchestration import TIMEZONE, cloud_asset

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from ferry.transports import Transport
    from registry.catalogue import ResourceSpec

__all__ = [
    "CONFIG_ENV",
    "FerryConfig",
    "load_config",
    "export_dag_id",
    "IMPORT_DAG_ID",
    "pending_bundles",
    "export_resource",
    "send_bundle",
    "receive_and_import",
    "build_export_dag",
    "build_import_dag",
    "build_ferry_dags",
]

log = logging.getLogger(__name__)

CONFIG_ENV = "GOVBUS_FERRY_CONFIG"
IMPORT_DAG_ID = "ferry_import"


# -- configuration ---------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SftpConfig(_Model):
    host: str
    port: int = 22
    user: str
    key: Path
    known_hosts: Path
    remote_dir: str


class TransportConfig(_Model):
    drop: Path | None = None
    sftp: SftpConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TransportConfig:
        if (self.drop is None) == (self.sftp is None):
            raise ValueError("give exactly one of transport.drop and transport.sftp")
        return self

    def build(self) -> Transport:
        from ferry.transports import DirectoryDrop, SftpTransport

        if self.drop is not None:
            return DirectoryDrop(self.drop)
        assert self.sftp is not None
        s = self.sftp
        return SftpTransport(s.host, s.user, s.key, s.known_hosts, s.remote_dir, port=s.port)


class ExportedResource(_Model):
    resource: str
    channel: str


class ExportConfig(_Model):
    recipients: list[str] = Field(min_length=1)
    source_domain: str
    destination_domain: str
    suite: Suite = Suite.STANDARD
    compression: Compression = Compression.NONE
    ttl_days: int = Field(14, ge=1)
    resources: list[ExportedResource] = Field(min_length=1)


class ImportedChannel(_Model):
    channel: str
    #: the resource the channel carries: its cloud Asset is announced after an import
    resource: str | None = None


class ImportConfig(_Model):
    inbox: Path
    domain: str | None = None
    channels: list[ImportedChannel] = Field(min_length=1)
    max_bytes: int = Field(64 * 1024**3, ge=1)
    #: how often the import DAG starts looking for bundles, and how often it looks within a run
    schedule: str = "*/5 * * * *"
    poke_seconds: int = Field(30, ge=1)
    wait_seconds: int = Field(240, ge=1)


class FerryConfig(_Model):
    home: Path
    keys: Path
    trust: Path
    transport: TransportConfig
    export: ExportConfig | None = None
    import_: ImportConfig | None = Field(None, alias="import")


def load_config(environ: dict[str, str] | None = None) -> FerryConfig | None:
    """The ferry configuration named by ``GOVBUS_FERRY_CONFIG``; None when it is not set."""
    env = os.environ if environ is None else environ
    name = env.get(CONFIG_ENV)
    if not name:
        return None
    path = Path(name)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{CONFIG_ENV}={path}: cannot read the ferry configuration: {exc}"
        ) from exc
    try:
        return FerryConfig.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid ferry configuration: {problems}") from None


# -- what the tasks do ------------------------------------------------------------------------


def export_dag_id(code: str) -> str:
    return "ferry_export_" + code.replace("-", "_").lower()


def export_resource(config: FerryConfig, resource: str, channel: str) -> str | None:
    """Put the resource's unsent lake files into the channel's next bundle; its path or None."""
    from ferry.keys import TrustStore, load_identity
    from ferry.outbox import Sender, export_payload
    from govbus import ferrying

    export = config.export
    if export is None:
        raise ConfigError("the ferry configuration has no export section")
    payload = ferrying.lake_payload(
        resource,
        ferry_home=config.home,
        channel=channel,
        source_domain=export.source_domain,
        destination_domain=export.destination_domain,
    )
    if payload is None:
        return None
    trust = TrustStore.load(config.trust)
    missing = [k for k in export.recipients if k not in trust]
    if missing:
        raise ConfigError(f"export recipients {missing} are not in the trust store {config.trust}")
    sender = Sender(
        config.home,
        load_identity(config.keys),
        tuple(trust[k] for k in export.recipients),
        export.suite,
        export.compression,
        timedelta(days=export.ttl_days),
    )
    exported = export_payload(sender, payload)
    ferrying.record_exported(config.home, payload)
    return str(exported.path)


def send_bundle(config: FerryConfig, bundle: str) -> str:
    return config.transport.build().send(Path(bundle))


def pending_bundles(config: FerryConfig) -> list[str]:
    """Names of complete bundles waiting in the drop folder or on the SFTP server."""
    transport = config.transport
    if transport.drop is not None:
        try:
            names = [p.name for p in transport.drop.iterdir()]
        except FileNotFoundError:
            return []
    else:
        built = transport.build()
        with built.connect() as sftp:  # type: ignore[attr-defined]
            names = sftp.listdir(built.remote_dir)
    return sorted(n for n in names if parse_bundle_name(n) is not None)


def receive_and_import(config: FerryConfig) -> dict[str, Any]:
    """Copy waiting bundles into the inbox, import every bundle there, publish the lake files.

    Returns counts and the resources loaded; refused bundles are listed, not raised.
    """
    from ferry.keys import TrustStore, load_identity
    from ferry.ledger import ImportStatus, Receiver, create_ledger, import_inbox
    from govbus import ferrying
    from govbus.errors import BundleRefused
    from govbus.settings import load_settings
    from govbus.sync import cloud_for

    imp = config.import_
    if imp is None:
        raise ConfigError("the ferry configuration has no import section")
    received = config.transport.build().receive(imp.inbox)
    receiver = Receiver(
        load_identity(config.keys),
        TrustStore.load(config.trust),
        config.home,
        {c.channel for c in imp.channels},
        imp.domain,
        imp.max_bytes,
    )
    engine = cloud_for(load_settings()).engine
    create_ledger(engine)
    outcomes = import_inbox(engine, imp.inbox, receiver=receiver, load=ferrying.load_into_cloud)
    ferrying.publish_imported()

    imported: list[Any] = []
    refused: list[str] = []
    for outcome in outcomes:
        if isinstance(outcome, BundleRefused):
            refused.append(str(outcome))
            continue
        if outcome.status is ImportStatus.IMPORTED:
            imported.append(outcome)
        imported.extend(outcome.followers)
    by_channel = {c.channel: c.resource for c in imp.channels}
    return {
        "received": len(received),
        "imported": len(imported),
        "records": sum(getattr(o, "records", 0) for o in imported),
        "resources": sorted({r for o in imported if (r := by_channel.get(o.channel))}),
        "held": sum(1 for o in outcomes if getattr(o, "status", None) is ImportStatus.PENDING),
        "refused": refused,
    }


# -- the DAGs ---------------------------------------------------------------------------------


@contextmanager
def _retry_policy(what: str) -> Iterator[None]:
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except GovbusError as exc:
        if is_retryable(exc):
            raise
        raise AirflowFailException(f"{what}: {exc}") from exc


def _default_args() -> dict[str, Any]:
    return {
        "owner": "govbus-ferry",
        "retries": 3,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    }


def build_export_dag(config: FerryConfig, spec: ResourceSpec, channel: str) -> DAG:
    """Export and send a resource's new lake files whenever its cloud Asset is updated."""
    import pendulum
    from airflow.sdk import DAG, task
    from airflow.sdk.exceptions import AirflowSkipException

    code = spec.code
    with DAG(
        dag_id=export_dag_id(code),
        description=f"ferry {spec.name} ({code}) on channel {channel}",
        schedule=[cloud_asset(spec)],
        start_date=pendulum.datetime(2024, 1, 1, tz=TIMEZONE),
        catchup=False,
        max_active_runs=1,
        default_args=_default_args(),
        tags=["ferry", "ferry:export", spec.provider.name],
    ) as dag:

        @task
        def export() -> str:
            with _retry_policy(f"ferry export of {code}"):
                bundle = export_resource(config, code, channel)
            if bundle is None:
                raise AirflowSkipException(f"{code}: no new lake files for channel {channel}")
            return bundle

        @task
        def send(bundle: str) -> str:
            with _retry_policy(f"ferry send of {Path(bundle).name}"):
                return send_bundle(config, bundle)

        send(export())
    return dag


def build_import_dag(config: FerryConfig, specs: dict[str, ResourceSpec]) -> DAG:
    """Wait for bundles, receive them, import them exactly once, announce the loaded resources."""
    import pendulum
    from airflow.sdk import DAG, PokeReturnValue, get_current_context, task
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    imp = config.import_
    assert imp is not None
    assets = {
        c.resource: cloud_asset(specs[c.resource]) for c in imp.channels if c.resource is not None
    }
    with DAG(
        dag_id=IMPORT_DAG_ID,
        description="receive ferry bundles and import them into the cloud database and lake",
        schedule=imp.schedule,
        start_date=pendulum.datetime(2024, 1, 1, tz=TIMEZONE),
        catchup=False,
        max_active_runs=1,
        default_args=_default_args(),
        tags=["ferry", "ferry:import"],
    ) as dag:

        @task.sensor(
            poke_interval=imp.poke_seconds,
            timeout=imp.wait_seconds,
            mode="reschedule",
            soft_fail=True,
        )
        def wait() -> PokeReturnValue:
            # Bundles already in the inbox (a run that received but failed to import) count too.
            with _retry_policy("looking for ferry bundles"):
                waiting = pending_bundles(config)
            local = sorted(p.name for p in imp.inbox.glob("*") if parse_bundle_name(p.name))
            return PokeReturnValue(is_done=bool(waiting or local), xcom_value=waiting + local)

        @task(outlets=list(assets.values()))
        def import_bundles(names: list[str]) -> dict[str, Any]:
            with _retry_policy("ferry import"):
                result = receive_and_import(config)
            if result["refused"]:
                raise AirflowFailException(
                    f"{len(result['refused'])} bundle(s) refused, the others imported: "
                    + " | ".join(result["refused"])
                )
            if not result["imported"]:
                raise AirflowSkipException(f"nothing imported from {names}: duplicates or held")
            events = get_current_context()["outlet_events"]
            for code, asset in assets.items():
                if code in result["resources"]:
                    events[asset].extra = {"resource": code, "via": "ferry", **_counts(result)}
            return result

        import_bundles(wait())
    return dag


def _counts(result: dict[str, Any]) -> dict[str, int]:
    return {k: result[k] for k in ("received", "imported", "records", "held")}


def build_ferry_dags(environ: dict[str, str] | None = None) -> dict[str, DAG]:
    """The ferry DAGs of this site, by dag id; none without ``GOVBUS_FERRY_CONFIG``.

    A configuration that cannot be read, or that names a resource the registry does not hold,
    raises ConfigError: Airflow shows it as the DAG file's import error.
    """
    config = load_config(environ)
    if config is None:
        return {}
    from govbus.orchestration import registered_specs

    wanted = {r.resource for r in (config.export.resources if config.export else [])}
    wanted |= {
        c.resource for c in (config.import_.channels if config.import_ else []) if c.resource
    }
    specs = {s.code: s for s in registered_specs()} if wanted else {}
    unknown = sorted(wanted - set(specs))
    if unknown:
        raise ConfigError(
            f"the ferry configuration names resources {unknown} that the registry does not hold; "
            "apply them first (govbus registry apply)"
        )

    dags: dict[str, DAG] = {}
    if config.export is not None:
        for item in config.export.resources:
            dags[export_dag_id(item.resource)] = build_export_dag(
                config, specs[item.resource], item.channel
            )
    if config.import_ is not None:
        dags[IMPORT_DAG_ID] = build_import_dag(config, specs)
    log.info("built %d ferry DAGs from %s", len(dags), os.environ.get(CONFIG_ENV))
    return dags

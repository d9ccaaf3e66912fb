"""``govbus ferry ...`` commands: thin wrappers taking explicit paths, for ``govbus.cli`` to mount.

Every command takes its keys, trust store, homes and database URL as options, so none depends on
the sync pipeline. ``import`` takes the loader as ``module:function`` (the pipeline's loader).
"""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table as RichTable
from sqlalchemy import create_engine

from ferry.bundle import Compression, Payload, PayloadFile
from ferry.crypto import Suite
from ferry.keys import TrustStore, keygen, load_identity, load_public
from ferry.ledger import (
    ImportStatus,
    Loader,
    Receiver,
    channel_status,
    create_ledger,
    format_ranges,
    import_inbox,
)
from ferry.outbox import Sender, export_heartbeat, export_payload, resend
from ferry.transports import DirectoryDrop, SftpTransport, Transport
from govbus.errors import BundleRefused, ConfigError, GovbusError

__all__ = ["app"]

app = typer.Typer(
    help="Carry signed, encrypted bundles across isolated networks.", no_args_is_help=True
)
console = Console()
log = logging.getLogger(__name__)

KeysOpt = Annotated[Path, typer.Option("--keys", help="this site's identity directory (keygen)")]
TrustOpt = Annotated[Path, typer.Option("--trust", help="trust store: directory or JSON file")]
HomeOpt = Annotated[Path, typer.Option("--home", help="ferry home directory")]
DropOpt = Annotated[Path | None, typer.Option("--drop", help="directory drop folder")]
HostOpt = Annotated[str | None, typer.Option("--sftp-host")]
PortOpt = Annotated[int, typer.Option("--sftp-port")]
UserOpt = Annotated[str | None, typer.Option("--sftp-user")]
SshKeyOpt = Annotated[Path | None, typer.Option("--sftp-key", help="SSH private key")]
KnownOpt = Annotated[Path | None, typer.Option("--known-hosts", help="pinned host keys")]
RemoteOpt = Annotated[str | None, typer.Option("--remote-dir")]


def _run(fn):  # type: ignore[no-untyped-def]
    """Turn govbus errors into a message and the error's exit code."""
    try:
        return fn()
    except GovbusError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(exc.exit_code) from None


def _transport(
    drop: Path | None,
    host: str | None,
    port: int,
    user: str | None,
    key: Path | None,
    known: Path | None,
    remote: str | None,
) -> Transport:
    if drop is not None and host is None:
        return DirectoryDrop(drop)
    if host is not None and drop is None:
        if user is None or key is None or known is None or remote is None:
            raise ConfigError(
                "SFTP needs --sftp-user, --sftp-key, --known-hosts and --remote-dir as well"
            )
        return SftpTransport(host, user, key, known, remote, port=port)
    raise ConfigError("give exactly one transport: --drop DIR or --sftp-host HOST")


def _recipients(trust: TrustStore, key_ids: list[str]) -> tuple:
    missing = [k for k in key_ids if k not in trust]
    if missing:
        raise ConfigError(f"recipients {missing} are not in the trust store; pin them first")
    return tuple(trust[k] for k in key_ids)


@app.command("keygen")
def keygen_cmd(
    directory: Path,
    name: Annotated[str, typer.Option(help="site name shown to peers")],
    encryption: Annotated[str, typer.Option(help="x25519 or rsa")] = "x25519",
) -> None:
    """Create signing and encryption keys; hand public.json to peers."""
    public = _run(lambda: keygen(directory, name, encryption=encryption))  # type: ignore[arg-type]
    console.print(f"key id {public.key_id}; give {directory / 'public.json'} to your peers")


@app.command("pin")
def pin_cmd(public_json: Path, trust: TrustOpt) -> None:
    """Trust a peer's public.json (check its key id with the peer out of band first)."""

    def work() -> str:
        store = TrustStore.load(trust) if trust.exists() else TrustStore()
        peer = load_public(public_json)
        store.pin(peer, trust)
        return peer.key_id

    console.print(f"pinned {_run(work)}")


@app.command("export")
def export_cmd(
    home: HomeOpt,
    keys: KeysOpt,
    trust: TrustOpt,
    recipient: Annotated[list[str], typer.Option(help="recipient key id (repeatable)")],
    channel: Annotated[str, typer.Option()],
    resource: Annotated[str, typer.Option(help="resource code")],
    source_domain: Annotated[str, typer.Option()],
    destination_domain: Annotated[str, typer.Option()],
    run: Annotated[str | None, typer.Option(help="export this sync run's lake files only")] = None,
    file: Annotated[
        list[str] | None,
        typer.Option(help="PARQUET:RECORDS (repeatable); without it, the resource's lake files"),
    ] = None,
    schema_hash: Annotated[
        str | None, typer.Option(help="with --file: the resource's schema hash")
    ] = None,
    suite: Annotated[Suite, typer.Option()] = Suite.STANDARD,
    compression: Annotated[Compression, typer.Option()] = Compression.NONE,
    ttl_days: Annotated[int, typer.Option()] = 14,
) -> None:
    """Encrypt and sign the next bundle of a channel into the outbox.

    Without --file it carries the resource's lake files that have not left on this channel yet
    (or, with --run, one sync run's files).
    """

    def work():  # type: ignore[no-untyped-def]
        from govbus import ferrying

        if file:
            if schema_hash is None:
                raise ConfigError("--file needs --schema-hash")
            files = []
            for spec in file:
                path, _, records = spec.rpartition(":")
                if not path or not records.isdigit():
                    raise ConfigError(
                        f"--file {spec!r}: expected PATH:RECORDS, e.g. rows.parquet:120"
                    )
                files.append(PayloadFile(Path(path), int(records)))
            payload = Payload(
                resource, schema_hash, tuple(files), source_domain, destination_domain, channel
            )
        else:
            payload = ferrying.lake_payload(
                resource,
                ferry_home=home,
                channel=channel,
                source_domain=source_domain,
                destination_domain=destination_domain,
                run_id=run,
            )
            if payload is None:
                return None
        store = TrustStore.load(trust)
        sender = Sender(
            home,
            load_identity(keys),
            _recipients(store, recipient),
            suite,
            compression,
            timedelta(days=ttl_days),
        )
        exported = export_payload(sender, payload)
        if not file:
            ferrying.record_exported(home, payload)
        return exported

    exported = _run(work)
    if exported is None:
        console.print(f"nothing new to export for {resource} on {channel}")
        return
    console.print(f"sequence {exported.sequence}: {exported.path}")


@app.command("heartbeat")
def heartbeat_cmd(
    home: HomeOpt,
    keys: KeysOpt,
    trust: TrustOpt,
    recipient: Annotated[list[str], typer.Option()],
    channel: Annotated[str, typer.Option()],
) -> None:
    """A payload-free bundle announcing the highest sequence sent on a channel."""

    def work():  # type: ignore[no-untyped-def]
        store = TrustStore.load(trust)
        sender = Sender(home, load_identity(keys), _recipients(store, recipient))
        return export_heartbeat(sender, channel)

    console.print(str(_run(work).path))


@app.command("send")
def send_cmd(
    bundle: Path,
    drop: DropOpt = None,
    sftp_host: HostOpt = None,
    sftp_port: PortOpt = 22,
    sftp_user: UserOpt = None,
    sftp_key: SshKeyOpt = None,
    known_hosts: KnownOpt = None,
    remote_dir: RemoteOpt = None,
) -> None:
    """Deliver a bundle directory from the outbox."""
    t = _run(
        lambda: _transport(drop, sftp_host, sftp_port, sftp_user, sftp_key, known_hosts, remote_dir)
    )
    console.print(_run(lambda: t.send(bundle)))


@app.command("receive")
def receive_cmd(
    inbox: Annotated[Path, typer.Option()],
    drop: DropOpt = None,
    sftp_host: HostOpt = None,
    sftp_port: PortOpt = 22,
    sftp_user: UserOpt = None,
    sftp_key: SshKeyOpt = None,
    known_hosts: KnownOpt = None,
    remote_dir: RemoteOpt = None,
) -> None:
    """Copy complete bundles into the local inbox."""
    t = _run(
        lambda: _transport(drop, sftp_host, sftp_port, sftp_user, sftp_key, known_hosts, remote_dir)
    )
    for path in _run(lambda: t.receive(inbox)):
        console.print(str(path))


DEFAULT_LOADER = "govbus.ferrying:load_into_cloud"


def _destination(db: str | None):  # type: ignore[no-untyped-def]
    if db is not None:
        return create_engine(db)
    from govbus.settings import load_settings
    from govbus.sync import cloud_for

    return cloud_for(load_settings()).engine


def _loader(spec: str) -> Loader:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"--loader {spec!r}: expected module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--loader {spec!r}: {exc}") from exc


@app.command("import")
def import_cmd(
    inbox: Annotated[Path, typer.Option()],
    home: HomeOpt,
    keys: KeysOpt,
    trust: TrustOpt,
    channel: Annotated[list[str], typer.Option(help="accepted channel (repeatable)")],
    db: Annotated[
        str | None, typer.Option(help="destination database URL; default: the cloud database")
    ] = None,
    loader: Annotated[
        str, typer.Option(help="module:function loading the Parquet files")
    ] = DEFAULT_LOADER,
    domain: Annotated[str | None, typer.Option(help="this site's destination domain")] = None,
    max_bytes: Annotated[int, typer.Option(help="limit on decrypted bytes per bundle")] = 64
    * 1024**3,
) -> None:
    """Verify, then import every bundle in the inbox exactly once."""

    def work():  # type: ignore[no-untyped-def]
        receiver = Receiver(
            load_identity(keys), TrustStore.load(trust), home, set(channel), domain, max_bytes
        )
        engine = _destination(db)
        create_ledger(engine)
        results = import_inbox(engine, inbox, receiver=receiver, load=_loader(loader))
        if loader == DEFAULT_LOADER:
            from govbus.ferrying import publish_imported

            publish_imported()
        return results

    refused = 0
    for outcome in _run(work):
        if isinstance(outcome, BundleRefused):
            refused += 1
            console.print(f"[red]refused[/red] {outcome}")
            continue
        console.print(f"{outcome.status.value:9} {outcome.channel} #{outcome.sequence}")
        for follower in outcome.followers:
            console.print(
                f"{ImportStatus.IMPORTED.value:9} {follower.channel} #{follower.sequence}"
            )
    if refused:
        raise typer.Exit(1)


@app.command("status")
def status_cmd(
    db: Annotated[str | None, typer.Option(help="default: the cloud database")] = None,
    channel: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Sequences imported and held, missing sequences, last heartbeat."""
    engine = _destination(db)
    create_ledger(engine)
    table = RichTable("sender", "channel", "imported", "held", "missing", "heartbeat")
    for s in channel_status(engine, channel=channel):
        beat = (
            "-"
            if s.last_heartbeat_at is None
            else (
                f"#{s.heartbeat_sequence} at {s.last_heartbeat_at:%Y-%m-%d %H:%M}"
                + (" [red]hash differs[/red]" if s.heartbeat_mismatch else "")
            )
        )
        table.add_row(
            s.sender[:12],
            s.channel,
            format_ranges(s.imported) or "-",
            format_ranges(s.pending) or "-",
            f"[red]{format_ranges(s.missing)}[/red]" if s.missing else "-",
            beat,
        )
    console.print(table)


@app.command("resend")
def resend_cmd(
    home: HomeOpt,
    channel: Annotated[str, typer.Option()],
    sequence: Annotated[list[int], typer.Option(help="sequence to resend (repeatable)")],
    drop: DropOpt = None,
    sftp_host: HostOpt = None,
    sftp_port: PortOpt = 22,
    sftp_user: UserOpt = None,
    sftp_key: SshKeyOpt = None,
    known_hosts: KnownOpt = None,
    remote_dir: RemoteOpt = None,
) -> None:
    """Send outbox bundles again, byte for byte."""
    t = _run(
        lambda: _transport(drop, sftp_host, sftp_port, sftp_user, sftp_key, known_hosts, remote_dir)
    )
    for path in _run(lambda: resend(home, channel, sequence, t.send)):
        console.print(f"resent {path.name}")

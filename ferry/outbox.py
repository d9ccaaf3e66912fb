"""Sender side: sequence numbers, the chain of bundle hashes, and the outbox kept for resending.

A ferry home on the sending side holds::

    state.json          per channel: last sequence, its bundle hash and id, the domains
    outbox/<bundle>/    every bundle produced, byte for byte what was sent
    .lock               flock: one exporter at a time per home

Sequences start at 1 on each channel and each bundle names the hash of its predecessor, so the
importer can tell a gap from a fork. ``resend`` hands the transport the very directory that was
sent before: a lost bundle is replaced by identical bytes, never by a re-encryption (which would
be a second, different bundle for the same sequence and is refused as a replay).

Crash safety: a bundle is built as ``outbox/<name>.part``, then ``state.json`` is replaced
atomically, then the directory is renamed. On the next export a ``.part`` directory whose bundle
id is the one ``state.json`` records is completed (renamed); any other ``.part`` directory is the
remains of an export that never took a sequence number and is deleted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ferry.bundle import (
    BuiltBundle,
    Compression,
    Envelope,
    Heartbeat,
    Payload,
    build_bundle,
    bundle_name,
    parse_bundle_name,
)
from ferry.crypto import Suite
from ferry.keys import Identity, PublicIdentity
from govbus.errors import FerryError
from govbus.fsutil import fsync_dir

__all__ = [
    "Sender",
    "ChannelState",
    "Exported",
    "export_payload",
    "export_heartbeat",
    "channel_state",
    "outbox_bundle",
    "resend",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sender:
    """How this site exports: its home, keys, recipients and algorithms."""

    home: Path
    identity: Identity
    recipients: tuple[PublicIdentity, ...]
    suite: Suite = Suite.STANDARD
    compression: Compression = Compression.NONE
    ttl: timedelta = timedelta(days=14)

    @property
    def outbox(self) -> Path:
        return Path(self.home) / "outbox"


@dataclass(frozen=True)
class ChannelState:
    sequence: int
    bundle_hash: str | None
    bundle_id: str | None
    name: str | None
    source_domain: str
    destination_domain: str


@dataclass(frozen=True)
class Exported:
    path: Path
    envelope: Envelope
    bundle_hash: str

    @property
    def sequence(self) -> int:
        return self.envelope.sequence


def _state_path(home: Path) -> Path:
    return Path(home) / "state.json"


def _read_state(home: Path) -> dict[str, ChannelState]:
    path = _state_path(home)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {ch: ChannelState(**entry) for ch, entry in doc["channels"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FerryError(
            f"{path}: sender state unreadable ({exc}); restore it from backup, or the next "
            "bundle's sequence cannot be known"
        ) from exc


def _write_state(home: Path, state: dict[str, ChannelState]) -> None:
    path = _state_path(home)
    tmp = path.with_name("state.json.part")
    doc = {"channels": {ch: asdict(s) for ch, s in sorted(state.items())}}
    with open(tmp, "w") as fh:
        fh.write(json.dumps(doc, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    home = Path(home)
    (home / "outbox").mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _recover(home: Path, state: dict[str, ChannelState]) -> None:
    outbox = Path(home) / "outbox"
    recorded = {s.name for s in state.values() if s.name}
    for part in outbox.glob("*.part"):
        final = part.with_name(part.name.removesuffix(".part"))
        if final.name in recorded and not final.exists():
            log.warning("completing export of %s interrupted after its state was saved", final)
            os.replace(part, final)
        else:
            log.warning("removing %s left by an export interrupted before it took a sequence", part)
            shutil.rmtree(part)
    fsync_dir(outbox)


def channel_state(home: Path, channel: str) -> ChannelState | None:
    return _read_state(home).get(channel)


def export_payload(sender: Sender, payload: Payload, *, now: datetime | None = None) -> Exported:
    """Encrypt, sign and put into the outbox the next bundle of ``payload.channel``."""
    with _locked(sender.home):
        state = _read_state(sender.home)
        _recover(sender.home, state)
        previous = state.get(payload.channel)
        sequence = (previous.sequence if previous else 0) + 1
        previous_hash = previous.bundle_hash if previous else None

        built = _build(
            sender,
            lambda target, bundle_id: build_bundle(
                target,
                sender=sender.identity,
                recipients=sender.recipients,
                channel=payload.channel,
                sequence=sequence,
                previous_hash=previous_hash,
                source_domain=payload.source_domain,
                destination_domain=payload.destination_domain,
                payload=payload,
                suite=sender.suite,
                compression=sender.compression,
                ttl=sender.ttl,
                now=now,
                bundle_id=bundle_id,
            ),
            bundle_name_for=lambda bundle_id: bundle_name(payload.channel, sequence, bundle_id),
            new_state=lambda b: {
                **state,
                payload.channel: ChannelState(
                    sequence,
                    b.bundle_hash,
                    b.envelope.bundle_id,
                    b.path.name.removesuffix(".part"),
                    payload.source_domain,
                    payload.destination_domain,
                ),
            },
        )

    log.info(
        "exported bundle %s: channel %s sequence %d, %d files, %d records",
        built.path.name,
        payload.channel,
        sequence,
        len(built.envelope.files),
        built.envelope.records,
        extra={"resource": payload.resource, "rows": built.envelope.records},
    )
    return built


def export_heartbeat(
    sender: Sender,
    channel: str,
    *,
    source_domain: str | None = None,
    destination_domain: str | None = None,
    now: datetime | None = None,
) -> Exported:
    """A payload-free bundle telling the receiver the highest sequence sent and its hash.

    With no return channel this is how the receiver learns it is missing the newest bundles.
    """
    with _locked(sender.home):
        state = _read_state(sender.home)
        _recover(sender.home, state)
        current = state.get(channel)
        src = source_domain or (current.source_domain if current else None)
        dst = destination_domain or (current.destination_domain if current else None)
        if src is None or dst is None:
            raise FerryError(
                f"channel {channel!r} has no exports yet; give source and destination domains"
            )
        beat = Heartbeat(
            current.sequence if current else 0, current.bundle_hash if current else None
        )
        built = _build(
            sender,
            lambda target, bundle_id: build_bundle(
                target,
                sender=sender.identity,
                recipients=sender.recipients,
                channel=channel,
                sequence=0,
                previous_hash=None,
                source_domain=src,
                destination_domain=dst,
                heartbeat=beat,
                suite=sender.suite,
                ttl=sender.ttl,
                now=now,
                bundle_id=bundle_id,
            ),
            bundle_name_for=lambda bundle_id: bundle_name(channel, None, bundle_id),
            new_state=None,
        )
    log.info(
        "heartbeat %s: channel %s at sequence %d", built.path.name, channel, beat.highest_sequence
    )
    return built


def _build(
    sender: Sender,
    build: Callable[[Path, str], BuiltBundle],
    *,
    bundle_name_for: Callable[[str], str],
    new_state: Callable[[BuiltBundle], dict[str, ChannelState]] | None,
) -> Exported:
    bundle_id = str(uuid.uuid4())
    final = sender.outbox / bundle_name_for(bundle_id)
    part = final.with_name(final.name + ".part")
    try:
        built = build(part, bundle_id)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    if new_state is not None:
        _write_state(sender.home, new_state(built))
    os.replace(part, final)
    fsync_dir(sender.outbox)
    return Exported(final, built.envelope, built.bundle_hash)


def outbox_bundle(home: Path, channel: str, sequence: int) -> Path:
    """The bundle sent as ``sequence`` on ``channel``, as it sits in the outbox."""
    for path in sorted((Path(home) / "outbox").iterdir()):
        parsed = parse_bundle_name(path.name)
        if parsed is not None and parsed[0] == channel and parsed[1] == sequence:
            return path
    raise FerryError(
        f"no bundle for channel {channel!r} sequence {sequence} in {Path(home) / 'outbox'}; "
        "a bundle removed from the outbox cannot be resent and needs a new export"
    )


def resend(
    home: Path, channel: str, sequences: Iterable[int], send: Callable[[Path], object]
) -> Sequence[Path]:
    """Hand the outbox copies of ``sequences`` to ``send`` (a transport's ``send``) again."""
    paths = [outbox_bundle(home, channel, seq) for seq in sequences]
    for path in paths:
        send(path)
        log.info("resent bundle %s", path.name)
    return paths

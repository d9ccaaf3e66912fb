"""Receiver side: import each bundle exactly once, in sequence order, inside one transaction.

``import_bundle`` runs these steps; a crash at any of them leaves a state from which running it
again finishes the work:

1. verify (``ferry.bundle.verify_bundle``): names, sizes, signature, fixity, recipient, channel,
   expiry. Nothing is decrypted before this passes.
2. ledger check: a bundle id already imported is a duplicate (a resend, a second copy of the
   drop): it is skipped quietly, logged, and the copy retired. A bundle whose (sender, channel,
   sequence) is already held by a *different* bundle id is refused as a replayed sequence.
3. chain check: sequence 1 names no predecessor; sequence n > 1 needs n - 1 imported and must name
   its bundle hash, otherwise the chain is broken and the bundle refused.
4. decrypt to ``<home>/staging/<bundle id>`` under the configured byte limit.
5. one transaction on the destination database: ledger row marked ``imported`` (insert, or update
   of a pending row), the chain checked again, and the pipeline's ``load`` callback. If ``load``
   raises, the transaction rolls back: no rows, no ledger mark, and the bundle stays where it was
   to be imported again.
6. the bundle directory moves to ``<home>/done/``; staging is removed.

A crash after step 5 commits but before step 6 leaves an imported bundle in the inbox; running
again finds it in the ledger and retires it as a duplicate.

**A bundle that arrives before its predecessor** is verified as usual, then held: its ledger row
gets status ``pending`` with the held directory's location, and the directory moves to
``<home>/pending/``. Nothing of it is loaded. Each successful import then imports the pending
successor, and that one its successor, until the next gap. ``channel_status`` lists the missing
sequences so an operator can ask the sender for ``resend``. A pending bundle is checked for expiry
as of the time it first arrived, so waiting for the gap to fill does not make it expire.

The loader contract: ``load(conn, files, envelope)`` is called with a SQLAlchemy ``Connection``
whose transaction is open (do not commit or roll back), the decrypted Parquet files in envelope
order, and the verified ``Envelope`` (resource, schema hash, record counts, bundle id). The files
are deleted after it returns, so a loader that writes a lake copies them, keyed by bundle id so
that a rolled-back import that is repeated overwrites rather than duplicates.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ferry.bundle import (
    BundleKind,
    Envelope,
    VerifiedBundle,
    decrypt_bundle,
    parse_bundle_name,
    verify_bundle,
)
from ferry.keys import Identity, PublicIdentity
from govbus.errors import BundleRefused

__all__ = [
    "metadata",
    "ledger_table",
    "heartbeat_table",
    "create_ledger",
    "Loader",
    "Receiver",
    "ImportStatus",
    "ImportResult",
    "ReplayedSequence",
    "ChainBroken",
    "import_bundle",
    "import_inbox",
    "drain_pending",
    "ChannelStatus",
    "channel_status",
    "format_ranges",
]

log = logging.getLogger(__name__)

metadata = MetaData()

ledger_table = Table(
    "govbus_ferry_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sender_key_id", String(64), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("bundle_id", String(36), nullable=False),
    Column("bundle_hash", String(80), nullable=False),
    Column("previous_hash", String(80), nullable=True),
    Column("status", String(16), nullable=False),
    Column("resource", String(128), nullable=True),
    Column("records", BigInteger, nullable=False, default=0),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("imported_at", DateTime(timezone=True), nullable=True),
    Column("location", Text, nullable=True),
    UniqueConstraint("sender_key_id", "channel", "sequence", name="uq_govbus_ferry_ledger_seq"),
    UniqueConstraint("bundle_id", name="uq_govbus_ferry_ledger_bundle"),
)

heartbeat_table = Table(
    "govbus_ferry_heartbeats",
    metadata,
    Column("sender_key_id", String(64), primary_key=True),
    Column("channel", String(64), primary_key=True),
    Column("highest_sequence", BigInteger, nullable=False),
    Column("highest_hash", String(80), nullable=True),
    Column("bundle_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

_IMPORTED = "imported"
_PENDING = "pending"

Loader = Callable[[Connection, list[Path], Envelope], None]


def create_ledger(engine: Engine) -> None:
    """Create the ledger tables if they are missing."""
    metadata.create_all(engine)


class _LostRace(Exception):
    """A concurrent importer changed our pending row first."""


class ReplayedSequence(BundleRefused):
    """A different bundle already holds this (sender, channel, sequence)."""


class ChainBroken(BundleRefused):
    """The bundle does not name its predecessor's hash."""


@dataclass(frozen=True)
class Receiver:
    """How this site imports: its keys, pinned senders, accepted channels, limits and folders."""

    identity: Identity
    trust: Mapping[str, PublicIdentity]
    home: Path
    channels: Collection[str] | None = None
    domain: str | None = None
    max_plain_bytes: int = 64 * 1024**3
    max_bundle_bytes: int | None = None

    @property
    def staging(self) -> Path:
        return Path(self.home) / "staging"

    @property
    def pending(self) -> Path:
        return Path(self.home) / "pending"

    @property
    def done(self) -> Path:
        return Path(self.home) / "done"

    @property
    def refused(self) -> Path:
        return Path(self.home) / "refused"


class ImportStatus(enum.StrEnum):
    IMPORTED = "imported"
    SKIPPED = "skipped"  #: already imported: a duplicate
    PENDING = "pending"  #: held until its predecessor is imported
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class ImportResult:
    status: ImportStatus
    bundle_id: str
    sender: str
    channel: str
    sequence: int
    records: int
    path: Path  #: where the bundle directory is now
    #: pending successors imported because this one filled the gap
    followers: tuple[ImportResult, ...] = field(default=())


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def _retire(path: Path, folder: Path) -> Path:
    """Move a handled bundle into ``folder``; a second copy of one already there is deleted."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if path.resolve() == target.resolve():
        return target
    if target.exists():
        log.info("removing duplicate copy %s of %s", path, target)
        shutil.rmtree(path)
        return target
    try:
        os.replace(path, target)
    except OSError:
        shutil.move(str(path), str(target))
    return target


def _row(conn: Connection, *conditions: object) -> Row | None:
    return conn.execute(select(ledger_table).where(and_(*conditions))).first()


def _slot(conn: Connection, env: Envelope, sequence: int) -> Row | None:
    t = ledger_table.c
    return _row(
        conn, t.sender_key_id == env.sender, t.channel == env.channel, t.sequence == sequence
    )


def _result(
    status: ImportStatus, verified: VerifiedBundle, path: Path, followers: tuple = ()
) -> ImportResult:
    env = verified.envelope
    return ImportResult(
        status, env.bundle_id, env.sender, env.channel, env.sequence, env.records, path, followers
    )


def _refuse(verified: VerifiedBundle, cls: type[BundleRefused], message: str) -> BundleRefused:
    return cls(f"bundle {verified.path.name} refused: {message}")


def import_bundle(
    engine: Engine,
    bundle_dir: Path,
    *,
    receiver: Receiver,
    load: Loader,
    now: datetime | None = None,
) -> ImportResult:
    """Import one bundle exactly once; see the module docstring for the steps and the rules."""
    result = _import_one(engine, Path(bundle_dir), receiver, load, _now(now), held_since=None)
    if result.status is not ImportStatus.IMPORTED:
        return result
    followers = tuple(drain_pending(engine, receiver=receiver, load=load, now=now, after=result))
    if not followers:
        return result
    return replace(result, followers=followers)


def _import_one(
    engine: Engine,
    path: Path,
    receiver: Receiver,
    load: Loader,
    now: datetime,
    held_since: datetime | None,
) -> ImportResult:
    verified = verify_bundle(
        path,
        identity=receiver.identity,
        trust=receiver.trust,
        channels=receiver.channels,
        domain=receiver.domain,
        now=held_since or now,
        max_bundle_bytes=receiver.max_bundle_bytes,
    )
    env = verified.envelope

    if env.kind is BundleKind.HEARTBEAT:
        _record_heartbeat(engine, verified, now)
        return _result(ImportStatus.HEARTBEAT, verified, _retire(path, receiver.done))

    # Ledger: duplicate, replay, or new.
    with engine.connect() as conn:
        mine = _row(conn, ledger_table.c.bundle_id == env.bundle_id)
        slot = _slot(conn, env, env.sequence)
        previous = _slot(conn, env, env.sequence - 1) if env.sequence > 1 else None
    if mine is not None and mine.status == _IMPORTED:
        log.info(
            "bundle %s already imported on %s; skipped",
            env.bundle_id,
            mine.imported_at,
            extra={"channel": env.channel, "sequence": env.sequence},
        )
        return _result(ImportStatus.SKIPPED, verified, _retire(path, receiver.done))
    if slot is not None and slot.bundle_id != env.bundle_id:
        raise _refuse(
            verified,
            ReplayedSequence,
            f"replayed sequence {env.sequence} on channel {env.channel!r}: the ledger holds "
            f"bundle {slot.bundle_id} ({slot.status}) for it, this is {env.bundle_id}",
        )

    # Chain: ready, held, or broken.
    if env.sequence == 1:
        if env.previous_hash is not None:
            raise _refuse(verified, ChainBroken, "sequence 1 must not name a previous bundle")
    elif previous is None or previous.status != _IMPORTED:
        return _hold(engine, verified, mine, receiver, now)
    elif previous.bundle_hash != env.previous_hash:
        raise _refuse(
            verified,
            ChainBroken,
            f"chain broken: it names {env.previous_hash} as sequence {env.sequence - 1}, the "
            f"ledger imported {previous.bundle_hash}",
        )

    staging = receiver.staging / env.bundle_id
    files = decrypt_bundle(
        verified, receiver.identity, staging, max_plain_bytes=receiver.max_plain_bytes
    )
    try:
        _commit(engine, verified, mine, files, load, now)
    except _LostRace:
        # Another importer took the slot between our check and our insert.
        with engine.connect() as conn:
            again = _row(conn, ledger_table.c.bundle_id == env.bundle_id)
        if again is not None and again.status == _IMPORTED:
            log.info("bundle %s imported concurrently; skipped", env.bundle_id)
            return _result(ImportStatus.SKIPPED, verified, _retire(path, receiver.done))
        raise _refuse(
            verified, ReplayedSequence, f"sequence {env.sequence} was taken by another bundle"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    log.info(
        "imported bundle %s: channel %s sequence %d, %d records",
        env.bundle_id,
        env.channel,
        env.sequence,
        env.records,
        extra={"resource": env.resource, "rows": env.records, "channel": env.channel},
    )
    return _result(ImportStatus.IMPORTED, verified, _retire(path, receiver.done))


def _commit(
    engine: Engine,
    verified: VerifiedBundle,
    mine: Row | None,
    files: list[Path],
    load: Loader,
    now: datetime,
) -> None:
    env = verified.envelope
    t = ledger_table.c
    with engine.begin() as conn:
        if mine is not None:
            done = conn.execute(
                update(ledger_table)
                .where(t.bundle_id == env.bundle_id, t.status == _PENDING)
                .values(status=_IMPORTED, imported_at=now, location=None)
            )
            if done.rowcount != 1:
                raise _LostRace(env.bundle_id)
        else:
            values = _ledger_values(verified, now, _IMPORTED)
            try:
                conn.execute(insert(ledger_table).values(**values, imported_at=now))
            except IntegrityError as exc:
                # Only the ledger's own constraints mean a lost race; the loader's
                # IntegrityErrors below are the loader's and propagate unchanged.
                raise _LostRace(env.bundle_id) from exc

        # Checked again inside the transaction: the predecessor row cannot have changed since.
        if env.sequence > 1:
            previous = _slot(conn, env, env.sequence - 1)
            if (
                previous is None
                or previous.status != _IMPORTED
                or previous.bundle_hash != env.previous_hash
            ):
                raise _refuse(verified, ChainBroken, "predecessor changed during the import")

        load(conn, files, env)


def _ledger_values(verified: VerifiedBundle, now: datetime, status: str) -> dict[str, object]:
    env = verified.envelope
    return {
        "sender_key_id": env.sender,
        "channel": env.channel,
        "sequence": env.sequence,
        "bundle_id": env.bundle_id,
        "bundle_hash": verified.bundle_hash,
        "previous_hash": env.previous_hash,
        "status": status,
        "resource": env.resource,
        "records": env.records,
        "received_at": now,
    }


def _hold(
    engine: Engine, verified: VerifiedBundle, mine: Row | None, receiver: Receiver, now: datetime
) -> ImportResult:
    env = verified.envelope
    target = receiver.pending / verified.path.name
    if mine is None:
        # Row first, then the move: after a crash in between, the next run finds the row and
        # moves the directory; the other order would hide a bundle in pending/ with no row.
        try:
            with engine.begin() as conn:
                values = _ledger_values(verified, now, _PENDING)
                conn.execute(insert(ledger_table).values(**values, location=str(target)))
        except IntegrityError:
            raise _refuse(
                verified, ReplayedSequence, f"sequence {env.sequence} was taken by another bundle"
            ) from None
    held = _retire(verified.path, receiver.pending)
    log.warning(
        "bundle %s (channel %s sequence %d) arrived before sequence %d; held in %s",
        env.bundle_id,
        env.channel,
        env.sequence,
        env.sequence - 1,
        held,
    )
    return _result(ImportStatus.PENDING, verified, held)


def drain_pending(
    engine: Engine,
    *,
    receiver: Receiver,
    load: Loader,
    now: datetime | None = None,
    after: ImportResult | None = None,
) -> list[ImportResult]:
    """Import held bundles whose predecessor is now imported.

    With ``after``, only the successors of that import on its channel; without, every channel.
    A held bundle that fails stays held (loader error) or is moved to ``refused/`` and its row
    removed (refused), and draining of that channel stops at it.
    """
    t = ledger_table.c
    with engine.connect() as conn:
        query = select(ledger_table).where(t.status == _PENDING).order_by(t.sequence)
        if after is not None:
            query = query.where(t.sender_key_id == after.sender, t.channel == after.channel)
        held = list(conn.execute(query))

    results: list[ImportResult] = []
    blocked: set[tuple[str, str]] = set()
    for row in held:
        key = (row.sender_key_id, row.channel)
        if key in blocked:
            continue
        with engine.connect() as conn:
            previous = conn.execute(
                select(ledger_table.c.status).where(
                    t.sender_key_id == row.sender_key_id,
                    t.channel == row.channel,
                    t.sequence == row.sequence - 1,
                )
            ).scalar()
        if previous != _IMPORTED:
            blocked.add(key)
            continue
        try:
            result = _import_one(
                engine, Path(row.location), receiver, load, _now(now), _aware(row.received_at)
            )
        except BundleRefused as exc:
            log.error("held bundle %s refused: %s", row.bundle_id, exc)
            _forget(engine, row, receiver, str(exc))
            blocked.add(key)
            continue
        except Exception:
            log.exception("held bundle %s failed to load; it stays held", row.bundle_id)
            blocked.add(key)
            continue
        results.append(result)
    return results


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _forget(engine: Engine, row: Row, receiver: Receiver, reason: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            delete(ledger_table).where(
                ledger_table.c.bundle_id == row.bundle_id, ledger_table.c.status == _PENDING
            )
        )
    location = Path(row.location)
    if location.exists():
        moved = _retire(location, receiver.refused)
        moved.with_name(moved.name + ".reason.txt").write_text(reason + "\n")


def _record_heartbeat(engine: Engine, verified: VerifiedBundle, now: datetime) -> None:
    env = verified.envelope
    assert env.heartbeat is not None
    h = heartbeat_table.c
    values = {
        "highest_sequence": env.heartbeat.highest_sequence,
        "highest_hash": env.heartbeat.highest_hash,
        "bundle_id": env.bundle_id,
        "created_at": env.created_at,
        "received_at": now,
    }
    with engine.begin() as conn:
        row = conn.execute(
            select(heartbeat_table).where(h.sender_key_id == env.sender, h.channel == env.channel)
        ).first()
        if row is None:
            conn.execute(
                insert(heartbeat_table).values(
                    sender_key_id=env.sender, channel=env.channel, **values
                )
            )
        elif _aware(row.created_at) < env.created_at:
            conn.execute(
                update(heartbeat_table)
                .where(h.sender_key_id == env.sender, h.channel == env.channel)
                .values(**values)
            )
    log.info(
        "heartbeat from %s on %s: sender is at sequence %d",
        env.sender,
        env.channel,
        env.heartbeat.highest_sequence,
    )


def import_inbox(
    engine: Engine,
    inbox: Path,
    *,
    receiver: Receiver,
    load: Loader,
    now: datetime | None = None,
) -> list[ImportResult | BundleRefused]:
    """Import every bundle directory in ``inbox`` in name order (channel, then sequence).

    Refused bundles move to ``<home>/refused/`` with a ``.reason.txt`` beside them; a loader error
    stops the run and leaves the bundle in the inbox, since the next bundles would only be held.
    """
    outcomes: list[ImportResult | BundleRefused] = []
    outcomes.extend(drain_pending(engine, receiver=receiver, load=load, now=now))
    for path in sorted(Path(inbox).iterdir()):
        if path.name.endswith(".part") or parse_bundle_name(path.name) is None:
            continue
        try:
            outcomes.append(import_bundle(engine, path, receiver=receiver, load=load, now=now))
        except BundleRefused as exc:
            log.error("%s", exc)
            if path.exists() or path.is_symlink():
                moved = _retire(path, receiver.refused)
                moved.with_name(moved.name + ".reason.txt").write_text(str(exc) + "\n")
            outcomes.append(exc)
    return outcomes


# -- status ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelStatus:
    sender: str
    channel: str
    imported: tuple[int, ...]
    pending: tuple[int, ...]
    missing: tuple[int, ...]  #: gaps below the highest sequence seen or announced by heartbeat
    last_heartbeat_at: datetime | None
    heartbeat_sequence: int | None
    #: the ledger holds the heartbeat's highest sequence with a different hash: a fork
    heartbeat_mismatch: bool = False

    @property
    def highest_imported(self) -> int:
        return max(self.imported, default=0)


def channel_status(engine: Engine, *, channel: str | None = None) -> list[ChannelStatus]:
    """Sequences imported and held, missing sequences, and the last heartbeat per channel."""
    t, h = ledger_table.c, heartbeat_table.c
    with engine.connect() as conn:
        q = select(t.sender_key_id, t.channel, t.sequence, t.status, t.bundle_hash)
        hq = select(heartbeat_table)
        if channel is not None:
            q, hq = q.where(t.channel == channel), hq.where(h.channel == channel)
        rows = list(conn.execute(q))
        beats = {(b.sender_key_id, b.channel): b for b in conn.execute(hq)}

    by_channel: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        by_channel.setdefault((row.sender_key_id, row.channel), []).append(row)
    out = []
    for key in sorted(set(by_channel) | set(beats)):
        entries = by_channel.get(key, [])
        imported = sorted(r.sequence for r in entries if r.status == _IMPORTED)
        pending = sorted(r.sequence for r in entries if r.status == _PENDING)
        beat = beats.get(key)
        top = max([*imported, *pending, beat.highest_sequence if beat else 0])
        seen = set(imported) | set(pending)
        mismatch = False
        if beat is not None and beat.highest_hash is not None:
            held = next((r for r in entries if r.sequence == beat.highest_sequence), None)
            mismatch = held is not None and held.bundle_hash != beat.highest_hash
        out.append(
            ChannelStatus(
                sender=key[0],
                channel=key[1],
                imported=tuple(imported),
                pending=tuple(pending),
                missing=tuple(n for n in range(1, top + 1) if n not in seen),
                last_heartbeat_at=_aware(beat.received_at) if beat else None,
                heartbeat_sequence=beat.highest_sequence if beat else None,
                heartbeat_mismatch=mismatch,
            )
        )
    return out


def format_ranges(numbers: Iterable[int]) -> str:
    """``1, 2, 3, 5, 7, 8`` as ``1-3, 5, 7-8``; what an operator reads and carries back."""
    parts: list[str] = []
    run: list[int] = []
    for n in sorted(numbers):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)

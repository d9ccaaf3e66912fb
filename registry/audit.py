"""The lookup audit trail: an append-only, hash-chained table in the registry.

Every lookup, allowed or refused, appends one entry: when, which consumer, for which case, which
resource, whose data (a keyed hash of the holder id to search by, and the masked id to show), the
outcome and the request id. No full id number is ever stored here.

Each entry carries the hash of the one before it, and its own hash is an HMAC over its content and
that previous hash, keyed with a secret of the bus. Someone who can write to the table but does not
hold the secret can therefore neither alter an entry nor insert one without ``verify`` noticing,
and a deleted entry breaks the link of the one after it. A one-row head table holds the newest
sequence number and hash, so a deletion at the end is found as well; appends lock that row, which
also serialises concurrent writers on both SQLite and PostgreSQL.

Limit: someone holding both write access and the bus secret can rewrite the whole chain. Copy the
head hash that ``govbus audit verify`` prints to somewhere they cannot write if that matters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, Integer, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from registry.models import Base
from schemas.mask import mask_id

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditHead",
    "AuditLog",
    "Finding",
    "Lookup",
]

#: the "previous hash" of the first entry
GENESIS = "0" * 64


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(36), index=True)
    consumer_id: Mapped[int | None] = mapped_column(Integer)
    consumer_name: Mapped[str | None] = mapped_column(String(100))
    case_number: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    resource_code: Mapped[str | None] = mapped_column(String(64))
    holder_hmac: Mapped[str | None] = mapped_column(String(64), index=True)
    holder_masked: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(40))
    status: Mapped[int] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the newest entry's sequence number and hash."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


_entries = AuditEntry.__table__
_head = AuditHead.__table__

# the fields the entry hash covers, in this order; seq is only where the row is kept
_HASHED = (
    "at",
    "request_id",
    "consumer_id",
    "consumer_name",
    "case_number",
    "action",
    "resource_code",
    "holder_hmac",
    "holder_masked",
    "outcome",
    "status",
)


@dataclass(frozen=True)
class Lookup:
    """What one lookup did, as the service reports it to the audit trail."""

    action: str
    outcome: str
    status: int
    request_id: str = ""
    consumer_id: int | None = None
    consumer_name: str | None = None
    case_number: str | None = None
    resource_code: str | None = None
    holder_id: str | None = None


@dataclass(frozen=True)
class Finding:
    """One problem ``verify`` found: ``kind`` is altered, inserted or deleted."""

    kind: str
    seq: int | None
    detail: str

    def __str__(self) -> str:
        return self.detail


def _utc_text(moment: datetime) -> str:
    # SQLite gives timestamps back without a zone; they were written in UTC.
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_holder(holder_id: str) -> str:
    return holder_id.strip().upper()


class AuditLog:
    """Appending to and checking the audit trail of one registry, with the bus secret."""

    def __init__(self, engine: Engine, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the audit secret must be at least 32 bytes")
        self.engine = engine
        self._chain_key = hmac.new(secret, b"govbus audit chain v1", hashlib.sha256).digest()
        self._holder_key = hmac.new(secret, b"govbus holder id v1", hashlib.sha256).digest()

    def holder_hmac(self, holder_id: str) -> str:
        """The keyed hash the trail stores instead of a holder id."""
        value = normalise_holder(holder_id).encode("utf-8")
        return hmac.new(self._holder_key, value, hashlib.sha256).hexdigest()

    def _entry_hash(self, fields: dict[str, Any], prev_hash: str) -> str:
        content = {name: fields[name] for name in _HASHED}
        content["at"] = _utc_text(fields["at"])
        content["prev_hash"] = prev_hash
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hmac.new(self._chain_key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    # -- writing ---------------------------------------------------------------------------------

    def append(self, lookup: Lookup) -> int:
        """Append one entry and return its sequence number."""
        return self.append_many([lookup])[0]

    def append_many(self, lookups: list[Lookup]) -> list[int]:
        """Append entries in one transaction, in order; their sequence numbers.

        The head row is locked from the first statement to the commit, so appends queue up
        behind one another; appending a batch pays for that wait, and the commit, once.
        """
        if not lookups:
            return []
        rows = [self._fields(lookup) for lookup in lookups]

        with self.engine.begin() as conn:
            # Taking the head row's lock first makes the read below see the true newest entry.
            conn.execute(
                update(_head).where(_head.c.id == 1).values(last_seq=_head.c.last_seq + len(rows))
            )
            last_seq, prev_hash = conn.execute(
                select(_head.c.last_seq, _head.c.last_hash).where(_head.c.id == 1)
            ).one()
            first = last_seq - len(rows) + 1
            for offset, fields in enumerate(rows):
                digest = self._entry_hash(fields, prev_hash)
                fields.update(seq=first + offset, prev_hash=prev_hash, hash=digest)
                prev_hash = digest
            conn.execute(_entries.insert(), rows)
            conn.execute(update(_head).where(_head.c.id == 1).values(last_hash=prev_hash))
        return [first + offset for offset in range(len(rows))]

    def _fields(self, lookup: Lookup) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "at": datetime.now(UTC),
            "request_id": lookup.request_id or str(uuid.uuid4()),
            "consumer_id": lookup.consumer_id,
            "consumer_name": lookup.consumer_name,
            "case_number": lookup.case_number,
            "action": lookup.action,
            "resource_code": lookup.resource_code,
            "holder_hmac": None,
            "holder_masked": None,
            "outcome": lookup.outcome,
            "status": lookup.status,
        }
        if lookup.holder_id:
            fields["holder_hmac"] = self.holder_hmac(lookup.holder_id)
            fields["holder_masked"] = mask_id(lookup.holder_id)[:64]
        # Text a database refuses (a NUL byte, more than the column holds) would lose the
        # entry; replace NUL and cut to the column.
        for name, limit in (
            ("case_number", 100),
            ("consumer_name", 100),
            ("resource_code", 64),
            ("holder_masked", 64),
            ("action", 40),
            ("outcome", 40),
        ):
            if fields[name] is not None:
                fields[name] = fields[name].replace("\x00", "\ufffd")[:limit]
        return fields

    # -- reading ---------------------------------------------------------------------------------

    def entries(self, *, holder_id: str | None = None) -> list[dict[str, Any]]:
        query = select(_entries).order_by(_entries.c.seq)
        if holder_id is not None:
            query = query.where(_entries.c.holder_hmac == self.holder_hmac(holder_id))
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def head(self) -> tuple[int, str]:
        with self.engine.connect() as conn:
            seq, digest = conn.execute(
                select(_head.c.last_seq, _head.c.last_hash).where(_head.c.id == 1)
            ).one()
        return seq, digest

    def _stream(self) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=10_000).execute(
                select(_entries).order_by(_entries.c.seq)
            )
            for row in result.mappings():
                yield dict(row)

    def _has_entries_after(self, seq: int) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(select(_entries.c.seq).where(_entries.c.seq > seq).limit(1)).first()
                is not None
            )

    def verify(self) -> tuple[int, list[Finding]]:
        """Walk the chain; return the number of entries read and what is wrong with it.

        An entry whose hash does not match its content was changed by someone without the key.
        If the chain runs past it (the next entry points at the entry before it) it was
        inserted; otherwise it is an original entry that was altered. An intact entry that does
        not point at the one before it follows a gap: entries were deleted there.
        """
        last_seq, last_hash = self.head()
        findings: list[Finding] = []
        prev_hash, prev_seq = GENESIS, 0
        count = streamed = 0

        stream = self._stream()
        current = next(stream, None)
        while current is not None:
            following = next(stream, None)
            count += 1
            seq = streamed = current["seq"]
            genuine = hmac.compare_digest(
                self._entry_hash(current, current["prev_hash"]), current["hash"]
            )
            next_link = last_hash if following is None else following["prev_hash"]

            if genuine and current["prev_hash"] != prev_hash:
                findings.append(_deleted(prev_seq, seq))
            if not genuine and next_link == prev_hash and current["hash"] != prev_hash:
                findings.append(
                    Finding(
                        "inserted",
                        seq,
                        f"entry {seq} was inserted: its hash does not match its content and "
                        f"the chain runs past it",
                    )
                )
                current = following
                continue
            if not genuine:
                findings.append(
                    Finding(
                        "altered",
                        seq,
                        f"entry {seq} was altered: its content no longer matches its hash",
                    )
                )
            prev_hash, prev_seq = current["hash"], seq
            current = following

        # Lookups go on while the chain is read: compare its end with the head as it is now,
        # unless entries were appended after the reading finished.
        last_seq, last_hash = self.head()
        if last_seq > prev_seq and self._has_entries_after(streamed):
            return count, findings
        if prev_hash != last_hash:
            findings.append(
                Finding(
                    "deleted",
                    prev_seq + 1,
                    f"entries after {prev_seq} were deleted: the head records {last_seq} as "
                    f"the newest entry, with another hash",
                )
            )
        return count, findings


def _deleted(prev_seq: int, seq: int) -> Finding:
    first, last = prev_seq + 1, seq - 1
    where = f"entry {first}" if first == last else f"entries {first}-{last}"
    if first > last:
        where = f"entries between {prev_seq} and {seq}"
    return Finding(
        "deleted",
        first,
        f"{where} deleted: entry {seq} is intact but does not follow "
        + (f"entry {prev_seq}" if prev_seq else "the start of the trail"),
    )

"""The certificate library (电子证照库): verified, signed certificates ready for intake lookups.

Certificates reach the cloud like any other resource: a resource with a ``certificate:`` section
is synced from the issuing department into its target table. ``ingest`` then takes the rows that
runs loaded since the last ingest and verifies each one:

- the identifier's ISO 7064 MOD 37,36 check character, its type part against the registered type
  code and its issuer part against the issuer code;
- the issuer is registered as the provider of that certificate type (or one of its ``issuers``);
- the holder id is valid for its id type (111 resident id, 001 unified social credit code);
- the dates are coherent (issued by today, validity end not before its start nor the issue date).

A verified certificate is written to ``govbus_certificates`` with its provenance (resource, run,
time) and the bus's Ed25519 signature over the canonical form of the record; a failed one goes
to ``govbus_certificate_failures`` with its reasons. When the source corrects a certificate (the
same source key, or a higher version of the same identifier) the new record supersedes the old,
which stays in the library marked superseded.

The bus keeps two secrets under ``GOVBUS_HOME/keys`` (mode 0600, created on first use): the
Ed25519 signing key and a 32-byte secret from which the audit trail's keys are derived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine

from adapters.cloud import DELETED_AT, RUN_ID
from govbus.errors import ConfigError, NotACertificateResource
from govbus.settings import Settings, load_settings
from registry.catalogue import CERTIFICATE_ITEMS, ResourceSpec
from registry.db import registry_engine
from registry.resources import get_resource
from schemas.checks import check_cert_id, check_resident_id, check_uscc
from schemas.mask import mask_id

__all__ = [
    "HOLDER_ID_TYPES",
    "CertificateStatus",
    "IngestResult",
    "BusKeys",
    "bus_keys",
    "canonical",
    "verify_record",
    "ingest",
    "ensure_library",
    "certificates",
    "failures",
    "ingests",
    "signed_record",
    "effective_status",
    "normalise_holder_id",
    "KEY_SEPARATOR",
]

log = logging.getLogger(__name__)

KEY_SEPARATOR = "\x1f"
SIGNATURE_ALGORITHM = "Ed25519"

#: holder id types of the certificate standards and the check each one must pass
HOLDER_ID_TYPES = {"111": check_resident_id, "001": check_uscc}
SOURCE_STATUSES = ("valid", "revoked", "expired")


class CertificateStatus:
    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


library = sa.MetaData()

certificates = sa.Table(
    "govbus_certificates",
    library,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("resource_code", sa.String(64), nullable=False),
    sa.Column("source_key", sa.Text, nullable=False),
    sa.Column("lineage", sa.String(200), nullable=False),
    sa.Column("version_no", sa.String(20), nullable=False),
    sa.Column("identifier", sa.String(200), nullable=False),
    sa.Column("type_code", sa.String(21), nullable=False),
    sa.Column("type_name", sa.String(200), nullable=False),
    sa.Column("cert_name", sa.String(200)),
    sa.Column("cert_number", sa.String(100), nullable=False),
    sa.Column("issuer_name", sa.String(200), nullable=False),
    sa.Column("issuer_code", sa.String(18), nullable=False),
    sa.Column("issue_date", sa.Date, nullable=False),
    sa.Column("division_code", sa.String(6)),
    sa.Column("holder_name", sa.String(200), nullable=False),
    sa.Column("holder_id", sa.String(32), nullable=False),
    sa.Column("holder_id_type", sa.String(3), nullable=False),
    sa.Column("valid_from", sa.Date, nullable=False),
    sa.Column("valid_to", sa.Date),
    sa.Column("source_status", sa.String(16), nullable=False),
    sa.Column("file_hash", sa.String(128)),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("verified_at", sa.String(32), nullable=False),
    sa.Column("record_hash", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("signature", sa.String(100), nullable=False),
    sa.Column("superseded_at", sa.DateTime(timezone=True)),
    sa.Column("superseded_by", sa.BigInteger),
    sa.Index("ix_govbus_certificates_holder", "holder_id", "type_code"),
    sa.Index("ix_govbus_certificates_identifier", "identifier"),
    sa.Index("ix_govbus_certificates_source", "resource_code", "source_key"),
    sa.Index("ix_govbus_certificates_lineage", "lineage"),
)

failures = sa.Table(
    "govbus_certificate_failures",
    library,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("resource_code", sa.String(64), nullable=False, index=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("source_key", sa.Text, nullable=False),
    sa.Column("identifier", sa.String(200)),
    sa.Column("holder_masked", sa.String(64)),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

ingests = sa.Table(
    "govbus_certificate_ingests",
    library,
    sa.Column("resource_code", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
)


# -- the bus's keys ------------------------------------------------------------------------------


def _secret_file(path: Path, make: Any) -> bytes:
    """Read a secret file, creating it with mode 0600 first if it does not exist.

    The file is written under a temporary name and linked into place, so a concurrent reader
    never sees half a key and two processes creating it at once end up with the same one.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(make())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            temp.unlink(missing_ok=True)

    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by others (mode {mode:o}); restrict it with `chmod 600 {path}`"
        )
    return path.read_bytes()


@dataclass(frozen=True)
class BusKeys:
    signing_key: Ed25519PrivateKey
    audit_secret: bytes

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @property
    def key_id(self) -> str:
        """The first 16 hex digits of the SHA-256 of the raw public key."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return hashlib.sha256(raw).hexdigest()[:16]

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self.signing_key.sign(payload)).decode("ascii")


def _new_signing_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@cache
def _load_keys(home: Path) -> BusKeys:
    folder = home / "keys"
    pem = _secret_file(folder / "bus-signing-ed25519.pem", _new_signing_key)
    secret = _secret_file(folder / "bus-secret", lambda: secrets.token_bytes(32))
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{folder / 'bus-signing-ed25519.pem'} does not hold an Ed25519 key")
    return BusKeys(signing_key=key, audit_secret=secret)


def bus_keys(settings: Settings) -> BusKeys:
    """The bus's signing key and audit secret under ``GOVBUS_HOME/keys``, made on first use."""
    return _load_keys(settings.home)


# -- records -------------------------------------------------------------------------------------


def canonical(record: dict[str, Any]) -> bytes:
    """The signed form: JSON, keys sorted, no spaces, UTF-8, dates as YYYY-MM-DD."""

    def plain(value: Any) -> Any:
        if isinstance(value, date | datetime):
            return value.isoformat()
        return value

    data = {name: plain(value) for name, value in record.items()}
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def normalise_holder_id(value: str) -> str:
    return value.strip().upper()


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def verify_record(row: dict[str, Any], spec: ResourceSpec, today: date) -> list[str]:
    """The reasons ``row`` cannot be trusted as a certificate of ``spec``'s type; [] if none."""
    assert spec.certificate is not None
    reasons: list[str] = []
    for name in ("identifier", "cert_number", "issuer_name", "issuer_code", "holder_name"):
        if not row.get(name):
            reasons.append(f"{name}.missing")

    identifier = row.get("identifier")
    if identifier:
        reason = check_cert_id(identifier)
        if reason is not None:
            reasons.append(reason)
        else:
            parts = identifier.split(".")
            # 1.2.156.3005.2 . type . issuer . serial . version . check
            if len(parts) < 10:
                reasons.append("cert_id.parts")
            else:
                if parts[5] != spec.certificate.type_code:
                    reasons.append("identifier.type_mismatch")
                if row.get("issuer_code") and parts[6] != row["issuer_code"]:
                    reasons.append("identifier.issuer_mismatch")

    issuer = row.get("issuer_code")
    if issuer:
        reason = check_uscc(issuer)
        if reason is not None:
            reasons.append(f"issuer_code.{reason}")
        elif issuer != spec.provider.code and issuer not in spec.certificate.issuers:
            reasons.append("issuer.not_registered")

    holder, id_type = row.get("holder_id"), row.get("holder_id_type")
    if not holder:
        reasons.append("holder_id.missing")
    elif id_type not in HOLDER_ID_TYPES:
        reasons.append("holder_id_type.unknown")
    else:
        reason = HOLDER_ID_TYPES[id_type](normalise_holder_id(holder))
        if reason is not None:
            reasons.append(f"holder_id.{reason}")

    issued, start, end = (_as_date(row.get(n)) for n in ("issue_date", "valid_from", "valid_to"))
    if issued is None:
        reasons.append("issue_date.missing")
    elif issued > today:
        reasons.append("dates.issued_in_future")
    if start is None:
        reasons.append("valid_from.missing")
    if end is not None and start is not None and end < start:
        reasons.append("dates.ends_before_start")
    if end is not None and issued is not None and end < issued:
        reasons.append("dates.ends_before_issue")

    if row.get("status") not in SOURCE_STATUSES:
        reasons.append("status.unknown")
    return reasons


def _directory(row: dict[str, Any], spec: ResourceSpec) -> dict[str, Any]:
    """The directory fields as signed, in their stored form."""
    assert spec.certificate is not None
    record = {name: row.get(name) for name in CERTIFICATE_ITEMS}
    record["holder_id"] = normalise_holder_id(record["holder_id"])
    for name in ("issue_date", "valid_from", "valid_to"):
        record[name] = _as_date(record[name])
    record["type_code"] = spec.certificate.type_code
    record["type_name"] = spec.certificate.type_name
    return record


def signed_record(row: sa.RowMapping | dict[str, Any]) -> dict[str, Any]:
    """The exact record the bus signed, rebuilt from a library row: the directory fields as
    the source gave them and the provenance. Its ``canonical`` form is what the signature
    covers."""
    record = {name: row[name] for name in CERTIFICATE_ITEMS if name != "status"}
    record["status"] = row["source_status"]
    record["type_code"] = row["type_code"]
    record["type_name"] = row["type_name"]
    for name in ("issue_date", "valid_from", "valid_to"):
        value = _as_date(record[name])
        record[name] = None if value is None else value.isoformat()
    record["provenance"] = {
        "resource": row["resource_code"],
        "run_id": row["run_id"],
        "verified_at": row["verified_at"],
    }
    return record


def effective_status(row: sa.RowMapping | dict[str, Any], today: date) -> str:
    """The status now: superseded and revoked first, then expired by date or by the source."""
    if row["superseded_at"] is not None:
        return CertificateStatus.SUPERSEDED
    if row["source_status"] == "revoked":
        return CertificateStatus.REVOKED
    end = _as_date(row["valid_to"])
    if row["source_status"] == "expired" or (end is not None and end < today):
        return CertificateStatus.EXPIRED
    return CertificateStatus.VALID


# -- ingest --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    code: str
    runs: int
    read: int
    verified: int
    unchanged: int
    superseded: int
    failed: int


_created: set[str] = set()


def ensure_library(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    if url not in _created:
        library.create_all(engine, checkfirst=True)
        _created.add(url)


def _lineage(identifier: str) -> tuple[str, str]:
    """The identifier without its version and check character, and the version."""
    head, version, _check = identifier.rsplit(".", 2)
    return head, version


def ingest(
    code: str,
    *,
    settings: Settings | None = None,
    today: date | None = None,
    batch_size: int = 5_000,
) -> IngestResult:
    """Verify, sign and file the certificates that runs of ``code`` loaded since the last ingest.

    Run it after ``govbus sync CODE``; running it again without a new sync does nothing.
    """
    from govbus.sync import cloud_for

    settings = settings or load_settings()
    spec = get_resource(registry_engine(settings.registry_url), code).spec
    if spec.certificate is None:
        raise NotACertificateResource(code)
    if not spec.target.database:
        raise ConfigError(
            f"{code}: certificates are read from the cloud database, but target.database is false"
        )

    today = today or date.today()
    keys = bus_keys(settings)
    cloud = cloud_for(settings)
    ensure_library(cloud.engine)
    target = cloud.store.target(spec)
    if not sa.inspect(cloud.engine).has_table(target.name):
        return IngestResult(code, 0, 0, 0, 0, 0, 0)

    # Rows the provider deleted are skipped: their certificates stay in the library as they
    # were. Until deletions are carried over, a provider withdraws a certificate by sending it
    # again with status revoked.
    done = sa.select(ingests.c.run_id).where(ingests.c.resource_code == code)
    query = (
        sa.select(target)
        .where(target.c[RUN_ID].not_in(done), target.c[DELETED_AT].is_(None))
        .order_by(*[target.c[k] for k in spec.source.primary_key])
    )
    runs_query = sa.select(target.c[RUN_ID]).where(target.c[RUN_ID].not_in(done)).distinct()
    counts = {"read": 0, "verified": 0, "unchanged": 0, "superseded": 0, "failed": 0}
    with cloud.engine.begin() as conn:
        run_ids = sorted(conn.execute(runs_query).scalars())
        # A second connection streams the rows while this one writes the library.
        with cloud.engine.connect() as reader:
            result = reader.execution_options(yield_per=batch_size).execute(query)
            for batch in result.mappings().partitions(batch_size):
                _file_batch(conn, spec, keys, [dict(r) for r in batch], today, counts)
        if counts["verified"] > 1_000 and conn.dialect.name == "postgresql":
            # Fresh statistics keep the planner on the holder index for lookups; with stale ones
            # it combines indexes and reads every entry of the resource.
            conn.exec_driver_sql(f"ANALYZE {certificates.name}")
        if run_ids:
            now = datetime.now(UTC)
            conn.execute(
                ingests.insert(),
                [{"resource_code": code, "run_id": r, "ingested_at": now} for r in run_ids],
            )

    log.info(
        "%s: ingested %d certificate rows from %d run(s): %d verified, %d unchanged, "
        "%d superseded, %d failed",
        code,
        counts["read"],
        len(run_ids),
        counts["verified"],
        counts["unchanged"],
        counts["superseded"],
        counts["failed"],
        extra={"resource": code, "rows": counts["read"]},
    )
    return IngestResult(code=code, runs=len(run_ids), **counts)


def _source_key(row: dict[str, Any], spec: ResourceSpec) -> str:
    return KEY_SEPARATOR.join(str(row[k]) for k in spec.source.primary_key)


def _file_batch(
    conn: Connection,
    spec: ResourceSpec,
    keys: BusKeys,
    rows: Sequence[dict[str, Any]],
    today: date,
    counts: dict[str, int],
) -> None:
    counts["read"] += len(rows)
    now = datetime.now(UTC)
    verified_at = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    good: list[tuple[str, dict[str, Any]]] = []
    bad: list[dict[str, Any]] = []
    for row in rows:
        source_key = _source_key(row, spec)
        reasons = verify_record(row, spec, today)
        if reasons:
            holder = row.get("holder_id")
            bad.append(
                {
                    "resource_code": spec.code,
                    "run_id": row[RUN_ID],
                    "source_key": mask_id(source_key),
                    "identifier": (row.get("identifier") or None),
                    "holder_masked": None if not holder else mask_id(str(holder))[:64],
                    "reasons": ",".join(reasons),
                    "recorded_at": now,
                }
            )
        else:
            good.append((source_key, row))
    if bad:
        conn.execute(failures.insert(), bad)
        counts["failed"] += len(bad)
    if not good:
        return

    # Unchanged records (a full reload, say) are not filed again.
    current = sa.and_(
        certificates.c.resource_code == spec.code, certificates.c.superseded_at.is_(None)
    )
    hashes = dict(
        conn.execute(
            sa.select(certificates.c.source_key, certificates.c.record_hash).where(
                current, certificates.c.source_key.in_([k for k, _ in good])
            )
        ).all()
    )
    inserts = []
    for source_key, row in good:
        directory = _directory(row, spec)
        record_hash = hashlib.sha256(canonical(directory)).hexdigest()
        if hashes.get(source_key) == record_hash:
            counts["unchanged"] += 1
            continue
        lineage, version = _lineage(directory["identifier"])
        provenance = {"resource": spec.code, "run_id": row[RUN_ID], "verified_at": verified_at}
        signed = {**directory, "provenance": provenance}
        inserts.append(
            {
                **{k: v for k, v in directory.items() if k != "status"},
                "source_status": directory["status"],
                "resource_code": spec.code,
                "source_key": source_key,
                "lineage": lineage,
                "version_no": version,
                "run_id": row[RUN_ID],
                "verified_at": verified_at,
                "record_hash": record_hash,
                "key_id": keys.key_id,
                "signature": keys.sign(canonical(signed)),
            }
        )
    if not inserts:
        return
    conn.execute(certificates.insert(), inserts)
    counts["verified"] += len(inserts)
    counts["superseded"] += _supersede(
        conn, current, [i["source_key"] for i in inserts], [i["lineage"] for i in inserts], now
    )


def _supersede(
    conn: Connection, current: Any, source_keys: list[str], lineages: list[str], now: datetime
) -> int:
    """Mark older current records of the same source key, or lower versions of the same
    certificate, superseded by the newest; returns how many were marked."""
    rows = conn.execute(
        sa.select(
            certificates.c.id,
            certificates.c.source_key,
            certificates.c.lineage,
            certificates.c.version_no,
        ).where(
            current,
            sa.or_(
                certificates.c.source_key.in_(set(source_keys)),
                certificates.c.lineage.in_(set(lineages)),
            ),
        )
    ).all()
    replaced_by: dict[int, int] = {}
    newest_of_key: dict[str, Any] = {}
    for row in rows:
        if row.source_key not in newest_of_key or row.id > newest_of_key[row.source_key].id:
            newest_of_key[row.source_key] = row
    for row in rows:
        if row.id != newest_of_key[row.source_key].id:
            replaced_by[row.id] = newest_of_key[row.source_key].id

    def rank(row: Any) -> tuple[int, str, int]:
        return (len(row.version_no), row.version_no, row.id)

    survivors = [r for r in rows if r.id not in replaced_by]
    newest_of_lineage: dict[str, Any] = {}
    for row in survivors:
        best = newest_of_lineage.get(row.lineage)
        if best is None or rank(row) > rank(best):
            newest_of_lineage[row.lineage] = row
    for row in survivors:
        best = newest_of_lineage[row.lineage]
        if row.id != best.id and rank(row)[:2] < rank(best)[:2]:
            replaced_by[row.id] = best.id

    by_new: dict[int, list[int]] = {}
    for old, new in replaced_by.items():
        by_new.setdefault(new, []).append(old)
    for new, olds in by_new.items():
        conn.execute(
            certificates.update()
            .where(certificates.c.id.in_(olds))
            .values(superseded_at=now, superseded_by=new)
        )
    return len(replaced_by)

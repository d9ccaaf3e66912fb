"""The intake lookup service: verified certificates and records by holder id, over HTTP.

Intake systems at service windows call it instead of asking citizens for paper copies. Every
request carries the consumer's token (``Authorization: Bearer ...``) and the case number being
handled (``X-Case-Number``, percent-encoded if it is not ASCII). Every lookup, allowed or refused,
appends one entry to the registry's audit trail before the answer leaves.

Refusals name their reason in a fixed vocabulary: 401 ``missing_token``, ``unknown_consumer``,
``revoked_consumer``; 403 ``not_shared``, ``not_granted``, ``application_pending``; 404
``no_match``, ``unknown_resource``, ``unknown_certificate_type``; 409 ``several_matches``; 422 the
failed check (``resident_id.check_digit``, ``cert_id.check_char``, ``case_number.missing`` ...).

Uvicorn's access log is off: its lines carry query strings, which hold full id numbers. The
service logs one line per lookup itself, with the holder id masked.
"""

from __future__ import annotations

import base64
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import unquote

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.cloud import DELETED_AT, LOADED_AT, RUN_ID
from govbus.certificates import (
    SIGNATURE_ALGORITHM,
    BusKeys,
    bus_keys,
    canonical,
    certificates,
    effective_status,
    ensure_library,
    normalise_holder_id,
    signed_record,
)
from govbus.errors import GovbusError
from govbus.settings import Settings, load_settings
from registry.access import ConsumerStatus, Decision, check_access, consumer_by_token, local_today
from registry.audit import AuditLog, Lookup
from registry.catalogue import ResourceSpec
from registry.db import registry_engine
from registry.resources import list_current
from schemas.checks import CHECKS, check_cert_id, check_resident_id, check_uscc
from schemas.mask import mask_id

__all__ = ["create_app", "Refusal"]

log = logging.getLogger(__name__)

CASE_HEADER = "X-Case-Number"
_CASE_NUMBER = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RESIDENT_SHAPE = re.compile(r"[0-9]{17}[0-9Xx]")
_RESOURCE_CACHE_SECONDS = 5.0


class Refusal(GovbusError):
    """A lookup that cannot be answered; becomes an HTTP error with a named reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


# -- response models -----------------------------------------------------------------------------


class Problem(BaseModel):
    request_id: str
    status: int
    reason: str = Field(description="a fixed reason code, or the name of the failed check")
    message: str


class Signature(BaseModel):
    algorithm: str = SIGNATURE_ALGORITHM
    key_id: str = Field(description="first 16 hex digits of SHA-256 of the raw public key")
    value: str = Field(description="base64 of the signature over the record's canonical form")


class CertificateOut(BaseModel):
    status: str = Field(description="valid, revoked, expired or superseded, as of today")
    record: dict[str, Any] = Field(
        description="the record as the bus signed it: directory fields and provenance; its "
        "canonical form is JSON with sorted keys, no spaces, UTF-8"
    )
    signature: Signature


class CertificateList(BaseModel):
    request_id: str
    holder_id: str = Field(description="the holder id, masked")
    certificates: list[CertificateOut]


class CertificateCheck(BaseModel):
    request_id: str
    genuine: bool = Field(description="the bus's signature over the stored record holds")
    status: str
    certificate: CertificateOut


class RecordOut(BaseModel):
    request_id: str
    resource: str
    record: dict[str, Any]
    provenance: dict[str, Any]
    signature: Signature = Field(
        description="over the canonical form of {resource, record, provenance}"
    )


class SigningKey(BaseModel):
    algorithm: str
    key_id: str
    public_key_pem: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in (
        (401, "missing token, unknown or revoked consumer"),
        (403, "not_shared, not_granted or application_pending"),
        (404, "no match"),
        (409, "several matches where one was required"),
        (422, "a malformed value; the reason names the failed check"),
    )
}


# -- the service ---------------------------------------------------------------------------------


class _AuditWriter:
    """Group commit for the audit trail: lookups finishing at the same moment share one
    transaction, so the trail's lock and its commit are paid once per batch, not per lookup.
    A lookup's answer leaves only after its entry committed; if the write fails, so does the
    lookup."""

    def __init__(self, audit: AuditLog, max_batch: int = 256) -> None:
        self.audit = audit
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Lookup, Future[None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def append(self, lookup: Lookup) -> None:
        future: Future[None] = Future()
        self._queue.put((lookup, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
                self._thread.start()
        future.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.audit.append_many([lookup for lookup, _ in batch])
            except BaseException as exc:  # every waiting lookup fails with the write
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for _, future in batch:
                    future.set_result(None)


@dataclass
class _Caller:
    request_id: str
    action: str
    consumer_id: int | None = None
    consumer_name: str | None = None
    case_number: str | None = None
    resource_code: str | None = None
    holder_id: str | None = None


class _Service:
    def __init__(self, settings: Settings) -> None:
        from govbus.sync import cloud_for

        settings.ensure_dirs()
        self.settings = settings
        self.registry = _lookup_engine(registry_engine(settings.registry_url))
        self.cloud = _lookup_engine(cloud_for(settings).engine)
        self.store = cloud_for(settings).store
        ensure_library(self.cloud)
        self.keys: BusKeys = bus_keys(settings)
        self.audit = AuditLog(self.registry, self.keys.audit_secret)
        self.audit_writer = _AuditWriter(self.audit)
        self._resources: dict[str, ResourceSpec] = {}
        self._loaded = -1e9
        self._lock = threading.Lock()

    def resources(self) -> dict[str, ResourceSpec]:
        # The registry changes rarely; a few seconds' delay before a new version counts is fine.
        with self._lock:
            if time.monotonic() - self._loaded > _RESOURCE_CACHE_SECONDS:
                self._resources = {r.spec.code: r.spec for r in list_current(self.registry)}
                self._loaded = time.monotonic()
            return self._resources

    def signature(self, payload: dict[str, Any]) -> Signature:
        return Signature(key_id=self.keys.key_id, value=self.keys.sign(canonical(payload)))

    # -- steps every lookup takes

    def authenticate(self, caller: _Caller, credentials: HTTPAuthorizationCredentials | None):  # type: ignore[no-untyped-def]
        if credentials is None or not credentials.credentials:
            raise Refusal(
                401, "missing_token", "send the consumer's token as Authorization: Bearer"
            )
        with Session(self.registry) as session:
            consumer = consumer_by_token(session, credentials.credentials)
        if consumer is None:
            raise Refusal(401, "unknown_consumer", "the token belongs to no registered consumer")
        caller.consumer_id, caller.consumer_name = consumer.id, consumer.name
        if consumer.status != ConsumerStatus.ACTIVE.value:
            raise Refusal(401, "revoked_consumer", f"consumer {consumer.name!r} was revoked")
        return consumer

    def read_case(self, caller: _Caller, raw: str | None) -> Refusal | None:
        """Note the case number for the audit trail; the refusal to raise if it is unusable,
        after authentication, so that an unknown caller learns nothing about the rules."""
        if raw is None or not raw.strip():
            return Refusal(
                422,
                "case_number.missing",
                f"state the purpose: send the case number being handled in {CASE_HEADER}",
            )
        case = unquote(raw.strip())
        if not _CASE_NUMBER.fullmatch(case):
            return Refusal(
                422,
                "case_number.format",
                "a case number is 1-64 printable characters (percent-encode non-ASCII ones)",
            )
        caller.case_number = case
        return None

    def admit(
        self, caller: _Caller, token: HTTPAuthorizationCredentials | None, case: str | None
    ) -> Any:
        """The consumer, once its token and the stated purpose are in order."""
        unusable = self.read_case(caller, case)
        consumer = self.authenticate(caller, token)
        if unusable is not None:
            raise unusable
        return consumer

    def allow(self, consumer: Any, spec: ResourceSpec) -> Decision:
        with Session(self.registry) as session:
            return check_access(session, consumer, spec.code, spec.sharing.type)

    def run(self, caller: _Caller, work: Callable[[], dict[str, Any]]) -> JSONResponse:
        """Do one lookup and audit it, whatever happens. The answer is sent as it is: the
        response models document it, and validating it twice costs more than the lookup."""
        status, outcome = 200, "allowed"
        try:
            return JSONResponse(work(), headers={"X-Request-Id": caller.request_id})
        except Refusal as refusal:
            status, outcome = refusal.status, refusal.reason
            return _problem(caller.request_id, refusal)
        except BaseException:
            status, outcome = 500, "error"
            raise
        finally:
            self.audit_writer.append(
                Lookup(
                    action=caller.action,
                    outcome=outcome,
                    status=status,
                    request_id=caller.request_id,
                    consumer_id=caller.consumer_id,
                    consumer_name=caller.consumer_name,
                    case_number=caller.case_number,
                    resource_code=caller.resource_code,
                    holder_id=caller.holder_id,
                )
            )
            log.info(
                "%s %s by %s for case %s: %s %s",
                caller.action,
                mask_id(caller.holder_id) if caller.holder_id else "-",
                caller.consumer_name or "-",
                caller.case_number or "-",
                status,
                outcome,
                extra={"request_id": caller.request_id, "resource": caller.resource_code},
            )

    # -- the lookups

    def certificate_out(self, row: sa.RowMapping, today: date) -> CertificateOut:
        return CertificateOut(
            status=effective_status(row, today),
            record=signed_record(row),
            signature=Signature(key_id=row["key_id"], value=row["signature"]),
        )

    def by_holder(
        self, caller: _Caller, consumer: Any, holder_id: str, type_code: str | None
    ) -> dict[str, Any]:
        holder = normalise_holder_id(holder_id)
        reason = _holder_check(holder)
        if reason is not None:
            raise Refusal(422, reason, f"holder_id {mask_id(holder)} fails the check {reason}")

        kinds = [s for s in self.resources().values() if s.certificate is not None]
        if type_code is not None:
            kinds = [s for s in kinds if s.certificate and s.certificate.type_code == type_code]
            if not kinds:
                raise Refusal(
                    404, "unknown_certificate_type", f"no registered certificate type {type_code}"
                )
            caller.resource_code = kinds[0].code if len(kinds) == 1 else "certificates"
        else:
            caller.resource_code = "certificates"
        decisions = {s.code: self.allow(consumer, s) for s in kinds}
        readable = [code for code, d in decisions.items() if d is Decision.ALLOWED]
        if not readable:
            _refuse(decisions)

        today = local_today()
        with self.cloud.connect() as conn:
            rows = conn.execute(
                sa.select(certificates)
                .where(
                    certificates.c.holder_id == holder,
                    certificates.c.resource_code.in_(readable),
                    certificates.c.superseded_at.is_(None),
                    *([] if type_code is None else [certificates.c.type_code == type_code]),
                )
                .order_by(certificates.c.issue_date, certificates.c.id)
            ).mappings()
            found = [self.certificate_out(row, today) for row in rows]
        if not found:
            raise Refusal(404, "no_match", "no verified certificate of this holder")
        return CertificateList(
            request_id=caller.request_id, holder_id=mask_id(holder), certificates=found
        ).model_dump(mode="json")

    def by_identifier(self, caller: _Caller, consumer: Any, identifier: str) -> dict[str, Any]:
        reason = check_cert_id(identifier)
        if reason is not None:
            raise Refusal(422, reason, f"the certificate identifier fails the check {reason}")

        with self.cloud.connect() as conn:
            rows = list(
                conn.execute(
                    sa.select(certificates)
                    .where(certificates.c.identifier == identifier)
                    .order_by(certificates.c.id)
                ).mappings()
            )
        if not rows:
            raise Refusal(404, "no_match", "no verified certificate has this identifier")
        current = [r for r in rows if r["superseded_at"] is None]
        if len({r["resource_code"] for r in current}) > 1:
            caller.holder_id = current[0]["holder_id"]
            raise Refusal(
                409,
                "several_matches",
                f"{len(current)} current certificates in different resources have this "
                f"identifier: {', '.join(sorted({r['resource_code'] for r in current}))}",
            )
        row = current[-1] if current else rows[-1]
        caller.resource_code, caller.holder_id = row["resource_code"], row["holder_id"]
        spec = self.resources().get(row["resource_code"])
        if spec is None:
            raise Refusal(404, "no_match", "the resource holding this certificate was withdrawn")
        decision = self.allow(consumer, spec)
        if decision is not Decision.ALLOWED:
            _refuse({spec.code: decision})

        out = self.certificate_out(row, local_today())
        try:
            self.keys.public_key.verify(
                base64.b64decode(row["signature"]), canonical(signed_record(row))
            )
            genuine = row["key_id"] == self.keys.key_id
        except (InvalidSignature, ValueError):
            genuine = False
        return CertificateCheck(
            request_id=caller.request_id, genuine=genuine, status=out.status, certificate=out
        ).model_dump(mode="json")

    def record(self, caller: _Caller, consumer: Any, code: str, key: str) -> dict[str, Any]:
        spec = self.resources().get(code)
        if spec is None:
            raise Refusal(404, "unknown_resource", f"no resource {code} is registered")
        caller.resource_code = code
        keys = spec.source.primary_key
        parts = key.split(",")
        caller.holder_id = parts[0].strip() or None
        decision = self.allow(consumer, spec)
        if decision is not Decision.ALLOWED:
            _refuse({code: decision})
        if len(parts) > len(keys):
            raise Refusal(
                422,
                "key.parts",
                f"{code} has a key of {len(keys)} part(s) ({', '.join(keys)}), "
                f"separated by commas; got {len(parts)}",
            )
        if any(_CONTROL.search(part) for part in parts):
            raise Refusal(422, "key.format", "a key holds no control characters")
        for name, value in zip(keys, parts, strict=False):
            for check in spec.item(name).checks:
                reason = CHECKS[check].scalar(value)
                if reason is not None:
                    raise Refusal(422, reason, f"key item {name} fails the check {reason}")

        if not spec.target.database:
            raise Refusal(404, "no_match", f"{code} is kept in the lake only, not for lookups")
        table = self.store.target(spec)
        where = [table.c[name] == value for name, value in zip(keys, parts, strict=False)]
        with self.cloud.connect() as conn:
            if not sa.inspect(conn).has_table(table.name):
                raise Refusal(404, "no_match", f"{code} has not been synced yet")
            rows = conn.execute(
                sa.select(table).where(*where, table.c[DELETED_AT].is_(None)).limit(2)
            ).mappings()
            found = [dict(r) for r in rows]
        if not found:
            raise Refusal(404, "no_match", f"no record of {code} has this key")
        if len(found) > 1:
            raise Refusal(
                409,
                "several_matches",
                f"the key matches several records of {code}; give all of {', '.join(keys)}",
            )

        row = found[0]
        record = {item.name: _plain(row[item.name]) for item in spec.items}
        provenance = {"run_id": row[RUN_ID], "loaded_at": _plain(row[LOADED_AT])}
        signature = self.signature({"resource": code, "record": record, "provenance": provenance})
        return RecordOut(
            request_id=caller.request_id,
            resource=code,
            record=record,
            provenance=provenance,
            signature=signature,
        ).model_dump(mode="json")


def _lookup_engine(engine: sa.Engine) -> sa.Engine:
    """A server database's engine sized for 32 and more concurrent lookups, without the ping
    before every checkout that the shared engines make: that ping was a third of a lookup's
    round trips. After a database restart each pooled connection fails one lookup (a 500)
    before the pool replaces it."""
    if engine.dialect.name == "sqlite":
        return engine
    return sa.create_engine(
        engine.url, pool_size=20, max_overflow=20, pool_pre_ping=False, pool_recycle=3600
    )


def _holder_check(holder: str) -> str | None:
    """A holder id is a resident id (18 digits, or 17 and X) or else a credit code."""
    if _RESIDENT_SHAPE.fullmatch(holder) or holder.isdigit():
        return check_resident_id(holder)
    return check_uscc(holder)


def _refuse(decisions: dict[str, Decision]) -> None:
    """Raise the most useful refusal: a pending application, then not granted, then not shared."""
    for decision, message in (
        (Decision.APPLICATION_PENDING, "the application to read {} awaits the provider"),
        (Decision.NOT_GRANTED, "not granted: apply to read {} (`govbus applications submit`)"),
        (Decision.NOT_SHARED, "{} is not shared"),
    ):
        codes = sorted(c for c, d in decisions.items() if d is decision)
        if codes:
            raise Refusal(403, decision.value, message.format(", ".join(codes)))
    raise Refusal(404, "no_match", "no certificate resource is registered")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _problem(request_id: str, refusal: Refusal) -> JSONResponse:
    body = Problem(
        request_id=request_id, status=refusal.status, reason=refusal.reason, message=str(refusal)
    )
    return JSONResponse(
        body.model_dump(), status_code=refusal.status, headers={"X-Request-Id": request_id}
    )


# -- the application -----------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="the consumer's API token")
Token = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Case = Annotated[
    str | None,
    Header(alias=CASE_HEADER, description="the case number being handled: the purpose"),
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The lookup service for ``settings`` (from the environment by default)."""
    service = _Service(settings or load_settings())
    app = FastAPI(
        title="govbus intake lookup",
        version="1",
        description=__doc__,
        openapi_url="/openapi.json",
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The parameters could not be read at all; audited like any refused lookup.
        # Only the location and the rule are reported: the input may hold an id number.
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        caller = _Caller(str(uuid.uuid4()), f"{request.method} {request.url.path}"[:40])
        refusal = Refusal(422, "request.malformed", f"malformed request: {fields}")

        def fail() -> dict[str, Any]:
            raise refusal

        result = await run_in_threadpool(service.run, caller, fail)
        assert isinstance(result, JSONResponse)
        return result

    @app.get(
        "/v1/certificates",
        response_model=CertificateList,
        responses=_ERRORS,
        summary="A holder's verified certificates",
    )
    def certificates_by_holder(
        request: Request,
        token: Token,
        holder_id: Annotated[
            str, Query(description="resident id (type 111) or unified social credit code (001)")
        ],
        type: Annotated[str | None, Query(description="certificate type code")] = None,
        case_number: Case = None,
    ) -> Any:
        caller = _Caller(str(uuid.uuid4()), "certificates.by_holder", holder_id=holder_id)

        def work() -> dict[str, Any]:
            consumer = service.admit(caller, token, case_number)
            return service.by_holder(caller, consumer, holder_id, type)

        return service.run(caller, work)

    @app.get(
        "/v1/certificates/{identifier}",
        response_model=CertificateCheck,
        responses=_ERRORS,
        summary="Whether a certificate is genuine, and its status now",
    )
    def certificate_by_identifier(
        request: Request,
        token: Token,
        identifier: Annotated[str, Path(description="1.2.156.3005.2... identifier")],
        case_number: Case = None,
    ) -> Any:
        caller = _Caller(str(uuid.uuid4()), "certificates.by_identifier")

        def work() -> dict[str, Any]:
            consumer = service.admit(caller, token, case_number)
            return service.by_identifier(caller, consumer, identifier)

        return service.run(caller, work)

    @app.get(
        "/v1/resources/{code}/records",
        response_model=RecordOut,
        responses=_ERRORS,
        summary="A record of a resource by its primary key",
    )
    def record_by_key(
        request: Request,
        token: Token,
        code: Annotated[str, Path(description="resource code, e.g. 330400-SCJG-0001")],
        key: Annotated[str, Query(description="primary key; parts of a composite key by commas")],
        case_number: Case = None,
    ) -> Any:
        caller = _Caller(str(uuid.uuid4()), "records.by_key")

        def work() -> dict[str, Any]:
            consumer = service.admit(caller, token, case_number)
            return service.record(caller, consumer, code, key)

        return service.run(caller, work)

    @app.get("/v1/signing-key", response_model=SigningKey, summary="The bus's public key")
    def signing_key() -> SigningKey:
        return SigningKey(
            algorithm=SIGNATURE_ALGORITHM,
            key_id=service.keys.key_id,
            public_key_pem=service.keys.public_pem(),
        )

    return app

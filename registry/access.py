"""Who may read what: consumers, their applications for conditional resources, and grants.

Intake systems at service windows are *consumers*. Each holds an API token; the registry keeps only
its SHA-256, so a leaked registry does not leak tokens, and a token is shown once, when the
consumer is added. The sharing type of a resource decides access:

- unconditional (无条件共享): every active consumer may read it;
- conditional (有条件共享): a consumer applies with a stated purpose, the provider approves, and
  the approval becomes a grant;
- none (不予共享): nobody reads it through the bus.

The provider must reply to an application within 10 working days counted with the official
calendar (``registry.calendar``); pending applications past that day are overdue.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from govbus.errors import (
    ApplicationDecided,
    ConfigError,
    NotTheProvider,
    UnknownApplication,
    UnknownConsumer,
)
from registry.calendar import add_working_days
from registry.catalogue import SharingType
from registry.models import Base
from registry.resources import get_resource

__all__ = [
    "REPLY_WORKING_DAYS",
    "ApplicationStatus",
    "ConsumerStatus",
    "Decision",
    "Consumer",
    "Application",
    "Grant",
    "NewConsumer",
    "add_consumer",
    "list_consumers",
    "revoke_consumer",
    "consumer_by_token",
    "hash_token",
    "submit_application",
    "decide_application",
    "list_applications",
    "reply_deadline",
    "check_access",
    "local_today",
]

#: working days a provider has to answer an application
REPLY_WORKING_DAYS = 10
#: the zone in which "today" and the submission day are read
LOCAL_ZONE = ZoneInfo("Asia/Shanghai")
TOKEN_PREFIX = "gbt_"  # noqa: S105 - a marker that makes tokens recognisable, not a secret


class ConsumerStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class ApplicationStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"


class Decision(StrEnum):
    """The answer to "may this consumer read this resource"; anything but ALLOWED is a refusal."""

    ALLOWED = "allowed"
    NOT_SHARED = "not_shared"  # the resource's sharing type is none
    NOT_GRANTED = "not_granted"  # conditional, and no approved application
    APPLICATION_PENDING = "application_pending"  # conditional, an application awaits the provider


class Consumer(Base):
    """An intake system (or other reader) registered with the bus."""

    __tablename__ = "consumers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    department_code: Mapped[str | None] = mapped_column(String(18))
    department_name: Mapped[str | None] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_hint: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=ConsumerStatus.ACTIVE.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Application(Base):
    """A consumer's request to read a conditional resource, with the purpose it states."""

    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consumer_id: Mapped[int] = mapped_column(ForeignKey("consumers.id"), index=True)
    resource_code: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_on: Mapped[date] = mapped_column(Date)
    deadline: Mapped[date] = mapped_column(Date, index=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(18))
    reply: Mapped[str | None] = mapped_column(Text)


class Grant(Base):
    """Permission for one consumer to read one conditional resource, from an approval."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("consumer_id", "resource_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consumer_id: Mapped[int] = mapped_column(ForeignKey("consumers.id"), index=True)
    resource_code: Mapped[str] = mapped_column(String(64))
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"))
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class NewConsumer:
    """A consumer just added, with its token: the only time the token is ever shown."""

    id: int
    name: str
    token: str


def local_today() -> date:
    return datetime.now(LOCAL_ZONE).date()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- consumers -----------------------------------------------------------------------------------


def add_consumer(
    session: Session,
    name: str,
    *,
    department_code: str | None = None,
    department_name: str | None = None,
) -> NewConsumer:
    """Register a consumer and make its token (32 random bytes); only the hash is stored."""
    if not name.strip():
        raise ConfigError("a consumer needs a non-empty name")
    if session.scalars(select(Consumer).where(Consumer.name == name)).first() is not None:
        raise ConfigError(
            f"consumer {name!r} already exists; revoke it and add one under a new name to "
            f"issue a new token"
        )

    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    consumer = Consumer(
        name=name,
        department_code=department_code,
        department_name=department_name,
        token_sha256=hash_token(token),
        token_hint=token[:8],
        status=ConsumerStatus.ACTIVE.value,
        created_at=datetime.now(UTC),
    )
    session.add(consumer)
    session.flush()
    return NewConsumer(id=consumer.id, name=name, token=token)


def _consumer(session: Session, name: str) -> Consumer:
    consumer = session.scalars(select(Consumer).where(Consumer.name == name)).first()
    if consumer is None:
        raise UnknownConsumer(name)
    return consumer


def list_consumers(session: Session) -> list[Consumer]:
    return list(session.scalars(select(Consumer).order_by(Consumer.id)))


def revoke_consumer(session: Session, name: str) -> Consumer:
    """Revoke a consumer; its token stops working at once. Revoking twice changes nothing."""
    consumer = _consumer(session, name)
    if consumer.status != ConsumerStatus.REVOKED.value:
        consumer.status = ConsumerStatus.REVOKED.value
        consumer.revoked_at = datetime.now(UTC)
    return consumer


def consumer_by_token(session: Session, token: str) -> Consumer | None:
    """The consumer holding ``token``, active or revoked; None for an unknown token."""
    return session.scalars(
        select(Consumer).where(Consumer.token_sha256 == hash_token(token))
    ).first()


# -- applications --------------------------------------------------------------------------------


def reply_deadline(submitted_on: date) -> date:
    """The last day the provider may answer: 10 working days after submission, which does not
    count itself; weekends and holidays are skipped and make-up working days counted."""
    return add_working_days(submitted_on, REPLY_WORKING_DAYS)


def submit_application(
    session: Session,
    consumer_name: str,
    resource_code: str,
    purpose: str,
    *,
    submitted_on: date | None = None,
) -> Application:
    """File an application to read a conditional resource."""
    consumer = _consumer(session, consumer_name)
    if consumer.status != ConsumerStatus.ACTIVE.value:
        raise ConfigError(f"consumer {consumer_name!r} is revoked and cannot apply")
    if not purpose.strip():
        raise ConfigError("an application must state its purpose (--purpose)")
    spec = get_resource(session.get_bind(), resource_code).spec  # type: ignore[arg-type]
    if spec.sharing.type is not SharingType.CONDITIONAL:
        raise ConfigError(
            f"resource {resource_code} is shared {spec.sharing.type.value}: only conditional "
            f"resources take applications"
        )

    day = submitted_on or local_today()
    application = Application(
        consumer_id=consumer.id,
        resource_code=resource_code,
        purpose=purpose.strip(),
        status=ApplicationStatus.PENDING.value,
        submitted_at=datetime.now(UTC),
        submitted_on=day,
        deadline=reply_deadline(day),
    )
    session.add(application)
    session.flush()
    return application


def decide_application(
    session: Session,
    application_id: int,
    *,
    approve: bool,
    provider_code: str,
    reply: str | None = None,
) -> Application:
    """Approve (and grant) or deny an application, as the resource's provider."""
    application = session.get(Application, application_id)
    if application is None:
        raise UnknownApplication(application_id)
    if application.status != ApplicationStatus.PENDING.value:
        raise ApplicationDecided(application_id, application.status)
    spec = get_resource(session.get_bind(), application.resource_code).spec  # type: ignore[arg-type]
    if provider_code != spec.provider.code:
        raise NotTheProvider(application.resource_code, spec.provider.code, provider_code)

    now = datetime.now(UTC)
    application.status = (ApplicationStatus.APPROVED if approve else ApplicationStatus.DENIED).value
    application.decided_at = now
    application.decided_by = provider_code
    application.reply = reply
    if approve:
        existing = session.scalars(
            select(Grant).where(
                Grant.consumer_id == application.consumer_id,
                Grant.resource_code == application.resource_code,
            )
        ).first()
        if existing is None:
            session.add(
                Grant(
                    consumer_id=application.consumer_id,
                    resource_code=application.resource_code,
                    application_id=application.id,
                    granted_at=now,
                )
            )
    session.flush()
    return application


def list_applications(
    session: Session, *, overdue: bool = False, today: date | None = None
) -> list[tuple[Application, str]]:
    """Applications with their consumer's name, oldest first; ``overdue``: pending ones whose
    reply deadline has passed by ``today``."""
    query = select(Application, Consumer.name).join(
        Consumer, Consumer.id == Application.consumer_id
    )
    if overdue:
        query = query.where(
            Application.status == ApplicationStatus.PENDING.value,
            Application.deadline < (today or local_today()),
        )
    return [(a, n) for a, n in session.execute(query.order_by(Application.id))]


# -- the rule ------------------------------------------------------------------------------------


def check_access(session: Session, consumer: Consumer, code: str, sharing: SharingType) -> Decision:
    """Whether an active ``consumer`` may read resource ``code`` shared as ``sharing``."""
    if sharing is SharingType.NONE:
        return Decision.NOT_SHARED
    if sharing is SharingType.UNCONDITIONAL:
        return Decision.ALLOWED

    grant = session.scalars(
        select(Grant.id).where(Grant.consumer_id == consumer.id, Grant.resource_code == code)
    ).first()
    if grant is not None:
        return Decision.ALLOWED
    pending = session.scalars(
        select(Application.id).where(
            Application.consumer_id == consumer.id,
            Application.resource_code == code,
            Application.status == ApplicationStatus.PENDING.value,
        )
    ).first()
    return Decision.NOT_GRANTED if pending is None else Decision.APPLICATION_PENDING

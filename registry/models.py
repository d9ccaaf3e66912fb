"""Registry tables: the catalogue's resource versions and the history of sync runs.

The registry is the shared catalogue every node reads. Its schema is managed by Alembic
(``registry/migrations``); change a model here only together with a new migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "ResourceVersion", "Run"]


class Base(DeclarativeBase):
    pass


class ResourceVersion(Base):
    """One version of a resource definition; a changed definition becomes the next version."""

    __tablename__ = "resource_versions"
    __table_args__ = (UniqueConstraint("code", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    provider_code: Mapped[str] = mapped_column(String(18), index=True)
    provider_name: Mapped[str] = mapped_column(String(200))
    sharing_type: Mapped[str] = mapped_column(String(16))
    update_cycle: Mapped[str] = mapped_column(String(16))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    definition_hash: Mapped[str] = mapped_column(String(64))
    current: Mapped[bool] = mapped_column(default=True, index=True)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source_file: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """One sync run of a resource, kept as history."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    resource_code: Mapped[str] = mapped_column(String(64), index=True)
    resource_version: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    read: Mapped[int] = mapped_column(BigInteger, default=0)
    loaded: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float | None] = mapped_column(Float)
    cursor_from: Mapped[str | None] = mapped_column(Text)
    cursor_to: Mapped[str | None] = mapped_column(Text)
    partition: Mapped[str | None] = mapped_column(String(64))
    drift: Mapped[list[str] | None] = mapped_column(JSON)
    message: Mapped[str | None] = mapped_column(Text)

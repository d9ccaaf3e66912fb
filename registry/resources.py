"""Applying resource definitions to the registry and reading them back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from govbus.errors import UnknownResource
from registry.catalogue import ResourceSpec, load_resource_file
from registry.models import ResourceVersion

__all__ = ["Applied", "Registered", "apply_files", "apply_specs", "list_current", "get_resource"]


@dataclass(frozen=True)
class Applied:
    code: str
    version: int
    outcome: str  # "created", "updated" or "unchanged"


@dataclass(frozen=True)
class Registered:
    """A resource as the registry holds it now."""

    spec: ResourceSpec
    version: int
    applied_at: datetime


def apply_files(engine: Engine, paths: Iterable[Path]) -> list[Applied]:
    """Apply every resource in the files, or none: all files are checked before any is written."""
    specs: list[tuple[ResourceSpec, str]] = []
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.y*ml")) if path.is_dir() else [path])
    for file in files:
        specs.extend((spec, str(file)) for spec in load_resource_file(file))
    return apply_specs(engine, specs)


def apply_specs(engine: Engine, specs: list[tuple[ResourceSpec, str]]) -> list[Applied]:
    results = []
    with Session(engine) as session, session.begin():
        for spec, source_file in specs:
            results.append(_apply_one(session, spec, source_file))
    return results


def _apply_one(session: Session, spec: ResourceSpec, source_file: str) -> Applied:
    digest = spec.definition_hash()
    current = session.scalars(
        select(ResourceVersion).where(ResourceVersion.code == spec.code, ResourceVersion.current)
    ).one_or_none()
    if current is not None and current.definition_hash == digest:
        return Applied(spec.code, current.version, "unchanged")

    version = 1 if current is None else current.version + 1
    session.execute(
        update(ResourceVersion).where(ResourceVersion.code == spec.code).values(current=False)
    )
    session.add(
        ResourceVersion(
            code=spec.code,
            version=version,
            name=spec.name,
            provider_code=spec.provider.code,
            provider_name=spec.provider.name,
            sharing_type=spec.sharing.type.value,
            update_cycle=spec.update_cycle.value,
            definition=spec.definition(),
            definition_hash=digest,
            current=True,
            applied_at=datetime.now(UTC),
            source_file=source_file,
        )
    )
    session.flush()
    return Applied(spec.code, version, "created" if current is None else "updated")


def _registered(row: ResourceVersion) -> Registered:
    return Registered(
        spec=ResourceSpec.model_validate(row.definition),
        version=row.version,
        applied_at=row.applied_at,
    )


def list_current(engine: Engine) -> list[Registered]:
    with Session(engine) as session:
        rows = session.scalars(
            select(ResourceVersion).where(ResourceVersion.current).order_by(ResourceVersion.code)
        ).all()
        return [_registered(row) for row in rows]


def get_resource(engine: Engine, code: str, version: int | None = None) -> Registered:
    query = select(ResourceVersion).where(ResourceVersion.code == code)
    query = query.where(
        ResourceVersion.current if version is None else ResourceVersion.version == version
    )
    with Session(engine) as session:
        row = session.scalars(query).one_or_none()
        if row is None:
            raise UnknownResource(code)
        return _registered(row)

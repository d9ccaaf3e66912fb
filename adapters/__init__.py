"""Sources (where departments' records are read) and sinks (the cloud database and the lake)."""

from __future__ import annotations

from typing import Any

from govbus.errors import ConfigError
from registry.catalogue import ResourceSpec

__all__ = ["open_source"]


def open_source(spec: ResourceSpec) -> Any:
    """The reader for a resource's ``source.kind``."""
    if spec.source.kind == "sql":
        from adapters.sql_source import SqlSource

        return SqlSource(spec)
    raise ConfigError(
        f"{spec.code}: source kind {spec.source.kind!r} has no reader in this version of govbus"
    )

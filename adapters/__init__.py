"""Sources (where departments' records are read) and sinks (the cloud database and the lake)."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from govbus.errors import ConfigError
from registry.catalogue import ResourceSpec, expand_env

__all__ = ["open_source"]

log = logging.getLogger(__name__)


def open_source(spec: ResourceSpec) -> Any:
    """The reader for a resource's ``source.kind``."""
    if spec.source.kind == "sql":
        from adapters.sql_source import SqlSource

        if _postgres_fast_path(spec):
            from adapters.postgres_source import PostgresSource

            return PostgresSource(spec)
        return SqlSource(spec)
    if spec.source.kind == "files":
        from adapters.file_source import FileSource

        return FileSource(spec)
    if spec.source.kind == "http":
        from adapters.http_source import HttpSource

        return HttpSource(spec)
    raise ConfigError(
        f"{spec.code}: source kind {spec.source.kind!r} has no reader in this version of govbus"
    )


def _postgres_fast_path(spec: ResourceSpec) -> bool:
    """Whether a sql source is PostgreSQL read through ADBC's binary COPY.

    ``source.options.reader: sqlalchemy`` keeps the generic reader (row tuples through the
    SQLAlchemy driver), which is slower but needs nothing beyond the database driver.
    """
    if spec.source.options.get("reader") == "sqlalchemy":
        return False
    try:
        url = sa.engine.make_url(expand_env(spec.source.url))
    except sa.exc.ArgumentError:
        return False  # SqlSource reports the unusable URL
    if url.get_backend_name() != "postgresql":
        return False
    try:
        import adbc_driver_postgresql  # noqa: F401
    except ImportError:
        log.warning(
            "%s: adbc-driver-postgresql is not installed; reading PostgreSQL row by row",
            spec.code,
        )
        return False
    return True

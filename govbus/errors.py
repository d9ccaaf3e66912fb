"""One exception root for govbus, with leaves named after what failed.

Errors marked ``retryable`` are worth retrying as they are (a database that went away, a network
that dropped); every other error needs a person to change something first. Airflow tasks use the
mark to decide whether a retry can help.
"""

from __future__ import annotations

__all__ = [
    "GovbusError",
    "ConfigError",
    "CatalogueError",
    "UnknownResource",
    "SourceError",
    "SourceUnavailable",
    "SinkError",
    "SinkUnavailable",
    "SchemaDrift",
    "RunInProgress",
    "ValidationFailed",
    "FerryError",
    "BundleRefused",
    "TransportError",
    "AccessDenied",
    "NotTheProvider",
    "UnknownConsumer",
    "UnknownApplication",
    "ApplicationDecided",
    "NotACertificateResource",
    "is_retryable",
]


class GovbusError(Exception):
    """Root of every error govbus raises on purpose."""

    retryable: bool = False
    #: exit code of the command line when this error ends a command
    exit_code: int = 1


class ConfigError(GovbusError):
    """A setting, environment variable or command-line argument is wrong."""

    exit_code = 2


class CatalogueError(ConfigError):
    """A resource definition is invalid; the message names the file, field and allowed values."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: resource definition refused, nothing applied:\n{lines}")


class UnknownResource(ConfigError):
    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(
            f"resource {code!r} is not in the registry; "
            "list resources with `govbus registry list` or apply one with `govbus registry apply`"
        )


class SourceError(GovbusError):
    """Reading from a department's source failed."""


class SourceUnavailable(SourceError):
    """The source could not be reached; a later attempt may succeed."""

    retryable = True


class SinkError(GovbusError):
    """Writing to the cloud database or the lake failed."""


class SinkUnavailable(SinkError):
    retryable = True


class SchemaDrift(GovbusError):
    """The source's columns no longer match the registered items in a way that needs a person."""


class RunInProgress(GovbusError):
    """Another run of the same resource holds its lock; this one did not start."""

    retryable = True


class ValidationFailed(GovbusError):
    """A whole batch or file could not be validated (not a single bad row: rows go to rejects)."""


class FerryError(GovbusError):
    """Crossing a network gap failed."""


class BundleRefused(FerryError):
    """A bundle failed a check; nothing from it was imported."""


class TransportError(FerryError):
    retryable = True


class AccessDenied(GovbusError):
    """A consumer is not allowed to read what it asked for."""


class NotTheProvider(AccessDenied):
    """Someone other than a resource's provider tried to decide an application for it."""

    def __init__(self, code: str, provider: str, given: str) -> None:
        self.code = code
        self.provider = provider
        super().__init__(
            f"only the provider of {code} ({provider}) can decide its applications, not {given}; "
            f"pass --provider {provider}"
        )


class UnknownConsumer(ConfigError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"consumer {name!r} is not registered; list consumers with `govbus consumers list` "
            f"or add one with `govbus consumers add`"
        )


class UnknownApplication(ConfigError):
    def __init__(self, application_id: int) -> None:
        self.application_id = application_id
        super().__init__(
            f"application {application_id} does not exist; list them with "
            f"`govbus applications list`"
        )


class ApplicationDecided(GovbusError):
    """An application that was already approved or denied cannot be decided again."""

    def __init__(self, application_id: int, status: str) -> None:
        self.application_id = application_id
        self.status = status
        super().__init__(
            f"application {application_id} is already {status}; submit a new application "
            f"to change access"
        )


class NotACertificateResource(ConfigError):
    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(
            f"resource {code} has no `certificate:` section, so it holds no certificates to "
            f"ingest; add one naming type_name and type_code and apply it again"
        )


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying the failed work unchanged can succeed."""
    return bool(getattr(exc, "retryable", False))

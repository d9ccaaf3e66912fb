"""Commands for lookups: consumers, applications, the certificate library, the service, the audit.

govbus consumers add|list|revoke
govbus applications submit|approve|deny|list [--overdue]
govbus certificates ingest CODE
govbus serve
govbus audit verify | holder ID
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from govbus.errors import ConfigError
from govbus.settings import Settings, load_settings

__all__ = ["consumers_app", "applications_app", "certificates_app", "audit_app", "serve"]

console = Console()
err = Console(stderr=True)

consumers_app = typer.Typer(help="Intake systems that may look data up.", no_args_is_help=True)
applications_app = typer.Typer(
    help="Applications to read conditional resources, and the providers' answers.",
    no_args_is_help=True,
)
certificates_app = typer.Typer(help="The certificate library.", no_args_is_help=True)
audit_app = typer.Typer(help="The lookup audit trail.", no_args_is_help=True)


def _settings() -> Settings:
    settings = load_settings()
    settings.ensure_dirs()
    return settings


def _session():  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    from registry.db import registry_engine

    return Session(registry_engine(_settings().registry_url), expire_on_commit=False)


def _audit_log():  # type: ignore[no-untyped-def]
    from govbus.certificates import bus_keys
    from registry.audit import AuditLog
    from registry.db import registry_engine

    settings = _settings()
    return AuditLog(registry_engine(settings.registry_url), bus_keys(settings).audit_secret)


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"not a date: {value!r}; write it as YYYY-MM-DD") from None


# -- consumers -----------------------------------------------------------------------------------


@consumers_app.command("add")
def consumers_add(
    name: Annotated[str, typer.Argument(help="A name for the intake system.")],
    department_code: Annotated[
        str | None, typer.Option("--department-code", help="The department's USCC.")
    ] = None,
    department_name: Annotated[
        str | None, typer.Option("--department-name", help="The department's name.")
    ] = None,
) -> None:
    """Register a consumer and print its API token (shown this once; only its hash is kept)."""
    from registry.access import add_consumer

    with _session() as session, session.begin():
        new = add_consumer(
            session, name, department_code=department_code, department_name=department_name
        )
    err.print(f"consumer {new.name} added (id {new.id}); its token, shown only now:")
    print(new.token)


@consumers_app.command("list")
def consumers_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List consumers with their status (never their tokens)."""
    from registry.access import list_consumers

    with _session() as session:
        rows = [
            {
                "id": c.id,
                "name": c.name,
                "department_code": c.department_code,
                "department_name": c.department_name,
                "status": c.status,
                "token_hint": c.token_hint + "...",
                "created_at": c.created_at.isoformat(),
            }
            for c in list_consumers(session)
        ]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table("id", "name", "department", "status", "token", "created")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["name"],
            r["department_name"] or r["department_code"] or "",
            r["status"],
            r["token_hint"],
            r["created_at"][:19],
        )
    console.print(table)


@consumers_app.command("revoke")
def consumers_revoke(name: str) -> None:
    """Revoke a consumer: its token stops working at once."""
    from registry.access import revoke_consumer

    with _session() as session, session.begin():
        revoke_consumer(session, name)
    console.print(f"consumer {name} revoked")


# -- applications --------------------------------------------------------------------------------


def _application_row(application: Any, consumer: str, today: date) -> dict[str, Any]:
    return {
        "id": application.id,
        "consumer": consumer,
        "resource": application.resource_code,
        "purpose": application.purpose,
        "status": application.status,
        "submitted_on": application.submitted_on.isoformat(),
        "deadline": application.deadline.isoformat(),
        "overdue": application.status == "pending" and application.deadline < today,
        "decided_by": application.decided_by,
        "reply": application.reply,
    }


@applications_app.command("submit")
def applications_submit(
    consumer: Annotated[str, typer.Option(help="The applying consumer's name.")],
    resource: Annotated[str, typer.Option(help="The conditional resource's code.")],
    purpose: Annotated[str, typer.Option(help="What the data is needed for.")],
    on: Annotated[str | None, typer.Option(help="Submission day (default today).")] = None,
) -> None:
    """Apply to read a conditional resource; the provider answers within 10 working days."""
    from registry.access import submit_application

    with _session() as session, session.begin():
        application = submit_application(
            session, consumer, resource, purpose, submitted_on=_day(on)
        )
    console.print(
        f"application {application.id} submitted; the provider must reply by "
        f"{application.deadline.isoformat()}"
    )


def _decide(application_id: int, approve: bool, provider: str, reply: str | None) -> None:
    from registry.access import decide_application

    with _session() as session, session.begin():
        application = decide_application(
            session, application_id, approve=approve, provider_code=provider, reply=reply
        )
    console.print(f"application {application.id} {application.status}")


@applications_app.command("approve")
def applications_approve(
    application_id: Annotated[int, typer.Argument(help="The application's id.")],
    provider: Annotated[str, typer.Option(help="The resource provider's USCC.")],
    reply: Annotated[str | None, typer.Option(help="A note to the consumer.")] = None,
) -> None:
    """Approve an application as the resource's provider; the consumer may read from now on."""
    _decide(application_id, True, provider, reply)


@applications_app.command("deny")
def applications_deny(
    application_id: Annotated[int, typer.Argument(help="The application's id.")],
    provider: Annotated[str, typer.Option(help="The resource provider's USCC.")],
    reply: Annotated[str | None, typer.Option(help="The reason, for the consumer.")] = None,
) -> None:
    """Deny an application as the resource's provider."""
    _decide(application_id, False, provider, reply)


@applications_app.command("list")
def applications_list(
    overdue: Annotated[
        bool, typer.Option("--overdue", help="Only pending ones past their reply deadline.")
    ] = False,
    today: Annotated[str | None, typer.Option(help="Count as if today were this day.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List applications, oldest first, with their reply deadlines."""
    from registry.access import list_applications, local_today

    day = _day(today) or local_today()
    with _session() as session:
        rows = [
            _application_row(a, name, day)
            for a, name in list_applications(session, overdue=overdue, today=day)
        ]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table("id", "consumer", "resource", "status", "submitted", "deadline", "purpose")
    for r in rows:
        deadline = r["deadline"] + (" overdue" if r["overdue"] else "")
        table.add_row(
            str(r["id"]),
            r["consumer"],
            r["resource"],
            r["status"],
            r["submitted_on"],
            deadline,
            r["purpose"][:40],
        )
    console.print(table)


# -- certificates --------------------------------------------------------------------------------


@certificates_app.command("ingest")
def certificates_ingest(
    code: Annotated[str, typer.Argument(help="A certificate resource's code.")],
) -> None:
    """Verify, sign and file the certificates the latest syncs of CODE loaded."""
    from govbus.certificates import ingest

    result = ingest(code, settings=_settings())
    table = Table("resource", "runs", "read", "verified", "unchanged", "superseded", "failed")
    table.add_row(
        result.code,
        str(result.runs),
        f"{result.read:,}",
        f"{result.verified:,}",
        f"{result.unchanged:,}",
        f"{result.superseded:,}",
        f"{result.failed:,}",
    )
    console.print(table)


# -- the service ---------------------------------------------------------------------------------


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Run the lookup API (OpenAPI document at /openapi.json, docs at /docs)."""
    import uvicorn

    _settings()
    # No access log: its lines carry query strings, and those hold full id numbers.
    uvicorn.run(
        "govbus.api:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
    )


# -- audit ---------------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit chain; name every altered, inserted or deleted entry. Exit 1 if any."""
    audit = _audit_log()
    count, findings = audit.verify()
    seq, digest = audit.head()
    for finding in findings:
        err.print(f"[red]{finding.kind}[/red] {finding}", highlight=False)
    if findings:
        raise typer.Exit(1)
    console.print(f"audit trail intact: {count} entries, head {seq} {digest}")


@audit_app.command("holder")
def audit_holder(
    holder_id: Annotated[str, typer.Argument(help="The holder's id number or credit code.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List who looked up this holder, when, for which case, and the outcome."""
    rows = [
        {
            "seq": e["seq"],
            "at": e["at"].isoformat(),
            "consumer": e["consumer_name"],
            "case_number": e["case_number"],
            "action": e["action"],
            "resource": e["resource_code"],
            "holder": e["holder_masked"],
            "outcome": e["outcome"],
            "status": e["status"],
            "request_id": e["request_id"],
        }
        for e in _audit_log().entries(holder_id=holder_id)
    ]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table("at", "consumer", "case", "action", "resource", "holder", "outcome")
    for r in rows:
        table.add_row(
            r["at"][:19],
            r["consumer"] or "(unknown)",
            r["case_number"] or "",
            r["action"],
            r["resource"] or "",
            r["holder"],
            f"{r['status']} {r['outcome']}",
        )
    console.print(table)

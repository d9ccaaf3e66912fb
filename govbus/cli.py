"""The ``govbus`` command line.

Exit codes: 0 success, 1 a run or operation failed, 2 a usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from ferry.commands import app as ferry_app
from govbus.commands import access as lookup_commands
from govbus.errors import ConfigError, GovbusError
from govbus.settings import load_settings

app = typer.Typer(
    name="govbus",
    help="Government data-sharing exchange bus: registry, sync, ferry and lookup.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
registry_app = typer.Typer(help="The resource catalogue.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
app.add_typer(lookup_commands.consumers_app, name="consumers")
app.add_typer(lookup_commands.applications_app, name="applications")
app.add_typer(lookup_commands.certificates_app, name="certificates")
app.add_typer(lookup_commands.audit_app, name="audit")
app.command("serve")(lookup_commands.serve)
app.add_typer(ferry_app, name="ferry")

console = Console()
err = Console(stderr=True)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _registry():  # type: ignore[no-untyped-def]
    from registry.db import registry_engine

    settings = load_settings()
    settings.ensure_dirs()
    return registry_engine(settings.registry_url)


# -- registry ------------------------------------------------------------------------------------


@registry_app.command("apply")
def registry_apply(
    paths: Annotated[list[Path], typer.Argument(help="YAML files or folders of them.")],
) -> None:
    """Register resources from YAML; unchanged ones stay, changed ones get a new version."""
    from registry.resources import apply_files

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"no such file or folder: {', '.join(missing)}")
    for applied in apply_files(_registry(), paths):
        console.print(f"{applied.code}  version {applied.version}  {applied.outcome}")


@registry_app.command("list")
def registry_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List registered resources (current versions)."""
    from registry.resources import list_current

    rows = list_current(_registry())
    if as_json:
        data = [
            {
                "code": r.spec.code,
                "name": r.spec.name,
                "version": r.version,
                "provider": r.spec.provider.name,
                "sharing": r.spec.sharing.type.value,
                "update_cycle": r.spec.update_cycle.value,
                "target": r.spec.target.table,
            }
            for r in rows
        ]
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    table = Table("code", "name", "version", "provider", "sharing", "cycle", "target")
    for r in rows:
        table.add_row(
            r.spec.code,
            r.spec.name,
            str(r.version),
            r.spec.provider.name,
            r.spec.sharing.type.value,
            r.spec.update_cycle.value,
            r.spec.target.table,
        )
    console.print(table)


@registry_app.command("show")
def registry_show(
    code: str,
    version: Annotated[int | None, typer.Option(help="An older version.")] = None,
) -> None:
    """Show one resource's definition as registered (environment references unexpanded)."""
    import yaml

    from registry.resources import get_resource

    registered = get_resource(_registry(), code, version)
    console.print(
        f"# {registered.spec.code} version {registered.version}, "
        f"applied {registered.applied_at:%Y-%m-%d %H:%M:%S}"
    )
    print(yaml.safe_dump(registered.spec.definition(), allow_unicode=True, sort_keys=False))


# -- sync ----------------------------------------------------------------------------------------


@app.command("sync")
def sync_command(
    code: Annotated[str, typer.Argument(help="Resource code, e.g. 330400-SCJG-0001.")],
    full: Annotated[
        bool, typer.Option("--full", help="Read everything, not from the checkpoint.")
    ] = False,
    partitions: Annotated[
        int, typer.Option(help="Split a full load into this many primary-key ranges.", min=1)
    ] = 1,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="Also compare primary keys and mark rows gone from the source as deleted.",
        ),
    ] = False,
) -> None:
    """Sync one resource from its source into the cloud database and the lake."""
    from govbus.sync import finish_partitions, plan_partitions, sync

    if reconcile and partitions > 1:
        raise ConfigError(
            "--reconcile compares all keys at once and cannot be used with --partitions"
        )
    if partitions > 1 and not full:
        raise ConfigError("--partitions needs --full: only a full load is split by key ranges")
    if partitions > 1:
        plan = plan_partitions(code, partitions)
        results = [
            _with_progress(
                code,
                lambda p, i=i, r=r: sync(
                    code, full=True, key_range=r, partition=plan.label(i), progress=p
                ),
            )
            for i, r in enumerate(plan.ranges)
        ]
        finish_partitions(plan)
    else:
        results = [
            _with_progress(code, lambda p: sync(code, full=full, progress=p, reconcile=reconcile))
        ]
    _print_results(results)


def _with_progress(code, call):  # type: ignore[no-untyped-def]
    if not console.is_terminal:
        return call(None)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(f"syncing {code}", total=None)
        return call(lambda n: bar.update(task, completed=n))


def _print_results(results) -> None:  # type: ignore[no-untyped-def]
    table = Table("resource", "read", "loaded", "rejected", "seconds", "target")
    for r in results:
        table.add_row(
            r.code, f"{r.read:,}", f"{r.loaded:,}", f"{r.rejected:,}", f"{r.seconds:.1f}", r.target
        )
    console.print(table)
    for r in results:
        if r.deleted:
            err.print(f"{r.code}: {r.deleted:,} row(s) gone from the source marked deleted")
        for note in r.drift:
            err.print(f"[yellow]drift[/yellow] {r.code}: {note}")


@app.command("runs")
def runs_command(
    code: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, newest first.")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many runs.")] = 20,
) -> None:
    """Show a resource's sync history."""
    from registry.models import Run
    from registry.resources import get_resource

    engine = _registry()
    get_resource(engine, code)
    with Session(engine) as session:
        runs = session.scalars(
            select(Run)
            .where(Run.resource_code == code)
            .order_by(Run.started_at.desc())
            .limit(limit)
        ).all()
    data = [
        {
            "run_id": r.id,
            "status": r.status,
            "mode": r.mode,
            "partition": r.partition,
            "started_at": r.started_at.isoformat(),
            "read": r.read,
            "loaded": r.loaded,
            "rejected": r.rejected,
            "seconds": r.seconds,
            "cursor_from": r.cursor_from,
            "cursor_to": r.cursor_to,
            "drift": r.drift or [],
            "message": r.message,
        }
        for r in runs
    ]
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    table = Table("started", "mode", "status", "read", "loaded", "rejected", "seconds", "message")
    for r in data:
        table.add_row(
            r["started_at"][:19],
            r["mode"],
            r["status"],
            f"{r['read']:,}",
            f"{r['loaded']:,}",
            f"{r['rejected']:,}",
            "" if r["seconds"] is None else f"{r['seconds']:.1f}",
            (r["message"] or "")[:60],
        )
    console.print(table)


@app.command("rejects")
def rejects_command(
    code: str,
    run: Annotated[str | None, typer.Option(help="Only this run id.")] = None,
    limit: Annotated[int, typer.Option(help="How many rejects.")] = 50,
) -> None:
    """Show rejected rows with their reasons (id numbers masked)."""
    import sqlalchemy as sa

    from adapters.cloud import rejects
    from govbus.sync import cloud_for

    cloud = cloud_for(load_settings())
    query = sa.select(rejects).where(rejects.c.resource_code == code)
    if run:
        query = query.where(rejects.c.run_id == run)
    query = query.order_by(rejects.c.id.desc()).limit(limit)
    table = Table("run", "row", "key", "item", "reason", "value")
    with cloud.engine.connect() as conn:
        for r in conn.execute(query):
            table.add_row(
                r.run_id[:8],
                str(r.row_number),
                r.row_key or "",
                r.item or "",
                r.reason,
                r.value or "",
            )
    console.print(table)


# -- demo ----------------------------------------------------------------------------------------


@app.command("demo")
def demo_command(
    companies: Annotated[int, typer.Option(help="How many generated companies.")] = 2_000,
) -> None:
    """Register the shipped example resources and sync them on the embedded default."""
    from govbus.demo import run_demo

    settings = load_settings()
    results = run_demo(settings, companies=companies)
    _print_results(results)
    console.print(f"registry:  {_shown(settings.registry_url)}")
    console.print(f"cloud:     {_shown(settings.cloud_url)}")
    console.print(f"lake:      {settings.lake}")
    console.print("rejects:   govbus rejects 330400-SCJG-0001")


def _shown(url: str) -> str:
    """A database URL as it may be printed: the password replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    """Entry point: usage errors exit 2 (click's own handling), govbus errors their exit code."""
    try:
        app()
    except GovbusError as exc:
        err.print("error:", style="red", end=" ")
        err.print(str(exc), highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

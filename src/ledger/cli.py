"""The ``ledger`` command: serve, project, migrate, publish, enroll, import and inspect.

Every command builds its services with :func:`ledger.bootstrap.bootstrap`,
logs one structlog line (``command_finished`` or ``command_failed``) with its
ids and outcome, and turns a :class:`~ledger.errors.LedgerError` into a
one-line message on stderr and exit status 1, without a traceback. Tables and
progress bars go to stdout; progress bars only when stdout is a terminal.

Exit status: 0 on success, 1 when the command failed, 3 when an import
finished but rejected rows or met conflicts, 130 when interrupted.

Without LEDGER_DATABASE_URL the commands use the embedded server in
LEDGER_DATA_DIR. Only the commands that write (``serve``, ``migrate``,
``program publish``, ``partner enroll``, ``import``) create it there. The
others exit with status 1 when the folder contains no database, because an
empty new database would only hide that they ran in the wrong folder.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
import msgspec
import structlog
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ledger.application.commands import CommandContext, EnrollPartner
from ledger.bootstrap import Services, bootstrap
from ledger.errors import (
    ConflictError,
    InvalidInputError,
    LedgerError,
    ProjectionLagError,
    StoreUnavailableError,
)
from ledger.importing.crm import (
    CRM_PROGRAM_ID,
    DEFAULT_BATCH_SIZE,
    ImportReport,
    import_crm_opportunities,
    write_error_file,
)
from ledger.importing.program_file import load_program_file
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.schema import PROJECTION_NAMES, migrate, pending_projection_changes
from ledger.logs import configure_logging
from ledger.queries import fetch_statement, parse_period
from ledger.settings import Settings

__all__ = ["explain", "main"]

_T = TypeVar("_T")

EXIT_FAILED = 1
EXIT_ROWS_REJECTED = 3
EXIT_INTERRUPTED = 130

# Errors printed in the terminal after an import without --errors.
_ERRORS_SHOWN = 10

# Statements read the statements projection only.
_STATEMENT_PROJECTIONS = ("statements",)

_DEMO_PROGRAM = Path("examples") / "programs" / "crm-channel.toml"
_DEMO_CRM_DIR = Path("..") / "shared" / "data" / "crm-sales-opportunities"

# Output piped to another program is not wrapped at 80 columns, so scripts can
# match whole lines.
console = Console(soft_wrap=not sys.stdout.isatty())
error_console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


# Shared plumbing --------------------------------------------------------------


class _Exit(Exception):
    """Leave a command with ``status`` after its log line is written."""

    def __init__(self, status: int, outcome: str) -> None:
        super().__init__(outcome)
        self.status = status
        self.outcome = outcome


@contextmanager
def _command(name: str, **ids: Any) -> Iterator[dict[str, Any]]:
    """Log one line for command ``name`` and map errors to exit statuses.

    The body may add ids and counts to the yielded dict, which are logged with
    the outcome. A :class:`LedgerError` prints its message and exits with 1.
    """
    # A fresh logger each time, because a cached one would keep the stderr of
    # an earlier in-process invocation, such as a test runner's.
    log = structlog.get_logger("ledger.cli")
    fields: dict[str, Any] = dict(ids)
    started = time.perf_counter()

    def elapsed_ms() -> int:
        return round((time.perf_counter() - started) * 1000)

    try:
        yield fields
    except LedgerError as error:
        log.error(
            "command_failed",
            command=name,
            outcome="failed",
            error=type(error).__name__,
            field=error.field,
            duration_ms=elapsed_ms(),
            **fields,
        )
        error_console.print(f"[red]error:[/red] {escape(error.message)}")
        raise click.exceptions.Exit(EXIT_FAILED) from None
    except _Exit as exit_:
        log.warning(
            "command_finished",
            command=name,
            outcome=exit_.outcome,
            duration_ms=elapsed_ms(),
            **fields,
        )
        raise click.exceptions.Exit(exit_.status) from None
    except KeyboardInterrupt:
        log.warning(
            "command_finished",
            command=name,
            outcome="interrupted",
            duration_ms=elapsed_ms(),
            **fields,
        )
        error_console.print("interrupted")
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    log.info("command_finished", command=name, outcome="ok", duration_ms=elapsed_ms(), **fields)


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    assert settings is not None, "main() stores the settings on the context"
    return settings


def _context(actor: str | None = None) -> CommandContext:
    """Return a command context for this invocation: the OS user and a new correlation id."""
    if actor is None:
        try:
            actor = f"cli:{getpass.getuser()}"
        except (KeyError, OSError):
            # No user name for this uid, as in some containers.
            actor = "cli"
    return CommandContext(actor=actor, correlation_id=str(uuid.uuid4()))


@contextmanager
def _services(
    settings: Settings, *, run_migrations: bool = True, create: bool = True
) -> Iterator[Services]:
    """Yield the services for ``settings`` and close them afterwards.

    Args:
        settings: The command's settings.
        run_migrations: Apply pending migrations first.
        create: Allow starting a new embedded database in ``settings.data_dir``.
            Commands that only read or project pass False.

    Raises:
        StoreUnavailableError: ``create`` is False, LEDGER_DATABASE_URL is
            unset and the data folder contains no embedded database.
    """
    if not create:
        _require_embedded_database(settings)
    services = bootstrap(settings, run_migrations=run_migrations)
    try:
        yield services
    finally:
        services.close()


def _require_embedded_database(settings: Settings) -> None:
    """Raise unless a database is configured or the embedded one exists already."""
    if settings.database_url:
        return
    data_dir = settings.data_dir.expanduser().resolve()
    # Every initialised PostgreSQL data folder contains PG_VERSION.
    if (data_dir / "pgdata" / "PG_VERSION").is_file():
        return
    raise StoreUnavailableError(
        f"no ledger database in {data_dir}: LEDGER_DATABASE_URL is unset and "
        "LEDGER_DATA_DIR contains no embedded database; run this command from the folder "
        "where `ledger serve` ran, or set LEDGER_DATA_DIR to that folder's .ledger, or set "
        "LEDGER_DATABASE_URL",
        field="LEDGER_DATA_DIR",
        value=str(data_dir),
    )


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


async def _connect(database: DatabaseUrl) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(database.url, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {database.redacted}: {error}; check "
            "LEDGER_DATABASE_URL and that the server runs"
        ) from error


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


# The group ----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ledger")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Event-sourced rewards ledger for partner programs.

    Settings come from LEDGER_* environment variables; without
    LEDGER_DATABASE_URL an embedded PostgreSQL runs in LEDGER_DATA_DIR
    (default ./.ledger).
    """
    try:
        settings = Settings.from_env()
    except LedgerError as error:
        configure_logging("auto")
        structlog.get_logger("ledger.cli").error(
            "command_failed",
            command=ctx.invoked_subcommand,
            outcome="failed",
            error=type(error).__name__,
            field=error.field,
        )
        error_console.print(f"[red]error:[/red] {escape(error.message)}")
        raise click.exceptions.Exit(EXIT_FAILED) from None
    configure_logging(settings.log_format)
    ctx.obj = settings


# serve ----------------------------------------------------------------------------


@main.command()
@click.option("--host", help="Address to bind; default LEDGER_HOST or 127.0.0.1.")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="TCP port; default LEDGER_PORT or 8000."
)
@click.option(
    "--no-projector",
    is_flag=True,
    help="Do not run the projector in this process (run `ledger project` instead).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Number of server processes sharing the port. Each runs the projector unless "
    "--no-projector, and an advisory lock per projection lets one process apply it "
    "while the others wait.",
)
@click.option(
    "--demo/--no-demo",
    default=False,
    show_default=True,
    help="Publish the CRM demo program and import the CRM data before serving. "
    "Safe to repeat: a second start records nothing new.",
)
@click.option(
    "--crm-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the CRM CSV files for --demo; default LEDGER_CRM_DIR or "
    "../shared/data/crm-sales-opportunities.",
)
@click.option(
    "--program-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Program file for --demo; default examples/programs/crm-channel.toml.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    no_projector: bool,
    workers: int,
    demo: bool,
    crm_dir: Path | None,
    program_file: Path | None,
) -> None:
    """Serve the HTTP API, with the projector in the server process."""
    # Imported here: the HTTP stack is only needed by this command.
    import uvicorn

    from ledger.api.app import create_app
    from ledger.api.server import CoalescingHttpToolsProtocol

    settings = _settings(ctx)
    host = host or settings.host
    port = settings.port if port is None else port
    with _command("serve", host=host, port=port, demo=demo, workers=workers) as fields:
        _check_port_free(host, port)
        with _services(settings) as services:
            fields["database"] = services.database.redacted
            if demo:
                report = _load_demo(services, program_file, crm_dir)
                fields.update(recorded=report.recorded, already_recorded=report.already_recorded)
            error_console.print(f"serving on http://{host}:{port} (Ctrl-C to stop)")
            if workers > 1:
                _serve_workers(services, host, port, workers, run_projector=not no_projector)
                return
            app = create_app(services, run_projector=not no_projector)

            # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the
            # signal again. Catching it here lets this command log how it ended.
            previous = signal.signal(signal.SIGTERM, _raise_stop)
            try:
                # The API logs one structlog line per request, so uvicorn's access
                # log is off.
                uvicorn.run(
                    app,
                    host=host,
                    port=port,
                    http=CoalescingHttpToolsProtocol,
                    access_log=False,
                    log_level="warning",
                )
            except (KeyboardInterrupt, _StopRequested):
                fields["stopped_by"] = "signal"
            finally:
                signal.signal(signal.SIGTERM, previous)


def _serve_workers(
    services: Services, host: str, port: int, workers: int, *, run_projector: bool
) -> None:
    """Serve with ``workers`` uvicorn processes until SIGINT or SIGTERM.

    uvicorn binds the port in this process and starts each worker with the
    application factory. The workers read their settings from the environment,
    so the database that this process resolved, migrated and keeps running
    goes there first.
    """
    import uvicorn

    from ledger.api.server import CoalescingHttpToolsProtocol

    os.environ["LEDGER_DATABASE_URL"] = services.database.url
    factory = "create_worker_app" if run_projector else "create_worker_app_without_projector"
    uvicorn.run(
        f"ledger.api.app:{factory}",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        http=CoalescingHttpToolsProtocol,
        access_log=False,
        log_level="warning",
    )


def _check_port_free(host: str, port: int) -> None:
    """Raise a clear error before start-up when ``host:port`` cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise InvalidInputError(
            f"host {host!r} cannot be resolved ({error.strerror}); pass --host or set LEDGER_HOST",
            field="--host",
            value=host,
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise InvalidInputError(
                f"cannot listen on {host}:{port} ({error.strerror}); another process may use "
                "the port, so pass --port or set LEDGER_PORT",
                field="--port",
                value=port,
            ) from None


class _StopRequested(Exception):
    """SIGTERM arrived; raised from the signal handler to unwind ``serve``."""


def _raise_stop(signal_number: int, frame: object) -> None:
    raise _StopRequested


def _load_demo(services: Services, program_file: Path | None, crm_dir: Path | None) -> ImportReport:
    """Publish the demo program and import the CRM data into it, idempotently."""
    program_file = program_file or _default_demo_program()
    crm_dir = crm_dir or Path(os.environ.get("LEDGER_CRM_DIR") or _DEMO_CRM_DIR)
    if not (crm_dir / "sales_pipeline.csv").is_file():
        raise InvalidInputError(
            f"CRM data folder {str(crm_dir)!r} has no sales_pipeline.csv; pass --crm-dir "
            "or set LEDGER_CRM_DIR to the folder of the CRM CSV files",
            field="crm_dir",
            value=str(crm_dir),
        )
    context = _context()
    spec = load_program_file(program_file)
    outcome = services.app.publish_program(spec, context)
    error_console.print(
        f"demo program {spec.id}: " + ("created" if outcome.created else "already published")
    )
    report = _import_with_progress(services, crm_dir, spec.id, DEFAULT_BATCH_SIZE)
    _print_import_report(report, crm_dir)
    if report.errors:
        error_console.print(
            f"[yellow]{len(report.errors)} CRM row problems (rejected, conflicting or not "
            "rewardable);[/yellow] run "
            f"`ledger import crm-opportunities {escape(str(crm_dir))} --errors FILE` to list them"
        )
    return report


def _default_demo_program() -> Path:
    # From the current folder in a checkout, else from this package's checkout.
    if _DEMO_PROGRAM.is_file():
        return _DEMO_PROGRAM
    return Path(__file__).resolve().parents[2] / _DEMO_PROGRAM


# project ----------------------------------------------------------------------------


@main.command()
@click.pass_context
def project(ctx: click.Context) -> None:
    """Run the projector until Ctrl-C or SIGTERM: catch up, then follow new events."""
    from ledger.projector import run_projector

    settings = _settings(ctx)
    with _command("project") as fields, _services(settings, create=False) as services:
        fields["database"] = services.database.redacted

        async def follow() -> None:
            # Stop cleanly on SIGINT and SIGTERM: each projection finishes its batch.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signal_number in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signal_number, stop.set)
            error_console.print("projector running (Ctrl-C to stop)")
            await run_projector(services.database, settings, stop=stop)

        _run(follow())


# migrate ----------------------------------------------------------------------------


@main.command(name="migrate")
@click.pass_context
def migrate_command(ctx: click.Context) -> None:
    """Apply pending schema migrations and create missing read-model schemas."""
    settings = _settings(ctx)
    with _command("migrate") as fields, _services(settings, run_migrations=False) as services:
        fields["database"] = services.database.redacted
        applied = migrate(services.database)
        fields["applied"] = applied
        if applied:
            for name in applied:
                console.print(f"applied {escape(name)}")
        else:
            console.print("database is up to date")


# program publish ----------------------------------------------------------------------


@main.group()
def program() -> None:
    """Manage programs."""


@program.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def publish(ctx: click.Context, file: Path) -> None:
    """Publish the program in TOML FILE: create it if new, append new rule sets.

    Publishing the same file again changes nothing.
    """
    settings = _settings(ctx)
    with _command("program.publish", file=str(file)) as fields:
        spec = load_program_file(file)
        fields["program_id"] = spec.id
        context = _context()
        fields["correlation_id"] = context.correlation_id
        with _services(settings) as services:
            outcome = services.app.publish_program(spec, context)
        fields.update(
            created=outcome.created,
            published_versions=outcome.published_versions,
            position=outcome.position,
        )
        state = "created" if outcome.created else "exists"
        published = ", ".join(map(str, outcome.published_versions)) or "none"
        unchanged = ", ".join(map(str, outcome.unchanged_versions)) or "none"
        console.print(
            f"program {escape(spec.id)} {state}; rule set versions published: {published}; "
            f"unchanged: {unchanged}; position {outcome.position}"
        )


# partner enroll -------------------------------------------------------------------------


@main.group()
def partner() -> None:
    """Manage partners."""


@partner.command()
@click.argument("program_id", metavar="PROGRAM")
@click.argument("partner_id")
@click.option("--name", "display_name", required=True, help="Display name shown on statements.")
@click.option("--region", default="", help="Sales region; empty when not given.")
@click.option(
    "--manager", "channel_manager", default="", help="Channel manager; empty when not given."
)
@click.option(
    "--tier",
    default=None,
    help="Starting tier, one of the program's tiers when its file lists them; "
    "default the program's lowest tier.",
)
@click.option(
    "--effective-date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Enrollment date, YYYY-MM-DD; default today in the program's time zone.",
)
@click.pass_context
def enroll(
    ctx: click.Context,
    program_id: str,
    partner_id: str,
    display_name: str,
    region: str,
    channel_manager: str,
    tier: str | None,
    effective_date: datetime | None,
) -> None:
    """Enroll PARTNER_ID in PROGRAM.

    Enrolling again with the same details changes nothing; other details for
    an enrolled partner are a conflict, and the command exits with status 1.
    """
    settings = _settings(ctx)
    with _command("partner.enroll", program_id=program_id, partner_id=partner_id) as fields:
        context = _context()
        fields["correlation_id"] = context.correlation_id
        with _services(settings) as services:
            enrolled_on = (
                effective_date.date()
                if effective_date is not None
                else _program_today(services, program_id)
            )
            command = EnrollPartner(
                partner_id=partner_id,
                display_name=display_name,
                effective_date=enrolled_on,
                region=region,
                channel_manager=channel_manager,
                tier=tier,
            )
            try:
                outcome = services.app.enroll_partner(program_id, command, context)
                created, position = outcome.created, outcome.position
            except ConflictError as error:
                raise ConflictError(
                    _conflict_message(error),
                    differences=error.differences,
                    field=error.field,
                    value=error.value,
                ) from None
        fields.update(created=created, position=position, effective_date=enrolled_on.isoformat())
        if created:
            console.print(
                f"partner {escape(partner_id)} enrolled in program {escape(program_id)} "
                f"from {enrolled_on.isoformat()}; position {position}"
            )
        else:
            console.print(
                f"partner {escape(partner_id)} was already enrolled in program "
                f"{escape(program_id)} with these details; nothing changed; position {position}"
            )


def _program_today(services: Services, program_id: str) -> date:
    """Return today's date in the time zone of ``program_id``."""
    program = services.app.get_program(program_id)
    return datetime.now(program.zone).date()


def _conflict_message(error: ConflictError) -> str:
    """Return ``error``'s message followed by each stored and requested value."""
    details = "; ".join(
        f"{name} is {stored!r}, not {requested!r}"
        for name, (stored, requested) in error.differences.items()
    )
    return f"{error.message}: {details}" if details else error.message


# import crm-opportunities -----------------------------------------------------------------


@main.group(name="import")
def import_group() -> None:
    """Import activities from files."""


@import_group.command(name="crm-opportunities")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--program",
    "program_id",
    default=CRM_PROGRAM_ID,
    show_default=True,
    help="Program to import into; publish it first.",
)
@click.option(
    "--errors",
    "errors_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=(
        "Write every row error to this CSV file "
        "(file, row, source_ref, field, value, message, outcome)."
    ),
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Activities recorded per transaction.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes that decode and record the rows, each with its own database connection.",
)
@click.pass_context
def crm_opportunities(
    ctx: click.Context,
    directory: Path,
    program_id: str,
    errors_file: Path | None,
    batch_size: int,
    workers: int,
) -> None:
    """Import the CRM sales-opportunities CSV files in DIRECTORY.

    Enrolls one partner per row of sales_teams.csv and records a
    pipeline_engaged activity per engaged opportunity and a deal_won activity
    per won deal. Running it again on the same files records nothing new.
    Exits with status 3 when rows were rejected or conflicted.
    """
    settings = _settings(ctx)
    with _command("import.crm_opportunities", program_id=program_id) as fields:
        # Checked first, so an unwritable path does not cost a whole import.
        if errors_file is not None:
            _check_errors_file(errors_file)
        with _services(settings) as services:
            _import_and_report(
                services, directory, program_id, batch_size, workers, errors_file, fields
            )


def _import_and_report(
    services: Services,
    directory: Path,
    program_id: str,
    batch_size: int,
    workers: int,
    errors_file: Path | None,
    fields: dict[str, Any],
) -> None:
    """Run the CRM import, print its report and write or print the row errors."""
    started = time.perf_counter()
    report = _import_with_progress(services, directory, program_id, batch_size, workers)
    seconds = time.perf_counter() - started
    fields.update(
        correlation_id=report.correlation_id,
        rows=report.rows,
        recorded=report.recorded,
        already_recorded=report.already_recorded,
        conflicts=report.conflicts,
        not_rewardable=report.not_rewardable,
        not_rewardable_activities=report.not_rewardable_activities,
        rejected_rows=report.rejected_rows,
        seconds=round(seconds, 2),
    )
    _print_import_report(report, directory, seconds)
    if errors_file is not None:
        try:
            written = write_error_file(errors_file, report.errors)
        except OSError as error:
            # The import is done, so print every row error rather than lose them.
            _print_errors(report, limit=len(report.errors))
            raise LedgerError(
                f"cannot write the row errors to {errors_file}: "
                f"{error.strerror or error}; the import finished and its "
                f"{len(report.errors)} row errors are printed above",
                field="--errors",
                value=str(errors_file),
            ) from error
        console.print(f"wrote {written} row errors to {escape(str(errors_file))}")
    elif report.errors:
        _print_errors(report)
    if report.rejected_rows or report.conflicts:
        raise _Exit(EXIT_ROWS_REJECTED, "rows_rejected")


def _check_errors_file(path: Path) -> None:
    """Raise unless ``path`` can be created or overwritten.

    click has already rejected a ``path`` that is a folder.

    Raises:
        InvalidInputError: The folder of ``path`` is missing, or ``path`` or
            its folder is not writable.
    """
    folder = path.parent
    problem = None
    if not folder.is_dir():
        problem = f"is in folder {folder}, which does not exist; create the folder first"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = "exists and is not writable; choose another file"
    elif not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        problem = f"cannot be created because folder {folder} is not writable"
    if problem is not None:
        raise InvalidInputError(
            f"--errors file {path} {problem}; nothing was imported",
            field="--errors",
            value=str(path),
        )


def _import_with_progress(
    services: Services, directory: Path, program_id: str, batch_size: int, workers: int = 1
) -> ImportReport:
    context = _context(actor="import:crm")
    if not console.is_terminal:
        return import_crm_opportunities(
            services.app,
            directory,
            program_id=program_id,
            batch_size=batch_size,
            context=context,
            workers=workers,
        )
    with _progress() as progress:
        task = progress.add_task("importing CRM rows", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return import_crm_opportunities(
            services.app,
            directory,
            program_id=program_id,
            batch_size=batch_size,
            context=context,
            progress=advance,
            workers=workers,
        )


def _print_import_report(
    report: ImportReport, directory: Path, seconds: float | None = None
) -> None:
    table = Table(title=f"CRM import from {escape(str(directory))}", show_header=True)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_row("pipeline rows read", str(report.rows))
    table.add_row("activities recorded", str(report.recorded))
    for activity_type, count in sorted(report.recorded_by_type.items()):
        table.add_row(f"  {activity_type}", str(count))
    table.add_row("activities already recorded (identical)", str(report.already_recorded))
    table.add_row("activities in conflict", str(report.conflicts))
    table.add_row("rows with nothing to reward (Prospecting)", str(report.not_rewardable))
    table.add_row("activities not rewardable", str(report.not_rewardable_activities))
    table.add_row("rows rejected", str(report.rejected_rows))
    table.add_row(
        "partners enrolled / already enrolled",
        f"{report.partners_enrolled} / {report.partners_already_enrolled}",
    )
    table.add_row("rewards recorded", str(report.recorded_amount))
    console.print(table)
    line = f"correlation id {report.correlation_id}"
    if seconds:
        rate = (report.recorded + report.already_recorded) / seconds
        line += f"; {seconds:.1f} s, {rate:,.0f} activities/s"
    console.print(line)


def _print_errors(report: ImportReport, *, limit: int = _ERRORS_SHOWN) -> None:
    """Print the first ``limit`` row errors of ``report`` as a table."""
    table = Table(title=f"row errors (first {min(limit, len(report.errors))})")
    for column in ("file", "row", "source ref", "field", "message"):
        table.add_column(column)
    for error in report.errors[:limit]:
        table.add_row(
            error.file, str(error.row), escape(error.source_ref), error.field, escape(error.message)
        )
    console.print(table)
    if len(report.errors) > limit:
        console.print(f"{len(report.errors) - limit} more; pass --errors FILE to write all")


# status -------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the database, the event store head and each projection's position and lag."""
    from ledger.projector import projection_status

    settings = _settings(ctx)
    with (
        _command("status") as fields,
        _services(settings, run_migrations=False, create=False) as services,
    ):
        database = services.database

        async def read() -> list[Any]:
            conn = await _connect(database)
            try:
                return list(await projection_status(conn))
            except asyncpg.UndefinedTableError as error:
                raise LedgerError(
                    f"database {database.redacted} has no ledger tables ({error}); run "
                    "ledger migrate",
                ) from error
            finally:
                await conn.close()

        statuses = _run(read())
        changed = pending_projection_changes(database)
        head = statuses[0].head if statuses else services.app.head_position()
        fields.update(head=head, lag={item.name: item.lag for item in statuses}, changed=changed)

        if as_json:
            document = {
                "database": database.redacted,
                "head": head,
                "projections": [
                    {
                        "name": item.name,
                        "position": item.position,
                        "lag": item.lag,
                        "ddl_changed": item.name in changed,
                    }
                    for item in statuses
                ],
            }
            click.echo(msgspec.json.format(msgspec.json.encode(document)).decode())
            return
        console.print(f"database  {escape(database.redacted)}")
        console.print(f"head      {head}")
        table = Table()
        table.add_column("projection")
        table.add_column("position", justify="right")
        table.add_column("lag", justify="right")
        table.add_column("DDL")
        for item in statuses:
            table.add_row(
                item.name,
                str(item.position),
                str(item.lag),
                "changed: run ledger rebuild " + item.name if item.name in changed else "current",
            )
        console.print(table)


# statement ----------------------------------------------------------------------------


@main.command()
@click.argument("partner")
@click.argument("period", metavar="YYYY-MM")
@click.option("--json", "as_json", is_flag=True, help="Print the statement as JSON.")
@click.option(
    "--min-position",
    type=click.IntRange(min=0),
    help="Wait until the statements projection has applied this event position "
    "(a write's `position`) instead of catching up to the head.",
)
@click.pass_context
def statement(
    ctx: click.Context, partner: str, period: str, as_json: bool, min_position: int | None
) -> None:
    """Print PARTNER's statement for the month YYYY-MM.

    Projects every event recorded so far first, so the statement includes the
    latest writes. When a projector is running elsewhere, the command waits for
    it instead, up to LEDGER_READ_WAIT_SECONDS.
    """
    settings = _settings(ctx)
    with _command("statement", partner_id=partner, period=period) as fields:
        # A malformed period fails before the database starts.
        parse_period(period)
        with _services(settings, run_migrations=False, create=False) as services:
            view = _read_statement(services, settings, partner, period, min_position, fields)
        fields["lines"] = len(view.lines)
        if as_json:
            click.echo(msgspec.json.format(msgspec.json.encode(view)).decode())
            return
        _print_statement(view)


def _read_statement(
    services: Services,
    settings: Settings,
    partner: str,
    period: str,
    min_position: int | None,
    fields: dict[str, Any],
) -> Any:
    """Project through ``min_position`` (default: the head), then read the statement."""
    database = services.database
    target = services.app.head_position() if min_position is None else min_position
    fields["min_position"] = target

    async def read() -> Any:
        await _projected_through(database, settings, target, catch_up=min_position is None)
        conn = await _connect(database)
        try:
            return await fetch_statement(conn, partner, period)
        finally:
            await conn.close()

    return _run(read())


async def _projected_through(
    database: DatabaseUrl, settings: Settings, position: int, *, catch_up: bool
) -> None:
    """Return once the statements projection has applied ``position``.

    With ``catch_up``, projects the missing events in this process unless a
    running projector holds the projection's lock, in which case it waits for
    that projector like a ``--min-position`` read does.

    Raises:
        ProjectionLagError: The projection did not reach ``position`` within
            ``settings.read_wait_seconds``.
    """
    from ledger.projector import catch_up as project_to_head
    from ledger.projector import projection_status, wait_for_position
    from ledger.projector.runner import projection_lock_key

    conn = await _connect(database)
    try:
        current = {item.name: item.position for item in await projection_status(conn)}
        if current["statements"] >= position:
            return
        if catch_up:
            # A free lock means no projector runs, so project here; a held one
            # means a projector is applying the events already.
            key = projection_lock_key("statements")
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)
                await project_to_head(database, names=_STATEMENT_PROJECTIONS)
                return
        reached = await wait_for_position(
            conn, position, names=_STATEMENT_PROJECTIONS, timeout=settings.read_wait_seconds
        )
    finally:
        await conn.close()
    if not reached:
        raise ProjectionLagError(
            f"the statements projection has not reached position {position} within "
            f"{settings.read_wait_seconds} s; start `ledger project` or `ledger serve`, or "
            "raise LEDGER_READ_WAIT_SECONDS",
            field="min_position",
            value=position,
        )


def _print_statement(view: Any) -> None:
    table = Table(
        title=f"{escape(view.partner_id)} · {view.period} · program {escape(view.program_id)}"
    )
    table.add_column("date")
    table.add_column("kind")
    table.add_column("source ref")
    table.add_column(f"amount ({view.currency})", justify="right")
    table.add_column("explanation")
    for line in view.lines:
        table.add_row(
            line.effective_date.isoformat(),
            line.kind,
            escape(line.source_ref),
            line.amount.amount,
            escape(explain(line.kind, line.explanation, view.currency)),
        )
    console.print(table)
    console.print(f"opening balance  {view.opening_balance.amount} {view.currency}")
    console.print(f"closing balance  {view.closing_balance.amount} {view.currency}")


def explain(kind: str, explanation: Mapping[str, Any], currency: str) -> str:
    """Summarise a statement line's explanation in one phrase.

    >>> explain("earning", {"rule_id": "won-gtx", "rate": "0.045", "base": "1054.00",
    ...                     "unrounded": "47.43", "rounding": "half-up",
    ...                     "rule_set_version": 1}, "USD")
    'rule set 1, won-gtx: 4.5% of 1054.00 USD = 47.43 (half-up)'
    """
    rule = explanation.get("rule_id")
    version = explanation.get("rule_set_version")
    priced_by = f"rule set {version}, {rule}" if version is not None else str(rule)
    if kind == "earning" and rule:
        if explanation.get("rate") is not None:
            return (
                f"{priced_by}: {_percent(explanation['rate'])} of {explanation.get('base')} "
                f"{currency} = {explanation.get('unrounded')} ({explanation.get('rounding')})"
            )
        return f"{priced_by}: fixed {explanation.get('fixed')} {currency}"
    reason = explanation.get("reason") or ""
    if kind == "reversal" and rule:
        if explanation.get("base") is not None and explanation.get("rate") is not None:
            return (
                f"reverses {priced_by}: {_percent(explanation['rate'])} of "
                f"{explanation['base']} {currency} = {explanation.get('unrounded')}; {reason}"
            )
        return f"reverses {priced_by}: {reason}"
    return str(reason)


def _percent(rate: str) -> str:
    try:
        value = (Decimal(rate) * 100).normalize()
    except InvalidOperation:
        return str(rate)
    return f"{value:f}%"


# rebuild ------------------------------------------------------------------------------


@main.command()
@click.argument("name", type=click.Choice(PROJECTION_NAMES))
@click.pass_context
def rebuild(ctx: click.Context, name: str) -> None:
    """Rebuild projection NAME from the first event and swap it in.

    The old tables keep serving reads until the swap.
    """
    from ledger.projector import rebuild_projection

    settings = _settings(ctx)
    with (
        _command("rebuild", projection=name) as fields,
        _services(settings, create=False) as services,
    ):
        database = services.database
        if console.is_terminal:
            with _progress() as progress:
                task = progress.add_task(f"rebuilding {name}", total=None)

                def advance(position: int, head: int) -> None:
                    progress.update(task, completed=position, total=head)

                events = _run(rebuild_projection(database, name, progress=advance))
        else:
            events = _run(rebuild_projection(database, name))
        fields["events"] = events
        console.print(f"rebuilt projection {name} from {events} events")


if __name__ == "__main__":
    main()

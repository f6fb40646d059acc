"""Import the CRM sales-opportunities CSV files into a program.

The folder contains ``sales_teams.csv`` (one sales agent per row),
``products.csv`` (product name and series) and ``sales_pipeline.csv`` (one
opportunity per row). The import:

1. enrolls one partner per agent, with id ``darcel-schlecht`` for
   ``Darcel Schlecht``, effective on the program's first rule set's date;
2. turns each opportunity into activities: ``pipeline_engaged`` on its
   ``engage_date`` (stages Engaging, Won and Lost) and, for a Won deal,
   ``deal_won`` on its ``close_date`` with ``close_value`` USD as the base;
3. records them in batches with :meth:`LedgerApplication.record_activities`,
   in this process or in forked worker processes that each take a share of
   the opportunities.

Every row is decoded and checked against the program's rules before anything is
written. A row whose data are invalid (a bad or future date, an unknown
product or agent, a Won deal without close value, ...) is rejected whole:
nothing of it is written, and the rest of the import goes on. A well-formed
activity can still be one that the program does not reward: no rule set is in
force on its date, no rule prices it, or its date precedes the partner's
enrollment. Such an activity is counted as not rewardable and listed with the
reason, and the row's other activity is still recorded. Source references
(``<opportunity_id>:won``, ``<opportunity_id>:engaged``) make a second run
over the same files record nothing new.

Row numbers in errors count the header as row 1, as a spreadsheet shows them.
"""

from __future__ import annotations

import csv
import enum
import gc
import multiprocessing
import multiprocessing.connection
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ledger.application.commands import CommandContext, EnrollPartner, RecordActivity
from ledger.application.service import LedgerApplication
from ledger.domain.money import Money
from ledger.domain.partner import check_partner_id
from ledger.domain.program import Program
from ledger.domain.rules import find_pricing_rule
from ledger.errors import (
    ConflictError,
    InvalidInputError,
    LedgerError,
    NotFoundError,
    RuleNotFoundError,
    StoreUnavailableError,
)

__all__ = [
    "CRM_PROGRAM_ID",
    "DEAL_WON",
    "DEFAULT_BATCH_SIZE",
    "PIPELINE_ENGAGED",
    "ImportReport",
    "RowError",
    "RowOutcome",
    "import_crm_opportunities",
    "partner_id_for_agent",
    "write_error_file",
]

CRM_PROGRAM_ID = "crm-channel"
DEAL_WON = "deal_won"
PIPELINE_ENGAGED = "pipeline_engaged"
IMPORT_ACTOR = "import:crm"

PIPELINE_FILE = "sales_pipeline.csv"
TEAMS_FILE = "sales_teams.csv"
PRODUCTS_FILE = "products.csv"

PIPELINE_COLUMNS = (
    "opportunity_id",
    "sales_agent",
    "product",
    "account",
    "deal_stage",
    "engage_date",
    "close_date",
    "close_value",
)
TEAMS_COLUMNS = ("sales_agent", "manager", "regional_office")
PRODUCTS_COLUMNS = ("product", "series")

# close_value is whole US dollars, because the data has no currency column.
CRM_CURRENCY = "USD"

# Activities decoded and checked per call to record_activities, which saves
# them in transactions of at most 500 earnings.
DEFAULT_BATCH_SIZE = 1000

# Minimum pipeline rows per worker process. A smaller import runs in one process.
_MIN_ROWS_PER_WORKER = 1000

_ENGAGED_STAGES = {"Engaging", "Won", "Lost"}
_NOT_REWARDABLE_STAGES = {"Prospecting"}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# CSV column behind each application error field, per activity type.
_COLUMN_OF_FIELD: dict[str, dict[str, str]] = {
    DEAL_WON: {
        "effective_date": "close_date",
        "base_amount": "close_value",
        "base_amount.amount": "close_value",
        "base_amount.currency": "close_value",
        "activity_type": "product",
        "partner_id": "sales_agent",
    },
    PIPELINE_ENGAGED: {
        "effective_date": "engage_date",
        "activity_type": "product",
        "partner_id": "sales_agent",
    },
}


class RowOutcome(enum.StrEnum):
    """Outcome of the row or activity that a :class:`RowError` describes."""

    REJECTED = "rejected"
    """The row's data are invalid; nothing of the row was written."""
    CONFLICT = "conflict"
    """The source reference was recorded before with other content; nothing was written."""
    NOT_REWARDABLE = "not_rewardable"
    """The program does not reward this activity; the row's other activity is still recorded."""


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one CSV row, as written to the error file.

    Attributes:
        file: CSV file name, such as ``sales_pipeline.csv``.
        row: Row number in that file, the header being row 1.
        source_ref: Source reference of the activity at fault, or the
            opportunity id or partner id when the whole row is at fault.
        field: CSV column at fault, empty when the row as a whole is. A
            conflict names the column whose value changed, or ``series`` when
            the product's series in ``products.csv`` changed.
        value: The value at fault as the files give it now.
        message: What is wrong and how to fix it.
        outcome: Rejected row, conflicting activity or activity not
            rewardable. Only rejected rows count in ``rejected_rows``.
    """

    file: str
    row: int
    source_ref: str
    field: str
    value: str
    message: str
    outcome: RowOutcome = RowOutcome.REJECTED


@dataclass
class ImportReport:
    """Counts and row errors of one import run.

    ``recorded``, ``already_recorded``, ``conflicts`` and
    ``not_rewardable_activities`` count activities (a Won row has two);
    ``not_rewardable`` and ``rejected_rows`` count rows. ``errors`` lists every
    problem, with conflicts and activities not rewardable among them, each
    marked by its ``outcome``.

    Attributes:
        correlation_id: Id shared by every event this run wrote.
        currency: The program's currency, that of ``recorded_amount``.
        rows: Data rows read from the pipeline file.
        recorded: Activities recorded by this run.
        already_recorded: Activities found recorded before with identical content.
        conflicts: Activities whose source reference was recorded before with
            other content; nothing was written for them.
        not_rewardable: Pipeline rows with nothing to reward (Prospecting stage).
        not_rewardable_activities: Well-formed activities the program does not
            reward: no rule set in force on the date, no rule for the activity,
            or a date before the partner's enrollment. Nothing was written for
            them, but the other activity of their row was recorded.
        rejected_rows: Rows of any file rejected before writing, or whose
            activity the application rejected for a reason other than a
            conflict or a missing rule.
        partners_enrolled: Partners enrolled by this run.
        partners_already_enrolled: Partners found enrolled with identical details.
        recorded_by_type: ``recorded`` split by activity type.
        not_rewardable_by_type: ``not_rewardable_activities`` split by activity type.
        recorded_amount_minor: Sum of the rewards recorded by this run, in
            minor units of ``currency``.
        errors: Every row error, in file and row order.
    """

    correlation_id: str
    currency: str
    rows: int = 0
    recorded: int = 0
    already_recorded: int = 0
    conflicts: int = 0
    not_rewardable: int = 0
    not_rewardable_activities: int = 0
    rejected_rows: int = 0
    partners_enrolled: int = 0
    partners_already_enrolled: int = 0
    recorded_by_type: Counter[str] = field(default_factory=Counter)
    not_rewardable_by_type: Counter[str] = field(default_factory=Counter)
    recorded_amount_minor: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def recorded_amount(self) -> Money:
        """Sum of the rewards recorded by this run, in the program currency."""
        return Money(self.recorded_amount_minor, self.currency)


@dataclass(frozen=True, slots=True)
class _Agent:
    partner_id: str
    enrolled_on: date


@dataclass
class _Agents:
    """Agents whose activities can be recorded, and why the others cannot.

    Attributes:
        enrolled: Agents enrolled in the program being imported into, by name.
        unusable: For agents listed in ``sales_teams.csv`` but not usable, the
            message that rejects their pipeline rows, by name.
    """

    enrolled: dict[str, _Agent] = field(default_factory=dict)
    unusable: dict[str, str] = field(default_factory=dict)

    def problem(self, name: str) -> str:
        """Return why agent ``name`` has no usable partner."""
        return self.unusable.get(
            name,
            f"sales agent {name!r} is not in {TEAMS_FILE}; add the agent there",
        )


@dataclass(frozen=True, slots=True)
class _Product:
    name: str
    series: str


@dataclass
class _PipelineRow:
    """A decoded pipeline row: its activities, or the errors that reject it.

    Attributes:
        number: Row number in the pipeline file.
        values: The row's cells by column.
        commands: Activities to record.
        not_rewardable: Activities the program does not reward, each with
            the entry that reports it; they are not in ``commands``.
        errors: Errors that reject the whole row; ``commands`` is then empty.
        nothing_to_reward: The stage (Prospecting) has no activity at all.
    """

    number: int
    values: Mapping[str, str]
    commands: list[RecordActivity] = field(default_factory=list)
    not_rewardable: list[tuple[RecordActivity, RowError]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    nothing_to_reward: bool = False


def partner_id_for_agent(agent: str) -> str:
    """Return the partner id of a sales agent: lower case, spaces as hyphens.

    >>> partner_id_for_agent("Darcel Schlecht")
    'darcel-schlecht'
    """
    return "-".join(agent.lower().split())


def import_crm_opportunities(
    app: LedgerApplication,
    data_dir: Path,
    *,
    program_id: str = CRM_PROGRAM_ID,
    batch_size: int = DEFAULT_BATCH_SIZE,
    context: CommandContext | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> ImportReport:
    """Enroll the CRM agents and record their pipeline activities in ``program_id``.

    Args:
        app: The command side.
        data_dir: Folder with ``sales_pipeline.csv``, ``sales_teams.csv`` and ``products.csv``.
        program_id: Program to import into; it must be published and pay in USD.
        batch_size: Activities per ``record_activities`` call, each one transaction.
        context: Actor and correlation id; defaults to actor ``import:crm`` and
            a new UUID per call.
        progress: Called with (pipeline rows done, pipeline rows total) after
            each batch.
        workers: Processes that decode and record the pipeline rows, each
            with its own database connection. With more than one, each
            process takes the rows of a share of the opportunity ids, so rows
            of one opportunity stay in file order. A share has at least 1,000
            rows. Worker processes are forked, so they need a platform with
            ``fork``.

    Returns:
        Counts per outcome and every row error. Running again over the same
        files records nothing and counts every activity as already recorded.

    Raises:
        InvalidInputError: A file is missing, unreadable or lacks a required
            column, the program does not pay in USD, or ``batch_size`` or
            ``workers`` < 1.
        NotFoundError: The program is not published.
        StoreUnavailableError: The database failed mid-import; batches written
            before stay written, and running the import again completes it.
    """
    if batch_size < 1:
        raise InvalidInputError(
            f"batch size {batch_size} is not positive; use 1 or more, such as 500",
            field="batch_size",
            value=batch_size,
        )
    if workers < 1:
        raise InvalidInputError(
            f"workers {workers} is not positive; use 1, or up to the number of cores",
            field="workers",
            value=workers,
        )
    context = context or CommandContext(actor=IMPORT_ACTOR, correlation_id=str(uuid.uuid4()))

    # Read every file first, so a missing file or column fails before any write.
    teams = _read_csv(data_dir, TEAMS_FILE, TEAMS_COLUMNS)
    products_rows = _read_csv(data_dir, PRODUCTS_FILE, PRODUCTS_COLUMNS)
    pipeline = _read_csv(data_dir, PIPELINE_FILE, PIPELINE_COLUMNS)

    # Check the program: it prices the rows, and its first rule set dates the enrollments.
    program = _load_program(app, program_id)
    report = ImportReport(correlation_id=context.correlation_id, currency=program.currency)
    for table in (teams, products_rows, pipeline):
        report.errors.extend(table.errors)

    # Enroll the agents, then decode products, so pipeline rows can be checked against both.
    agents = _enroll_agents(app, program, teams.rows, context, report)
    products = _decode_products(products_rows.rows, report)

    # Decode and record the pipeline in batches of about batch_size activities,
    # in this process or shared among worker processes.
    report.rows = len(pipeline.rows) + len(pipeline.errors)
    job = _PipelineJob(program_id, program, agents, products, batch_size, context)
    shares = min(workers, max(1, len(pipeline.rows) // _MIN_ROWS_PER_WORKER))
    if shares == 1:
        rows_before = len(pipeline.errors)

        def advance(rows_done: int) -> None:
            if progress is not None:
                progress(rows_before + rows_done, report.rows)

        # The rows read stay alive for the whole import, so leave them out of
        # the garbage collector's full collections, which would walk them all.
        gc.freeze()
        try:
            _import_pipeline(app, job, pipeline.rows, report, advance)
        finally:
            gc.unfreeze()
    else:
        _import_pipeline_in_workers(app, job, pipeline, shares, report, progress)
    if progress is not None:
        progress(report.rows, report.rows)

    # Count rejected rows once each, however many errors a row has.
    report.errors.sort(key=lambda error: (error.file, error.row))
    rejected = {
        (error.file, error.row) for error in report.errors if error.outcome is RowOutcome.REJECTED
    }
    report.rejected_rows = len(rejected)
    return report


def write_error_file(path: Path, errors: Iterable[RowError]) -> int:
    """Write ``errors`` as CSV; return the count.

    The columns are file, row, source_ref, field, value, message and outcome
    (``rejected``, ``conflict`` or ``not_rewardable``).
    """
    count = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "row", "source_ref", "field", "value", "message", "outcome"])
        for error in errors:
            writer.writerow(
                [
                    error.file,
                    error.row,
                    error.source_ref,
                    error.field,
                    error.value,
                    error.message,
                    error.outcome.value,
                ]
            )
            count += 1
    return count


# Reading ------------------------------------------------------------------


@dataclass
class _Table:
    rows: list[tuple[int, dict[str, str]]]
    errors: list[RowError]


def _read_csv(folder: Path, name: str, required: Sequence[str]) -> _Table:
    """Read a CSV file with or without a UTF-8 byte order mark and check its header."""
    path = folder / name
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            records = list(csv.reader(handle))
    except FileNotFoundError:
        raise InvalidInputError(
            f"{name} not found in {str(folder)!r}; pass the folder that contains "
            f"{PIPELINE_FILE}, {TEAMS_FILE} and {PRODUCTS_FILE}",
            field="file",
            value=str(path),
        ) from None
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            f"{name} is not UTF-8 text (invalid byte at offset {error.start}); "
            "save it as UTF-8 and import again",
            field="file",
            value=str(path),
        ) from None
    except csv.Error as error:
        raise InvalidInputError(
            f"{name} is not a readable CSV file: {error}", field="file", value=str(path)
        ) from None
    except OSError as error:
        raise InvalidInputError(
            f"cannot read {name}: {error.strerror}", field="file", value=str(path)
        ) from None

    # Check the header: every required column, once.
    if not records or not any(cell.strip() for cell in records[0]):
        raise InvalidInputError(
            f"{name} has no header row; its first line must name the columns {', '.join(required)}",
            field="file",
            value=str(path),
        )
    header = [cell.strip() for cell in records[0]]
    for column in required:
        if column not in header:
            raise InvalidInputError(
                f"{name} has no column {column!r}; its header must name the columns "
                f"{', '.join(required)} (found {', '.join(header)})",
                field=column,
                value=str(path),
            )
    duplicated = sorted({column for column in header if header.count(column) > 1})
    if duplicated:
        raise InvalidInputError(
            f"{name} names column {duplicated[0]!r} more than once; keep one",
            field=duplicated[0],
            value=str(path),
        )

    # Pair each data row with its header. A blank line is skipped but still counted.
    table = _Table(rows=[], errors=[])
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            table.errors.append(
                RowError(
                    name,
                    number,
                    record[0].strip() if record else "",
                    "",
                    ",".join(record),
                    f"row has {len(record)} fields but the header has {len(header)}; "
                    "quote values that contain commas",
                )
            )
            continue
        table.rows.append(
            (number, {column: cell.strip() for column, cell in zip(header, record, strict=True)})
        )
    return table


def _load_program(app: LedgerApplication, program_id: str) -> Program:
    try:
        program = app.get_program(program_id)
    except NotFoundError:
        raise NotFoundError(
            f"program {program_id!r} does not exist; publish it first, for example with "
            "ledger program publish examples/programs/crm-channel.toml",
            field="program",
            value=program_id,
        ) from None
    if program.currency != CRM_CURRENCY:
        raise InvalidInputError(
            f"program {program_id!r} pays in {program.currency}, but close_value in "
            f"{PIPELINE_FILE} is {CRM_CURRENCY}; import into a program that pays in "
            f"{CRM_CURRENCY}",
            field="program",
            value=program_id,
        )
    if not program.rule_sets:
        raise InvalidInputError(
            f"program {program_id!r} has no rule set, so no enrollment date; publish "
            "its program file with at least one [[rule_sets]] table",
            field="program",
            value=program_id,
        )
    return program


# Partners and products ------------------------------------------------------


def _enroll_agents(
    app: LedgerApplication,
    program: Program,
    rows: Sequence[tuple[int, dict[str, str]]],
    context: CommandContext,
    report: ImportReport,
) -> _Agents:
    """Enroll one partner per agent row; return the usable agents and why others are not."""
    first = min(program.rule_sets, key=lambda rule_set: rule_set.version)
    agents = _Agents()
    for number, values in rows:
        name = values["sales_agent"]
        partner_id = partner_id_for_agent(name)
        try:
            check_partner_id(partner_id, field="sales_agent")
            created = app.enroll_partner(
                program.program_id,
                EnrollPartner(
                    partner_id=partner_id,
                    display_name=name,
                    effective_date=first.effective_from,
                    region=values["regional_office"],
                    channel_manager=values["manager"],
                    source_ref=f"{TEAMS_FILE}:{partner_id}",
                ),
                context,
            ).created
        except ConflictError as error:
            # The partner exists with other details, but its activities can
            # still be recorded if it belongs to this program.
            existing = app.get_partner(partner_id)
            if existing.program_id == program.program_id:
                report.errors.append(_teams_error(number, partner_id, error))
                agents.enrolled[name] = _Agent(partner_id, existing.enrolled_on)
                continue
            other = _program_label(app, existing.program_id)
            report.errors.append(
                RowError(
                    TEAMS_FILE,
                    number,
                    partner_id,
                    "sales_agent",
                    name,
                    f"partner {partner_id!r} is already enrolled in program {other}, not "
                    f"{program.program_id!r}; a partner belongs to one program, so import "
                    f"these files into program {existing.program_id!r} instead",
                )
            )
            agents.unusable[name] = (
                f"sales agent {name!r} is partner {partner_id!r}, enrolled in program "
                f"{other}, not {program.program_id!r}; a partner belongs to one program, "
                f"so import these files into program {existing.program_id!r} instead"
            )
            continue
        except InvalidInputError as error:
            report.errors.append(_teams_error(number, partner_id, error))
            agents.unusable[name] = (
                f"sales agent {name!r} is not enrolled because row {number} of {TEAMS_FILE} "
                "was rejected; fix that row and import again"
            )
            continue
        if created:
            report.partners_enrolled += 1
        else:
            report.partners_already_enrolled += 1
        agents.enrolled[name] = _Agent(partner_id, first.effective_from)
    return agents


def _program_label(app: LedgerApplication, program_id: str) -> str:
    """Return ``'id' ("name")`` for a program, or only ``'id'`` if it cannot be read."""
    try:
        name = app.get_program(program_id).name
    except NotFoundError:
        return repr(program_id)
    return f'{program_id!r} ("{name}")'


def _teams_error(number: int, partner_id: str, error: LedgerError) -> RowError:
    column = {"region": "regional_office", "channel_manager": "manager"}.get(
        error.field or "", "sales_agent"
    )
    return RowError(TEAMS_FILE, number, partner_id, column, error.value or "", error.message)


def _product_key(name: str) -> str:
    # Product names match ignoring case and spaces: GTXPro is GTX Pro.
    return "".join(name.split()).lower()


def _decode_products(
    rows: Sequence[tuple[int, dict[str, str]]], report: ImportReport
) -> dict[str, _Product]:
    products: dict[str, _Product] = {}
    for number, values in rows:
        name, series = values["product"], values["series"]
        if not name or not series:
            column = "product" if not name else "series"
            report.errors.append(
                RowError(PRODUCTS_FILE, number, name, column, "", f"{column} is empty; fill it in")
            )
            continue
        key = _product_key(name)
        known = products.get(key)
        if known is not None and known.series != series:
            report.errors.append(
                RowError(
                    PRODUCTS_FILE,
                    number,
                    name,
                    "product",
                    name,
                    f"product {name!r} is listed again with series {series!r} after "
                    f"{known.series!r} (names match ignoring case and spaces); keep one row",
                )
            )
            continue
        products[key] = _Product(name, series)
    return products


# Pipeline rows --------------------------------------------------------------


def _decode_pipeline_row(
    number: int,
    values: Mapping[str, str],
    agents: _Agents,
    products: Mapping[str, _Product],
    program: Program,
) -> _PipelineRow:
    """Decode one opportunity into its activities and price them without writing."""
    opportunity_id = values["opportunity_id"]
    row = _PipelineRow(number, values)

    def reject(column: str, message: str, source_ref: str = opportunity_id) -> None:
        row.errors.append(
            RowError(PIPELINE_FILE, number, source_ref, column, values.get(column, ""), message)
        )

    # Stage first, because a Prospecting row has nothing to reward whatever it contains.
    stage = values["deal_stage"]
    if stage in _NOT_REWARDABLE_STAGES:
        row.nothing_to_reward = True
        return row
    if stage not in _ENGAGED_STAGES:
        reject(
            "deal_stage",
            f"deal_stage {stage!r} is not one of Prospecting, Engaging, Won, Lost",
        )

    # The ledger cannot store U+0000, and some columns end up in events.
    for column, value in values.items():
        if "\x00" in value:
            reject(
                column,
                f"{column} contains the NUL character (U+0000), which the ledger cannot "
                "store; remove it from the file and import again",
            )

    # Fields every rewardable row needs.
    if not opportunity_id:
        reject("opportunity_id", "opportunity_id is empty; every opportunity needs its CRM id")
    agent = agents.enrolled.get(values["sales_agent"])
    if agent is None:
        reject("sales_agent", agents.problem(values["sales_agent"]))
    product = products.get(_product_key(values["product"]))
    if product is None:
        reject(
            "product",
            f"product {values['product']!r} is not in {PRODUCTS_FILE} (names match "
            "ignoring case and spaces); add it there or fix the name",
        )
    engage_date = _parse_date(values, "engage_date", stage, program, reject)

    # A won deal also needs its close date and value.
    close_date: date | None = None
    close_value: Money | None = None
    if stage == "Won":
        close_date = _parse_date(values, "close_date", stage, program, reject)
        close_value = _parse_close_value(values, reject)
    if row.errors or agent is None or product is None or engage_date is None:
        return row

    # Build the activities.
    commands = [
        RecordActivity(
            partner_id=agent.partner_id,
            activity_type=PIPELINE_ENGAGED,
            source_ref=f"{opportunity_id}:engaged",
            effective_date=engage_date,
            attributes={"product": product.name, "series": product.series},
        )
    ]
    if stage == "Won":
        assert close_date is not None and close_value is not None
        commands.append(
            RecordActivity(
                partner_id=agent.partner_id,
                activity_type=DEAL_WON,
                source_ref=f"{opportunity_id}:won",
                effective_date=close_date,
                base_amount=close_value,
                attributes={
                    "product": product.name,
                    "series": product.series,
                    "account": values["account"],
                },
            )
        )

    # Check each one as the application will price it: an activity the program
    # does not reward is set aside, and any other pricing error rejects the row.
    for command in commands:
        problem = _pricing_problem(command, agent, program)
        if problem is None:
            row.commands.append(command)
            continue
        outcome, column, message = problem
        entry = RowError(
            PIPELINE_FILE,
            number,
            command.source_ref,
            column,
            values.get(column, ""),
            message,
            outcome,
        )
        if outcome is RowOutcome.NOT_REWARDABLE:
            row.not_rewardable.append((command, entry))
        else:
            row.errors.append(entry)
    if row.errors:
        row.commands.clear()
        row.not_rewardable.clear()
    return row


def _parse_date(
    values: Mapping[str, str],
    column: str,
    stage: str,
    program: Program,
    reject: Callable[[str, str], None],
) -> date | None:
    text = values[column]
    if not text:
        reject(column, f"{column} is empty; a {stage} opportunity needs it, as YYYY-MM-DD")
        return None
    parsed: date | None = None
    if _ISO_DATE.match(text):
        try:
            parsed = date.fromisoformat(text)
        except ValueError:
            pass
    if parsed is None:
        reject(column, f"{column} {text!r} is not a valid date; write it as YYYY-MM-DD")
        return None

    # The application rejects dates after today in the program's time zone;
    # checking here keeps a Won row from being half recorded.
    try:
        program.check_not_future(parsed, field=column)
    except InvalidInputError as error:
        reject(column, error.message)
        return None
    return parsed


def _parse_close_value(
    values: Mapping[str, str], reject: Callable[[str, str], None]
) -> Money | None:
    text = values["close_value"]
    if not text:
        reject("close_value", "close_value is empty; a Won opportunity needs it, in US dollars")
        return None
    try:
        amount = Money.parse(text, CRM_CURRENCY, field="close_value")
    except InvalidInputError as error:
        reject("close_value", error.message)
        return None
    if amount.amount_minor < 0:
        reject("close_value", f"close_value {text} is negative; a won deal has a positive value")
        return None
    return amount


def _pricing_problem(
    command: RecordActivity, agent: _Agent, program: Program
) -> tuple[RowOutcome, str, str] | None:
    """Return (outcome, column, message) if the application would not record the activity.

    The outcome is ``NOT_REWARDABLE`` when the program does not reward the
    activity: no rule set is in force on its date, the partner was not yet
    enrolled then, or no rule prices it. It is ``REJECTED`` for any other
    error, which means the row's data are invalid.
    """
    columns = _COLUMN_OF_FIELD[command.activity_type]
    date_column = columns["effective_date"]

    # The rule set in force comes first, because its message names the date
    # the program starts, which explains an early date best.
    try:
        rule_set = program.rule_set_on(command.effective_date)
    except RuleNotFoundError as error:
        return RowOutcome.NOT_REWARDABLE, date_column, error.message
    if command.effective_date < agent.enrolled_on:
        message = (
            f"{date_column} {command.effective_date.isoformat()} is before partner "
            f"{agent.partner_id!r} enrolled on {agent.enrolled_on.isoformat()}; the program "
            "rewards a partner's activities from enrollment on"
        )
        return RowOutcome.NOT_REWARDABLE, date_column, message

    # The application prices the activity, so here it is only checked, by the
    # same function that the pricing starts with.
    try:
        find_pricing_rule(
            rule_set,
            currency=program.currency,
            activity_type=command.activity_type,
            attributes=command.attributes,
            base=command.base_amount,
        )
    except RuleNotFoundError as error:
        return RowOutcome.NOT_REWARDABLE, columns.get(error.field or "", "product"), error.message
    except LedgerError as error:
        return RowOutcome.REJECTED, columns.get(error.field or "", "product"), error.message
    return None


def _count_not_rewardable(report: ImportReport, command: RecordActivity, entry: RowError) -> None:
    report.not_rewardable_activities += 1
    report.not_rewardable_by_type[command.activity_type] += 1
    report.errors.append(entry)


# Writing --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PipelineJob:
    """Inputs of every share of the pipeline rows: program, agents, products and batch size."""

    program_id: str
    program: Program
    agents: _Agents
    products: Mapping[str, _Product]
    batch_size: int
    context: CommandContext


def _import_pipeline(
    app: LedgerApplication,
    job: _PipelineJob,
    rows: Sequence[tuple[int, dict[str, str]]],
    report: ImportReport,
    advance: Callable[[int], None],
) -> None:
    """Decode ``rows`` and record them in batches; call ``advance`` with the rows done."""
    rows_done = 0
    batch: list[_PipelineRow] = []
    pending = 0
    for number, values in rows:
        decoded = _decode_pipeline_row(number, values, job.agents, job.products, job.program)
        rows_done += 1
        if decoded.errors:
            report.errors.extend(decoded.errors)
            continue
        if decoded.nothing_to_reward:
            report.not_rewardable += 1
            continue
        for command, entry in decoded.not_rewardable:
            _count_not_rewardable(report, command, entry)
        if not decoded.commands:
            continue
        batch.append(decoded)
        pending += len(decoded.commands)
        if pending >= job.batch_size:
            _record_batch(app, job.program_id, batch, job.context, report)
            batch, pending = [], 0
            advance(rows_done)
    if batch:
        _record_batch(app, job.program_id, batch, job.context, report)
    advance(rows_done)


def _import_pipeline_in_workers(
    app: LedgerApplication,
    job: _PipelineJob,
    pipeline: _Table,
    workers: int,
    report: ImportReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Import the pipeline rows in ``workers`` forked processes and add their counts to ``report``.

    Rows go to a worker by a hash of their opportunity id, so a repeated
    opportunity meets its earlier rows in the same worker, in file order, and
    is compared with them as in a single process. A failed worker does not
    stop the others; the first failure is raised once all have ended.
    """
    shares: list[list[tuple[int, dict[str, str]]]] = [[] for _ in range(workers)]
    for number, values in pipeline.rows:
        shares[zlib.crc32(values["opportunity_id"].encode()) % workers].append((number, values))

    # Fork the workers: each inherits its share and the decoded agents and
    # products, and builds its own application with the same settings.
    context = multiprocessing.get_context("fork")
    readers: dict[multiprocessing.connection.Connection, int] = {}
    processes = []
    # Frozen objects are left out of the workers' garbage collections, which
    # would otherwise walk, and so copy, every row inherited from this process.
    gc.freeze()
    try:
        for index, share in enumerate(shares):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=_run_worker,
                args=(type(app), dict(app.env), job, share, writer),
                name=f"crm-import-{index + 1}",
                daemon=True,
            )
            process.start()
            writer.close()
            readers[reader] = index
            processes.append(process)
    finally:
        gc.unfreeze()

    # Collect progress and the partial reports until every worker has ended.
    rows_done = [0] * workers
    failures: list[LedgerError] = []
    while readers:
        for ready in multiprocessing.connection.wait(list(readers)):
            assert isinstance(ready, multiprocessing.connection.Connection)
            index = readers[ready]
            try:
                message = ready.recv()
            except EOFError:
                failures.append(
                    LedgerError(f"import worker {index + 1} ended without a report; import again")
                )
                del readers[ready]
                continue
            kind: str = message[0]
            if kind == "progress":
                rows_done[index] = message[1]
                if progress is not None:
                    progress(len(pipeline.errors) + sum(rows_done), report.rows)
                continue
            if kind == "done":
                _merge(report, message[1])
            else:
                failures.append(_worker_error(*message[1:]))
            del readers[ready]
    for process in processes:
        process.join()
    if failures:
        raise failures[0]


def _run_worker(
    app_type: type[LedgerApplication],
    env: dict[str, str],
    job: _PipelineJob,
    rows: Sequence[tuple[int, dict[str, str]]],
    writer: Any,
) -> None:
    """Import ``rows`` in a forked process and send the partial report through ``writer``."""
    try:
        worker_app = app_type(env=env)
        try:
            partial = ImportReport(
                correlation_id=job.context.correlation_id, currency=job.program.currency
            )
            _import_pipeline(
                worker_app, job, rows, partial, lambda done: writer.send(("progress", done))
            )
        finally:
            worker_app.close()
        writer.send(("done", partial))
    except Exception as error:  # noqa: BLE001
        # Any failure must reach the parent, and exceptions may not survive
        # pickling, so the parent rebuilds them from their class name and text.
        writer.send(("error", type(error).__name__, str(error)))
    finally:
        writer.close()


def _worker_error(kind: str, message: str) -> LedgerError:
    if kind == StoreUnavailableError.__name__:
        return StoreUnavailableError(message)
    return LedgerError(f"an import worker failed with {kind}: {message}")


def _merge(report: ImportReport, partial: ImportReport) -> None:
    """Add the counts and errors of a worker's ``partial`` report to ``report``."""
    report.recorded += partial.recorded
    report.already_recorded += partial.already_recorded
    report.conflicts += partial.conflicts
    report.not_rewardable += partial.not_rewardable
    report.not_rewardable_activities += partial.not_rewardable_activities
    report.recorded_by_type.update(partial.recorded_by_type)
    report.not_rewardable_by_type.update(partial.not_rewardable_by_type)
    report.recorded_amount_minor += partial.recorded_amount_minor
    report.errors.extend(partial.errors)


def _record_batch(
    app: LedgerApplication,
    program_id: str,
    rows: Sequence[_PipelineRow],
    context: CommandContext,
    report: ImportReport,
) -> None:
    """Record the activities of ``rows`` in one call and count each outcome."""
    commands = [command for row in rows for command in row.commands]
    owners = [row for row in rows for _ in row.commands]
    items = app.record_activities(program_id, commands, context)
    for command, row, item in zip(commands, owners, items, strict=True):
        if item.outcome is not None:
            if item.outcome.created:
                report.recorded += 1
                report.recorded_by_type[command.activity_type] += 1
                report.recorded_amount_minor += item.outcome.earning.amount.amount_minor
            else:
                report.already_recorded += 1
            continue
        assert item.error is not None
        error = item.error
        # NOTE: the application rejects activities one by one, so when only one
        # of a Won row's two activities is rejected here (a conflict, in
        # practice), the other one is still recorded.
        if isinstance(error, ConflictError):
            report.conflicts += 1
            report.errors.extend(_conflict_errors(row, command, error))
            continue
        not_rewardable = isinstance(error, RuleNotFoundError)
        entry = RowError(
            PIPELINE_FILE,
            row.number,
            command.source_ref,
            _COLUMN_OF_FIELD[command.activity_type].get(error.field or "", ""),
            error.value or "",
            error.message,
            RowOutcome.NOT_REWARDABLE if not_rewardable else RowOutcome.REJECTED,
        )
        if not_rewardable:
            _count_not_rewardable(report, command, entry)
        else:
            report.errors.append(entry)


def _conflict_errors(
    row: _PipelineRow, command: RecordActivity, error: ConflictError
) -> list[RowError]:
    """Return one conflict entry per field whose recorded value differs from the row's.

    Attributes differ key by key, so each entry names one CSV column, or
    ``series`` for a product whose series in ``products.csv`` changed.
    """
    columns = _COLUMN_OF_FIELD[command.activity_type]
    changes: list[tuple[str, Any, Any]] = []
    for name, (stored, requested) in error.differences.items():
        if name == "attributes" and isinstance(stored, dict) and isinstance(requested, dict):
            changes.extend(
                (key, stored.get(key), requested.get(key))
                for key in sorted(stored.keys() | requested.keys())
                if stored.get(key) != requested.get(key)
            )
        else:
            changes.append((columns.get(name, name), stored, requested))
    if not changes:
        return [
            RowError(
                PIPELINE_FILE,
                row.number,
                command.source_ref,
                columns.get(error.field or "", ""),
                error.value or "",
                error.message,
                RowOutcome.CONFLICT,
            )
        ]

    entries: list[RowError] = []
    for column, stored, requested in changes:
        source = f" (from {PRODUCTS_FILE})" if column == "series" else ""
        message = (
            f"source_ref {command.source_ref!r} is already recorded with {column} "
            f"{_conflict_text(stored)}, but this row has {_conflict_text(requested)}{source}; "
            f"a recorded activity never changes, so restore {_conflict_text(stored)}, or "
            "reverse the earning and import the correction under a new opportunity_id"
        )
        value = row.values.get(column, _conflict_text(requested))
        entries.append(
            RowError(
                PIPELINE_FILE,
                row.number,
                command.source_ref,
                column,
                value,
                message,
                RowOutcome.CONFLICT,
            )
        )
    return entries


def _conflict_text(value: Any) -> str:
    return "(empty)" if value is None or value == "" else str(value)

"""Tests for the CRM importer, on small hand-written files and on the real data set.

Expected rewards are computed here from the CSV text with ``Decimal``,
independently of the program file and of the ledger's pricing code: the rates
are written out below, not read from ``crm-channel.toml``.
"""

from __future__ import annotations

import csv
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

import asyncpg
import psycopg
import pytest
from eventsourcing.persistence import Mapper, StoredEvent
from psycopg import sql

from ledger.application.commands import CommandContext
from ledger.bootstrap import Services, bootstrap
from ledger.domain.earning import Earning
from ledger.domain.ids import earning_id
from ledger.errors import InvalidInputError, NotFoundError
from ledger.importing import import_crm_opportunities, load_program_file, write_error_file
from ledger.importing.crm import ImportReport, partner_id_for_agent
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.transcoder import MsgspecTranscoder
from ledger.projector import catch_up
from ledger.queries import fetch_statement
from ledger.settings import Settings
from tests.conftest import CRM_DATA_DIR, PROGRAM_FILE

PROGRAM = "crm-channel"
SETUP = CommandContext(actor="test-setup", correlation_id="test-setup")

# The program's rates, written out independently of the program file.
SERIES_RATES = {"GTX": Decimal("0.045"), "MG": Decimal("0.06"), "GTK": Decimal("0.0325")}
ENGAGED_REWARD_MINOR = 500

needs_crm_data = pytest.mark.skipif(
    not (CRM_DATA_DIR / "sales_pipeline.csv").exists(),
    reason=f"CRM data set not found at {CRM_DATA_DIR}; set LEDGER_CRM_DATA_DIR to its folder",
)

PRODUCTS = [
    ("GTX Basic", "GTX"),
    ("GTX Pro", "GTX"),
    ("MG Special", "MG"),
    ("MG Advanced", "MG"),
    ("GTX Plus Pro", "GTX"),
    ("GTX Plus Basic", "GTX"),
    ("GTK 500", "GTK"),
]
TEAMS = [
    ("Ada Quill", "Rita Moss", "Central"),
    ("Ben Ortiz", "Rita Moss", "Central"),
    ("Cleo Park", "Sam Hale", "West"),
]
PIPELINE_HEADER = (
    "opportunity_id,sales_agent,product,account,deal_stage,engage_date,close_date,close_value"
)


# Helpers --------------------------------------------------------------------


def write_crm(folder: Path, pipeline: Sequence[str], *, bom: bool = False) -> Path:
    """Write a small CRM folder: fixed products and teams, and ``pipeline`` data lines."""
    folder.mkdir(parents=True, exist_ok=True)
    encoding = "utf-8-sig" if bom else "utf-8"
    products = ["product,series,sales_price"] + [
        f"{name},{series},100" for name, series in PRODUCTS
    ]
    teams = ["sales_agent,manager,regional_office"] + [",".join(team) for team in TEAMS]
    for name, lines in (
        ("products.csv", products),
        ("sales_teams.csv", teams),
        ("sales_pipeline.csv", [PIPELINE_HEADER, *pipeline]),
    ):
        (folder / name).write_text("\r\n".join(lines) + "\r\n", encoding=encoding)
    return folder


SMALL_PIPELINE = [
    "OPP00001,Ada Quill,GTXPro,Acme,Won,2016-10-20,2016-11-02,1054",
    "OPP00002,Ada Quill,MG Special,,Engaging,2016-10-25,,",
    "OPP00003,Ben Ortiz,GTK 500,Betatech,Lost,2016-11-01,2016-12-01,0",
    "OPP00004,Ben Ortiz,GTX Basic,,Prospecting,,,",
    "OPP00005,Cleo Park,mg advanced,Cancity,Won,2016-12-05,2017-01-09,3393",
]


def publish(services: Services) -> None:
    services.app.publish_program(load_program_file(PROGRAM_FILE), SETUP)


def stored_earnings(database: DatabaseUrl) -> list[Earning.Earned]:
    """Decode every earning's creation event straight from the event store."""
    mapper: Mapper[uuid.UUID] = Mapper(transcoder=MsgspecTranscoder())
    with psycopg.connect(database.url) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM ledger_events "
            "WHERE originator_version = 1 ORDER BY notification_id"
        ).fetchall()
    events = [
        mapper.to_domain_event(StoredEvent(row[0], row[1], row[2], bytes(row[3]))) for row in rows
    ]
    return [event for event in events if isinstance(event, Earning.Earned)]


def head_position(database: DatabaseUrl) -> int:
    with psycopg.connect(database.url) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM ledger_events").fetchone()
    assert row is not None
    return int(row[0])


def earning_exists(database: DatabaseUrl, source_ref: str) -> bool:
    with psycopg.connect(database.url) as conn:
        row = conn.execute(
            "SELECT 1 FROM ledger_events WHERE originator_id = %s",
            (earning_id(PROGRAM, source_ref),),
        ).fetchone()
    return row is not None


def read_error_file(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class ExpectedLine:
    partner_id: str
    effective_date: date
    source_ref: str
    amount_minor: int


def expected_lines(folder: Path, rounding: str = ROUND_HALF_UP) -> list[ExpectedLine]:
    """Compute every earning the CSV files imply, with Decimal arithmetic."""
    with (folder / "products.csv").open(encoding="utf-8-sig", newline="") as handle:
        series_of = {
            "".join(row["product"].split()).lower(): row["series"] for row in csv.DictReader(handle)
        }
    lines: list[ExpectedLine] = []
    with (folder / "sales_pipeline.csv").open(encoding="utf-8-sig", newline="") as handle:
        for row in csv.DictReader(handle):
            if not row["engage_date"]:
                continue
            partner_id = row["sales_agent"].lower().replace(" ", "-")
            opportunity = row["opportunity_id"]
            lines.append(
                ExpectedLine(
                    partner_id,
                    date.fromisoformat(row["engage_date"]),
                    f"{opportunity}:engaged",
                    ENGAGED_REWARD_MINOR,
                )
            )
            if row["deal_stage"] == "Won":
                rate = SERIES_RATES[series_of["".join(row["product"].split()).lower()]]
                reward = (Decimal(row["close_value"]) * 100 * rate).quantize(
                    Decimal(1), rounding=rounding
                )
                lines.append(
                    ExpectedLine(
                        partner_id,
                        date.fromisoformat(row["close_date"]),
                        f"{opportunity}:won",
                        int(reward),
                    )
                )
    return lines


# Small files ----------------------------------------------------------------


def test_small_import_counts_each_outcome(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)

    report = import_crm_opportunities(services.app, folder)

    assert report.rows == 5
    assert report.recorded == 6
    assert report.recorded_by_type == Counter({"pipeline_engaged": 4, "deal_won": 2})
    assert report.already_recorded == 0
    assert report.conflicts == 0
    assert report.not_rewardable == 1
    assert report.rejected_rows == 0
    assert report.errors == []
    assert report.partners_enrolled == 3
    # 1054 × 4.5% = 47.43, 3393 × 6% = 203.58, four engagements at 5.00.
    assert report.recorded_amount_minor == 4743 + 20358 + 4 * 500


def test_small_import_stores_expected_earnings(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)

    import_crm_opportunities(services.app, folder)

    stored = {event.source_ref: event for event in stored_earnings(services.database)}
    expected = {line.source_ref: line for line in expected_lines(folder)}
    assert set(stored) == set(expected)
    for source_ref, line in expected.items():
        assert stored[source_ref].partner_id == line.partner_id, source_ref
        assert stored[source_ref].effective_date == line.effective_date, source_ref
        assert stored[source_ref].amount_minor == line.amount_minor, source_ref
        assert stored[source_ref].currency == "USD", source_ref


def test_product_names_match_ignoring_case_and_spaces(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)

    import_crm_opportunities(services.app, folder)

    stored = {event.source_ref: event for event in stored_earnings(services.database)}
    assert stored["OPP00001:won"].attributes == {
        "product": "GTX Pro",
        "series": "GTX",
        "account": "Acme",
    }
    assert stored["OPP00001:won"].base_minor == 105400
    assert stored["OPP00001:won"].rule_id == "won-gtx"
    assert stored["OPP00005:won"].attributes["product"] == "MG Advanced"
    assert stored["OPP00002:engaged"].attributes == {"product": "MG Special", "series": "MG"}


def test_partners_enrolled_from_teams(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)

    import_crm_opportunities(services.app, folder)

    for agent, manager, region in TEAMS:
        partner = services.app.get_partner(partner_id_for_agent(agent))
        assert partner.display_name == agent
        assert partner.program_id == PROGRAM
        assert partner.channel_manager == manager
        assert partner.region == region
        assert partner.tier == "registered"
        assert partner.enrolled_on == date(2016, 10, 1)


def test_partner_id_is_lower_case_with_hyphens() -> None:
    assert partner_id_for_agent("Darcel Schlecht") == "darcel-schlecht"
    assert partner_id_for_agent("Mei-Mei Johns") == "mei-mei-johns"


def test_file_with_byte_order_mark_imports(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE, bom=True)
    assert (folder / "sales_pipeline.csv").read_bytes().startswith(b"\xef\xbb\xbf")

    report = import_crm_opportunities(services.app, folder)

    assert report.recorded == 6
    assert report.errors == []


def test_unknown_product_and_bad_date_are_row_errors(services: Services, tmp_path: Path) -> None:
    publish(services)
    pipeline = [
        *SMALL_PIPELINE,
        "OPP00006,Ada Quill,GTX Turbo,Acme,Won,2016-10-21,2016-11-03,900",
        "OPP00007,Cleo Park,MG Special,Acme,Won,2016-10-22,2016-13-40,55",
    ]
    folder = write_crm(tmp_path / "crm", pipeline)

    report = import_crm_opportunities(services.app, folder)
    error_file = tmp_path / "errors.csv"
    written = write_error_file(error_file, report.errors)

    assert report.recorded == 6
    assert report.rejected_rows == 2
    assert written == 2
    errors = read_error_file(error_file)
    assert errors[0]["file"] == "sales_pipeline.csv"
    assert errors[0]["row"] == "7"
    assert errors[0]["source_ref"] == "OPP00006"
    assert errors[0]["field"] == "product"
    assert errors[0]["value"] == "GTX Turbo"
    assert "not in products.csv" in errors[0]["message"]
    assert errors[1]["row"] == "8"
    assert errors[1]["field"] == "close_date"
    assert errors[1]["value"] == "2016-13-40"
    assert "YYYY-MM-DD" in errors[1]["message"]
    for source_ref in ("OPP00006:engaged", "OPP00006:won", "OPP00007:engaged", "OPP00007:won"):
        assert not earning_exists(services.database, source_ref), source_ref


def test_row_errors_name_their_column(services: Services, tmp_path: Path) -> None:
    publish(services)
    pipeline = [
        "OPP00010,Zed Unknown,GTX Basic,Acme,Won,2016-10-21,2016-11-03,900",
        "OPP00011,Ada Quill,GTX Basic,Acme,Won,2016-10-21,,",
        "OPP00012,Ada Quill,GTX Basic,Acme,Won,2016-10-21,2016-11-03,12.345",
        "OPP00013,Ada Quill,GTX Basic,Acme,Won,2016-10-21,2016-11-03,-5",
        "OPP00014,Ada Quill,GTX Basic,,Engaging,,,",
        "OPP00015,Ada Quill,GTX Basic,,Stalled,2016-10-21,,",
        "OPP00016,Ada Quill,GTX Basic,,Engaging,2016-09-30,,",
        "OPP00017,Ada Quill,GTX Basic,Acme,Won,2016-10-21",
        "OPP00018,Ada Quill,GTX Basic,,Engaging,20161021,,",
    ]
    folder = write_crm(tmp_path / "crm", pipeline)

    report = import_crm_opportunities(services.app, folder)

    columns = [(error.row, error.field) for error in report.errors]
    assert columns == [
        (2, "sales_agent"),
        (3, "close_date"),
        (3, "close_value"),
        (4, "close_value"),
        (5, "close_value"),
        (6, "engage_date"),
        (7, "deal_stage"),
        (8, "engage_date"),
        (9, ""),
        (10, "engage_date"),
    ]
    assert report.rejected_rows == 9
    assert report.recorded == 0
    assert head_position(services.database) == 2 + len(TEAMS)


def test_before_enrollment_names_source_ref(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", ["OPP00020,Ada Quill,GTX Basic,,Engaging,2016-09-30,,"])

    report = import_crm_opportunities(services.app, folder)

    [error] = report.errors
    assert error.source_ref == "OPP00020:engaged"
    assert "before partner 'ada-quill' enrolled on 2016-10-01" in error.message


def test_second_run_records_nothing(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    import_crm_opportunities(services.app, folder)
    head = head_position(services.database)

    again = import_crm_opportunities(services.app, folder)

    assert again.recorded == 0
    assert again.already_recorded == 6
    assert again.partners_enrolled == 0
    assert again.partners_already_enrolled == 3
    assert again.errors == []
    assert head_position(services.database) == head


def test_changed_row_is_a_conflict(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    import_crm_opportunities(services.app, folder)
    changed = [line.replace(",1054", ",1100") for line in SMALL_PIPELINE]
    write_crm(folder, changed)

    report = import_crm_opportunities(services.app, folder)

    assert report.conflicts == 1
    assert report.rejected_rows == 0
    assert report.already_recorded == 5
    [error] = report.errors
    assert error.conflict
    assert (error.row, error.source_ref, error.field) == (2, "OPP00001:won", "close_value")
    assert "already recorded with different base_amount" in error.message


def test_one_correlation_id_per_run(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)

    report = import_crm_opportunities(services.app, folder)

    stored = stored_earnings(services.database)
    assert {event.correlation_id for event in stored} == {report.correlation_id}
    assert {event.actor for event in stored} == {"import:crm"}


def test_batches_smaller_than_rows_record_all(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    seen: list[tuple[int, int]] = []

    report = import_crm_opportunities(
        services.app, folder, batch_size=1, progress=lambda done, total: seen.append((done, total))
    )

    assert report.recorded == 6
    assert seen[-1] == (5, 5)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_missing_column_names_file_and_column(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    text = (folder / "sales_pipeline.csv").read_text(encoding="utf-8")
    (folder / "sales_pipeline.csv").write_text(
        text.replace("close_value", "amount", 1), encoding="utf-8"
    )

    with pytest.raises(InvalidInputError) as caught:
        import_crm_opportunities(services.app, folder)

    assert caught.value.field == "close_value"
    assert "sales_pipeline.csv has no column 'close_value'" in caught.value.message
    assert head_position(services.database) == 2


def test_missing_file_names_folder(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    (folder / "products.csv").unlink()

    with pytest.raises(InvalidInputError) as caught:
        import_crm_opportunities(services.app, folder)

    assert "products.csv not found" in caught.value.message


def test_unpublished_program_names_fix(services: Services, tmp_path: Path) -> None:
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)

    with pytest.raises(NotFoundError) as caught:
        import_crm_opportunities(services.app, folder)

    assert "ledger program publish" in caught.value.message


# The real data set ------------------------------------------------------------


@dataclass
class RealImport:
    services: Services
    first: ImportReport
    second: ImportReport
    head_after_first: int
    head_after_second: int


@pytest.fixture(scope="module")
def real_import(database_server: DatabaseUrl, template_database: str) -> Iterator[RealImport]:
    """The real data set imported twice into one database shared by this module's tests."""
    name = f"ledger_crm_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    services = bootstrap(
        Settings(), database=database_server.with_dbname(name), run_migrations=False
    )
    try:
        publish(services)
        first = import_crm_opportunities(services.app, CRM_DATA_DIR)
        head_after_first = head_position(services.database)
        second = import_crm_opportunities(services.app, CRM_DATA_DIR)
        yield RealImport(
            services, first, second, head_after_first, head_position(services.database)
        )
    finally:
        services.close()
        with psycopg.connect(database_server.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@needs_crm_data
def test_real_data_report(real_import: RealImport) -> None:
    report = real_import.first

    assert report.rows == 8800
    assert report.recorded_by_type == Counter({"deal_won": 4238, "pipeline_engaged": 8300})
    assert report.recorded == 4238 + 8300
    assert report.not_rewardable == 500
    assert report.rejected_rows == 0
    assert report.conflicts == 0
    assert report.errors == []
    assert report.partners_enrolled == 35
    assert str(report.recorded_amount) == "520650.57 USD"


@needs_crm_data
def test_real_data_stored_earnings(real_import: RealImport) -> None:
    stored = stored_earnings(real_import.services.database)

    assert Counter(event.activity_type for event in stored) == Counter(
        {"deal_won": 4238, "pipeline_engaged": 8300}
    )
    assert len({event.partner_id for event in stored}) == 30
    assert sum(event.amount_minor for event in stored) == 52_065_057
    assert {event.rounding for event in stored} == {"half-up"}


@needs_crm_data
def test_real_data_total_matches_csv(real_import: RealImport) -> None:
    half_up = sum(line.amount_minor for line in expected_lines(CRM_DATA_DIR, ROUND_HALF_UP))
    half_even = sum(line.amount_minor for line in expected_lines(CRM_DATA_DIR, ROUND_HALF_EVEN))
    stored = sum(event.amount_minor for event in stored_earnings(real_import.services.database))

    assert half_up == 52_065_057
    assert half_even != half_up
    assert stored == half_up


@needs_crm_data
def test_real_data_second_run_records_nothing(real_import: RealImport) -> None:
    again = real_import.second

    assert again.recorded == 0
    assert again.already_recorded == 4238 + 8300
    assert again.partners_already_enrolled == 35
    assert again.errors == []
    assert real_import.head_after_second == real_import.head_after_first


@needs_crm_data
async def test_real_data_statements_match_csv(real_import: RealImport) -> None:
    database = real_import.services.database
    by_partner: dict[str, list[ExpectedLine]] = defaultdict(list)
    for line in expected_lines(CRM_DATA_DIR):
        by_partner[line.partner_id].append(line)
    with (CRM_DATA_DIR / "sales_teams.csv").open(encoding="utf-8-sig", newline="") as handle:
        partners = [partner_id_for_agent(row["sales_agent"]) for row in csv.DictReader(handle)]
    months = [date(2016, 10, 1), date(2016, 11, 1), date(2016, 12, 1)] + [
        date(2017, month, 1) for month in (1, 2, 3)
    ]

    await catch_up(database)

    compared = 0
    conn = await asyncpg.connect(database.url)
    try:
        for partner_id in partners:
            for start in months:
                period = f"{start.year:04d}-{start.month:02d}"
                label = f"{partner_id} {period}"
                statement = await fetch_statement(conn, partner_id, period)
                in_month = [
                    line
                    for line in by_partner[partner_id]
                    if (line.effective_date.year, line.effective_date.month)
                    == (start.year, start.month)
                ]
                opening = sum(
                    line.amount_minor
                    for line in by_partner[partner_id]
                    if line.effective_date < start
                )
                closing = opening + sum(line.amount_minor for line in in_month)

                got = sorted(
                    (line.effective_date, line.source_ref, line.kind, line.amount.amount)
                    for line in statement.lines
                )
                want = sorted(
                    (line.effective_date, line.source_ref, "earning", cents(line.amount_minor))
                    for line in in_month
                )
                assert got == want, label
                compared += len(got)
                dates = [line.effective_date for line in statement.lines]
                assert dates == sorted(dates), label
                assert statement.opening_balance.amount == cents(opening), label
                assert statement.closing_balance.amount == cents(closing), label
                assert statement.currency == "USD", label
    finally:
        await conn.close()
    # October 2016 to March 2017 hold thousands of the 12,538 earnings.
    assert compared > 1000


def cents(amount_minor: int) -> str:
    """Format USD minor units as the API does: a decimal string with two digits."""
    return f"{Decimal(amount_minor).scaleb(-2):.2f}"

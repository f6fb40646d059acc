"""Tests for the CRM importer, on small hand-written files and on the real data set.

Expected rewards are computed here from the CSV text with ``Decimal``,
independently of the program file and of the ledger's pricing code: the rates
are written out below, not read from ``crm-channel.toml``.
"""

from __future__ import annotations

import csv
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import psycopg
import pytest
from eventsourcing.persistence import Mapper, StoredEvent
from psycopg import sql

from ledger.application.commands import CommandContext, EnrollPartner, ProgramSpec
from ledger.application.service import LedgerApplication
from ledger.bootstrap import Services, bootstrap
from ledger.domain.earning import Earning
from ledger.domain.ids import earning_id
from ledger.errors import InvalidInputError, NotFoundError, StoreUnavailableError
from ledger.importing import crm, import_crm_opportunities, load_program_file, write_error_file
from ledger.importing.crm import ImportReport, RowOutcome, partner_id_for_agent
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


def publish_variant(
    services: Services,
    program_id: str,
    *,
    starts: date,
    drop_rules: frozenset[str] = frozenset(),
    name: str = "CRM variant",
) -> None:
    """Publish the CRM program under another id, starting on ``starts``, without ``drop_rules``."""
    spec = load_program_file(PROGRAM_FILE)
    [rule_set] = spec.rule_sets
    rule_set = msgspec.structs.replace(
        rule_set,
        effective_from=starts,
        rules=tuple(rule for rule in rule_set.rules if rule.id not in drop_rules),
    )
    variant: ProgramSpec = msgspec.structs.replace(
        spec, id=program_id, name=name, rule_sets=[rule_set]
    )
    services.app.publish_program(variant, SETUP)


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


def earning_exists(database: DatabaseUrl, source_ref: str, program_id: str = PROGRAM) -> bool:
    with psycopg.connect(database.url) as conn:
        row = conn.execute(
            "SELECT 1 FROM ledger_events WHERE originator_id = %s",
            (earning_id(program_id, source_ref),),
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
    assert report.not_rewardable_activities == 0
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
    assert [error["outcome"] for error in errors] == ["rejected", "rejected"]
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

    columns = [(error.row, error.field, error.outcome) for error in report.errors]
    rejected, not_rewardable = RowOutcome.REJECTED, RowOutcome.NOT_REWARDABLE
    assert columns == [
        (2, "sales_agent", rejected),
        (3, "close_date", rejected),
        (3, "close_value", rejected),
        (4, "close_value", rejected),
        (5, "close_value", rejected),
        (6, "engage_date", rejected),
        (7, "deal_stage", rejected),
        (8, "engage_date", not_rewardable),
        (9, "", rejected),
        (10, "engage_date", rejected),
    ]
    assert "'Zed Unknown' is not in sales_teams.csv" in report.errors[0].message
    assert report.rejected_rows == 8
    assert report.not_rewardable_activities == 1
    assert report.recorded == 0
    assert head_position(services.database) == 2 + len(TEAMS)


def test_future_date_rejects_whole_row(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(
        tmp_path / "crm", ["OPP00021,Ada Quill,GTX Basic,Acme,Won,2016-10-20,2999-01-04,900"]
    )

    report = import_crm_opportunities(services.app, folder)

    [error] = report.errors
    assert (error.row, error.source_ref, error.field) == (2, "OPP00021", "close_date")
    assert error.value == "2999-01-04"
    assert "close_date 2999-01-04 is in the future" in error.message
    assert error.outcome is RowOutcome.REJECTED
    assert report.rejected_rows == 1
    assert report.recorded == 0
    assert not earning_exists(services.database, "OPP00021:engaged")
    assert not earning_exists(services.database, "OPP00021:won")


# Activities the program does not reward ---------------------------------------


def test_won_deal_engaged_before_program_recorded(services: Services, tmp_path: Path) -> None:
    publish_variant(services, "crm-2017", starts=date(2017, 1, 1))
    folder = write_crm(
        tmp_path / "crm", ["OPP00022,Ada Quill,GTX Basic,Acme,Won,2016-12-20,2017-03-01,1000"]
    )

    report = import_crm_opportunities(services.app, folder, program_id="crm-2017")
    error_file = tmp_path / "errors.csv"
    write_error_file(error_file, report.errors)

    assert report.recorded == 1
    assert report.recorded_by_type == Counter({"deal_won": 1})
    assert report.recorded_amount_minor == 4500
    assert report.not_rewardable_activities == 1
    assert report.not_rewardable_by_type == Counter({"pipeline_engaged": 1})
    assert report.not_rewardable == 0
    assert report.rejected_rows == 0
    assert earning_exists(services.database, "OPP00022:won", "crm-2017")
    assert not earning_exists(services.database, "OPP00022:engaged", "crm-2017")
    [entry] = read_error_file(error_file)
    assert entry == {
        "file": "sales_pipeline.csv",
        "row": "2",
        "source_ref": "OPP00022:engaged",
        "field": "engage_date",
        "value": "2016-12-20",
        "message": (
            "no rule set is in force on 2016-12-20; the first rule set takes effect on 2017-01-01"
        ),
        "outcome": "not_rewardable",
    }


def test_not_rewardable_again_on_second_run(services: Services, tmp_path: Path) -> None:
    publish_variant(services, "crm-2017", starts=date(2017, 1, 1))
    folder = write_crm(
        tmp_path / "crm", ["OPP00022,Ada Quill,GTX Basic,Acme,Won,2016-12-20,2017-03-01,1000"]
    )
    import_crm_opportunities(services.app, folder, program_id="crm-2017")

    again = import_crm_opportunities(services.app, folder, program_id="crm-2017")

    assert again.recorded == 0
    assert again.already_recorded == 1
    assert again.not_rewardable_activities == 1
    assert [error.outcome for error in again.errors] == [RowOutcome.NOT_REWARDABLE]


def test_activity_without_rule_is_not_rewardable(services: Services, tmp_path: Path) -> None:
    publish_variant(
        services, "crm-no-gtk", starts=date(2016, 10, 1), drop_rules=frozenset({"won-gtk"})
    )
    folder = write_crm(
        tmp_path / "crm",
        [
            "OPP00023,Ada Quill,GTK 500,Acme,Won,2016-10-20,2016-11-02,1000",
            "OPP00024,Ben Ortiz,GTX Basic,Acme,Won,2016-10-20,2016-11-02,1000",
        ],
    )

    report = import_crm_opportunities(services.app, folder, program_id="crm-no-gtk")

    assert report.recorded_by_type == Counter({"pipeline_engaged": 2, "deal_won": 1})
    assert report.not_rewardable_by_type == Counter({"deal_won": 1})
    assert report.rejected_rows == 0
    [error] = report.errors
    assert (error.row, error.source_ref, error.field) == (2, "OPP00023:won", "product")
    assert error.value == "GTK 500"
    assert "no rule for activity type 'deal_won'" in error.message
    assert error.outcome is RowOutcome.NOT_REWARDABLE
    assert earning_exists(services.database, "OPP00023:engaged", "crm-no-gtk")
    assert not earning_exists(services.database, "OPP00023:won", "crm-no-gtk")


def test_before_enrollment_is_not_rewardable(services: Services, tmp_path: Path) -> None:
    publish(services)
    # Enrolled a month after the program starts, under another display name,
    # so the importer reports the difference but keeps the partner.
    services.app.enroll_partner(
        PROGRAM,
        EnrollPartner(
            partner_id="ada-quill",
            display_name="Ada Q.",
            effective_date=date(2016, 11, 1),
            region="Central",
            channel_manager="Rita Moss",
        ),
        SETUP,
    )
    folder = write_crm(
        tmp_path / "crm", ["OPP00025,Ada Quill,GTX Basic,Acme,Won,2016-10-15,2016-11-20,1000"]
    )

    report = import_crm_opportunities(services.app, folder)

    assert report.recorded_by_type == Counter({"deal_won": 1})
    assert report.not_rewardable_activities == 1
    # Errors are sorted by file name, so the pipeline's come first.
    pipeline_error, teams_error = report.errors
    assert teams_error.file == "sales_teams.csv"
    assert pipeline_error.source_ref == "OPP00025:engaged"
    assert pipeline_error.field == "engage_date"
    assert "before partner 'ada-quill' enrolled on 2016-11-01" in pipeline_error.message
    assert pipeline_error.outcome is RowOutcome.NOT_REWARDABLE


# Agents that cannot be used --------------------------------------------------


def test_agent_in_other_program_names_it(services: Services, tmp_path: Path) -> None:
    publish(services)
    publish_variant(
        services, "partner-direct", starts=date(2016, 10, 1), name="Partner direct rewards"
    )
    services.app.enroll_partner(
        "partner-direct",
        EnrollPartner(
            partner_id="ada-quill",
            display_name="Ada Quill",
            effective_date=date(2016, 10, 1),
            region="Central",
            channel_manager="Rita Moss",
        ),
        SETUP,
    )
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)

    report = import_crm_opportunities(services.app, folder)

    *pipeline_errors, teams_error = report.errors
    assert (teams_error.file, teams_error.row, teams_error.field) == (
        "sales_teams.csv",
        2,
        "sales_agent",
    )
    assert teams_error.value == "Ada Quill"
    assert (
        "partner 'ada-quill' is already enrolled in program 'partner-direct' "
        "(\"Partner direct rewards\"), not 'crm-channel'" in teams_error.message
    )
    assert "a partner belongs to one program" in teams_error.message
    assert [(error.row, error.field) for error in pipeline_errors] == [
        (2, "sales_agent"),
        (3, "sales_agent"),
    ]
    for error in pipeline_errors:
        assert "enrolled in program 'partner-direct'" in error.message
        assert "a partner belongs to one program" in error.message
        assert "add the agent" not in error.message
    assert report.rejected_rows == 3
    assert report.recorded == 3
    assert report.partners_enrolled == 2


def test_agent_with_rejected_team_row_names_row(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", ["OPP00026,Dan O'Neil,GTX Basic,,Engaging,2016-10-20,,"])
    teams = (folder / "sales_teams.csv").read_text(encoding="utf-8")
    (folder / "sales_teams.csv").write_text(
        teams + "Dan O'Neil,Sam Hale,West\r\n", encoding="utf-8"
    )

    report = import_crm_opportunities(services.app, folder)

    pipeline_error, teams_error = report.errors
    assert (teams_error.file, teams_error.row) == ("sales_teams.csv", 5)
    assert pipeline_error.field == "sales_agent"
    assert pipeline_error.message == (
        'sales agent "Dan O\'Neil" is not enrolled because row 5 of sales_teams.csv '
        "was rejected; fix that row and import again"
    )


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
    error_file = tmp_path / "errors.csv"
    write_error_file(error_file, report.errors)

    assert report.conflicts == 1
    assert report.rejected_rows == 0
    assert report.already_recorded == 5
    [error] = read_error_file(error_file)
    assert error == {
        "file": "sales_pipeline.csv",
        "row": "2",
        "source_ref": "OPP00001:won",
        "field": "close_value",
        "value": "1100",
        "message": (
            "source_ref 'OPP00001:won' is already recorded with close_value 1054.00 USD, "
            "but this row has 1100.00 USD; a recorded activity never changes, so restore "
            "1054.00 USD, or reverse the earning and import the correction under a new "
            "opportunity_id"
        ),
        "outcome": "conflict",
    }


def test_conflict_lists_each_changed_field(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    import_crm_opportunities(services.app, folder)
    changed = [
        "OPP00001,Ada Quill,GTXPro,Initech,Won,2016-10-20,2016-11-04,1054",
        "OPP00002,Ada Quill,MG Special,,Engaging,2016-10-26,,",
        *SMALL_PIPELINE[2:],
    ]
    write_crm(folder, changed)
    products = (folder / "products.csv").read_text(encoding="utf-8")
    (folder / "products.csv").write_text(
        products.replace("MG Special,MG", "MG Special,GTX"), encoding="utf-8"
    )

    report = import_crm_opportunities(services.app, folder)

    assert report.conflicts == 2
    assert report.already_recorded == 4
    assert report.rejected_rows == 0
    assert all(error.outcome is RowOutcome.CONFLICT for error in report.errors)
    found = [(e.row, e.source_ref, e.field, e.value) for e in report.errors]
    assert found == [
        (2, "OPP00001:won", "close_date", "2016-11-04"),
        (2, "OPP00001:won", "account", "Initech"),
        (3, "OPP00002:engaged", "engage_date", "2016-10-26"),
        (3, "OPP00002:engaged", "series", "GTX"),
    ]
    messages = [error.message for error in report.errors]
    assert "with close_date 2016-11-02, but this row has 2016-11-04;" in messages[0]
    assert "with account Acme, but this row has Initech;" in messages[1]
    assert "with engage_date 2016-10-25, but this row has 2016-10-26;" in messages[2]
    assert "with series MG, but this row has GTX (from products.csv);" in messages[3]


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


def test_workers_keep_row_order_per_opportunity(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Let even these few rows be shared among three worker processes.
    monkeypatch.setattr(crm, "_MIN_ROWS_PER_WORKER", 1)
    publish(services)
    folder = write_crm(
        tmp_path / "crm",
        [
            *SMALL_PIPELINE,
            "OPP00001,Ada Quill,GTXPro,Acme,Won,2016-10-20,2016-11-02,1100",
            "OPP00006,Ben Ortiz,Nope,,Engaging,2016-10-25,,",
            "OPP00005,Cleo Park,mg advanced,Cancity,Won,2016-12-05,2017-01-09,3393",
        ],
    )
    seen: list[int] = []

    report = import_crm_opportunities(
        services.app, folder, workers=3, progress=lambda done, _: seen.append(done)
    )

    assert report.rows == 8
    assert report.recorded == 6
    assert report.already_recorded == 3
    assert report.conflicts == 1
    assert report.rejected_rows == 1
    assert report.not_rewardable == 1
    assert report.recorded_amount_minor == 4743 + 20358 + 4 * 500
    found = [(e.row, e.source_ref, e.field, e.outcome) for e in report.errors]
    assert found == [
        (7, "OPP00001:won", "close_value", RowOutcome.CONFLICT),
        (8, "OPP00006", "product", RowOutcome.REJECTED),
    ]
    assert len(stored_earnings(services.database)) == 6
    assert seen[-1] == 8


def test_failed_worker_leaves_whole_earnings_and_rerun_completes(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    monkeypatch.setattr(crm, "_MIN_ROWS_PER_WORKER", 1)
    # Each forked worker records its first batch, then loses the database.
    parent = os.getpid()
    record = LedgerApplication.record_activities
    calls = [0]

    def failing(app: LedgerApplication, *args: Any, **kwargs: Any) -> Any:
        if os.getpid() != parent:
            calls[0] += 1
            if calls[0] == 2:
                raise StoreUnavailableError("the event store is unavailable: test outage")
        return record(app, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(LedgerApplication, "record_activities", failing)
        with pytest.raises(StoreUnavailableError) as caught:
            import_crm_opportunities(services.app, folder, workers=2, batch_size=1)
    written = stored_earnings(services.database)
    again = import_crm_opportunities(services.app, folder, workers=2, batch_size=1)

    assert "test outage" in caught.value.message
    assert 0 < len(written) < 6
    assert again.recorded == 6 - len(written)
    assert again.already_recorded == len(written)
    assert again.errors == []
    stored = stored_earnings(services.database)
    assert len(stored) == 6
    assert len({event.originator_id for event in stored}) == 6


def test_workers_must_be_positive(services: Services, tmp_path: Path) -> None:
    publish(services)
    folder = write_crm(tmp_path / "crm", SMALL_PIPELINE)
    head = head_position(services.database)

    with pytest.raises(InvalidInputError) as caught:
        import_crm_opportunities(services.app, folder, workers=0)

    assert caught.value.field == "workers"
    assert head_position(services.database) == head


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


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def real_import(
    request: pytest.FixtureRequest, database_server: DatabaseUrl, template_database: str
) -> Iterator[RealImport]:
    """The real data set imported twice, in one process or two workers, into a shared database."""
    workers: int = request.param
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
        first = import_crm_opportunities(services.app, CRM_DATA_DIR, workers=workers)
        head_after_first = head_position(services.database)
        second = import_crm_opportunities(services.app, CRM_DATA_DIR, workers=workers)
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
    assert report.not_rewardable_activities == 0
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


def test_nul_character_rejects_the_row(services: Services, tmp_path: Path) -> None:
    publish(services)
    pipeline = [
        *SMALL_PIPELINE,
        "OPP00020,Ada Quill,GTX Basic,Ac\x00me,Won,2016-10-21,2016-11-03,900",
    ]
    folder = write_crm(tmp_path / "crm", pipeline)

    report = import_crm_opportunities(services.app, folder)
    error_file = tmp_path / "errors.csv"
    write_error_file(error_file, report.errors)

    assert report.recorded == 6
    assert report.rejected_rows == 1
    assert [(error.row, error.field) for error in report.errors] == [(7, "account")]
    assert "NUL" in report.errors[0].message
    assert read_error_file(error_file)[0]["field"] == "account"
    assert not earning_exists(services.database, "OPP00020:won")

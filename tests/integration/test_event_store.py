"""Tests for the event store on a real PostgreSQL.

eventsourcing's own recorder contract suites run against the test database
with the insert path the ledger uses (a table lock, no database functions).
The remaining tests check what the ledger adds on top: the append-only
triggers of ``ledger_events`` and upcasting of stored version-1 events.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from unittest import TestCase

import psycopg
import pytest
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from eventsourcing.tests import persistence as contract
from eventsourcing.utils import get_topic

from ledger.application.commands import (
    ChangeTier,
    CommandContext,
    EnrollPartner,
    ProgramSpec,
    RecordActivity,
)
from ledger.bootstrap import Services
from ledger.domain.earning import Earning
from ledger.domain.ids import partner_id_uuid, program_id_uuid
from ledger.domain.money import Money
from ledger.domain.partner import Partner
from ledger.domain.program import Program
from ledger.domain.rules import Rule, RuleSet
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.recorder import LedgerRecorder
from ledger.infrastructure.transcoder import MsgspecTranscoder

# The contract suites write to their own table in the per-test database, so
# ledger_events and its append-only triggers stay out of their way.
CONTRACT_TABLE = "recorder_contract_events"

CONTEXT = CommandContext(actor="tester", correlation_id="corr-1")


# eventsourcing's recorder contract ------------------------------------------


class _ContractOnTestDatabase(TestCase):
    """Base for contract tests that run on the fresh database of the ``database`` fixture.

    unittest classes cannot take fixtures as arguments, so an autouse fixture
    method stores the database on the instance before ``setUp`` runs.
    """

    database: DatabaseUrl
    datastore: PostgresDatastore

    @pytest.fixture(autouse=True)
    def _bind_database(self, database: DatabaseUrl) -> None:
        self.database = database

    def setUp(self) -> None:
        super().setUp()
        self.datastore = PostgresDatastore(
            dbname=self.database.dbname,
            host=self.database.host,
            port=self.database.port,
            user=self.database.user,
            password=self.database.password,
            pool_size=1,
            enable_db_functions=False,
        )

    def tearDown(self) -> None:
        # Close before the fixture drops the database.
        self.datastore.close()
        super().tearDown()


class TestAggregateRecorderContract(_ContractOnTestDatabase, contract.AggregateRecorderTestCase):
    def create_recorder(self) -> PostgresAggregateRecorder:
        recorder = PostgresAggregateRecorder(self.datastore, events_table_name=CONTRACT_TABLE)
        recorder.create_table()
        return recorder


class TestApplicationRecorderContract(
    _ContractOnTestDatabase, contract.ApplicationRecorderTestCase[PostgresApplicationRecorder]
):
    def create_recorder(self) -> PostgresApplicationRecorder:
        recorder = PostgresApplicationRecorder(self.datastore, events_table_name=CONTRACT_TABLE)
        recorder.create_table()
        assert not self.datastore.enable_db_functions
        return recorder

    def test_insert_subscribe(self) -> None:
        # The subscription listens on its own connection while the test writes.
        self.datastore.pool.open()
        self.datastore.pool.resize(2, 2)
        self.optional_test_insert_subscribe()

    def test_concurrent_no_conflicts(self, initial_position: int = 0) -> None:
        # Ten writers and two readers share the pool.
        self.datastore.pool.open()
        self.datastore.pool.resize(12, 12)
        super().test_concurrent_no_conflicts(initial_position)

    def test_concurrent_throughput(self) -> None:
        self.datastore.pool.open()
        self.datastore.pool.resize(10, 10)
        super().test_concurrent_throughput()


class TestNotificationIdsDoNotInterleave(
    _ContractOnTestDatabase, contract.NonInterleavingNotificationIDsBaseCase
):
    """Two concurrent batches get contiguous notification ids: commit order is id order."""

    def create_recorder(self) -> PostgresApplicationRecorder:
        self.datastore.pool.open()
        self.datastore.pool.resize(2, 2)
        recorder = PostgresApplicationRecorder(self.datastore, events_table_name=CONTRACT_TABLE)
        recorder.create_table()
        return recorder


class TestLedgerRecorderContract(TestApplicationRecorderContract):
    """The same contract for the recorder the ledger uses, which sends events in binary."""

    def create_recorder(self) -> PostgresApplicationRecorder:
        recorder = LedgerRecorder(self.datastore, events_table_name=CONTRACT_TABLE)
        recorder.create_table()
        assert not self.datastore.enable_db_functions
        return recorder


def test_ledger_uses_locked_insert_path(services: Services) -> None:
    recorder = services.app.recorder

    assert isinstance(recorder, LedgerRecorder)
    assert recorder.events_table_name == "ledger_events"
    assert recorder.datastore.enable_db_functions is False
    assert recorder.channel_name == "ledger_events"
    # Only the parameter's format differs: the insert path is the base class's.
    for method in ("insert_events", "_insert_stored_events", "_lock_table", "_notify_channel"):
        assert method not in vars(LedgerRecorder)


def test_binary_insert_stores_the_same_bytes_as_text(database: DatabaseUrl) -> None:
    datastore = PostgresDatastore(
        dbname=database.dbname,
        host=database.host,
        port=database.port,
        user=database.user,
        password=database.password,
        pool_size=1,
        enable_db_functions=False,
    )
    # States and topics with every byte, quotes, backslashes, commas and
    # non-ASCII text, which the text format escapes and the binary one does not.
    events = [
        StoredEvent(
            originator_id=partner_id_uuid(f"p-{number}"),
            originator_version=version,
            topic=topic,
            state=state,
        )
        for number, (version, topic, state) in enumerate(
            [
                (1, "ledger.domain:E", bytes(range(256))),
                (2, 'a "quoted", topic \\ with ümlaut', b'\\x00"(,)'),
                (2**40, "t", b""),
                (7, "{x}", b"\x00\xff" * 5000),
            ]
        )
    ]
    try:
        text = PostgresApplicationRecorder(datastore, events_table_name="text_events")
        text.create_table()
        binary = LedgerRecorder(datastore, events_table_name="binary_events")
        binary.create_table()
        text.insert_events(events)
        ids = binary.insert_events(events)
        with psycopg.connect(database.url) as conn:
            rows = {
                table: conn.execute(
                    f"SELECT originator_id, originator_version, topic, state FROM {table} "
                    "ORDER BY notification_id"
                ).fetchall()
                for table in ("text_events", "binary_events")
            }
    finally:
        datastore.close()

    assert ids == [1, 2, 3, 4]
    assert rows["binary_events"] == rows["text_events"]
    assert [
        StoredEvent(row[0], row[1], row[2], bytes(row[3])) for row in rows["binary_events"]
    ] == events


# Append-only ledger_events ----------------------------------------------------


def publish_and_enroll(services: Services, partner_id: str = "darcel-schlecht") -> None:
    spec = ProgramSpec(
        id="crm-channel",
        name="CRM channel",
        currency="USD",
        rule_sets=[
            RuleSet(
                version=1,
                effective_from=date(2024, 1, 1),
                rules=(Rule(id="deal", activity_type="deal_won", fixed="10.00"),),
            )
        ],
    )
    services.app.publish_program(spec, CONTEXT)
    services.app.enroll_partner(
        "crm-channel",
        EnrollPartner(
            partner_id=partner_id,
            display_name="Darcel Schlecht",
            effective_date=date(2024, 1, 15),
        ),
        CONTEXT,
    )


@pytest.fixture
def owner_connection(services: Services) -> Iterator[psycopg.Connection[Any]]:
    """Autocommit connection to the test database as the role that owns ledger_events."""
    publish_and_enroll(services)
    services.app.record_activity(
        "crm-channel",
        RecordActivity(
            partner_id="darcel-schlecht",
            activity_type="deal_won",
            source_ref="OPP-1",
            effective_date=date(2024, 2, 1),
        ),
        CONTEXT,
    )
    with psycopg.connect(services.database.url, autocommit=True) as conn:
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'ledger_events'"
        ).fetchone()
        current = conn.execute("SELECT current_user").fetchone()
        assert owner is not None
        assert current is not None
        assert owner[0] == current[0]
        yield conn


def all_events(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT originator_id, originator_version, topic, state, notification_id "
        "FROM ledger_events ORDER BY notification_id"
    ).fetchall()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_events SET topic = 'tampered'",
        "UPDATE ledger_events SET state = ''::bytea WHERE originator_version = 1",
        "DELETE FROM ledger_events",
        "DELETE FROM ledger_events WHERE notification_id = 1",
        "TRUNCATE ledger_events",
    ],
)
def test_events_table_rejects_changes(
    owner_connection: psycopg.Connection[Any], statement: str
) -> None:
    # NOTE: the owner can still run ALTER TABLE ... DISABLE TRIGGER, so the
    # triggers stop accidental changes, not deliberate ones.
    before = all_events(owner_connection)
    assert len(before) == 4

    with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
        owner_connection.execute(statement)

    assert "ledger_events is append-only" in str(raised.value)
    assert all_events(owner_connection) == before


def test_events_table_accepts_inserts(services: Services) -> None:
    publish_and_enroll(services)

    services.app.record_activity(
        "crm-channel",
        RecordActivity(
            partner_id="darcel-schlecht",
            activity_type="deal_won",
            source_ref="OPP-2",
            effective_date=date(2024, 2, 1),
        ),
        CONTEXT,
    )

    with psycopg.connect(services.database.url) as conn:
        assert len(all_events(conn)) == 4


# Upcasting ----------------------------------------------------------------------


def test_tier_changed_v1_loads_with_empty_reason(services: Services) -> None:
    publish_and_enroll(services)
    partner_uuid = partner_id_uuid("darcel-schlecht")
    # A TierChanged event as version 1 of the class stored it: no reason and
    # no class_version key in the state.
    v1_state = {
        "timestamp": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
        "from_tier": "registered",
        "to_tier": "gold",
        "effective_date": date(2024, 5, 1),
        "actor": "tester",
        "idempotency_key": "tier-1",
        "correlation_id": "corr-v1",
    }
    with psycopg.connect(services.database.url) as conn:
        conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s)",
            (
                partner_uuid,
                2,
                get_topic(Partner.TierChanged),
                MsgspecTranscoder().encode(v1_state),
            ),
        )

    partner = services.app.repository.get(partner_uuid)
    events = list(services.app.events.get(partner_uuid))

    assert isinstance(partner, Partner)
    assert partner.tier == "gold"
    assert partner.version == 2
    assert services.app.get_partner("darcel-schlecht").tier == "gold"
    assert isinstance(events[1], Partner.TierChanged)
    assert events[1].reason == ""
    assert events[1].from_tier == "registered"
    assert events[1].effective_date == date(2024, 5, 1)


def test_tier_changed_is_stored_as_version_2(services: Services) -> None:
    publish_and_enroll(services)

    services.app.change_tier(
        "darcel-schlecht",
        ChangeTier(tier="gold", effective_date=date(2024, 5, 1), reason="quota met"),
        "tier-1",
        CONTEXT,
    )

    with psycopg.connect(services.database.url) as conn:
        row = conn.execute(
            "SELECT state FROM ledger_events WHERE originator_id = %s AND originator_version = 2",
            (partner_id_uuid("darcel-schlecht"),),
        ).fetchone()
    assert row is not None
    state = MsgspecTranscoder().decode(bytes(row[0]))
    assert state["class_version"] == 2
    assert state["reason"] == "quota met"


def test_stored_earning_decodes_to_event(services: Services) -> None:
    publish_and_enroll(services)
    services.app.record_activity(
        "crm-channel",
        RecordActivity(
            partner_id="darcel-schlecht",
            activity_type="deal_won",
            source_ref="OPP-9",
            effective_date=date(2024, 2, 1),
        ),
        CONTEXT,
    )
    mapper: Mapper[Any] = Mapper(transcoder=MsgspecTranscoder())

    with psycopg.connect(services.database.url) as conn:
        row = conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM ledger_events "
            "ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    event = mapper.to_domain_event(StoredEvent(row[0], row[1], row[2], bytes(row[3])))

    assert isinstance(event, Earning.Earned)
    assert event.source_ref == "OPP-9"
    assert Money(event.amount_minor, event.currency) == Money(1000, "USD")
    assert event.timestamp.tzinfo is not None


def test_program_created_v1_loads_without_tiers(services: Services) -> None:
    program_uuid = program_id_uuid("legacy-program")
    # A Program.Created event as version 1 of the class stored it: no tiers
    # and no class_version key in the state.
    v1_state = {
        "timestamp": datetime(2024, 1, 1, 8, 0, tzinfo=UTC),
        "originator_topic": get_topic(Program),
        "program_id": "legacy-program",
        "name": "Legacy",
        "currency": "EUR",
        "time_zone": "UTC",
        "rounding": "half-even",
        "actor": "tester",
        "correlation_id": "corr-v1",
    }
    with psycopg.connect(services.database.url) as conn:
        conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s)",
            (program_uuid, 1, get_topic(Program.Created), MsgspecTranscoder().encode(v1_state)),
        )

    program = services.app.get_program("legacy-program")

    assert program.tiers == []
    assert program.currency == "EUR"
    program.check_tier("any-name")

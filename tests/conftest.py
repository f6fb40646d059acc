"""Shared fixtures: a real PostgreSQL server and a fresh, migrated database per test.

The server is ``LEDGER_TEST_DATABASE_URL`` when set (any PostgreSQL 14 or
newer, reached as a role that may create databases), otherwise an embedded
server started for the session in a temporary folder. Each test that requests
``database`` gets its own database cloned from a migrated template, so tests
never see each other's events.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ledger.bootstrap import Services, bootstrap
from ledger.infrastructure.database import DatabaseUrl, start_embedded_server
from ledger.infrastructure.schema import migrate
from ledger.settings import Settings

CRM_DATA_DIR = Path(
    os.environ.get("LEDGER_CRM_DATA_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "crm-sales-opportunities"
)
PROGRAM_FILE = Path(__file__).resolve().parents[1] / "examples" / "programs" / "crm-channel.toml"


@pytest.fixture(scope="session")
def database_server() -> DatabaseUrl:
    """URL of the PostgreSQL server the tests run against (its maintenance database)."""
    external = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if external:
        return DatabaseUrl.parse(external)
    # A folder of its own rather than pytest's tmp_path: pytest prunes old
    # tmp_path folders, which would pull the data folder from under a server
    # that another concurrent pytest session still runs.
    folder = Path(tempfile.mkdtemp(prefix="ledger-test-postgres-"))
    return start_embedded_server(folder, delete_on_exit=True)


def _create_database(server: DatabaseUrl, name: str, template: str | None = None) -> DatabaseUrl:
    with psycopg.connect(server.url, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)
    return server.with_dbname(name)


def _drop_database(server: DatabaseUrl, name: str) -> None:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_database(database_server: DatabaseUrl) -> Iterator[str]:
    """Name of a migrated database that each test's database is cloned from."""
    name = f"ledger_template_{uuid.uuid4().hex[:10]}"
    url = _create_database(database_server, name)
    migrate(url)
    yield name
    _drop_database(database_server, name)


@pytest.fixture
def database(database_server: DatabaseUrl, template_database: str) -> Iterator[DatabaseUrl]:
    """A fresh migrated database for one test, dropped afterwards."""
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    url = _create_database(database_server, name, template=template_database)
    yield url
    _drop_database(database_server, name)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for in-process services; the database comes from ``database``."""
    return Settings(data_dir=tmp_path / "data", read_wait_seconds=5.0, projector_poll_seconds=0.2)


@pytest.fixture
def services(settings: Settings, database: DatabaseUrl) -> Iterator[Services]:
    """The command side wired to the test's database."""
    wired = bootstrap(settings, database=database, run_migrations=False)
    yield wired
    wired.close()

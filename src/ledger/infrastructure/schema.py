"""Versioned schema migrations and the read-model DDL files.

``ledger migrate`` applies, in order and once each, the SQL files in
``ledger/infrastructure/migrations`` and then creates any missing projection
schema from ``projections/<name>.sql``. Applied files are recorded with their
SHA-256, so an edited migration is reported instead of silently skipped. The
whole run holds a transaction-level advisory lock, so two processes migrating
at once apply each file once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from ledger.errors import LedgerError, StoreUnavailableError
from ledger.infrastructure.database import DatabaseUrl

__all__ = [
    "PROJECTION_NAMES",
    "MigrationError",
    "migrate",
    "pending_projection_changes",
    "projection_ddl",
]

PROJECTION_NAMES = ("statements", "journal", "history")

# Arbitrary constant key for pg_advisory_xact_lock, shared by every process
# that migrates this database.
_MIGRATION_LOCK_KEY = 7_361_020_001

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS ledger_schema_migrations (
    name text PRIMARY KEY,
    sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(LedgerError):
    """An applied migration file was changed after it ran."""


@dataclass(frozen=True, slots=True)
class _SqlFile:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _projections_dir() -> Path:
    # A wheel carries the files under ledger/_resources; a source checkout
    # (editable install, tests) reads the top-level projections/ folder.
    packaged = resources.files("ledger") / "_resources" / "projections"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "projections"


def _migration_files() -> list[_SqlFile]:
    folder = resources.files("ledger.infrastructure") / "migrations"
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [_SqlFile(entry.name, entry.read_text(encoding="utf-8")) for entry in files]


def projection_ddl(name: str, schema: str) -> str:
    """Return the DDL of projection ``name`` with its tables in ``schema``."""
    if name not in PROJECTION_NAMES:
        raise LedgerError(
            f"unknown projection {name!r}; known projections are {', '.join(PROJECTION_NAMES)}",
            field="name",
            value=name,
        )
    text = (_projections_dir() / f"{name}.sql").read_text(encoding="utf-8")
    return text.replace("{schema}", sql.Identifier(schema).as_string(None))


def _projection_file(name: str) -> _SqlFile:
    return _SqlFile(f"projection:{name}", projection_ddl(name, name))


def migrate(database: DatabaseUrl) -> list[str]:
    """Apply pending migrations and create missing projection schemas.

    Returns:
        Names of the files applied by this call, in order.

    Raises:
        MigrationError: An applied migration file has changed since.
        StoreUnavailableError: The database cannot be reached.
    """
    applied_now: list[str] = []
    try:
        with psycopg.connect(database.url) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            conn.execute(_MIGRATIONS_TABLE)
            applied: dict[str, str] = dict(
                conn.execute("SELECT name, sha256 FROM ledger_schema_migrations").fetchall()
            )

            for migration in _migration_files():
                recorded = applied.get(migration.name)
                if recorded is None:
                    conn.execute(migration.text.encode())
                    conn.execute(
                        "INSERT INTO ledger_schema_migrations (name, sha256) VALUES (%s, %s)",
                        (migration.name, migration.sha256),
                    )
                    applied_now.append(migration.name)
                elif recorded != migration.sha256:
                    raise MigrationError(
                        f"migration {migration.name} changed after it was applied; restore "
                        "the file and add the change as a new numbered migration",
                        field="migration",
                        value=migration.name,
                    )

            for name in PROJECTION_NAMES:
                exists = conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)
                ).fetchone()
                if exists:
                    continue
                ddl = _projection_file(name)
                conn.execute(ddl.text.encode())
                conn.execute(
                    "INSERT INTO ledger_schema_migrations (name, sha256) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, "
                    "applied_at = now()",
                    (ddl.name, ddl.sha256),
                )
                applied_now.append(ddl.name)
    except psycopg.OperationalError as error:
        raise StoreUnavailableError(
            f"cannot migrate {database.redacted}: {str(error).strip()}"
        ) from error
    return applied_now


def record_projection_rebuilt(conn: psycopg.Connection[object], name: str) -> None:
    """Record that projection ``name`` was rebuilt from its current DDL file."""
    ddl = _projection_file(name)
    conn.execute(
        "INSERT INTO ledger_schema_migrations (name, sha256) VALUES (%s, %s) "
        "ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
        (ddl.name, ddl.sha256),
    )


def pending_projection_changes(database: DatabaseUrl) -> list[str]:
    """Return projections whose DDL file differs from the one their tables were built from."""
    with psycopg.connect(database.url) as conn:
        applied: dict[str, str] = dict(
            conn.execute(
                "SELECT name, sha256 FROM ledger_schema_migrations WHERE name LIKE 'projection:%%'"
            ).fetchall()
        )
    return [
        name
        for name in PROJECTION_NAMES
        if applied.get(f"projection:{name}") not in (None, _projection_file(name).sha256)
    ]

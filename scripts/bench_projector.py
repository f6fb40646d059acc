"""Benchmark: projector catch-up from position zero over a large event store.

Seeding a million events through the application would take longer than the
measurement itself. So the script writes the program and the partners through
the application and bulk-loads the ``Earning.Earned`` events with ``COPY``.
Each earning is made by the domain (``Earning.earn`` with a reward priced by
``compute_reward``) and encoded by the application's mapper. A sample of the
loaded rows is decoded back before the run, so the projector reads events
exactly as the application would have stored them.

The measured part is ``ledger.projector.catch_up`` from an empty read model
to the head of the store, for every projection. Target: at least 20,000
events/s.

NOTE: the store holds only program, partner and earning-created events. No
reversal, adjustment or tier change is seeded, so the projector's lookups of
creation events for those are not measured.

    python scripts/bench_projector.py --json-out out/projector.json
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import multiprocessing
import pstats
import random
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import click
import psycopg
from bench_common import (
    BENCH_CONTEXT,
    DEFAULT_SERVER_URL,
    CpuMeter,
    bench_database,
    bench_program_spec,
    console,
    database_copy,
    enroll,
    machine_info,
    print_table,
    wire,
    write_json,
)
from eventsourcing.persistence import Mapper, StoredEvent
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.domain.earning import Earning
from ledger.domain.money import Money, RoundingMode
from ledger.domain.rules import compute_reward
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.transcoder import MsgspecTranscoder

PROGRAM_ID = "bench"
TARGET_EVENTS_PER_SECOND = 20_000
_CHUNK = 25_000

_mapper = Mapper(transcoder=MsgspecTranscoder())
_rule_set = bench_program_spec(PROGRAM_ID).rule_sets[0]


def _partner_id(number: int) -> str:
    return f"partner-{number:05d}"


def _encode_chunk(arguments: tuple[int, int, int, int]) -> list[tuple[bytes, str, bytes]]:
    """Make and encode earnings ``start`` to ``stop`` as (id bytes, topic, state) rows.

    Runs in a worker process; the same arguments always give the same
    earnings apart from their recorded-at timestamps.
    """
    start, stop, partners, seed = arguments
    rng = random.Random(seed * 1_000_003 + start)
    rows: list[tuple[bytes, str, bytes]] = []
    for number in range(start, stop):
        reward = compute_reward(
            _rule_set,
            currency="USD",
            rounding=RoundingMode.HALF_UP,
            activity_type="deal_won",
            attributes={},
            base=Money(rng.randrange(1_000, 3_000_000), "USD"),
        )
        earning = Earning.earn(
            program_id=PROGRAM_ID,
            partner_id=_partner_id(rng.randrange(partners)),
            activity_type="deal_won",
            source_ref=f"bulk-{number}",
            effective_date=date(2016, 1, 1) + timedelta(days=rng.randrange(730)),
            attributes={},
            reward=reward,
            actor="bench",
            correlation_id="bench-seed",
        )
        stored = _mapper.to_stored_event(earning.collect_events()[0])
        rows.append((stored.originator_id.bytes, stored.topic, stored.state))
    return rows


def _chunks(count: int, partners: int, seed: int) -> Iterator[tuple[int, int, int, int]]:
    for start in range(0, count, _CHUNK):
        yield (start, min(count, start + _CHUNK), partners, seed)


def _copy_rows(conn: psycopg.Connection[Any], rows: list[tuple[bytes, str, bytes]]) -> None:
    with (
        conn.cursor() as cursor,
        cursor.copy(
            "COPY ledger_events (originator_id, originator_version, topic, state) FROM STDIN"
        ) as copy,
    ):
        for originator_id, topic, state in rows:
            copy.write_row((originator_id.hex(), 1, topic, state))


def seed(
    database: DatabaseUrl, events: int, partners: int, seed_value: int, workers: int
) -> dict[str, Any]:
    """Write the program, ``partners`` partners and earnings up to ``events`` events in total."""
    started = time.perf_counter()

    # Program and partners go through the application, like production.
    services = wire(database)
    try:
        services.app.publish_program(bench_program_spec(PROGRAM_ID), BENCH_CONTEXT)
        for number in range(partners):
            enroll(services, PROGRAM_ID, _partner_id(number))
        head = services.app.head_position()
    finally:
        services.close()
    earnings = events - head
    if earnings <= 0:
        raise click.ClickException(
            f"--events {events} leaves no room for earnings after {head} setup events"
        )

    # Earnings are made in worker processes and copied in order by this one,
    # holding the lock the recorder takes so positions follow copy order.
    with (
        psycopg.connect(database.url) as conn,
        Progress(
            TextColumn("seeding earnings"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("seed", total=earnings)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for rows in pool.imap(_encode_chunk, _chunks(earnings, partners, seed_value)):
                with conn.transaction():
                    conn.execute("LOCK TABLE ledger_events IN EXCLUSIVE MODE")
                    _copy_rows(conn, rows)
                progress.advance(task, len(rows))
        conn.execute("ANALYZE ledger_events")
        conn.commit()

    return {
        "setup_events": head,
        "bulk_earnings": earnings,
        "seed_seconds": round(time.perf_counter() - started, 1),
    }


def check_decodes(database: DatabaseUrl, sample: int) -> int:
    """Decode the first, the last and a random sample of stored events; return how many."""
    with psycopg.connect(database.url) as conn:
        rows = conn.execute(
            "(SELECT originator_id, originator_version, topic, state FROM ledger_events "
            " ORDER BY notification_id LIMIT 1) "
            "UNION ALL (SELECT originator_id, originator_version, topic, state FROM ledger_events "
            " ORDER BY notification_id DESC LIMIT 1) "
            "UNION ALL (SELECT originator_id, originator_version, topic, state FROM ledger_events "
            " TABLESAMPLE SYSTEM (1) LIMIT %s)",
            (sample,),
        ).fetchall()
    earned = 0
    for originator_id, version, topic, state in rows:
        event = _mapper.to_domain_event(StoredEvent(originator_id, version, topic, bytes(state)))
        if isinstance(event, Earning.Earned):
            if event.originator_id != originator_id or event.currency != "USD":
                raise click.ClickException(f"event {originator_id} decoded with wrong content")
            earned += 1
    if earned == 0:
        raise click.ClickException("no loaded earning decoded; the seeding is broken")
    return len(rows)


def read_model_counts(database: DatabaseUrl) -> dict[str, int]:
    """Return checkpoint positions and row counts of the read models."""
    queries = {
        "statements_checkpoint": "SELECT position FROM statements.checkpoint",
        "journal_checkpoint": "SELECT position FROM journal.checkpoint",
        "history_checkpoint": "SELECT position FROM history.checkpoint",
        "statement_lines": "SELECT count(*) FROM statements.statement_lines",
        "journal_entries": "SELECT count(*) FROM journal.entries",
        "history_rows": "SELECT count(*) FROM history.partner_events",
    }
    with psycopg.connect(database.url) as conn:
        counts: dict[str, int] = {}
        for name, query in queries.items():
            row = conn.execute(query).fetchone()
            counts[name] = int(row[0]) if row else 0
        return counts


def run_catch_up(
    database: DatabaseUrl,
    batch_size: int,
    profile_out: Path | None,
    names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Time one catch-up of the named projections (all by default) from zero to the head."""
    from ledger.projector import PROJECTION_NAMES, catch_up

    profiler = cProfile.Profile() if profile_out else None
    meter = CpuMeter(database.dbname)
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    applied = asyncio.run(
        catch_up(database, names=names or PROJECTION_NAMES, batch_size=batch_size)
    )
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - started
    cpu = meter.read()

    top: list[str] = []
    if profiler and profile_out:
        profile_out.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(profile_out)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        top = text.getvalue().splitlines()
    return {
        "applied": applied,
        "seconds": round(elapsed, 2),
        "cpu": cpu,
        "profile_top_tottime": top,
    }


def run_separately(database: DatabaseUrl, batch_size: int) -> dict[str, dict[str, Any]]:
    """Catch up each projection alone on its own copy of the unprojected database."""
    from ledger.projector import PROJECTION_NAMES

    runs: dict[str, dict[str, Any]] = {}
    for name in PROJECTION_NAMES:
        with database_copy(database, name) as copy:
            console.print(f"catching up {name} alone")
            run = run_catch_up(copy, batch_size, None, names=(name,))
            run.pop("profile_top_tottime")
            run["events_per_second"] = (
                round(run["applied"] / run["seconds"], 1) if run["seconds"] else None
            )
            runs[name] = run
    return runs


@click.command()
@click.option(
    "--database-url",
    default=DEFAULT_SERVER_URL,
    show_default=True,
    help="PostgreSQL server (maintenance database) to create ledger_bench_projector on.",
)
@click.option(
    "--events", default=1_000_000, show_default=True, help="Events in the store before catch-up."
)
@click.option(
    "--partners", default=1000, show_default=True, help="Partners the earnings are spread over."
)
@click.option(
    "--batch-size", default=2000, show_default=True, help="Events per projector transaction."
)
@click.option(
    "--workers", default=2, show_default=True, help="Processes that encode events while seeding."
)
@click.option(
    "--seed", "seed_value", default=2016, show_default=True, help="Seed of the random generator."
)
@click.option(
    "--profile",
    "profile_out",
    type=click.Path(path_type=Path),
    help="Run catch-up under cProfile and write the stats to this file (slows the run).",
)
@click.option(
    "--separately",
    is_flag=True,
    help="Also catch up each projection alone, from zero in a second database copy, "
    "to show what each one costs.",
)
@click.option("--keep-database", is_flag=True, help="Keep the benchmark database after the run.")
@click.option(
    "--json-out", type=click.Path(path_type=Path), help="Write the results as JSON to this file."
)
def main(
    database_url: str,
    events: int,
    partners: int,
    batch_size: int,
    workers: int,
    seed_value: int,
    profile_out: Path | None,
    separately: bool,
    keep_database: bool,
    json_out: Path | None,
) -> None:
    """Measure projector catch-up throughput from position zero."""
    with bench_database(database_url, "projector", keep=keep_database) as database:
        machine = machine_info(database)
        seeding = seed(database, events, partners, seed_value, workers)
        decoded = check_decodes(database, 1000)
        console.print(f"decoded {decoded} sampled events")
        alone = run_separately(database, batch_size) if separately else {}
        console.print("catching up every projection")
        run = run_catch_up(database, batch_size, profile_out)
        counts = read_model_counts(database)
        with psycopg.connect(database.url) as conn:
            row = conn.execute("SELECT max(notification_id) FROM ledger_events").fetchone()
            head = int(row[0]) if row else 0

    rate = head / run["seconds"] if run["seconds"] else 0.0
    results = {
        **seeding,
        "events": head,
        "partners": partners,
        "batch_size": batch_size,
        "decoded_sample": decoded,
        **run,
        "events_per_second": round(rate, 1),
        "client_cpu_us_per_event": round(run["cpu"]["client_cpu_seconds"] * 1e6 / head, 1),
        "postgres_cpu_us_per_event": round(run["cpu"]["postgres_cpu_seconds"] * 1e6 / head, 1),
        "read_model": counts,
        "each_projection_alone": alone,
        "caught_up": all(
            counts[f"{name}_checkpoint"] == head for name in ("statements", "journal", "history")
        ),
        "target_events_per_second": TARGET_EVENTS_PER_SECOND,
        "target_met": rate >= TARGET_EVENTS_PER_SECOND,
    }
    print_table(
        "projector catch-up from zero",
        [
            ("events in store", f"{head:,}"),
            ("seeding (s)", seeding["seed_seconds"]),
            ("catch-up (s)", run["seconds"]),
            (
                "catch-up CPU s: client / postgres",
                f"{run['cpu']['client_cpu_seconds']} / {run['cpu']['postgres_cpu_seconds']}",
            ),
            ("events/s", rate),
            ("all projections at head", results["caught_up"]),
            *[
                (
                    f"{name} alone: s / events/s / CPU s client, postgres",
                    (
                        f"{single['seconds']} / {single['events_per_second']:,} / "
                        f"{single['cpu']['client_cpu_seconds']}, "
                        f"{single['cpu']['postgres_cpu_seconds']}"
                    ),
                )
                for name, single in alone.items()
            ],
            ("target (>= 20,000 events/s)", "met" if results["target_met"] else "MISSED"),
        ],
    )
    if run["profile_top_tottime"]:
        console.print("\n".join(run["profile_top_tottime"][:45]))
    write_json(json_out, {"benchmark": "projector", "machine": machine, "results": results})


if __name__ == "__main__":
    main()

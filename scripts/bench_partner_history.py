"""Benchmark: does a partner's history slow down recording its next activity?

Seeds ``--history`` earnings for partner A in batches, enrolls a fresh
partner B, then times ``--samples`` single ``record_activity`` calls for each,
interleaved A/B and B/A so drift in the machine affects both alike. Target:
A's mean latency within 10% of B's.

    python scripts/bench_partner_history.py --json-out out/partner_history.json
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path

import click
from bench_common import (
    BENCH_CONTEXT,
    DEFAULT_SERVER_URL,
    bench_database,
    bench_program_spec,
    console,
    enroll,
    latency_summary,
    machine_info,
    print_table,
    wire,
    write_json,
)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.application.commands import RecordActivity
from ledger.bootstrap import Services
from ledger.domain.money import Money
from ledger.infrastructure.database import DatabaseUrl

PROGRAM_ID = "bench"
PARTNER_WITH_HISTORY = "partner-a"
NEW_PARTNER = "partner-b"
TARGET_RATIO = 1.10


def _activity(partner_id: str, number: int) -> RecordActivity:
    # Spread effective dates over two years and vary the base amount, as a
    # real pipeline would; the pricing work is the same for both partners.
    return RecordActivity(
        partner_id=partner_id,
        activity_type="deal_won",
        source_ref=f"{partner_id}-{number}",
        effective_date=date(2016, 1, 1) + timedelta(days=number % 730),
        base_amount=Money(50_000 + (number * 7919) % 500_000, "USD"),
    )


def _seed(services: Services, count: int, batch_size: int) -> float:
    """Record ``count`` earnings for partner A; return the seconds it took."""
    started = time.perf_counter()
    with Progress(
        TextColumn("seeding partner A"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("seed", total=count)
        for start in range(0, count, batch_size):
            stop = min(count, start + batch_size)
            commands = [_activity(PARTNER_WITH_HISTORY, n) for n in range(start, stop)]
            items = services.app.record_activities(PROGRAM_ID, commands, BENCH_CONTEXT)
            failed = [item.error for item in items if item.error is not None]
            if failed:
                raise click.ClickException(f"seeding failed: {failed[0]}")
            progress.advance(task, stop - start)
    return time.perf_counter() - started


def _measure(services: Services, samples: int, warmup: int, offset: int) -> dict[str, list[float]]:
    """Time single recordings for A and B, alternating which goes first."""
    timings: dict[str, list[float]] = {PARTNER_WITH_HISTORY: [], NEW_PARTNER: []}
    app = services.app
    with Progress(
        TextColumn("measuring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("measure", total=warmup + samples)
        for round_number in range(warmup + samples):
            order = (
                (PARTNER_WITH_HISTORY, NEW_PARTNER)
                if round_number % 2 == 0
                else (NEW_PARTNER, PARTNER_WITH_HISTORY)
            )
            for partner_id in order:
                command = _activity(partner_id, offset + round_number)
                started = time.perf_counter()
                outcome = app.record_activity(PROGRAM_ID, command, BENCH_CONTEXT)
                elapsed = time.perf_counter() - started
                if not outcome.created:
                    raise click.ClickException(f"{command.source_ref} was not new")
                if round_number >= warmup:
                    timings[partner_id].append(elapsed)
            progress.advance(task)
    return timings


def _run(
    database: DatabaseUrl, history: int, batch_size: int, samples: int, warmup: int
) -> dict[str, object]:
    services = wire(database)
    try:
        services.app.publish_program(bench_program_spec(PROGRAM_ID), BENCH_CONTEXT)
        enroll(services, PROGRAM_ID, PARTNER_WITH_HISTORY)
        enroll(services, PROGRAM_ID, NEW_PARTNER)
        seed_seconds = _seed(services, history, batch_size)
        timings = _measure(services, samples, warmup, offset=history)
        events = services.app.head_position()
    finally:
        services.close()

    with_history = latency_summary(timings[PARTNER_WITH_HISTORY])
    fresh = latency_summary(timings[NEW_PARTNER])
    ratio_mean = with_history["mean_ms"] / fresh["mean_ms"]
    ratio_p50 = with_history["p50_ms"] / fresh["p50_ms"]
    return {
        "history_earnings": history,
        "seed_batch_size": batch_size,
        "seed_seconds": round(seed_seconds, 2),
        "seed_activities_per_second": round(history / seed_seconds, 1) if seed_seconds else None,
        "events_in_store": events,
        "samples_per_partner": samples,
        "warmup_per_partner": warmup,
        "partner_with_history": with_history,
        "new_partner": fresh,
        "ratio_mean": round(ratio_mean, 3),
        "ratio_p50": round(ratio_p50, 3),
        "ratio_p99": round(with_history["p99_ms"] / fresh["p99_ms"], 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio_mean <= TARGET_RATIO and ratio_p50 <= TARGET_RATIO,
    }


@click.command()
@click.option(
    "--database-url",
    default=DEFAULT_SERVER_URL,
    show_default=True,
    help="PostgreSQL server (maintenance database) to create ledger_bench_partner_history on.",
)
@click.option(
    "--history", default=100_000, show_default=True, help="Earnings seeded for partner A."
)
@click.option(
    "--batch-size", default=2000, show_default=True, help="Earnings per seeding transaction."
)
@click.option("--samples", default=2000, show_default=True, help="Timed recordings per partner.")
@click.option(
    "--warmup", default=100, show_default=True, help="Untimed recordings per partner before timing."
)
@click.option("--keep-database", is_flag=True, help="Keep the benchmark database after the run.")
@click.option(
    "--json-out", type=click.Path(path_type=Path), help="Write the results as JSON to this file."
)
def main(
    database_url: str,
    history: int,
    batch_size: int,
    samples: int,
    warmup: int,
    keep_database: bool,
    json_out: Path | None,
) -> None:
    """Compare recording latency for a partner with a long history and a new partner."""
    with bench_database(database_url, "partner_history", keep=keep_database) as database:
        machine = machine_info(database)
        results = _run(database, history, batch_size, samples, warmup)

    a, b = results["partner_with_history"], results["new_partner"]
    assert isinstance(a, dict) and isinstance(b, dict)
    print_table(
        "record_activity latency (ms)",
        [
            ("history of partner A (earnings)", f"{history:,}"),
            ("seeding rate (activities/s)", results["seed_activities_per_second"]),
            ("A mean / p50 / p99", f"{a['mean_ms']:.2f} / {a['p50_ms']:.2f} / {a['p99_ms']:.2f}"),
            ("B mean / p50 / p99", f"{b['mean_ms']:.2f} / {b['p50_ms']:.2f} / {b['p99_ms']:.2f}"),
            (
                "A/B ratio mean / p50 / p99",
                f"{results['ratio_mean']} / {results['ratio_p50']} / {results['ratio_p99']}",
            ),
            ("target (A/B <= 1.10)", "met" if results["target_met"] else "MISSED"),
        ],
    )
    write_json(json_out, {"benchmark": "partner_history", "machine": machine, "results": results})


if __name__ == "__main__":
    main()

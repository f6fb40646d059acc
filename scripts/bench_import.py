"""Benchmark: CRM import throughput in activities per second.

Calls ``ledger.importing.import_crm_opportunities``, the function behind
``ledger import crm-opportunities DIR``, on a fresh database with the
``examples/programs/crm-channel.toml`` program published. It imports the real
CRM set, then the same set again (every activity already recorded), then a
scaled-up copy made by ``generate_crm_scaleup.py``: 10x by default, and
``--scale 100`` for 880,000 pipeline rows. Target: at least 20,000
activities/s.

    python scripts/bench_import.py --json-out out/import.json
    python scripts/bench_import.py --scale 100 --json-out out/import-100x.json
"""

from __future__ import annotations

import cProfile
import io
import pstats
import resource
import time
from pathlib import Path
from typing import Any

import click
from bench_common import (
    BENCH_CONTEXT,
    DEFAULT_SERVER_URL,
    REPO_ROOT,
    CpuMeter,
    bench_database,
    console,
    machine_info,
    print_table,
    wire,
    write_json,
)
from generate_crm_scaleup import DEFAULT_SOURCE, generate
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.application.service import LedgerApplication
from ledger.importing import import_crm_opportunities, load_program_file

PROGRAM_FILE = REPO_ROOT / "examples" / "programs" / "crm-channel.toml"
TARGET_ACTIVITIES_PER_SECOND = 20_000


def _import(
    app: LedgerApplication,
    label: str,
    data_dir: Path,
    batch_size: int,
    profiler: cProfile.Profile | None,
    dbname: str,
    workers: int,
) -> dict[str, Any]:
    """Import ``data_dir`` once and return counts, wall time and CPU use."""
    with Progress(
        TextColumn(f"importing {label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        # Backends of worker processes live only as long as the import, so
        # sample them often enough to see most of their CPU time.
        meter = CpuMeter(dbname, interval=0.1)
        children_before = _children_cpu_seconds()
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        report = import_crm_opportunities(
            app, data_dir, batch_size=batch_size, progress=advance, workers=workers
        )
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
        cpu = meter.read()
        # The meter's client CPU already counts the worker processes this
        # process forked and reaped; their share is reported on its own too.
        cpu["workers_cpu_seconds"] = round(_children_cpu_seconds() - children_before, 2)

    activities = report.recorded + report.already_recorded
    return {
        "data": label,
        "workers": workers,
        "folder": str(data_dir),
        "pipeline_rows": report.rows,
        "recorded": report.recorded,
        "already_recorded": report.already_recorded,
        "conflicts": report.conflicts,
        "rejected_rows": report.rejected_rows,
        "not_rewardable_rows": report.not_rewardable,
        "seconds": round(elapsed, 2),
        "cpu": cpu,
        "client_cpu_us_per_activity": round(
            cpu["client_cpu_seconds"] * 1e6 / max(1, activities), 1
        ),
        "postgres_cpu_us_per_activity": round(
            cpu["postgres_cpu_seconds"] * 1e6 / max(1, activities), 1
        ),
        "activities_per_second": round(activities / elapsed, 1),
        "rows_per_second": round(report.rows / elapsed, 1),
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _profile_lines(profiler: cProfile.Profile, out: Path) -> list[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(out)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue().splitlines()


@click.command()
@click.option(
    "--database-url",
    default=DEFAULT_SERVER_URL,
    show_default=True,
    help="PostgreSQL server (maintenance database) to create ledger_bench_import on.",
)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_SOURCE,
    show_default=True,
    help="Folder of the real CRM CSV files.",
)
@click.option(
    "--scale",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Size of the scaled-up set in multiples of the real set; 0 skips it.",
)
@click.option(
    "--scaled-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the scaled-up set; default out/crm-<scale>x, generated when missing.",
)
@click.option("--batch-size", default=1000, show_default=True, help="Activities per transaction.")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    help="Worker processes of the import (the profile sees only this process).",
)
@click.option(
    "--profile",
    "profile_out",
    type=click.Path(path_type=Path),
    help="Profile the scaled-up import (the real one when --scale 0) with cProfile "
    "and write the stats to this file.",
)
@click.option("--keep-database", is_flag=True, help="Keep the benchmark database after the run.")
@click.option(
    "--json-out", type=click.Path(path_type=Path), help="Write the results as JSON to this file."
)
def main(
    database_url: str,
    source: Path,
    scale: int,
    scaled_dir: Path | None,
    batch_size: int,
    workers: int,
    profile_out: Path | None,
    keep_database: bool,
    json_out: Path | None,
) -> None:
    """Measure CRM import throughput on the real set and a scaled-up copy."""
    # Make the scaled-up set first, so its generation is not timed.
    if scale:
        scaled_dir = scaled_dir or REPO_ROOT / "out" / f"crm-{scale}x"
        if not (scaled_dir / "sales_pipeline.csv").exists():
            console.print(f"generating the {scale}x set in {scaled_dir}")
            generate(source, scaled_dir, scale, seed=2016)

    profiler = cProfile.Profile() if profile_out else None
    runs: list[dict[str, Any]] = []
    with bench_database(database_url, "import", keep=keep_database) as database:
        machine = machine_info(database)
        services = wire(database)
        try:
            services.app.publish_program(load_program_file(PROGRAM_FILE), BENCH_CONTEXT)
            runs.append(
                _import(
                    services.app,
                    "real",
                    source,
                    batch_size,
                    None if scale else profiler,
                    database.dbname,
                    workers,
                )
            )
            runs.append(
                _import(
                    services.app, "real, again", source, batch_size, None, database.dbname, workers
                )
            )
            if scale and scaled_dir is not None:
                runs.append(
                    _import(
                        services.app,
                        f"{scale}x",
                        scaled_dir,
                        batch_size,
                        profiler,
                        database.dbname,
                        workers,
                    )
                )
            events = services.app.head_position()
        finally:
            services.close()

    profile = _profile_lines(profiler, profile_out) if profiler and profile_out else []
    first_imports = [run for run in runs if run["data"] != "real, again"]
    met = all(run["activities_per_second"] >= TARGET_ACTIVITIES_PER_SECOND for run in first_imports)
    results = {
        "batch_size": batch_size,
        "workers": workers,
        "events_in_store": events,
        "runs": runs,
        "target_activities_per_second": TARGET_ACTIVITIES_PER_SECOND,
        "target_met": met,
        "profile_top_tottime": profile,
    }

    print_table(
        "CRM import throughput",
        [
            (
                f"{run['data']}: {run['recorded'] + run['already_recorded']:,} activities",
                (
                    f"{run['seconds']:.1f} s, {run['activities_per_second']:,.0f}/s, "
                    f"CPU s: client {run['cpu']['client_cpu_seconds']:.1f}, "
                    f"postgres {run['cpu']['postgres_cpu_seconds']:.1f}"
                ),
            )
            for run in runs
        ]
        + [("target (>= 20,000 activities/s)", "met" if met else "MISSED")],
    )
    if profile:
        console.print("\n".join(profile[:45]))
    write_json(json_out, {"benchmark": "import", "machine": machine, "results": results})


if __name__ == "__main__":
    main()

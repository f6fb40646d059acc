"""Generate a scaled-up copy of the CRM sales opportunities data set.

Writes the same four CSV files as the real set: ``accounts.csv``,
``products.csv`` and ``sales_teams.csv`` are copied unchanged, and
``sales_pipeline.csv`` gets ``--scale`` times as many rows (880,000 at the
default 100) drawn from the real rows with a seeded random generator:

* sales agent, deal stage, product and account come together from one real
  row, so their joint distribution (and the real quirks, such as ``GTXPro``
  and empty accounts) is kept;
* engage date, close date and close value come together from another real
  row with the same stage and product, so date ranges, deal durations and
  close values per product follow the real data;
* every opportunity id is a new unique 8-character id, never one of the
  real ids, so the copy imports alongside the real set.

NOTE: the 35 agents stay the same, so each partner gets ``--scale`` times as
many opportunities as in the real set. The data does not model more partners.

    python scripts/generate_crm_scaleup.py --scale 100 --out out/crm-100x
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import string
import time
from collections import defaultdict
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path(
    os.environ.get("LEDGER_CRM_DATA_DIR")
    or REPO_ROOT.parent / "shared" / "data" / "crm-sales-opportunities"
)
PIPELINE = "sales_pipeline.csv"
COPIED_FILES = ("accounts.csv", "products.csv", "sales_teams.csv")
ID_ALPHABET = string.ascii_uppercase + string.digits
ID_LENGTH = 8


def _read_pipeline(source: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (source / PIPELINE).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        if reader.fieldnames is None or not rows:
            raise click.ClickException(
                f"{source / PIPELINE} has no rows; point --source at the CRM data"
            )
        return list(reader.fieldnames), rows


def _unique_ids(rng: random.Random, count: int, excluded: set[str]) -> list[str]:
    """Draw ``count`` random ids that are distinct and not in ``excluded``."""
    seen = set(excluded)
    ids: list[str] = []
    while len(ids) < count:
        candidate = "".join(rng.choices(ID_ALPHABET, k=ID_LENGTH))
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


def generate(source: Path, out: Path, scale: int, seed: int) -> int:
    """Write the scaled-up data set to ``out``; return the number of pipeline rows.

    The same ``source``, ``scale`` and ``seed`` always produce the same files.
    """
    fieldnames, real_rows = _read_pipeline(source)
    rng = random.Random(seed)

    # Rows with the same stage and product share a date and value pool.
    pools: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in real_rows:
        pools[(row["deal_stage"], row["product"])].append(row)

    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        shutil.copyfile(source / name, out / name)

    total = len(real_rows) * scale
    ids = _unique_ids(rng, total, {row["opportunity_id"] for row in real_rows})
    with (out / PIPELINE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        for opportunity_id in ids:
            deal = rng.choice(real_rows)
            dates = rng.choice(pools[(deal["deal_stage"], deal["product"])])
            writer.writerow(
                {
                    "opportunity_id": opportunity_id,
                    "sales_agent": deal["sales_agent"],
                    "product": deal["product"],
                    "account": deal["account"],
                    "deal_stage": deal["deal_stage"],
                    "engage_date": dates["engage_date"],
                    "close_date": dates["close_date"],
                    "close_value": dates["close_value"],
                }
            )
    return total


@click.command()
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_SOURCE,
    show_default=True,
    help="Folder of the real CRM CSV files.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/crm-100x"),
    show_default=True,
    help="Folder to write the four CSV files to.",
)
@click.option(
    "--scale",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Pipeline rows written per real pipeline row.",
)
@click.option("--seed", default=2016, show_default=True, help="Seed of the random generator.")
def main(source: Path, out: Path, scale: int, seed: int) -> None:
    """Generate a scaled-up CRM data set from the real data's distribution."""
    started = time.perf_counter()
    rows = generate(source, out, scale, seed)
    click.echo(f"wrote {rows:,} pipeline rows to {out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

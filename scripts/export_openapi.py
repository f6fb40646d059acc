"""Write the HTTP API's OpenAPI document to ``api/openapi.json``.

The document is built from the application's routes and types alone, so no
database is needed. Run it after changing any route, request or response type,
and commit the result: a test fails while the committed file differs from
what the application serves.

Usage::

    python scripts/export_openapi.py            # writes api/openapi.json
    python scripts/export_openapi.py --check    # exits 1 if the file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ledger.api.app import openapi_document

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "api" / "openapi.json"


def render() -> str:
    """Return the OpenAPI document as stable, indented JSON text."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the document, or with ``--check`` compare it; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="file to write (default: api/openapi.json in the repository)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit with status 1 when the file differs from the application",
    )
    args = parser.parse_args(argv)

    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is out of date; run python scripts/export_openapi.py",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

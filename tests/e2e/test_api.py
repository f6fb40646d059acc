"""End-to-end tests of the HTTP API: writes, idempotent retries and reads.

Every test drives the real Litestar app in-process against a real PostgreSQL
database, with the projector running in the background. Reads that follow a
write pass the write's ``position`` as ``min_position``, which is exactly
how a client gets read-your-writes.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from ledger.api import app as api_app
from ledger.api.app import openapi_document
from ledger.api.fast_reads import serve_statement
from ledger.application.commands import RecordActivity
from ledger.bootstrap import Services

from .conftest import (
    BHD_PARTNER,
    BHD_PROGRAM,
    ENROLLED_ON,
    JPY_PARTNER,
    JPY_PROGRAM,
    SECOND_USD_PARTNER,
    SETUP,
    USD_PARTNER,
    USD_PROGRAM,
    head_position,
)

OPENAPI_FILE = Path(__file__).resolve().parents[2] / "api" / "openapi.json"

Client = AsyncTestClient[Any]


def usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


def activity(source_ref: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "partner_id": USD_PARTNER,
        "activity_type": "deal_won",
        "source_ref": source_ref,
        "effective_date": "2016-01-15",
        "base_amount": usd("302.00"),
        "attributes": {"series": "GTX"},
    }
    body.update(overrides)
    return body


def keyed(key: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key or str(uuid.uuid4())}


def money_sum(amounts: list[dict[str, str]]) -> Decimal:
    return sum((Decimal(a["amount"]) for a in amounts), Decimal(0))


async def record(client: Client, body: dict[str, Any], program_id: str = USD_PROGRAM) -> Any:
    response = await client.post(f"/v1/programs/{program_id}/activities", json=body)
    assert response.status_code == 201, response.text
    return response.json()


# Activities ---------------------------------------------------------------


async def test_activity_created_with_full_pricing(client: Client) -> None:
    response = await client.post(f"/v1/programs/{USD_PROGRAM}/activities", json=activity("opp-1"))

    assert response.status_code == 201
    earning = response.json()
    assert earning["created"] is True
    assert earning["program_id"] == USD_PROGRAM
    assert earning["partner_id"] == USD_PARTNER
    assert earning["rule_set_version"] == 1
    assert earning["rule_id"] == "won-gtx"
    assert earning["base_amount"] == usd("302.00")
    assert earning["rate"] == "0.045"
    assert earning["fixed_amount"] is None
    assert Decimal(earning["unrounded"]) == Decimal("13.59")
    assert earning["rounding"] == "half-up"
    assert earning["amount"] == usd("13.59")
    assert earning["recorded_at"]
    assert earning["position"] > 0


async def test_activity_rounds_once_and_shows_unrounded(client: Client) -> None:
    earning = await record(client, activity("opp-round", base_amount=usd("100.01")))

    # 10001 cents × 0.045 = 450.045 cents, rounded half-up to 450.
    assert earning["unrounded"] == "4.50045"
    assert earning["amount"] == usd("4.50")


async def test_fixed_rule_reports_fixed_amount(client: Client) -> None:
    earning = await record(
        client,
        activity("opp-engaged", activity_type="pipeline_engaged", base_amount=None, attributes={}),
    )

    assert earning["rule_id"] == "engaged"
    assert earning["fixed_amount"] == usd("5.00")
    assert earning["rate"] is None
    assert earning["amount"] == usd("5.00")


async def test_activity_identical_retry_returns_original(client: Client) -> None:
    first = await record(client, activity("opp-2"))

    retry = await client.post(f"/v1/programs/{USD_PROGRAM}/activities", json=activity("opp-2"))

    assert retry.status_code == 200
    body = retry.json()
    assert body["created"] is False
    assert body["position"] == first["position"]
    assert body["earning_id"] == first["earning_id"]
    assert body["amount"] == first["amount"]
    assert body["recorded_at"] == first["recorded_at"]


async def test_activity_conflicting_retry_lists_differences(client: Client) -> None:
    await record(client, activity("opp-3"))

    response = await client.post(
        f"/v1/programs/{USD_PROGRAM}/activities",
        json=activity("opp-3", base_amount=usd("999.00"), effective_date="2016-01-20"),
    )

    assert response.status_code == 409
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["type"] == "/problems/conflict"
    differing = {difference["field"] for difference in problem["differences"]}
    assert differing == {"base_amount", "effective_date"}
    assert {error["field"] for error in problem["errors"]} == differing
    dates = next(d for d in problem["differences"] if d["field"] == "effective_date")
    assert dates["stored"] == "2016-01-15"
    assert dates["requested"] == "2016-01-20"


# Keyed writes -------------------------------------------------------------


async def test_adjustment_created_retried_and_conflicting(client: Client) -> None:
    url = f"/v1/partners/{USD_PARTNER}/adjustments"
    body = {"amount": usd("-12.50"), "effective_date": "2016-01-31", "reason": "manual fix"}
    headers = keyed("adj-1")

    created = await client.post(url, json=body, headers=headers)
    retried = await client.post(url, json=body, headers=headers)
    conflicting = await client.post(url, json={**body, "reason": "other"}, headers=headers)

    assert created.status_code == 201
    assert created.json()["amount"] == usd("-12.50")
    assert created.json()["source_ref"] == "adj-1"
    assert created.json()["idempotency_key"] == "adj-1"
    assert retried.status_code == 200
    assert retried.json()["position"] == created.json()["position"]
    assert retried.json()["adjustment_id"] == created.json()["adjustment_id"]
    assert conflicting.status_code == 409
    assert conflicting.json()["differences"] == [
        {"field": "reason", "stored": "manual fix", "requested": "other"}
    ]


async def test_reversal_created_retried_and_conflicting(client: Client) -> None:
    await record(client, activity("opp-rev"))
    url = f"/v1/partners/{USD_PARTNER}/reversals"
    body = {
        "source_ref": "opp-rev",
        "effective_date": "2016-02-02",
        "reason": "deal partly refunded",
        "base_amount": usd("100.00"),
    }
    headers = keyed()

    created = await client.post(url, json=body, headers=headers)
    retried = await client.post(url, json=body, headers=headers)
    conflicting = await client.post(
        url, json={**body, "base_amount": usd("50.00")}, headers=headers
    )

    assert created.status_code == 201, created.text
    assert created.json()["reversed_amount"] == usd("4.50")
    assert created.json()["remaining_amount"] == usd("9.09")
    assert retried.status_code == 200
    assert retried.json()["reversed_amount"] == usd("4.50")
    assert retried.json()["position"] == created.json()["position"]
    assert conflicting.status_code == 409
    assert [d["field"] for d in conflicting.json()["differences"]] == ["base_amount"]


async def test_tier_change_created_retried_and_conflicting(client: Client) -> None:
    url = f"/v1/partners/{USD_PARTNER}/tier"
    body = {"tier": "gold", "effective_date": "2016-02-01", "reason": "quarterly review"}
    headers = keyed()

    created = await client.post(url, json=body, headers=headers)
    retried = await client.post(url, json=body, headers=headers)
    conflicting = await client.post(url, json={**body, "tier": "platinum"}, headers=headers)
    profile = await client.get(
        f"/v1/partners/{USD_PARTNER}", params={"min_position": created.json()["position"]}
    )

    assert created.status_code == 201
    assert created.json()["from_tier"] == "registered"
    assert created.json()["to_tier"] == "gold"
    assert retried.status_code == 200
    assert retried.json()["position"] == created.json()["position"]
    assert conflicting.status_code == 409
    assert conflicting.json()["differences"][0]["field"] == "tier"
    assert profile.status_code == 200
    assert profile.json()["tier"] == "gold"


# Reads --------------------------------------------------------------------


async def test_partner_profile(client: Client, ledger_services: Services) -> None:
    response = await client.get(
        f"/v1/partners/{USD_PARTNER}", params={"min_position": head_position(ledger_services)}
    )

    assert response.status_code == 200
    profile = response.json()
    assert profile["partner_id"] == USD_PARTNER
    assert profile["program_id"] == USD_PROGRAM
    assert profile["currency"] == "USD"
    assert profile["tier"] == "registered"
    assert profile["enrolled_on"] == "2016-01-01"
    assert profile["region"] == "East"


async def test_balance_after_writes(client: Client) -> None:
    await record(client, activity("opp-b1"))
    adjustment = await client.post(
        f"/v1/partners/{USD_PARTNER}/adjustments",
        json={"amount": usd("10.00"), "effective_date": "2016-01-20", "reason": "bonus"},
        headers=keyed(),
    )
    reversal = await client.post(
        f"/v1/partners/{USD_PARTNER}/reversals",
        json={
            "source_ref": "opp-b1",
            "effective_date": "2016-01-25",
            "reason": "refund",
            "amount": usd("3.59"),
        },
        headers=keyed(),
    )
    last = max(adjustment.json()["position"], reversal.json()["position"])

    response = await client.get(
        f"/v1/partners/{USD_PARTNER}/balance", params={"min_position": last}
    )

    assert response.status_code == 200
    balance = response.json()
    assert balance["earned"] == usd("13.59")
    assert balance["reversed"] == usd("3.59")
    assert balance["adjusted"] == usd("10.00")
    assert balance["balance"] == usd("20.00")
    assert balance["line_count"] == 3


async def test_statements_across_two_months(client: Client) -> None:
    await record(client, activity("jan-1", effective_date="2016-01-05"))
    await record(client, activity("jan-2", effective_date="2016-01-31", base_amount=usd("1000.00")))
    await record(client, activity("feb-1", effective_date="2016-02-01"))
    adjustment = await client.post(
        f"/v1/partners/{USD_PARTNER}/adjustments",
        json={"amount": usd("-7.25"), "effective_date": "2016-02-10", "reason": "chargeback"},
        headers=keyed(),
    )
    reversal = await client.post(
        f"/v1/partners/{USD_PARTNER}/reversals",
        json={"source_ref": "jan-2", "effective_date": "2016-02-15", "reason": "deal lost"},
        headers=keyed(),
    )
    last = max(adjustment.json()["position"], reversal.json()["position"])

    january = (
        await client.get(
            f"/v1/partners/{USD_PARTNER}/statements/2016-01", params={"min_position": last}
        )
    ).json()
    february = (
        await client.get(
            f"/v1/partners/{USD_PARTNER}/statements/2016-02", params={"min_position": last}
        )
    ).json()
    march = (await client.get(f"/v1/partners/{USD_PARTNER}/statements/2016-03")).json()

    assert january["opening_balance"] == usd("0.00")
    assert [line["source_ref"] for line in january["lines"]] == ["jan-1", "jan-2"]
    assert january["closing_balance"] == usd("58.59")
    assert february["opening_balance"] == january["closing_balance"]
    assert [line["kind"] for line in february["lines"]] == ["earning", "adjustment", "reversal"]
    assert february["lines"][2]["amount"] == usd("-45.00")
    for statement in (january, february, march):
        closing = Decimal(statement["closing_balance"]["amount"])
        opening = Decimal(statement["opening_balance"]["amount"])
        assert closing == opening + money_sum([line["amount"] for line in statement["lines"]])
    assert february["closing_balance"] == usd("19.93")
    assert march["opening_balance"] == february["closing_balance"]
    assert march["lines"] == []


async def test_statement_line_explains_earning(client: Client) -> None:
    earning = await record(client, activity("opp-explained"))

    statement = (
        await client.get(
            f"/v1/partners/{USD_PARTNER}/statements/2016-01",
            params={"min_position": earning["position"]},
        )
    ).json()

    line = statement["lines"][0]
    assert line["kind"] == "earning"
    assert line["position"] == earning["position"]
    assert line["explanation"]["rule_id"] == "won-gtx"
    assert line["explanation"]["rate"] == "0.045"
    assert line["explanation"]["base"] == "302.00"
    assert line["explanation"]["activity_type"] == "deal_won"


async def test_statement_without_lines_is_zero(client: Client, ledger_services: Services) -> None:
    response = await client.get(
        f"/v1/partners/{BHD_PARTNER}/statements/2016-05",
        params={"min_position": head_position(ledger_services)},
    )

    assert response.status_code == 200
    statement = response.json()
    assert statement["currency"] == "BHD"
    assert statement["opening_balance"] == {"amount": "0.000", "currency": "BHD"}
    assert statement["closing_balance"] == {"amount": "0.000", "currency": "BHD"}
    assert statement["lines"] == []


async def test_jpy_amounts_have_no_decimals(client: Client) -> None:
    earning = await record(
        client,
        activity(
            "jpy-1",
            partner_id=JPY_PARTNER,
            base_amount={"amount": "123457", "currency": "JPY"},
        ),
        program_id=JPY_PROGRAM,
    )

    balance = (
        await client.get(
            f"/v1/partners/{JPY_PARTNER}/balance", params={"min_position": earning["position"]}
        )
    ).json()

    # 123457 yen × 0.045 = 5555.565, rounded half-up to 5556.
    assert earning["base_amount"] == {"amount": "123457", "currency": "JPY"}
    assert earning["amount"] == {"amount": "5556", "currency": "JPY"}
    assert earning["unrounded"] == "5555.565"
    assert balance["balance"] == {"amount": "5556", "currency": "JPY"}


async def test_bhd_amounts_have_three_decimals(client: Client) -> None:
    earning = await record(
        client,
        activity(
            "bhd-1",
            partner_id=BHD_PARTNER,
            base_amount={"amount": "47.43", "currency": "BHD"},
        ),
        program_id=BHD_PROGRAM,
    )
    adjustment = await client.post(
        f"/v1/partners/{BHD_PARTNER}/adjustments",
        json={
            "amount": {"amount": "0.005", "currency": "BHD"},
            "effective_date": "2016-01-20",
            "reason": "rounding credit",
        },
        headers=keyed(),
    )

    statement = (
        await client.get(
            f"/v1/partners/{BHD_PARTNER}/statements/2016-01",
            params={"min_position": adjustment.json()["position"]},
        )
    ).json()

    # 47430 fils × 0.045 = 2134.35, rounded half-up to 2134.
    assert earning["base_amount"] == {"amount": "47.430", "currency": "BHD"}
    assert earning["amount"] == {"amount": "2.134", "currency": "BHD"}
    assert adjustment.json()["amount"] == {"amount": "0.005", "currency": "BHD"}
    assert [line["amount"]["amount"] for line in statement["lines"]] == ["2.134", "0.005"]
    assert statement["closing_balance"] == {"amount": "2.139", "currency": "BHD"}


# History ------------------------------------------------------------------


async def test_events_paging_never_repeats_or_skips(
    client: Client, ledger_services: Services
) -> None:
    commands = [
        RecordActivity(
            partner_id=SECOND_USD_PARTNER,
            activity_type="pipeline_engaged",
            source_ref=f"page-{index}",
            effective_date=ENROLLED_ON,
        )
        for index in range(250)
    ]
    items = ledger_services.app.record_activities(USD_PROGRAM, commands, SETUP)
    expected = 1 + len(commands)  # the enrollment, then one event per activity
    last = max(item.outcome.position for item in items if item.outcome is not None)

    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7, "min_position": last}
        if cursor is not None:
            params["after"] = cursor
        response = await client.get(f"/v1/partners/{SECOND_USD_PARTNER}/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["events"]) <= 7
        seen.extend(event["position"] for event in page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == page["events"][-1]["position"]

    assert len(seen) == expected
    assert len(set(seen)) == expected
    assert seen == sorted(seen)
    assert pages == math.ceil(expected / 7)


async def test_events_show_actor_and_request_id(client: Client) -> None:
    response = await client.post(
        f"/v1/partners/{USD_PARTNER}/adjustments",
        json={"amount": usd("1.00"), "effective_date": "2016-01-02", "reason": "welcome"},
        headers={**keyed(), "X-Actor": "jane.ops", "X-Request-ID": "req-abc-123"},
    )

    page = (
        await client.get(
            f"/v1/partners/{USD_PARTNER}/events",
            params={"min_position": response.json()["position"]},
        )
    ).json()

    assert response.headers["X-Request-ID"] == "req-abc-123"
    adjustment = page["events"][-1]
    assert adjustment["position"] == response.json()["position"]
    assert adjustment["actor"] == "jane.ops"
    assert adjustment["correlation_id"] == "req-abc-123"
    assert page["events"][0]["actor"] == SETUP.actor


async def test_events_default_limit_is_100(client: Client, ledger_services: Services) -> None:
    commands = [
        RecordActivity(
            partner_id=USD_PARTNER,
            activity_type="pipeline_engaged",
            source_ref=f"many-{index}",
            effective_date=ENROLLED_ON,
        )
        for index in range(120)
    ]
    items = ledger_services.app.record_activities(USD_PROGRAM, commands, SETUP)
    last = max(item.outcome.position for item in items if item.outcome is not None)

    page = (
        await client.get(f"/v1/partners/{USD_PARTNER}/events", params={"min_position": last})
    ).json()

    assert len(page["events"]) == 100
    assert page["next_cursor"] == page["events"][-1]["position"]


# Read-your-writes, health and request ids ---------------------------------


async def test_min_position_reads_own_write(client: Client) -> None:
    for index in range(5):
        earning = await record(client, activity(f"ryw-{index}"))

        balance = await client.get(
            f"/v1/partners/{USD_PARTNER}/balance", params={"min_position": earning["position"]}
        )

        assert balance.status_code == 200
        assert balance.json()["position"] >= earning["position"]
        assert balance.json()["line_count"] == index + 1


async def test_min_position_beyond_head_is_422(
    client_factory: Callable[..., Client], ledger_services: Services
) -> None:
    head = head_position(ledger_services)
    unreachable = head + 1000

    async with client_factory(read_wait_seconds=0.2) as short_wait:
        response = await short_wait.get(
            f"/v1/partners/{USD_PARTNER}/balance", params={"min_position": unreachable}
        )

    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["field"] == "min_position"
    assert problem["errors"][0]["value"] == str(unreachable)
    assert f"head {head}" in problem["detail"]


async def test_reads_without_projector_are_503(
    client_factory: Callable[..., Client], ledger_services: Services
) -> None:
    async with client_factory(run_projector=False, read_wait_seconds=0.2) as no_projector:
        response = await no_projector.get(
            f"/v1/partners/{USD_PARTNER}",
            params={"min_position": head_position(ledger_services)},
        )
        health = await no_projector.get("/health")

    assert response.status_code == 503
    assert response.json()["projections"][0]["lag"] > 0
    assert health.json()["projector"] == "external"


async def test_health_reports_projections(client: Client, ledger_services: Services) -> None:
    head = head_position(ledger_services)
    await client.get(f"/v1/partners/{USD_PARTNER}/events", params={"min_position": head})

    response = await client.get("/health")

    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    assert health["database"] is True
    assert health["projector"] == "running"
    assert {p["name"] for p in health["projections"]} == {"statements", "journal", "history"}
    for projection in health["projections"]:
        assert projection["head"] >= head
        assert projection["lag"] == projection["head"] - projection["position"]


async def _health_until(client: Client, projector: str) -> Any:
    """Poll /health until it reports ``projector``; fail after 30 s."""
    for _ in range(300):
        response = await client.get("/health")
        if response.json()["projector"] == projector:
            return response
        await asyncio.sleep(0.1)
    pytest.fail(f"/health never reported projector {projector!r}: {response.text}")


async def test_health_reports_a_failing_projection(
    client: Client, ledger_services: Services
) -> None:
    conn = await asyncpg.connect(ledger_services.database.url)
    try:
        await conn.execute(
            """
            CREATE FUNCTION public.reject_poisoned_line() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'line % is poisoned', NEW.position;
            END $$;
            CREATE TRIGGER reject_poisoned_line BEFORE INSERT ON statements.statement_lines
                FOR EACH ROW EXECUTE FUNCTION public.reject_poisoned_line();
            """
        )
        await record(client, activity("poisoned-line"))

        failing = await _health_until(client, "failing")
        await conn.execute("DROP TRIGGER reject_poisoned_line ON statements.statement_lines")
        recovered = await _health_until(client, "running")
    finally:
        await conn.close()

    assert failing.status_code == 503
    assert failing.json()["status"] == "degraded"
    errors = {p["name"]: p["error"] for p in failing.json()["projections"]}
    assert "poisoned" in errors["statements"]
    assert errors["journal"] is None
    assert recovered.status_code == 200
    assert all(p["error"] is None for p in recovered.json()["projections"])


async def test_request_id_generated_when_absent(client: Client) -> None:
    response = await client.get("/health")

    assert uuid.UUID(response.headers["X-Request-ID"])


async def test_request_id_echoed_on_problems(client: Client) -> None:
    response = await client.get("/v1/partners/nobody-here", headers={"X-Request-ID": "trace-42"})

    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"


# OpenAPI ------------------------------------------------------------------


async def test_committed_openapi_matches_app(client: Client) -> None:
    committed = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))

    served = (await client.get("/schema/openapi.json")).json()

    # After changing the API, regenerate the file: python scripts/export_openapi.py
    assert committed == json.loads(json.dumps(openapi_document()))
    assert committed == served


async def test_schema_page_works_offline(client: Client) -> None:
    response = await client.get("/schema")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<a href="/schema/openapi.json">' in page
    assert "/v1/programs/{program_id}/partners" in page
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page


async def test_openapi_documents_money_as_strings() -> None:
    schemas = openapi_document()["components"]["schemas"]

    assert schemas["MoneyInput"]["properties"]["amount"]["type"] == "string"
    assert schemas["MoneyJSON"]["properties"]["amount"]["type"] == "string"


async def test_problem_type_uris_are_documented(client: Client) -> None:
    for slug in ("invalid-request", "not-found", "conflict", "projections-behind"):
        response = await client.get(f"/problems/{slug}")

        assert response.status_code == 200
        assert response.json()["type"] == f"/problems/{slug}"


async def test_statement_short_path_matches_route(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    earning = await record(client, activity("short-path-1"))
    await record(client, activity("short-path-2", effective_date="2016-02-03"))
    await client.get(
        f"/v1/partners/{USD_PARTNER}/statements/2016-02",
        params={"min_position": earning["position"] + 1},
    )
    answered: list[bool] = []

    async def spy(*args: Any) -> bool:
        result = await serve_statement(*args)
        answered.append(result)
        return result

    monkeypatch.setattr(api_app, "serve_statement", spy)

    for period in ("2016-01", "2016-02", "2016-03"):
        path = f"/v1/partners/{USD_PARTNER}/statements/{period}"
        short = await client.get(path, headers={"X-Request-ID": f"short-{period}"})
        # Any query string, here a min_position already reached, takes the route.
        routed = await client.get(
            path, params={"min_position": 1}, headers={"X-Request-ID": f"routed-{period}"}
        )

        assert short.status_code == routed.status_code == 200
        assert short.content == routed.content
        assert short.headers["content-type"] == routed.headers["content-type"]
        assert short.headers["content-length"] == routed.headers["content-length"]
        assert short.headers["x-request-id"] == f"short-{period}"
        assert sorted(short.headers.keys()) == sorted(routed.headers.keys())
    assert answered == [True, False] * 3


async def test_statement_short_path_declines_errors(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered: list[bool] = []

    async def spy(*args: Any) -> bool:
        result = await serve_statement(*args)
        answered.append(result)
        return result

    monkeypatch.setattr(api_app, "serve_statement", spy)

    unknown = await client.get("/v1/partners/nobody/statements/2016-01")
    bad_period = await client.get(f"/v1/partners/{USD_PARTNER}/statements/2016-13")
    bad_id = await client.get(
        f"/v1/partners/{USD_PARTNER}/statements/2016-01", headers={"X-Request-ID": "x" * 101}
    )

    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert bad_period.status_code == 422
    assert bad_id.status_code == 400
    assert answered == [False, False, False]

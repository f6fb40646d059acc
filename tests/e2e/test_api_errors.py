"""End-to-end tests of the API's error responses.

Every error is an RFC 9457 problem document. These tests send the mistakes a
client makes: unknown ids, malformed JSON, floats for money, too many decimal
places, bad periods, missing headers and bodies that are not JSON. Each checks the status, the problem
type and that ``errors[0].field`` names what to fix.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from ledger.bootstrap import Services

from .conftest import JPY_PARTNER, JPY_PROGRAM, USD_PARTNER, USD_PROGRAM

Client = AsyncTestClient[Any]

ACTIVITIES = f"/v1/programs/{USD_PROGRAM}/activities"
ADJUSTMENTS = f"/v1/partners/{USD_PARTNER}/adjustments"


def activity(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "partner_id": USD_PARTNER,
        "activity_type": "deal_won",
        "source_ref": f"opp-{uuid.uuid4()}",
        "effective_date": "2016-01-15",
        "base_amount": {"amount": "302.00", "currency": "USD"},
    }
    body.update(overrides)
    return body


def adjustment(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": {"amount": "10.00", "currency": "USD"},
        "effective_date": "2016-01-20",
        "reason": "bonus",
    }
    body.update(overrides)
    return body


def keyed() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def problem_of(response: Any, status: int) -> dict[str, Any]:
    """Check the response is a problem document with ``status``; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert problem["instance"] == response.request.url.path
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert problem["errors"], "a problem document names at least one field"
    return problem


# Unknown ids: 404 ---------------------------------------------------------


async def test_unknown_program_is_404(client: Client) -> None:
    response = await client.post("/v1/programs/no-such-program/activities", json=activity())

    problem = problem_of(response, 404)
    assert problem["type"] == "/problems/not-found"
    assert problem["errors"][0]["field"] == "program_id"
    assert problem["errors"][0]["value"] == "no-such-program"


async def test_activity_for_unknown_partner_is_404(client: Client) -> None:
    response = await client.post(ACTIVITIES, json=activity(partner_id="nobody"))

    problem = problem_of(response, 404)
    assert problem["errors"][0]["field"] == "partner_id"
    assert problem["errors"][0]["value"] == "nobody"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/partners/nobody",
        "/v1/partners/nobody/balance",
        "/v1/partners/nobody/statements/2016-01",
        "/v1/partners/nobody/events",
    ],
)
async def test_reads_of_unknown_partner_are_404(
    client: Client, ledger_services: Services, path: str
) -> None:
    head = ledger_services.app.head_position()

    response = await client.get(path, params={"min_position": head})

    problem = problem_of(response, 404)
    assert problem["errors"][0]["field"] == "partner_id"
    assert problem["errors"][0]["value"] == "nobody"


@pytest.mark.parametrize(
    ("suffix", "body"),
    [
        ("adjustments", adjustment()),
        ("tier", {"tier": "gold", "effective_date": "2016-02-01", "reason": "review"}),
        (
            "reversals",
            {"source_ref": "opp-1", "effective_date": "2016-02-01", "reason": "refund"},
        ),
    ],
)
async def test_keyed_writes_for_unknown_partner_are_404(
    client: Client, suffix: str, body: dict[str, Any]
) -> None:
    response = await client.post(f"/v1/partners/nobody/{suffix}", json=body, headers=keyed())

    problem = problem_of(response, 404)
    assert problem["errors"][0]["field"] == "partner_id"
    assert problem["errors"][0]["value"] == "nobody"


async def test_reversal_of_unknown_earning_is_404(client: Client) -> None:
    response = await client.post(
        f"/v1/partners/{USD_PARTNER}/reversals",
        json={"source_ref": "never-recorded", "effective_date": "2016-02-01", "reason": "x"},
        headers=keyed(),
    )

    problem = problem_of(response, 404)
    assert problem["errors"][0]["field"] == "source_ref"


async def test_unknown_path_is_404_problem(client: Client) -> None:
    response = await client.get("/v1/nothing-here")

    problem = problem_of(response, 404)
    assert problem["errors"][0]["field"] == "path"


async def test_wrong_method_is_405_problem(client: Client) -> None:
    response = await client.delete(f"/v1/partners/{USD_PARTNER}")

    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "about:blank"
    assert "GET" in response.headers["Allow"]


# Malformed requests: 400 --------------------------------------------------


async def test_malformed_json_is_400(client: Client) -> None:
    response = await client.post(
        ACTIVITIES,
        content=b'{"partner_id": "darcel-schlecht", ',
        headers={"Content-Type": "application/json"},
    )

    problem = problem_of(response, 400)
    assert problem["type"] == "/problems/invalid-request"
    assert problem["errors"][0]["field"] == "body"


async def test_empty_body_is_400(client: Client) -> None:
    response = await client.post(
        ACTIVITIES, content=b"", headers={"Content-Type": "application/json"}
    )

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "body"


async def test_float_amount_is_400(client: Client) -> None:
    response = await client.post(
        ACTIVITIES, json=activity(base_amount={"amount": 47.43, "currency": "USD"})
    )

    problem = problem_of(response, 400)
    error = problem["errors"][0]
    assert error["field"] == "base_amount.amount"
    assert error["value"] == 47.43
    assert "decimal strings" in error["message"]


async def test_integer_amount_is_400(client: Client) -> None:
    response = await client.post(
        ADJUSTMENTS, json=adjustment(amount={"amount": 10, "currency": "USD"}), headers=keyed()
    )

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "amount.amount"


async def test_missing_field_is_400(client: Client) -> None:
    body = adjustment()
    del body["reason"]

    response = await client.post(ADJUSTMENTS, json=body, headers=keyed())

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "reason"
    assert "missing" in problem["errors"][0]["message"]


async def test_missing_nested_field_is_400(client: Client) -> None:
    response = await client.post(ACTIVITIES, json=activity(base_amount={"amount": "1.00"}))

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "base_amount.currency"


async def test_missing_fields_all_listed(client: Client) -> None:
    response = await client.post(ADJUSTMENTS, json={}, headers=keyed())

    problem = problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == [
        "amount",
        "effective_date",
        "reason",
    ]
    assert problem["detail"].startswith("3 problems in the request")


async def test_missing_nested_fields_all_listed(client: Client) -> None:
    response = await client.post(ADJUSTMENTS, json=adjustment(amount={}), headers=keyed())

    problem = problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == ["amount.amount", "amount.currency"]


async def test_money_as_plain_string_shows_shape(client: Client) -> None:
    response = await client.post(ACTIVITIES, json=activity(base_amount="100.00"))

    problem = problem_of(response, 400)
    error = problem["errors"][0]
    assert error["field"] == "base_amount"
    assert error["value"] == "100.00"
    assert '{"amount": "100.00", "currency": "USD"}' in error["message"]


async def test_empty_reason_says_empty(client: Client) -> None:
    response = await client.post(ADJUSTMENTS, json=adjustment(reason=""), headers=keyed())

    problem = problem_of(response, 400)
    error = problem["errors"][0]
    assert error["field"] == "reason"
    assert error["value"] == ""
    assert error["message"] == "reason is empty; send a non-empty string"


async def test_too_long_reason_names_limit(client: Client) -> None:
    response = await client.post(ADJUSTMENTS, json=adjustment(reason="r" * 2001), headers=keyed())

    problem = problem_of(response, 400)
    assert problem["errors"][0]["message"] == "reason is too long; send at most 2000 characters"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
async def test_non_json_body_is_415(client: Client, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}

    response = await client.post(
        ACTIVITIES, content=b'{"partner_id": "darcel-schlecht"}', headers=headers
    )

    problem = problem_of(response, 415)
    assert problem["type"] == "/problems/unsupported-media-type"
    assert problem["errors"][0]["field"] == "Content-Type"
    assert problem["errors"][0]["value"] == content_type
    assert "Content-Type: application/json" in problem["detail"]


async def test_json_with_charset_is_accepted(client: Client) -> None:
    response = await client.post(
        ACTIVITIES,
        content=json.dumps(activity()).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 201, response.text


async def test_unknown_field_is_400(client: Client) -> None:
    response = await client.post(ACTIVITIES, json=activity(base_amout="12.00"))

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "base_amout"
    assert problem["errors"][0]["value"] == "12.00"


async def test_invalid_date_is_400(client: Client) -> None:
    response = await client.post(ACTIVITIES, json=activity(effective_date="2016-02-30"))

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "effective_date"
    assert problem["errors"][0]["value"] == "2016-02-30"
    assert "YYYY-MM-DD" in problem["errors"][0]["message"]


async def test_attribute_of_wrong_type_is_400(client: Client) -> None:
    response = await client.post(ACTIVITIES, json=activity(attributes={"series": 7}))

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "attributes.series"


async def test_missing_idempotency_key_is_400(client: Client) -> None:
    response = await client.post(ADJUSTMENTS, json=adjustment())

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "Idempotency-Key"
    assert "Idempotency-Key" in problem["detail"]


async def test_too_long_idempotency_key_is_422(client: Client) -> None:
    response = await client.post(
        ADJUSTMENTS, json=adjustment(), headers={"Idempotency-Key": "k" * 201}
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize("limit", ["0", "1001", "ten"])
async def test_limit_out_of_range_is_400(client: Client, limit: str) -> None:
    response = await client.get(f"/v1/partners/{USD_PARTNER}/events", params={"limit": limit})

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "limit"
    assert problem["errors"][0]["value"] == limit


async def test_negative_cursor_is_400(client: Client) -> None:
    response = await client.get(f"/v1/partners/{USD_PARTNER}/events", params={"after": "-1"})

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "after"


async def test_negative_min_position_is_400(client: Client) -> None:
    response = await client.get(f"/v1/partners/{USD_PARTNER}", params={"min_position": "-5"})

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "min_position"


async def test_invalid_request_id_header_is_400(client: Client) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "x" * 101})

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "X-Request-ID"
    assert response.headers["X-Request-ID"] != "x" * 101


async def test_invalid_actor_header_is_400(client: Client) -> None:
    response = await client.post(
        ADJUSTMENTS, json=adjustment(), headers={**keyed(), "X-Actor": "a" * 101}
    )

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "X-Actor"


# Domain rules: 422 --------------------------------------------------------


async def test_too_many_decimals_is_422(client: Client) -> None:
    response = await client.post(
        ACTIVITIES, json=activity(base_amount={"amount": "47.431", "currency": "USD"})
    )

    problem = problem_of(response, 422)
    assert problem["type"] == "/problems/invalid-input"
    assert problem["errors"][0]["field"] == "base_amount.amount"
    assert problem["errors"][0]["value"] == "47.431"


async def test_jpy_fraction_is_422(client: Client) -> None:
    response = await client.post(
        f"/v1/programs/{JPY_PROGRAM}/activities",
        json=activity(partner_id=JPY_PARTNER, base_amount={"amount": "100.5", "currency": "JPY"}),
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "base_amount.amount"


@pytest.mark.parametrize("currency", ["XYZ", "usd"])
async def test_bad_currency_is_422(client: Client, currency: str) -> None:
    response = await client.post(
        ADJUSTMENTS,
        json=adjustment(amount={"amount": "10.00", "currency": currency}),
        headers=keyed(),
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "amount.currency"
    assert problem["errors"][0]["value"] == currency


async def test_currency_other_than_program_is_422(client: Client) -> None:
    response = await client.post(
        ADJUSTMENTS,
        json=adjustment(amount={"amount": "10.00", "currency": "EUR"}),
        headers=keyed(),
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "amount.currency"


@pytest.mark.parametrize("amount", ["1e3", "NaN", "12,50", ""])
async def test_non_decimal_amount_is_422(client: Client, amount: str) -> None:
    response = await client.post(
        ACTIVITIES, json=activity(base_amount={"amount": amount, "currency": "USD"})
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "base_amount.amount"


@pytest.mark.parametrize("period", ["2016-13", "2016-00", "2016-1", "201601", "latest"])
async def test_bad_period_is_422(client: Client, period: str) -> None:
    response = await client.get(f"/v1/partners/{USD_PARTNER}/statements/{period}")

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "period"
    assert problem["errors"][0]["value"] == period
    assert "YYYY-MM" in problem["errors"][0]["message"]


@pytest.mark.parametrize("period", ["9999-12", "1899-12", "0000-01"])
async def test_period_out_of_range_is_422(client: Client, period: str) -> None:
    response = await client.get(f"/v1/partners/{USD_PARTNER}/statements/{period}")

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "period"
    assert problem["errors"][0]["value"] == period
    assert "1900-01 to 9998-12" in problem["errors"][0]["message"]


async def test_last_period_is_empty_statement(client: Client, ledger_services: Services) -> None:
    response = await client.get(
        f"/v1/partners/{USD_PARTNER}/statements/9998-12",
        params={"min_position": ledger_services.app.head_position()},
    )

    assert response.status_code == 200, response.text
    assert response.json()["period"] == "9998-12"
    assert response.json()["lines"] == []


async def test_activity_without_rule_is_422(client: Client) -> None:
    response = await client.post(ACTIVITIES, json=activity(activity_type="webinar_hosted"))

    problem = problem_of(response, 422)
    assert problem["type"] == "/problems/rule-not-found"
    assert problem["errors"][0]["field"] == "activity_type"
    assert problem["errors"][0]["value"] == "webinar_hosted"


async def test_negative_base_is_422(client: Client) -> None:
    response = await client.post(
        ACTIVITIES, json=activity(base_amount={"amount": "-5.00", "currency": "USD"})
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "base_amount.amount"


async def test_reversal_larger_than_earning_is_422(client: Client) -> None:
    recorded = await client.post(ACTIVITIES, json=activity(source_ref="opp-small"))
    assert recorded.status_code == 201

    response = await client.post(
        f"/v1/partners/{USD_PARTNER}/reversals",
        json={
            "source_ref": "opp-small",
            "effective_date": "2016-02-01",
            "reason": "refund",
            "amount": {"amount": "500.00", "currency": "USD"},
        },
        headers=keyed(),
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "amount.amount"


# Unexpected failures: 500 without internals -------------------------------


async def test_unexpected_error_is_500_without_internals(
    client: Client, ledger_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal state 0xdeadbeef")

    monkeypatch.setattr(ledger_services.app, "record_activity", explode)

    response = await client.post(ACTIVITIES, json=activity())

    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "/problems/internal-error"
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert "0xdeadbeef" not in response.text
    assert "RuntimeError" not in response.text


# Text PostgreSQL cannot store: 422, nothing recorded --------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (ACTIVITIES, activity(source_ref="opp\u0000x"), "source_ref"),
        (ACTIVITIES, activity(attributes={"series": "G\u0000TX"}), "attributes.series"),
        (ACTIVITIES, activity(attributes={"se\u0000ries": "GTX"}), "attributes key"),
        (ADJUSTMENTS, adjustment(reason="bonus\u0000"), "reason"),
        (
            f"/v1/programs/{USD_PROGRAM}/partners",
            {
                "partner_id": "new-partner",
                "display_name": "N\u0000ew",
                "effective_date": "2016-01-02",
            },
            "display_name",
        ),
    ],
)
async def test_nul_character_in_a_write_is_422(
    client: Client, ledger_services: Services, path: str, body: dict[str, Any], field: str
) -> None:
    head = ledger_services.app.head_position()

    response = await client.post(path, json=body, headers=keyed())

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == field
    assert "\\u0000" in problem["errors"][0]["value"]
    assert ledger_services.app.head_position() == head


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/partners/ada%00quill", "partner_id"),
        ("/v1/partners/ada%00quill/statements/2016-01", "partner_id"),
        (f"/v1/programs/{USD_PROGRAM}/partners?after=%00", "after"),
    ],
)
async def test_nul_character_in_the_url_is_422(client: Client, path: str, field: str) -> None:
    response = await client.get(path)

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == field


async def test_events_cursor_beyond_bigint_is_422(client: Client) -> None:
    response = await client.get(f"/v1/partners/{USD_PARTNER}/events", params={"after": str(2**63)})

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "after"


async def test_attribute_that_is_not_text_is_named(client: Client) -> None:
    response = await client.post(
        ACTIVITIES, json=activity(attributes={"series": "GTX", "account": 5})
    )

    problem = problem_of(response, 400)
    assert problem["errors"][0]["field"] == "attributes.account"
    assert problem["errors"][0]["value"] == 5


@pytest.mark.parametrize("amount", [" 10.00", "10.00\n", "+10.00", "10.", ".5", "1 0"])
async def test_loose_amount_text_is_422(client: Client, amount: str) -> None:
    response = await client.post(
        ADJUSTMENTS,
        json=adjustment(amount={"amount": amount, "currency": "USD"}),
        headers=keyed(),
    )

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == "amount.amount"
    assert problem["errors"][0]["value"] == amount


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (f"/v1/partners/{USD_PARTNER}/events?cursor=40", "cursor"),
        (f"/v1/programs/{USD_PROGRAM}/partners?cursor=carl-lin", "cursor"),
        (f"/v1/partners/{USD_PARTNER}/statements/2016-01?minposition=3", "minposition"),
    ],
)
async def test_unknown_query_parameter_is_rejected(client: Client, path: str, name: str) -> None:
    response = await client.get(path)

    problem = problem_of(response, 422)
    assert problem["errors"][0]["field"] == name
    assert "accepts" in problem["detail"]

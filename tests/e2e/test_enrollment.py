"""End-to-end tests of enrollment over HTTP and of the program reads.

``POST /v1/programs/{id}/partners`` enrolls a partner, ``GET /v1/programs/{id}``
shows the program with the rules that price its activities, and
``GET /v1/programs/{id}/partners`` pages through its partners. Every test
runs the real app on a real database with the projector in the background.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from litestar.testing import AsyncTestClient

from ledger.application.commands import EnrollPartner, ProgramSpec
from ledger.bootstrap import Services
from ledger.domain.rules import Rule, RuleSet

from .conftest import (
    BHD_PROGRAM,
    ENROLLED_ON,
    JPY_PROGRAM,
    SECOND_USD_PARTNER,
    SETUP,
    USD_PARTNER,
    USD_PROGRAM,
    USD_TIERS,
    head_position,
)

Client = AsyncTestClient[Any]

ENROLL = f"/v1/programs/{USD_PROGRAM}/partners"


def enrollment(partner_id: str = "ada-quill", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "partner_id": partner_id,
        "display_name": "Ada Quill",
        "effective_date": "2016-02-01",
        "region": "West",
        "channel_manager": "Rosie Hurst",
        "tier": "registered",
        "source_ref": "crm:ada",
    }
    body.update(overrides)
    return body


def problem_fields(response: Any) -> list[str]:
    assert response.headers["content-type"].startswith("application/problem+json")
    return [error["field"] for error in response.json()["errors"]]


# Enrollment ---------------------------------------------------------------


async def test_enrollment_created_and_readable(client: Client) -> None:
    response = await client.post(ENROLL, json=enrollment())

    assert response.status_code == 201, response.text
    enrolled = response.json()
    assert enrolled["created"] is True
    assert enrolled["partner_id"] == "ada-quill"
    assert enrolled["program_id"] == USD_PROGRAM
    assert enrolled["display_name"] == "Ada Quill"
    assert enrolled["region"] == "West"
    assert enrolled["channel_manager"] == "Rosie Hurst"
    assert enrolled["tier"] == "registered"
    assert enrolled["enrolled_on"] == "2016-02-01"
    assert enrolled["position"] > 0

    profile = await client.get(
        "/v1/partners/ada-quill", params={"min_position": enrolled["position"]}
    )

    assert profile.status_code == 200
    assert profile.json()["program_id"] == USD_PROGRAM
    assert profile.json()["currency"] == "USD"
    assert profile.json()["enrolled_on"] == "2016-02-01"
    assert profile.json()["position"] == enrolled["position"]


async def test_enrollment_defaults_optional_fields(client: Client) -> None:
    body = {"partner_id": "bo-lee", "display_name": "Bo Lee", "effective_date": "2016-02-01"}

    response = await client.post(ENROLL, json=body)

    assert response.status_code == 201, response.text
    assert response.json()["tier"] == "registered"
    assert response.json()["region"] == ""
    assert response.json()["channel_manager"] == ""


async def test_enrollment_identical_retry_is_200(client: Client) -> None:
    first = await client.post(ENROLL, json=enrollment())

    retry = await client.post(ENROLL, json=enrollment())

    assert first.status_code == 201
    assert retry.status_code == 200
    assert retry.json()["created"] is False
    assert retry.json()["position"] == first.json()["position"]


async def test_enrollment_other_details_is_409(client: Client) -> None:
    await client.post(ENROLL, json=enrollment())

    response = await client.post(
        ENROLL, json=enrollment(display_name="Ada Q.", region="North", effective_date="2016-02-03")
    )

    assert response.status_code == 409
    problem = response.json()
    assert problem["type"] == "/problems/conflict"
    differences = {d["field"]: d for d in problem["differences"]}
    assert set(differences) == {"display_name", "region", "effective_date"}
    assert differences["display_name"]["stored"] == "Ada Quill"
    assert differences["display_name"]["requested"] == "Ada Q."
    assert differences["effective_date"]["stored"] == "2016-02-01"
    assert set(problem_fields(response)) == set(differences)


async def test_enrollment_other_program_is_409(client: Client) -> None:
    response = await client.post(
        f"/v1/programs/{JPY_PROGRAM}/partners",
        json=enrollment(USD_PARTNER, display_name="Darcel Schlecht", effective_date="2016-01-01"),
    )

    assert response.status_code == 409
    assert "program_id" in [d["field"] for d in response.json()["differences"]]


async def test_enrollment_in_unknown_program_is_404(client: Client) -> None:
    response = await client.post("/v1/programs/no-such-program/partners", json=enrollment())

    assert response.status_code == 404
    assert problem_fields(response) == ["program_id"]
    assert response.json()["errors"][0]["value"] == "no-such-program"


async def test_enrollment_invalid_partner_id_is_422(client: Client) -> None:
    response = await client.post(ENROLL, json=enrollment("ada quill!"))

    assert response.status_code == 422
    assert problem_fields(response) == ["partner_id"]
    assert response.json()["errors"][0]["value"] == "ada quill!"


async def test_enrollment_in_future_is_422(client: Client) -> None:
    response = await client.post(ENROLL, json=enrollment(effective_date="2999-01-01"))

    assert response.status_code == 422
    assert problem_fields(response) == ["effective_date"]


async def test_enrollment_unknown_tier_is_422(client: Client, ledger_services: Services) -> None:
    ledger_services.app.publish_program(
        ProgramSpec(
            id="tiered",
            name="Tiered",
            currency="USD",
            rule_sets=[
                RuleSet(
                    version=1,
                    effective_from=ENROLLED_ON,
                    rules=(Rule(id="won", activity_type="deal_won", rate=Decimal("0.03")),),
                )
            ],
            tiers=["registered", "gold"],
        ),
        SETUP,
    )

    rejected = await client.post("/v1/programs/tiered/partners", json=enrollment(tier="diamond"))
    accepted = await client.post("/v1/programs/tiered/partners", json=enrollment(tier="gold"))

    assert rejected.status_code == 422
    assert problem_fields(rejected) == ["tier"]
    assert "gold" in rejected.json()["errors"][0]["message"]
    assert accepted.status_code == 201, accepted.text


async def test_enrollment_missing_fields_all_listed(client: Client) -> None:
    response = await client.post(ENROLL, json={"region": "West"})

    assert response.status_code == 400
    assert problem_fields(response) == ["partner_id", "display_name", "effective_date"]
    assert response.json()["detail"].startswith("3 problems in the request")


async def test_enrollment_empty_name_is_400(client: Client) -> None:
    response = await client.post(ENROLL, json=enrollment(display_name=""))

    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == "display_name"
    assert error["message"] == "display_name is empty; send a non-empty string"


async def test_enrolled_partner_can_earn(client: Client) -> None:
    enrolled = await client.post(ENROLL, json=enrollment())
    assert enrolled.status_code == 201

    earning = await client.post(
        f"/v1/programs/{USD_PROGRAM}/activities",
        json={
            "partner_id": "ada-quill",
            "activity_type": "deal_won",
            "source_ref": "opp-ada-1",
            "effective_date": "2016-02-10",
            "base_amount": {"amount": "100.00", "currency": "USD"},
        },
    )

    assert earning.status_code == 201, earning.text
    assert earning.json()["amount"] == {"amount": "3.00", "currency": "USD"}


async def test_unenrolled_partner_names_endpoint(client: Client) -> None:
    response = await client.post(
        f"/v1/programs/{USD_PROGRAM}/activities",
        json={
            "partner_id": "ada-quill",
            "activity_type": "deal_won",
            "source_ref": "opp-ada-2",
            "effective_date": "2016-02-10",
            "base_amount": {"amount": "100.00", "currency": "USD"},
        },
    )

    assert response.status_code == 404
    error = response.json()["errors"][0]
    assert error["field"] == "partner_id"
    assert error["value"] == "ada-quill"
    assert f"POST /v1/programs/{USD_PROGRAM}/partners" in error["message"]


# Program ------------------------------------------------------------------


async def test_programs_are_listed(client: Client, ledger_services: Services) -> None:
    response = await client.get(
        "/v1/programs", params={"min_position": head_position(ledger_services)}
    )

    assert response.status_code == 200, response.text
    programs = {program["program_id"]: program for program in response.json()}
    assert list(programs) == sorted([USD_PROGRAM, JPY_PROGRAM, BHD_PROGRAM])
    assert programs[USD_PROGRAM]["currency"] == "USD"
    assert programs[USD_PROGRAM]["partners"] == 2
    assert programs[JPY_PROGRAM]["partners"] == 1


async def test_program_shows_rules(client: Client, ledger_services: Services) -> None:
    response = await client.get(
        f"/v1/programs/{USD_PROGRAM}", params={"min_position": head_position(ledger_services)}
    )

    assert response.status_code == 200, response.text
    program = response.json()
    assert program["program_id"] == USD_PROGRAM
    assert program["name"] == f"{USD_PROGRAM} rewards"
    assert program["currency"] == "USD"
    assert program["time_zone"] == "UTC"
    assert program["rounding"] == "half-up"
    assert program["tiers"] == ["registered", "silver", "gold", "platinum"]
    assert program["position"] > 0
    [rule_set] = program["rule_sets"]
    assert rule_set["version"] == 1
    assert rule_set["effective_from"] == ENROLLED_ON.isoformat()
    rules = {rule["id"]: rule for rule in rule_set["rules"]}
    assert list(rules) == ["won-gtx", "won", "engaged"]
    assert rules["won-gtx"]["activity_type"] == "deal_won"
    assert rules["won-gtx"]["match"] == {"series": "GTX"}
    assert rules["won-gtx"]["rate"] == "0.045"
    assert rules["won-gtx"]["fixed_amount"] is None
    assert rules["engaged"]["rate"] is None
    assert rules["engaged"]["fixed_amount"] == {"amount": "5.00", "currency": "USD"}


async def test_program_fixed_amount_digits(client: Client, ledger_services: Services) -> None:
    head = head_position(ledger_services)

    jpy = (await client.get(f"/v1/programs/{JPY_PROGRAM}", params={"min_position": head})).json()
    bhd = (await client.get(f"/v1/programs/{BHD_PROGRAM}", params={"min_position": head})).json()

    assert jpy["rule_sets"][0]["rules"][2]["fixed_amount"] == {"amount": "500", "currency": "JPY"}
    assert bhd["rule_sets"][0]["rules"][2]["fixed_amount"] == {
        "amount": "1.250",
        "currency": "BHD",
    }


async def test_program_rule_sets_in_order(client: Client, ledger_services: Services) -> None:
    outcome = ledger_services.app.publish_program(
        ProgramSpec(
            id=USD_PROGRAM,
            name=f"{USD_PROGRAM} rewards",
            currency="USD",
            rule_sets=[
                RuleSet(
                    version=2,
                    effective_from=date(2016, 6, 1),
                    rules=(Rule(id="won-v2", activity_type="deal_won", rate=Decimal("0.05")),),
                    description="Summer rates",
                ),
            ],
            tiers=USD_TIERS,
        ),
        SETUP,
    )

    program = (
        await client.get(f"/v1/programs/{USD_PROGRAM}", params={"min_position": outcome.position})
    ).json()

    assert [rule_set["version"] for rule_set in program["rule_sets"]] == [1, 2]
    assert program["rule_sets"][1]["description"] == "Summer rates"
    assert program["rule_sets"][1]["rules"][0]["rate"] == "0.05"
    assert program["position"] == outcome.position


async def test_unknown_program_read_is_404(client: Client, ledger_services: Services) -> None:
    head = head_position(ledger_services)

    program = await client.get("/v1/programs/nothing", params={"min_position": head})
    partners = await client.get("/v1/programs/nothing/partners", params={"min_position": head})

    for response in (program, partners):
        assert response.status_code == 404
        assert problem_fields(response) == ["program_id"]
        assert response.json()["errors"][0]["value"] == "nothing"


# Partner list -------------------------------------------------------------


async def test_partner_list_pages_by_id(client: Client, ledger_services: Services) -> None:
    for index in range(5):
        ledger_services.app.enroll_partner(
            USD_PROGRAM,
            EnrollPartner(
                partner_id=f"p-{index:02d}",
                display_name=f"Partner {index}",
                effective_date=ENROLLED_ON,
            ),
            SETUP,
        )
    head = head_position(ledger_services)
    expected = sorted([USD_PARTNER, SECOND_USD_PARTNER, *(f"p-{i:02d}" for i in range(5))])

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "min_position": head}
        if cursor is not None:
            params["after"] = cursor
        response = await client.get(f"/v1/programs/{USD_PROGRAM}/partners", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["program_id"] == USD_PROGRAM
        assert len(page["partners"]) <= 3
        seen.extend(partner["partner_id"] for partner in page["partners"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == page["partners"][-1]["partner_id"]

    assert seen == expected
    assert pages == 3


async def test_partner_list_names_and_tiers(client: Client, ledger_services: Services) -> None:
    response = await client.get(
        f"/v1/programs/{JPY_PROGRAM}/partners",
        params={"min_position": head_position(ledger_services)},
    )

    assert response.status_code == 200
    assert response.json() == {
        "program_id": JPY_PROGRAM,
        "partners": [
            {"partner_id": "kaito-sato", "display_name": "Kaito Sato", "tier": "registered"}
        ],
        "next_cursor": None,
    }


async def test_partner_list_bad_limit_is_400(client: Client) -> None:
    for limit in ("0", "1001"):
        response = await client.get(f"/v1/programs/{USD_PROGRAM}/partners", params={"limit": limit})

        assert response.status_code == 400
        assert problem_fields(response) == ["limit"]
        assert response.json()["errors"][0]["value"] == limit

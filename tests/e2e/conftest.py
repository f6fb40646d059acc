"""Fixtures for the HTTP API tests: the real app, in-process, on a real database.

Each test gets a fresh migrated database (``services`` from the top-level
conftest), the Litestar application with its projector running in the test's
event loop, and small published programs in USD, JPY and BHD with enrolled
partners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import date
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from ledger.api.app import create_app
from ledger.application.commands import CommandContext, EnrollPartner, ProgramSpec
from ledger.bootstrap import Services
from ledger.domain.rules import Rule, RuleSet

SETUP = CommandContext(actor="e2e-setup", correlation_id="e2e-setup")

USD_PROGRAM = "acme-usd"
JPY_PROGRAM = "acme-jpy"
BHD_PROGRAM = "acme-bhd"

USD_PARTNER = "darcel-schlecht"
SECOND_USD_PARTNER = "moses-frase"
JPY_PARTNER = "kaito-sato"
BHD_PARTNER = "layla-haddad"

ENROLLED_ON = date(2016, 1, 1)


def _rules(fixed: str) -> tuple[Rule, ...]:
    return (
        Rule(
            id="won-gtx", activity_type="deal_won", match={"series": "GTX"}, rate=Decimal("0.045")
        ),
        Rule(id="won", activity_type="deal_won", rate=Decimal("0.03")),
        Rule(id="engaged", activity_type="pipeline_engaged", fixed=fixed),
    )


USD_TIERS = ["registered", "silver", "gold", "platinum"]


def program_spec(
    program_id: str, currency: str, fixed: str, tiers: list[str] | None = None
) -> ProgramSpec:
    """Return a one-rule-set program: 4.5% GTX, 3% other wins, ``fixed`` per engagement."""
    return ProgramSpec(
        id=program_id,
        name=f"{program_id} rewards",
        currency=currency,
        rule_sets=[RuleSet(version=1, effective_from=ENROLLED_ON, rules=_rules(fixed))],
        tiers=tiers or [],
    )


@pytest.fixture
def ledger_services(services: Services) -> Services:
    """``services`` with three published programs and four enrolled partners."""
    app = services.app
    app.publish_program(program_spec(USD_PROGRAM, "USD", "5.00", USD_TIERS), SETUP)
    app.publish_program(program_spec(JPY_PROGRAM, "JPY", "500"), SETUP)
    app.publish_program(program_spec(BHD_PROGRAM, "BHD", "1.250"), SETUP)
    for program_id, partner_id in (
        (USD_PROGRAM, USD_PARTNER),
        (USD_PROGRAM, SECOND_USD_PARTNER),
        (JPY_PROGRAM, JPY_PARTNER),
        (BHD_PROGRAM, BHD_PARTNER),
    ):
        app.enroll_partner(
            program_id,
            EnrollPartner(
                partner_id=partner_id,
                display_name=partner_id.replace("-", " ").title(),
                effective_date=ENROLLED_ON,
                region="East",
            ),
            SETUP,
        )
    return services


@pytest.fixture
async def client(ledger_services: Services) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client of the app, with the projector running in the background."""
    app = create_app(ledger_services, run_projector=True)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
def client_factory(
    ledger_services: Services,
) -> Callable[..., AsyncTestClient[Any]]:
    """Build a client of an app with other settings, e.g. a shorter read wait."""

    def build(*, run_projector: bool = True, **settings: Any) -> AsyncTestClient[Any]:
        changed = msgspec.structs.replace(ledger_services.settings, **settings)
        services = dataclasses.replace(ledger_services, settings=changed)
        return AsyncTestClient(app=create_app(services, run_projector=run_projector))

    return build


def head_position(services: Services) -> int:
    """Return the newest event position in the store."""
    return services.app.head_position()

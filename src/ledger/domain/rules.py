"""Reward rules and the arithmetic that turns an activity into an earning.

A program publishes rule sets, each with a version and the date it takes
effect. An activity is priced by the rule set in force on its effective date. Within
that set, the most specific rule for its activity type wins: of the rules whose
``match`` attributes all equal the activity's, the one with the most keys.
A rule pays either a ``rate`` of the activity's base amount or a ``fixed``
amount in the program currency. The result records every input so a statement
can explain it and a replay reproduces it without consulting rules again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import msgspec

from ledger.domain.money import Money, RoundingMode, apply_rate, currency_exponent
from ledger.errors import InvalidInputError, RuleNotFoundError

__all__ = [
    "Reward",
    "Rule",
    "RuleSet",
    "compute_reward",
    "find_pricing_rule",
    "rule_set_in_force",
]

_MAX_RATE = Decimal(1)


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One way to earn: an activity type, optional attribute filters and a reward.

    Attributes:
        id: Identifier unique within its rule set, shown on statements.
        activity_type: Activity type this rule prices, e.g. ``deal_won``.
        match: Attribute values the activity must carry, e.g. ``{"series": "GTX"}``.
        rate: Fraction of the base amount paid, e.g. ``0.045`` for 4.5%.
        fixed: Fixed reward as a decimal string in the program currency.
        description: Human-readable wording for statements.
    """

    id: str
    activity_type: str
    match: dict[str, str] = {}
    rate: Decimal | None = None
    fixed: str | None = None
    description: str = ""


class RuleSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A numbered, dated, immutable set of rules.

    Attributes:
        version: Positive integer, strictly increasing across a program.
        effective_from: First calendar date (program time zone) the set prices.
        rules: The rules, each with a distinct id.
    """

    version: int
    effective_from: date
    rules: tuple[Rule, ...]
    description: str = ""

    def validate(self, currency: str) -> None:
        """Check the set on its own; raise :class:`InvalidInputError` naming the rule."""
        if self.version < 1:
            raise InvalidInputError(
                f"rule set version {self.version} is not positive; number rule sets 1, 2, 3, ...",
                field="rule_sets.version",
                value=self.version,
            )
        if not self.rules:
            raise InvalidInputError(
                f"rule set {self.version} has no rules; add at least one [[rule_sets.rules]]",
                field="rule_sets.rules",
            )
        seen_ids: set[str] = set()
        seen_filters: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        for index, rule in enumerate(self.rules):
            where = f"rule_sets[{self.version}].rules[{index}]"
            if not rule.id:
                raise InvalidInputError(f"{where} has an empty id", field=f"{where}.id")
            if rule.id in seen_ids:
                raise InvalidInputError(
                    f"rule id {rule.id!r} appears twice in rule set {self.version}; "
                    "give each rule its own id",
                    field=f"{where}.id",
                    value=rule.id,
                )
            seen_ids.add(rule.id)
            if not rule.activity_type:
                raise InvalidInputError(
                    f"rule {rule.id!r} has no activity_type", field=f"{where}.activity_type"
                )
            if (rule.rate is None) == (rule.fixed is None):
                raise InvalidInputError(
                    f"rule {rule.id!r} must set exactly one of rate or fixed",
                    field=f"{where}.rate",
                )
            if rule.rate is not None and not (
                rule.rate.is_finite() and Decimal(0) <= rule.rate <= _MAX_RATE
            ):
                raise InvalidInputError(
                    f"rule {rule.id!r} has rate {rule.rate}; a rate is a fraction between "
                    "0 and 1, so 4.5% is written 0.045",
                    field=f"{where}.rate",
                    value=rule.rate,
                )
            if rule.fixed is not None:
                fixed = Money.parse(rule.fixed, currency, field=f"{where}.fixed")
                if fixed.amount_minor < 0:
                    raise InvalidInputError(
                        f"rule {rule.id!r} has a negative fixed reward {rule.fixed}; "
                        "record clawbacks as reversals instead",
                        field=f"{where}.fixed",
                        value=rule.fixed,
                    )
            key = (rule.activity_type, tuple(sorted(rule.match.items())))
            if key in seen_filters:
                raise InvalidInputError(
                    f"rules {seen_filters[key]!r} and {rule.id!r} both price activity type "
                    f"{rule.activity_type!r} with the same match {dict(rule.match)}; "
                    "keep one or make the match more specific",
                    field=f"{where}.match",
                )
            seen_filters[key] = rule.id
        self._check_overlaps()

    def _check_overlaps(self) -> None:
        # Two rules of one activity type can both match an activity unless a
        # shared attribute requires different values. When such rules have the
        # same number of match keys, neither is more specific, so the file
        # order would decide the price: reject that.
        for index, first in enumerate(self.rules):
            for second in self.rules[index + 1 :]:
                if first.activity_type != second.activity_type:
                    continue
                if len(first.match) != len(second.match):
                    continue
                shared = first.match.keys() & second.match.keys()
                if any(first.match[key] != second.match[key] for key in shared):
                    continue
                raise InvalidInputError(
                    f"rules {first.id!r} and {second.id!r} can both price the same "
                    f"{first.activity_type!r} activity and neither is more specific "
                    f"({dict(first.match)} vs {dict(second.match)}); add a rule matching "
                    "both attributes or make the matches exclusive",
                    field=f"rule_sets[{self.version}].rules",
                    value=second.id,
                )

    def find_rule(self, activity_type: str, attributes: Mapping[str, str]) -> Rule:
        """Return the most specific rule for the activity.

        Raises:
            RuleNotFoundError: No rule in this set matches.
        """
        best: Rule | None = None
        for rule in self.rules:
            if rule.activity_type != activity_type or not _matches(rule.match, attributes):
                continue
            if best is None or len(rule.match) > len(best.match):
                best = rule
        if best is None:
            candidates = [rule for rule in self.rules if rule.activity_type == activity_type]
            if candidates:
                raise _no_matching_attributes(self, activity_type, candidates, attributes)
            known = sorted({rule.activity_type for rule in self.rules})
            raise RuleNotFoundError(
                f"rule set {self.version} has no rule for activity type {activity_type!r}; "
                f"send one of the known activity types: {', '.join(known)}",
                field="activity_type",
                value=activity_type,
            )
        return best


def _no_matching_attributes(
    rule_set: RuleSet, activity_type: str, candidates: Sequence[Rule], attributes: Mapping[str, str]
) -> RuleNotFoundError:
    """Build the error for an activity type whose rules all filter on other attribute values."""
    keys = sorted({key for rule in candidates for key in rule.match})
    key = next((k for k in keys if k not in attributes), keys[0] if keys else "")
    accepted = sorted({rule.match[key] for rule in candidates if key in rule.match})
    sent = attributes.get(key)
    sent_text = "no " + key if sent is None else f"{key} {sent!r}"
    known = sorted({rule.activity_type for rule in rule_set.rules})
    return RuleNotFoundError(
        f"rule set {rule_set.version} has no rule for activity type {activity_type!r} with "
        f"{sent_text}; its {activity_type} rules accept {key} {', '.join(accepted)} "
        f"(known activity types: {', '.join(known)})",
        field=f"attributes.{key}",
        value=sent,
    )


def rule_set_in_force(rule_sets: Sequence[RuleSet], on: date) -> RuleSet:
    """Return the rule set with the latest ``effective_from`` not after ``on``.

    Raises:
        RuleNotFoundError: Every rule set starts after ``on``.
    """
    in_force: RuleSet | None = None
    for rule_set in rule_sets:
        if rule_set.effective_from <= on and (
            in_force is None or rule_set.effective_from > in_force.effective_from
        ):
            in_force = rule_set
    if in_force is None:
        first = min((rs.effective_from for rs in rule_sets), default=None)
        hint = (
            f"the first rule set takes effect on {first.isoformat()}"
            if first
            else "the program has no published rule set; publish one first"
        )
        raise RuleNotFoundError(
            f"no rule set is in force on {on.isoformat()}; {hint}",
            field="effective_date",
            value=on.isoformat(),
        )
    return in_force


@dataclass(frozen=True, slots=True)
class Reward:
    """The pricing of one activity, frozen onto its earning.

    Attributes:
        rule_set_version: Version of the rule set in force on the effective date.
        rule_id: The rule that matched.
        base: The activity's base amount, when it has one.
        rate: The rule's rate, for rate rules.
        fixed: The rule's fixed amount, for fixed rules.
        unrounded_minor: Exact result in minor units before rounding.
        amount: The earned amount, rounded once.
        rounding: The rounding mode applied.
    """

    rule_set_version: int
    rule_id: str
    base: Money | None
    rate: Decimal | None
    fixed: Money | None
    unrounded_minor: Decimal
    amount: Money
    rounding: RoundingMode


def _matches(match: Mapping[str, str], attributes: Mapping[str, str]) -> bool:
    """Return whether ``attributes`` carry every value that ``match`` requires."""
    # A plain loop: this runs for every rule and activity, and a generator
    # expression costs more than the comparisons.
    for key, value in match.items():
        if attributes.get(key) != value:
            return False
    return True


def find_pricing_rule(
    rule_set: RuleSet,
    *,
    currency: str,
    activity_type: str,
    attributes: Mapping[str, str],
    base: Money | None,
) -> Rule:
    """Return the rule that prices the activity, after every check :func:`compute_reward` makes.

    For callers that need to know whether an activity can be priced, but not
    its reward: :func:`compute_reward` succeeds exactly when this does.

    Raises:
        RuleNotFoundError: No rule matches the activity.
        InvalidInputError: A rate rule matched but the base amount is missing,
            negative or in another currency than the program's.
    """
    rule = rule_set.find_rule(activity_type, attributes)
    if rule.rate is not None:
        if base is None:
            example = Money(100 * 10 ** currency_exponent(currency), currency).format()
            raise InvalidInputError(
                f"rule {rule.id!r} pays {rule.rate} of the base amount, but the activity has "
                f'no base_amount; send base_amount such as {{"amount": "{example}", '
                f'"currency": "{currency}"}}',
                field="base_amount",
            )
        if base.currency != currency:
            raise InvalidInputError(
                f"base_amount is in {base.currency} but the program pays in {currency}; "
                f"convert the base to {currency} before recording",
                field="base_amount.currency",
                value=base.currency,
            )
        if base.amount_minor < 0:
            raise InvalidInputError(
                f"base_amount {base} is negative; record refunds as reversals",
                field="base_amount.amount",
                value=base.format(),
            )
    return rule


def compute_reward(
    rule_set: RuleSet,
    *,
    currency: str,
    rounding: RoundingMode,
    activity_type: str,
    attributes: Mapping[str, str],
    base: Money | None,
) -> Reward:
    """Price one activity with ``rule_set``.

    Raises:
        RuleNotFoundError: No rule matches the activity.
        InvalidInputError: A rate rule matched but the base amount is missing,
            negative or in another currency than the program's.
    """
    rule = find_pricing_rule(
        rule_set, currency=currency, activity_type=activity_type, attributes=attributes, base=base
    )
    if rule.rate is not None:
        assert base is not None  # find_pricing_rule requires a base for a rate
        result = apply_rate(base, rule.rate, rounding)
        return Reward(
            rule_set_version=rule_set.version,
            rule_id=rule.id,
            base=base,
            rate=rule.rate,
            fixed=None,
            unrounded_minor=result.unrounded_minor,
            amount=result.rounded,
            rounding=rounding,
        )
    assert rule.fixed is not None  # validate() guarantees one of rate or fixed
    fixed = Money.parse(rule.fixed, currency)
    return Reward(
        rule_set_version=rule_set.version,
        rule_id=rule.id,
        base=base,
        rate=None,
        fixed=fixed,
        unrounded_minor=Decimal(fixed.amount_minor),
        amount=fixed,
        rounding=rounding,
    )

"""Program files: a TOML document that defines a program and its rule sets.

The file is decoded once, here, into :class:`~ledger.application.commands.ProgramSpec`
with ``msgspec.toml.decode``, and then checked against the same rules that
publishing enforces, so ``ledger program publish`` reports a mistake with its
TOML path before anything is written. A minimal file::

    id = "crm-channel"
    name = "CRM channel rewards"
    currency = "USD"

    [[rule_sets]]
    version = 1
    effective_from = 2016-10-01

    [[rule_sets.rules]]
    id = "won-gtx"
    activity_type = "deal_won"
    match = { series = "GTX" }
    rate = "0.045"

Rates may be TOML strings (``"0.045"``) or TOML floats (``0.045``). A float
whose written digits a binary float cannot hold is rejected, so a rate never
changes silently on its way in. Fixed rewards are decimal strings in the
program currency (``fixed = "5.00"``).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from ledger.application.commands import ProgramSpec
from ledger.domain.money import RoundingMode, currency_exponent
from ledger.domain.program import check_time_zone
from ledger.errors import InvalidInputError, LedgerError

__all__ = ["decode_program", "load_program_file"]

# msgspec ends a validation message with "- at `$.rule_sets[0].rules[1].rate`".
_PATH_SUFFIX = re.compile(r"\s+- at `\$\.?(?P<path>[^`]*)`$")
_MISSING_FIELD = re.compile(r"missing required field `(?P<name>[^`]+)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<name>[^`]+)`")

# A short fix for each field whose mistakes are common, keyed by its last name.
_FIELD_HINTS: dict[str, str] = {
    "id": 'write a text id such as id = "crm-channel"',
    "name": 'write a display name such as name = "CRM channel rewards"',
    "currency": 'write an ISO 4217 code such as currency = "USD"',
    "time_zone": 'write an IANA zone name such as time_zone = "UTC"',
    "rounding": 'write one of rounding = "half-up", "half-even", "down" or "up"',
    "rule_sets": "add one or more [[rule_sets]] tables",
    "version": "write a whole number such as version = 1",
    "effective_from": "write a TOML date without quotes, such as effective_from = 2016-10-01",
    "rules": "add one or more [[rule_sets.rules]] tables under the rule set",
    "activity_type": 'write the activity type such as activity_type = "deal_won"',
    "match": 'write an inline table of text values such as match = { series = "GTX" }',
    "rate": 'write the fraction of the base as rate = "0.045" for 4.5%',
    "fixed": 'write the fixed reward as a decimal string such as fixed = "5.00"',
    "description": 'write text such as description = "4.5% of won GTX deals"',
}

_KNOWN_FIELDS = {
    "": "id, name, currency, time_zone, rounding, rule_sets",
    "rule_sets": "version, effective_from, description, rules",
    "rules": "id, activity_type, match, rate, fixed, description",
}


def load_program_file(path: Path) -> ProgramSpec:
    """Read and decode the program file at ``path``.

    Raises:
        InvalidInputError: The file is missing, unreadable, not valid TOML, or
            breaks a program rule; the message names the TOML path and the fix.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(
            f"program file {str(path)!r} does not exist; pass the path of a TOML program "
            "file such as examples/programs/crm-channel.toml",
            field="file",
            value=str(path),
        ) from None
    except OSError as error:
        raise InvalidInputError(
            f"cannot read program file {str(path)!r}: {error.strerror}",
            field="file",
            value=str(path),
        ) from None
    return decode_program(data, source=path.name)


def decode_program(data: bytes | str, *, source: str = "program file") -> ProgramSpec:
    """Decode a TOML program document and check it as publishing would.

    Args:
        data: The TOML text, as bytes (UTF-8) or str.
        source: Name of the document, used at the start of every error message.

    Raises:
        InvalidInputError: The document is not valid TOML, does not match the
            program schema, or breaks a program rule. ``field`` is the TOML
            path at fault, such as ``rule_sets[0].rules[1].rate``.
    """
    # Decode the schema with msgspec, whose errors carry the JSON-style path.
    try:
        spec = msgspec.toml.decode(data, type=ProgramSpec)
    except msgspec.ValidationError as error:
        raise _schema_error(str(error), source) from None
    except msgspec.DecodeError as error:
        raise InvalidInputError(
            f"{source} is not valid TOML: {error}; fix the syntax at that line"
        ) from None

    # Reject float rates that lost digits on their way through a binary float.
    _check_exact_rates(data, spec, source)

    # Check the rules that publishing enforces, naming the TOML path.
    _check_program(spec, source)
    return spec


def _schema_error(message: str, source: str) -> InvalidInputError:
    """Turn a msgspec validation message into an error naming the TOML path."""
    match = _PATH_SUFFIX.search(message)
    path: str = match.group("path") if match else ""
    reason = message[: match.start()] if match else message

    # msgspec reports a missing or unknown field at its parent table, so name the field itself.
    missing = _MISSING_FIELD.search(reason)
    unknown = _UNKNOWN_FIELD.search(reason)
    if missing:
        name = missing.group("name")
        path = f"{path}.{name}" if path else name
        hint = _FIELD_HINTS.get(name, "add the field")
        text = f"{source}: {path} is missing; {hint}"
    elif unknown:
        name = unknown.group("name")
        table = _last_name(path)
        known = _KNOWN_FIELDS.get(table, "")
        path = f"{path}.{name}" if path else name
        text = f"{source}: {path} is not a known field"
        text += f"; the fields here are {known}" if known else "; remove it or fix its spelling"
    else:
        fix = _FIELD_HINTS.get(_last_name(path))
        reason_text = reason[0].lower() + reason[1:] if reason else "invalid value"
        text = f"{source}: {path or 'document'} is invalid ({reason_text})"
        if fix:
            text += f"; {fix}"
    return InvalidInputError(text, field=path)


def _last_name(path: str) -> str:
    """Return the last field name of a path such as ``rule_sets[0].rules[1]`` (``rules``)."""
    last = path.rsplit(".", 1)[-1]
    return last.split("[", 1)[0]


def _check_exact_rates(data: bytes | str, spec: ProgramSpec, source: str) -> None:
    # msgspec reads a TOML float as a binary float first, so 0.0333333333333333333
    # arrives as 0.03333333333333333. Parsing floats as Decimal shows what was written.
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    written: Mapping[str, Any] = tomllib.loads(text, parse_float=Decimal)
    for set_index, raw_set in enumerate(written.get("rule_sets", [])):
        for rule_index, raw_rule in enumerate(raw_set.get("rules", [])):
            raw_rate = raw_rule.get("rate")
            if not isinstance(raw_rate, Decimal):
                continue
            decoded = spec.rule_sets[set_index].rules[rule_index].rate
            if decoded != raw_rate:
                path = f"rule_sets[{set_index}].rules[{rule_index}].rate"
                raise InvalidInputError(
                    f"{source}: {path} is {raw_rate}, which a binary float cannot hold "
                    f'exactly (it reads as {decoded}); write it as a string: rate = "{raw_rate}"',
                    field=path,
                    value=str(raw_rate),
                )


def _check_program(spec: ProgramSpec, source: str) -> None:
    """Check the program-level rules and each rule set, naming TOML paths."""
    if not spec.id or not spec.id.replace("-", "").replace("_", "").isalnum():
        raise InvalidInputError(
            f"{source}: id {spec.id!r} must be letters, digits, '-' or '_', such as "
            '"crm-channel"',
            field="id",
            value=spec.id,
        )
    if not spec.name.strip():
        raise InvalidInputError(f"{source}: name is empty; {_FIELD_HINTS['name']}", field="name")
    _prefixed(source, "currency", lambda: currency_exponent(spec.currency))
    _prefixed(source, "time_zone", lambda: check_time_zone(spec.time_zone))
    modes = [mode.value for mode in RoundingMode]
    if spec.rounding not in modes:
        raise InvalidInputError(
            f"{source}: rounding {spec.rounding!r} is not supported; use one of {', '.join(modes)}",
            field="rounding",
            value=spec.rounding,
        )
    if not spec.rule_sets:
        raise InvalidInputError(
            f"{source}: rule_sets is empty; {_FIELD_HINTS['rule_sets']}", field="rule_sets"
        )

    versions: dict[int, int] = {}
    for index, rule_set in enumerate(spec.rule_sets):
        path = f"rule_sets[{index}]"
        if rule_set.version in versions:
            raise InvalidInputError(
                f"{source}: {path}.version {rule_set.version} is also the version of "
                f"rule_sets[{versions[rule_set.version]}]; give each rule set its own version",
                field=f"{path}.version",
                value=rule_set.version,
            )
        versions[rule_set.version] = index
        try:
            rule_set.validate(spec.currency)
        except LedgerError as error:
            # RuleSet.validate names a rule by version (rule_sets[<version>]);
            # the file's reader needs the table's position instead.
            field = (error.field or "").replace(f"rule_sets[{rule_set.version}]", path, 1)
            raise InvalidInputError(
                f"{source}: {path}: {error.message}", field=field or path, value=error.value
            ) from None

    # Publishing appends versions in order, each taking effect after the one before.
    ordered = sorted(spec.rule_sets, key=lambda rule_set: rule_set.version)
    for previous, current in itertools.pairwise(ordered):
        if current.version != previous.version + 1:
            raise InvalidInputError(
                f"{source}: rule set version {current.version} does not follow version "
                f"{previous.version}; number rule sets 1, 2, 3 without gaps",
                field="rule_sets.version",
                value=current.version,
            )
        if current.effective_from <= previous.effective_from:
            raise InvalidInputError(
                f"{source}: rule set {current.version} takes effect on "
                f"{current.effective_from.isoformat()}, not after version {previous.version} "
                f"({previous.effective_from.isoformat()}); choose a later effective_from",
                field="rule_sets.effective_from",
                value=current.effective_from.isoformat(),
            )


def _prefixed(source: str, path: str, check: Callable[[], object]) -> None:
    """Run ``check`` and prefix any ledger error with the file name and TOML path."""
    try:
        check()
    except LedgerError as error:
        raise InvalidInputError(
            f"{source}: {error.message}", field=path, value=error.value
        ) from None

"""Tests for MsgspecTranscoder: eventsourcing's transcoder suite plus exact round-trip checks.

"Exact" means an equal value and the same type at every nesting level, which is
stricter than ``==``: ``Decimal("60.4") == Decimal("60.40")``, ``Priority.HIGH == 2``,
``True == 1`` and two aware datetimes at the same instant in different zones are all
equal. ``assert_exact`` therefore compares types, Decimal digits and exponents, and
datetime wall clock, fold and tzinfo explicitly.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgspec
import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Mapper, Transcoding, TranscodingNotRegisteredError
from eventsourcing.tests.persistence import (
    CustomType1,
    CustomType1AsDict,
    CustomType2,
    CustomType2AsDict,
    MyClass,
    Mydict,
    MyInt,
    MyList,
    MyStr,
    TranscoderTestCase,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.infrastructure.transcoder import ExtCode, MsgspecTranscoder


class Tier(enum.StrEnum):
    SILVER = "silver"
    GOLD = "gold"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Permission(enum.IntFlag):
    READ = 1
    WRITE = 2


class RateCard(enum.Enum):
    """Enum whose values are tuples containing a Decimal, which msgpack cannot carry natively."""

    STANDARD = (Decimal("0.045"), "standard")
    PREMIUM = (Decimal("0.060"), "premium")


class FixedOffsetTzinfo(tzinfo):
    """A tzinfo that is neither datetime.timezone nor ZoneInfo, which the transcoder rejects."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=2)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "PLUS2"


# Transcodings for the eventsourcing test suite's builtin subclasses. The transcoder
# rejects unregistered subclasses instead of storing them as their base type.
class MydictAsDict(Transcoding):
    type = Mydict
    name = "mydict"

    def encode(self, obj: Mydict[str, Any]) -> dict[str, Any]:
        return dict(obj)

    def decode(self, data: dict[str, Any]) -> Mydict[str, Any]:
        return Mydict(data)


class MyListAsList(Transcoding):
    type = MyList
    name = "mylist"

    def encode(self, obj: MyList[Any]) -> list[Any]:
        return list(obj)

    def decode(self, data: list[Any]) -> MyList[Any]:
        return MyList(data)


class MyStrAsStr(Transcoding):
    type = MyStr
    name = "mystr"

    def encode(self, obj: MyStr) -> str:
        return str(obj)

    def decode(self, data: str) -> MyStr:
        return MyStr(data)


class MyIntAsInt(Transcoding):
    type = MyInt
    name = "myint"

    def encode(self, obj: MyInt) -> int:
        return int(obj)

    def decode(self, data: int) -> MyInt:
        return MyInt(data)


def construct_transcoder() -> MsgspecTranscoder:
    transcoder = MsgspecTranscoder()
    for transcoding in (
        CustomType1AsDict(),
        CustomType2AsDict(),
        MydictAsDict(),
        MyListAsList(),
        MyStrAsStr(),
        MyIntAsInt(),
    ):
        transcoder.register(transcoding)
    return transcoder


def round_trip(obj: Any) -> Any:
    transcoder = construct_transcoder()
    return transcoder.decode(transcoder.encode(obj))


def assert_exact(expected: Any, actual: Any, path: str = "$") -> None:
    """Assert that ``actual`` equals ``expected`` with the same type at every level."""
    assert type(actual) is type(expected), f"{path}: {type(actual)} is not {type(expected)}"

    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length differs"
        for index, (expected_item, actual_item) in enumerate(zip(expected, actual, strict=True)):
            assert_exact(expected_item, actual_item, f"{path}[{index}]")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: keys differ"
        for key, expected_value in expected.items():
            assert_exact(expected_value, actual[key], f"{path}[{key!r}]")
    elif isinstance(expected, Decimal):
        # as_tuple() compares sign, digits and exponent, and works for NaN and sNaN,
        # where == returns False or raises.
        assert actual.as_tuple() == expected.as_tuple(), f"{path}: {actual!r} != {expected!r}"
    elif isinstance(expected, datetime):
        assert_same_datetime(expected, actual, path)
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), f"{path}: {actual!r} is not NaN"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def assert_same_datetime(expected: datetime, actual: datetime, path: str = "$") -> None:
    # Aware datetimes with different tzinfo compare equal when they are the same instant,
    # so compare the wall clock, fold and tzinfo separately.
    assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None), f"{path}: wall clock"
    assert actual.fold == expected.fold, f"{path}: fold"
    assert type(actual.tzinfo) is type(expected.tzinfo), f"{path}: tzinfo type"
    assert actual.utcoffset() == expected.utcoffset(), f"{path}: utcoffset"
    assert actual.tzname() == expected.tzname(), f"{path}: tzname"
    assert actual == expected, f"{path}: {actual!r} != {expected!r}"


class TestMsgspecTranscoderSuite(TranscoderTestCase):
    """eventsourcing's transcoder tests run against MsgspecTranscoder.

    Each override below replaces a test that compares encoded bytes with JSON
    text. The override keeps the original round-trip checks and checks the
    msgpack bytes instead.
    """

    def construct_transcoder(self) -> MsgspecTranscoder:
        return construct_transcoder()

    def test_str(self) -> None:
        """Overridden: the original expects JSON text and decodes legacy JSON escapes."""
        expected_bytes = {
            "a": b"\xa1a",
            "abc": b"\xa3abc",
            "a'b": b"\xa3a'b",
            'a"b': b'\xa3a"b',
            "🐈 哈哈": b"\xab\xf0\x9f\x90\x88 \xe5\x93\x88\xe5\x93\x88",
        }
        for obj, expected in expected_bytes.items():
            data = self.transcoder.encode(obj)
            self.assertEqual(data, expected)
            self.assertEqual(self.transcoder.decode(data), obj)

    def test_dict(self) -> None:
        """Overridden: the original expects JSON text such as b'{"a":1}'."""
        expected_bytes: list[tuple[dict[str, Any], bytes]] = [
            ({}, b"\x80"),
            ({"a": 1}, b"\x81\xa1a\x01"),
            ({"a": 1, "b": 2}, b"\x82\xa1a\x01\xa1b\x02"),
            ({"a": {}}, b"\x81\xa1a\x80"),
            ({"a": {}, "b": {}}, b"\x82\xa1a\x80\xa1b\x80"),
            ({"a": {"b": {}}}, b"\x81\xa1a\x81\xa1b\x80"),
            ({"a": {"b": {"c": 1}}}, b"\x81\xa1a\x81\xa1b\x81\xa1c\x01"),
        ]
        for obj, expected in expected_bytes:
            data = self.transcoder.encode(obj)
            self.assertEqual(data, expected)
            self.assertEqual(self.transcoder.decode(data), obj)

    def test_dict_subclass(self) -> None:
        """Overridden: the original expects the JSON text of a '_type_'/'_data_' dict."""
        my_dict = Mydict({"a": 1})
        data = self.transcoder.encode(my_dict)
        expected_payload = msgspec.msgpack.encode(["mydict", {"a": 1}])
        expected_ext = msgspec.msgpack.Ext(ExtCode.CUSTOM, expected_payload)
        self.assertEqual(msgspec.msgpack.decode(data), expected_ext)
        self.assertEqual(self.transcoder.decode(data), my_dict)

    def test_tuple(self) -> None:
        """Overridden: the original expects the JSON text of a 'tuple_as_list' dict."""
        data = self.transcoder.encode(())
        self.assertEqual(msgspec.msgpack.decode(data), msgspec.msgpack.Ext(ExtCode.TUPLE, b"\x90"))

        for obj in [(), ((),), ((1, 2),), (("a", "b"),), ((1, "a"),)]:
            decoded = self.transcoder.decode(self.transcoder.encode(obj))
            self.assertEqual(decoded, obj)
            assert_exact(obj, decoded)

    def test_nested_custom_type(self) -> None:
        """Overridden: the original expects nested '_type_'/'_data_' JSON text."""
        obj = CustomType2(CustomType1(UUID("b2723fe2c01a40d2875ea3aac6a09ff5")))
        data = self.transcoder.encode(obj)

        outer = msgspec.msgpack.decode(data)
        self.assertEqual(outer.code, ExtCode.CUSTOM)
        name, _ = msgspec.msgpack.decode(outer.data)
        self.assertEqual(name, "custom_type2_as_dict")

        copy = self.transcoder.decode(data)
        self.assertIsInstance(copy, CustomType2)
        self.assertIsInstance(copy.value, CustomType1)
        self.assertIsInstance(copy.value.value, UUID)
        self.assertEqual(copy.value.value, obj.value.value)

    def test_custom_type_error(self) -> None:
        """Overridden: the original decodes JSON input and matches JSONTranscoder's wording."""
        for obj in (MyClass(), {"a": MyClass()}):
            with self.assertRaises(TranscodingNotRegisteredError) as cm:
                self.transcoder.encode(obj)
            message = cm.exception.args[0]
            self.assertIn("eventsourcing.tests.persistence.MyClass", message)
            self.assertIn("MsgspecTranscoder.register()", message)

        payload = msgspec.msgpack.encode(["custom_type3_as_dict", ""])
        data = msgspec.msgpack.encode(msgspec.msgpack.Ext(ExtCode.CUSTOM, payload))
        with self.assertRaises(TranscodingNotRegisteredError) as cm:
            self.transcoder.decode(data)
        message = cm.exception.args[0]
        self.assertIn("'custom_type3_as_dict'", message)
        self.assertIn("MsgspecTranscoder.register()", message)


# The base class would otherwise be collected and fail in setUp().
del TranscoderTestCase


@pytest.mark.parametrize(
    "text",
    [
        "60.40",
        "0.045",
        "-12.3400",
        "1E+3",
        "0E-10",
        "-0",
        "-0.00",
        "123456789012345678901234567890.123456789012345678901234567890",
        "-9.99E+999999",
        "Infinity",
        "-Infinity",
        "NaN",
        "sNaN",
        "NaN123",
    ],
)
def test_decimal_keeps_exponent(text: str) -> None:
    value = Decimal(text)

    decoded = round_trip(value)

    assert type(decoded) is Decimal
    assert str(decoded) == text
    assert decoded.as_tuple() == value.as_tuple()


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 3, 1, 12, 30, 45, 123456),
        datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=-3))),
        datetime(2024, 3, 1, tzinfo=timezone(timedelta(hours=1, seconds=7, microseconds=9))),
        # Offsets shorter than one second do not survive isoformat() and fromisoformat().
        datetime(2000, 1, 1, tzinfo=timezone(timedelta(microseconds=1))),
        datetime(2000, 1, 1, tzinfo=timezone(timedelta(microseconds=-999999))),
        datetime(2024, 3, 1, tzinfo=timezone(timedelta(hours=1), "CET")),
        datetime(2024, 3, 1, tzinfo=timezone(timedelta(0), "Z")),
        datetime(1, 1, 1, 0, 0),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-23))),
        datetime(2024, 3, 1, 12, 30, fold=1),
        datetime(2024, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/London")),
        # The same wall-clock time occurs twice on 2024-11-03 in New York, and fold picks
        # the second (EST) occurrence.
        datetime(2024, 11, 3, 1, 30, fold=0, tzinfo=ZoneInfo("America/New_York")),
        datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
        # 02:30 does not exist on 2024-03-10 in New York, and fold picks the offset.
        datetime(2024, 3, 10, 2, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
    ],
    ids=repr,
)
def test_datetime_keeps_tzinfo_and_offset(value: datetime) -> None:
    decoded = round_trip(value)

    assert type(decoded) is datetime
    assert_same_datetime(value, decoded)


def test_datetime_unsupported_tzinfo_raises() -> None:
    value = datetime(2024, 3, 1, tzinfo=FixedOffsetTzinfo())

    with pytest.raises(TypeError, match="FixedOffsetTzinfo") as excinfo:
        MsgspecTranscoder().encode(value)

    assert "astimezone()" in str(excinfo.value)


def test_date_stays_date() -> None:
    value = date(2024, 2, 29)

    decoded = round_trip({"earned_on": value, "recorded_at": datetime(2024, 2, 29)})

    assert type(decoded["earned_on"]) is date
    assert decoded["earned_on"] == value
    assert type(decoded["recorded_at"]) is datetime


@pytest.mark.parametrize(
    "member",
    [
        Tier.GOLD,
        Priority.HIGH,
        Permission.READ | Permission.WRITE,
        RateCard.PREMIUM,
    ],
    ids=repr,
)
def test_enum_member_round_trips(member: enum.Enum) -> None:
    decoded = round_trip({"member": member, "nested": [(member,)]})

    assert decoded["member"] is member
    assert decoded["nested"][0][0] is member


def test_enum_stored_by_topic_and_value() -> None:
    data = MsgspecTranscoder().encode(Tier.GOLD)

    ext = msgspec.msgpack.decode(data)

    assert ext.code == ExtCode.ENUM
    assert msgspec.msgpack.decode(ext.data) == [f"{__name__}:Tier", "gold"]


def test_tuple_and_list_stay_distinct() -> None:
    value = {
        "tuple_of_lists": ([1, 2], []),
        "list_of_tuples": [(1, 2), ()],
        "deep": ((((),),), [[()]]),
        "single": ("only",),
    }

    decoded = round_trip(value)

    assert_exact(value, decoded)
    assert type(decoded["tuple_of_lists"]) is tuple
    assert type(decoded["tuple_of_lists"][0]) is list
    assert type(decoded["list_of_tuples"]) is list
    assert type(decoded["list_of_tuples"][0]) is tuple


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 2**1000, -(2**1000), 10**5000],
    ids=lambda value: f"{value.bit_length()}-bit{'-negative' if value < 0 else ''}",
)
def test_int_of_any_size_round_trips(value: int) -> None:
    decoded = round_trip(value)

    assert type(decoded) is int
    assert decoded == value


def test_registered_subclass_round_trips() -> None:
    value = {"int": MyInt(3), "str": MyStr("x"), "list": MyList([1]), "dict": Mydict({"a": 1})}

    decoded = round_trip(value)

    assert_exact(value, decoded)


def test_unregistered_builtin_subclass_raises() -> None:
    transcoder = MsgspecTranscoder()

    with pytest.raises(TranscodingNotRegisteredError, match="MyInt"):
        transcoder.encode([MyInt(3)])


def test_non_str_dict_key_raises() -> None:
    with pytest.raises(TypeError, match="supports only str keys"):
        MsgspecTranscoder().encode({"outer": {1: "one"}})


def test_register_builtin_type_raises() -> None:
    class DecimalAsText(Transcoding):
        type = Decimal
        name = "decimal_as_text"

        def encode(self, obj: Decimal) -> str:
            return str(obj)

        def decode(self, data: str) -> Decimal:
            return Decimal(data)

    with pytest.raises(ValueError, match="encoded by MsgspecTranscoder itself"):
        MsgspecTranscoder().register(DecimalAsText())


def test_register_duplicate_name_raises() -> None:
    class OtherType:
        pass

    class OtherTypeAsMydictName(Transcoding):
        type = OtherType
        name = "mydict"

        def encode(self, obj: OtherType) -> None:
            return None

        def decode(self, data: None) -> OtherType:
            return OtherType()

    transcoder = construct_transcoder()

    with pytest.raises(ValueError, match="already registered"):
        transcoder.register(OtherTypeAsMydictName())


def test_unknown_ext_code_raises() -> None:
    data = msgspec.msgpack.encode(msgspec.msgpack.Ext(99, b""))

    with pytest.raises(ValueError, match="code 99"):
        MsgspecTranscoder().decode(data)


# Leaves cover every supported type, including NaN floats and NaN decimals, which
# assert_exact compares by representation.
fixed_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59),
        max_value=timedelta(hours=23, minutes=59),
    ),
)
named_offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
    st.text(min_size=1, max_size=8),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
    st.text(),
    st.binary(),
    st.decimals(),
    st.uuids(),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=st.one_of(st.just(UTC), fixed_offsets, named_offsets)),
    st.datetimes(timezones=st.timezones()),
    st.sampled_from([*Tier, *Priority, *RateCard, Permission.READ | Permission.WRITE]),
)
nested_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(nested_values)
def test_nested_values_round_trip_exactly(value: Any) -> None:
    transcoder = MsgspecTranscoder()

    decoded = transcoder.decode(transcoder.encode(value))

    assert_exact(value, decoded)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_finite_decimal_equal_after_round_trip(value: Decimal) -> None:
    decoded = round_trip(value)

    assert type(decoded) is Decimal
    assert decoded == value
    assert str(decoded) == str(value)


AEST = timezone(timedelta(hours=10))


class RewardAccount(Aggregate):
    """Aggregate whose PointsAwarded event carries Decimal, UUID, date, datetime and enum values."""

    @event("Registered")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = Decimal("0.00")

    @event("PointsAwarded")
    def award(
        self,
        amount: Decimal,
        campaign_id: UUID,
        earned_on: date,
        effective_at: datetime,
        tier: Tier,
    ) -> None:
        self.balance += amount


def test_mapper_round_trips_aggregate_event() -> None:
    account = RewardAccount(owner="acme-reseller")
    account.award(
        amount=Decimal("60.40"),
        campaign_id=uuid4(),
        earned_on=date(2024, 6, 30),
        effective_at=datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=AEST),
        tier=Tier.GOLD,
    )
    mapper: Mapper[UUID] = Mapper(transcoder=MsgspecTranscoder())

    restored_events: list[Any] = []
    for original in account.collect_events():
        stored = mapper.to_stored_event(original)
        restored = mapper.to_domain_event(stored)

        assert type(restored) is type(original)
        # Mapper re-adds originator_id and originator_version after decoding, which
        # changes key order but not content.
        assert_exact(sorted(vars(original).items()), sorted(vars(restored).items()))
        restored_events.append(restored)

    awarded = restored_events[-1]
    assert type(awarded.amount) is Decimal
    assert str(awarded.amount) == "60.40"
    assert type(awarded.campaign_id) is UUID
    assert type(awarded.earned_on) is date
    assert awarded.effective_at.utcoffset() == timedelta(hours=10)
    assert awarded.tier is Tier.GOLD

    # Replaying the restored events rebuilds the aggregate's state, as an event store would.
    replayed = None
    for restored in restored_events:
        replayed = restored.mutate(replayed)
    assert isinstance(replayed, RewardAccount)
    assert replayed.balance == Decimal("60.40")
    assert str(replayed.balance) == "60.40"
    assert replayed.version == account.version

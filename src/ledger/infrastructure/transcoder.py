"""MessagePack transcoder for eventsourcing that round-trips event state exactly.

Contract: for every supported value ``obj``, ``decode(encode(obj))`` is equal to
``obj``, and every value nested inside the result has the same type as the
value at the same place in ``obj``. So a tuple never comes back as a list, and a
``date`` never comes back as a ``datetime``. A ``Decimal`` keeps its exponent
(``60.40`` stays ``60.40``), and an enum member comes back as the member rather
than its value.

Supported values, matched by exact type (``type(obj) is T``):

* ``None``, ``bool``, ``float``, ``bytes``, ``list``, and ``dict`` with ``str``
  keys.
* ``str``. msgpack strings are UTF-8, so a lone surrogate such as ``"\\ud800"``
  raises ``UnicodeEncodeError``.
* ``int`` of any size. Values outside msgpack's 64-bit range travel as
  two's-complement bytes.
* ``decimal.Decimal``, including special values (NaN, sNaN, infinities, -0).
* ``uuid.UUID``, ``datetime.date`` and ``tuple``.
* ``datetime.datetime``: naive, or aware with a ``datetime.timezone`` (offset
  and name are kept) or a ``zoneinfo.ZoneInfo`` built from a key. ``fold`` is
  kept as well.
* Members of any ``enum.Enum`` subclass (``StrEnum``, ``IntEnum``, ``Flag`` and
  so on). The enum class is stored by its eventsourcing topic and the member by
  its value.
* Any type with an ``eventsourcing.persistence.Transcoding`` registered via
  ``MsgspecTranscoder.register``.

Subclasses of the types above are rejected with
``TranscodingNotRegisteredError`` unless they are enum members or have a
registered transcoding, because encoding them as their base type would lose
their type silently.

Wire format: MessagePack. Native msgpack carries ``None``, ``bool``, ints in
``[-2**63, 2**64 - 1]``, ``float``, ``str``, ``bytes``, ``list`` and ``dict``.
Every other value is a msgpack extension value whose type code is an
``ExtCode`` member. Stored events depend on these codes and payload layouts,
so changing any of them makes existing events unreadable.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Final
from uuid import UUID
from zoneinfo import ZoneInfo

from eventsourcing.persistence import Transcoder, Transcoding, TranscodingNotRegisteredError
from eventsourcing.utils import get_topic, resolve_topic
from msgspec.msgpack import Decoder, Encoder, Ext

__all__ = ["ExtCode", "MsgspecTranscoder"]


class ExtCode:
    """MessagePack extension type code of each non-native value, with its payload layout.

    The codes are plain ints rather than an ``IntEnum``, because ``msgspec.msgpack.Ext``
    accepts only exact ``int`` codes.
    """

    DECIMAL: Final = 1
    """``str(value)`` as ASCII."""
    UUID: Final = 2
    """The 16 bytes of ``UUID.bytes``."""
    DATE: Final = 3
    """``date.isoformat()`` as ASCII."""
    DATETIME: Final = 4
    """``datetime.isoformat()`` as ASCII, used when ``fold`` is 0 and the tzinfo is
    ``None`` or a ``datetime.timezone`` with a whole-minute offset and no custom name."""
    DATETIME_FIELDS: Final = 5
    """msgpack ``[wall_clock_iso, fold, zone_key, utc_offset_microseconds, tz_name]``
    for every other datetime. The wall-clock string has no offset, and the last three
    entries are ``None`` where they do not apply."""
    TUPLE: Final = 6
    """msgpack array of the encoded items."""
    BIG_INT: Final = 7
    """Big-endian two's-complement bytes of an int outside msgpack's 64-bit range."""
    ENUM: Final = 8
    """msgpack ``[enum_class_topic, encoded_member_value]``."""
    CUSTOM: Final = 9
    """msgpack ``[transcoding_name, encoded_transcoding_output]``."""


# Types that msgpack encodes and decodes as themselves, so the walk returns them unchanged.
_NATIVE_TYPES: Final = frozenset({type(None), bool, float, str, bytes})

# msgspec raises OverflowError for ints outside this range (checked with msgspec 0.23).
_MIN_MSGPACK_INT: Final = -(2**63)
_MAX_MSGPACK_INT: Final = 2**64 - 1

_ONE_MICROSECOND: Final = timedelta(microseconds=1)

_Encode = Callable[[Any], Any]
_Decode = Callable[[memoryview], Any]


class MsgspecTranscoder(Transcoder):
    """Transcoder that stores event state as MessagePack and restores every value's type.

    The constructor takes no arguments, so eventsourcing's ``TRANSCODER_TOPIC``
    setting can construct it. Register custom types with ``register()`` before
    the first ``encode()`` or ``decode()``.
    """

    def __init__(self) -> None:
        # One encoder and decoder for the transcoder's lifetime, because building them
        # per call would cost an allocation on every stored event.
        self._encoder = Encoder()
        self._decoder = Decoder(ext_hook=self._decode_ext)
        self._decode_tuple_payload = Decoder(tuple, ext_hook=self._decode_ext).decode

        self._builtin_encoders: dict[type, _Encode] = {
            int: self._encode_int,
            list: self._encode_list,
            dict: self._encode_dict,
            tuple: self._encode_tuple,
            Decimal: _encode_decimal,
            UUID: _encode_uuid,
            date: _encode_date,
            datetime: self._encode_datetime,
        }
        # Encoder for each exact type. Enum classes are added on first use, so the topic
        # lookup runs once per class instead of once per member encoded.
        self._encoders: dict[type, _Encode] = dict(self._builtin_encoders)
        self._transcodings_by_name: dict[str, Transcoding] = {}
        self._ext_decoders: dict[int, _Decode] = {
            ExtCode.DECIMAL: _decode_decimal,
            ExtCode.UUID: _decode_uuid,
            ExtCode.DATE: _decode_date,
            ExtCode.DATETIME: _decode_datetime,
            ExtCode.DATETIME_FIELDS: self._decode_datetime_fields,
            ExtCode.TUPLE: self._decode_tuple_payload,
            ExtCode.BIG_INT: _decode_big_int,
            ExtCode.ENUM: self._decode_enum,
            ExtCode.CUSTOM: self._decode_custom,
        }

    def register(self, transcoding: Transcoding) -> None:
        """Register a transcoding for ``transcoding.type``, matched by exact type.

        The transcoding's ``encode`` output may contain any supported value,
        including values of other registered types. Its ``decode`` receives that
        output fully decoded. Registering the same type again replaces the
        encoder, and data written under the earlier name stays decodable.

        Raises ``ValueError`` if the type is one this transcoder encodes itself,
        because the transcoding would never be used, or if the name is already
        registered for a different type, because stored data would then decode
        to the wrong type.
        """
        obj_type = transcoding.type
        name = transcoding.name
        if obj_type in _NATIVE_TYPES or obj_type in self._builtin_encoders:
            msg = (
                f"Cannot register transcoding {name!r}: {_type_name(obj_type)} is "
                "encoded by MsgspecTranscoder itself. Register a transcoding only for "
                "other types."
            )
            raise ValueError(msg)

        existing = self._transcodings_by_name.get(name)
        if existing is not None and existing.type is not obj_type:
            msg = (
                f"Cannot register transcoding {name!r} for {_type_name(obj_type)}: the "
                f"name is already registered for {_type_name(existing.type)}. Give each "
                "transcoding a unique name."
            )
            raise ValueError(msg)

        self._transcodings_by_name[name] = transcoding
        self._encoders[obj_type] = self._make_custom_encoder(transcoding)

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` as MessagePack bytes.

        Raises ``TranscodingNotRegisteredError`` for a value of an unsupported type,
        and ``TypeError`` for a non-``str`` dict key or for a datetime whose tzinfo
        cannot be stored.
        """
        return self._encoder.encode(self._to_wire(obj))

    def decode(self, data: bytes) -> Any:
        """Decode bytes written by ``encode`` back into the original values.

        Raises ``TranscodingNotRegisteredError`` if the data names a transcoding
        that is not registered, ``ValueError`` for an unknown extension code, and
        ``msgspec.DecodeError`` for malformed data.
        """
        return self._decoder.decode(data)

    def _to_wire(self, obj: Any) -> Any:
        """Convert ``obj`` to values that msgpack encodes without losing their type."""
        obj_type = type(obj)
        if obj_type in _NATIVE_TYPES:
            return obj
        encode = self._encoders.get(obj_type)
        if encode is None:
            encode = self._encoder_for_unlisted_type(obj_type)
        return encode(obj)

    def _encoder_for_unlisted_type(self, obj_type: type) -> _Encode:
        if issubclass(obj_type, enum.Enum):
            encode = self._make_enum_encoder(obj_type)
            # A plain dict assignment is atomic under the GIL, so concurrent encodes at
            # worst build the same encoder twice.
            self._encoders[obj_type] = encode
            return encode

        msg = (
            f"Cannot encode object of type {_type_name(obj_type)}: no transcoding is "
            "registered for this type. Register an eventsourcing.persistence.Transcoding "
            "for it with MsgspecTranscoder.register()."
        )
        raise TranscodingNotRegisteredError(msg)

    def _encode_int(self, obj: int) -> int | Ext:
        if _MIN_MSGPACK_INT <= obj <= _MAX_MSGPACK_INT:
            return obj
        # Bytes rather than a decimal string, because int() rejects strings longer than
        # 4300 digits by default since Python 3.11.
        size = obj.bit_length() // 8 + 1
        return Ext(ExtCode.BIG_INT, obj.to_bytes(size, "big", signed=True))

    def _encode_list(self, obj: list[Any]) -> list[Any]:
        to_wire = self._to_wire
        return [to_wire(item) for item in obj]

    def _encode_dict(self, obj: dict[Any, Any]) -> dict[str, Any]:
        to_wire = self._to_wire
        wire: dict[str, Any] = {}
        for key, value in obj.items():
            if type(key) is not str:
                msg = (
                    f"Cannot encode dict key {key!r} of type {_type_name(type(key))}: "
                    "MsgspecTranscoder supports only str keys. Convert the keys to str "
                    "before storing the dict."
                )
                raise TypeError(msg)
            # Native values, most of an event's, skip the call to _to_wire.
            wire[key] = value if type(value) in _NATIVE_TYPES else to_wire(value)
        return wire

    def _encode_tuple(self, obj: tuple[Any, ...]) -> Ext:
        to_wire = self._to_wire
        return Ext(ExtCode.TUPLE, self._encoder.encode([to_wire(item) for item in obj]))

    def _encode_datetime(self, obj: datetime) -> Ext:
        tz = obj.tzinfo
        if obj.fold == 0 and (tz is None or tz is UTC or _is_plain_minute_offset(tz)):
            return Ext(ExtCode.DATETIME, obj.isoformat().encode("ascii"))

        wall_clock = obj.replace(tzinfo=None, fold=0).isoformat()
        fields: list[Any] = [wall_clock, obj.fold, None, None, None]
        if tz is None:
            pass
        elif type(tz) is ZoneInfo and tz.key is not None:
            fields[2] = tz.key
        elif type(tz) is timezone:
            fields[3] = tz.utcoffset(None) // _ONE_MICROSECOND
            fields[4] = tz.tzname(None)
        else:
            msg = (
                f"Cannot encode datetime {obj.isoformat()} with tzinfo {tz!r} of type "
                f"{_type_name(type(tz))}: only datetime.timezone and zoneinfo.ZoneInfo "
                "created from a key are supported. Convert it with "
                "astimezone() to one of those first."
            )
            raise TypeError(msg)
        return Ext(ExtCode.DATETIME_FIELDS, self._encoder.encode(fields))

    def _make_enum_encoder(self, enum_class: type[enum.Enum]) -> _Encode:
        topic = get_topic(enum_class)
        code = ExtCode.ENUM

        def encode_member(member: enum.Enum) -> Ext:
            return Ext(code, self._encoder.encode([topic, self._to_wire(member.value)]))

        return encode_member

    def _make_custom_encoder(self, transcoding: Transcoding) -> _Encode:
        name = transcoding.name
        code = ExtCode.CUSTOM

        def encode_custom(obj: Any) -> Ext:
            encoded = self._to_wire(transcoding.encode(obj))
            return Ext(code, self._encoder.encode([name, encoded]))

        return encode_custom

    def _decode_ext(self, code: int, data: memoryview) -> Any:
        decode = self._ext_decoders.get(code)
        if decode is None:
            msg = (
                f"Cannot decode msgpack extension value with code {code}: the code is not "
                "one of ExtCode, so the data was not written by MsgspecTranscoder."
            )
            raise ValueError(msg)
        return decode(data)

    def _decode_datetime_fields(self, data: memoryview) -> datetime:
        wall_clock, fold, zone_key, offset_microseconds, tz_name = self._decoder.decode(data)
        tz: tzinfo | None = None
        if zone_key is not None:
            # NOTE: the offset is recomputed from the current tz database, so a rule change
            # between encode and decode keeps the wall-clock time but shifts the instant.
            tz = ZoneInfo(zone_key)
        elif offset_microseconds is not None:
            tz = timezone(timedelta(microseconds=offset_microseconds), tz_name)
        return datetime.fromisoformat(wall_clock).replace(tzinfo=tz, fold=fold)

    def _decode_enum(self, data: memoryview) -> enum.Enum:
        topic, value = self._decoder.decode(data)
        enum_class: type[enum.Enum] = resolve_topic(topic)
        return enum_class(value)

    def _decode_custom(self, data: memoryview) -> Any:
        name, encoded = self._decoder.decode(data)
        transcoding = self._transcodings_by_name.get(name)
        if transcoding is None:
            msg = (
                f"Cannot decode data written with transcoding name {name!r}: no transcoding "
                "with this name is registered. Register it with MsgspecTranscoder.register() "
                "before decoding."
            )
            raise TranscodingNotRegisteredError(msg)
        return transcoding.decode(encoded)


def _type_name(obj_type: type) -> str:
    return f"{obj_type.__module__}.{obj_type.__qualname__}"


def _is_plain_minute_offset(tz: tzinfo) -> bool:
    """Return whether ``datetime.fromisoformat`` rebuilds ``tz`` from its ``isoformat()`` offset.

    That holds for a ``datetime.timezone`` with the default name and a whole-minute
    offset. A custom name such as "CET" is lost by ``isoformat()``, and CPython 3.11.7
    parses an offset shorter than one second, such as "+00:00:00.000001", as UTC.
    """
    if type(tz) is not timezone:
        return False
    offset = tz.utcoffset(None)
    if offset.seconds % 60 or offset.microseconds:
        return False
    return tz.tzname(None) == timezone(offset).tzname(None)


def _encode_decimal(obj: Decimal) -> Ext:
    # str() of a Decimal keeps sign, digits and exponent, and Decimal(str) rebuilds them
    # exactly whatever the current context precision is.
    return Ext(ExtCode.DECIMAL, str(obj).encode("ascii"))


def _decode_decimal(data: memoryview) -> Decimal:
    return Decimal(str(data, "ascii"))


def _encode_uuid(obj: UUID) -> Ext:
    return Ext(ExtCode.UUID, obj.bytes)


def _decode_uuid(data: memoryview) -> UUID:
    return UUID(bytes=bytes(data))


def _encode_date(obj: date) -> Ext:
    return Ext(ExtCode.DATE, obj.isoformat().encode("ascii"))


def _decode_date(data: memoryview) -> date:
    return date.fromisoformat(str(data, "ascii"))


def _decode_datetime(data: memoryview) -> datetime:
    return datetime.fromisoformat(str(data, "ascii"))


def _decode_big_int(data: memoryview) -> int:
    return int.from_bytes(data, "big", signed=True)

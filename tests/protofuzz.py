"""Hypothesis strategies for protobuf messages, built from their descriptors, and malformed wire bytes.

``MessageStrategies(hints)`` draws a message of any type field by field: strings (empty, huge, control
characters, any Unicode), integers at their type's bounds, floats including NaN and ±inf, bytes, enums including
values the proto does not define, nested messages, oneofs (members set in random order, so any one may win) and
repeated fields. ``hints`` maps a field name to extra values for it (valid voice ids, real audio…) so that the
fuzzer also reaches the code behind the first validation step.

``malformed`` draws bytes that are not a valid encoding of a message type: random bytes, truncations and
corruptions of valid encodings, invalid UTF-8 in a (possibly nested) string field, broken length prefixes and
runaway nesting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from google.protobuf import descriptor as descriptors
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

Field = descriptors.FieldDescriptor

_INTEGER_RANGES = {
    Field.TYPE_INT32: (-(2**31), 2**31 - 1),
    Field.TYPE_SINT32: (-(2**31), 2**31 - 1),
    Field.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    Field.TYPE_INT64: (-(2**63), 2**63 - 1),
    Field.TYPE_SINT64: (-(2**63), 2**63 - 1),
    Field.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    Field.TYPE_UINT32: (0, 2**32 - 1),
    Field.TYPE_FIXED32: (0, 2**32 - 1),
    Field.TYPE_UINT64: (0, 2**64 - 1),
    Field.TYPE_FIXED64: (0, 2**64 - 1),
}

TRICKY_STRINGS = (
    "",
    " ",
    "\n",
    "abc\n",
    "\x00",
    "a\x00b",
    "\t\r\x0b\x0c",
    "é",
    "e\u0301",
    "你好",
    "🎙️",
    "\u202eevil",
    "\ufeff",
    "\U0010ffff",
    "<audio_1>",
    "<|BOT|>",
    "(RAP)",
    "../../etc/passwd",
    "%s%n{0}",
    "x" * 4096,
    "字" * 3000,
    "𝐀" * 70_000,
    "a" * 1_000_000,
)


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = {low, low + 1, -1, 0, 1, 2, 255, 256, 65535, 65536, high - 1, high}
    return st.one_of(st.sampled_from(sorted(v for v in edges if low <= v <= high)), st.integers(low, high))


def _floats(width: int) -> st.SearchStrategy[float]:
    largest = 3.4028234663852886e38 if width == 32 else 1.7976931348623157e308
    edges = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-45, -1.0, 0.5, 1.0, 2.0, 1e30, largest]
    return st.one_of(st.sampled_from(edges), st.floats(width=width))


_STRINGS = st.one_of(st.sampled_from(TRICKY_STRINGS), st.text(max_size=40))
_BYTES = st.binary(max_size=256)
_SCALARS: dict[int, st.SearchStrategy] = {
    Field.TYPE_STRING: _STRINGS,
    Field.TYPE_BYTES: _BYTES,
    Field.TYPE_BOOL: st.booleans(),
    Field.TYPE_FLOAT: _floats(32),
    Field.TYPE_DOUBLE: _floats(64),
    **{kind: _integers(*bounds) for kind, bounds in _INTEGER_RANGES.items()},
}


class MessageStrategies:
    """Strategies for any message type, with per-field-name hints (``{"voice_id": st.sampled_from([...])}``)."""

    def __init__(self, hints: Mapping[str, st.SearchStrategy] | None = None, max_depth: int = 4) -> None:
        self._hints = dict(hints or {})
        self._max_depth = max_depth
        self._fields: dict[tuple[str, int], st.SearchStrategy] = {}

    def message(self, descriptor: descriptors.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        return _message(self, descriptor, depth)

    def field(self, field: Field, depth: int) -> st.SearchStrategy:
        key = (field.full_name, depth)
        if key not in self._fields:
            self._fields[key] = self._field(field, depth)
        return self._fields[key]

    def _field(self, field: Field, depth: int) -> st.SearchStrategy:
        if field.type == Field.TYPE_MESSAGE:
            element = self.message(field.message_type, depth + 1)
        elif field.type == Field.TYPE_ENUM:
            defined = [value.number for value in field.enum_type.values]
            element = st.one_of(st.sampled_from(defined), _integers(-(2**31), 2**31 - 1))
        else:
            element = _SCALARS[field.type]
        if field.name in self._hints:
            element = st.one_of(self._hints[field.name], element)
        if field.is_repeated:
            return st.one_of(st.lists(element, max_size=4), st.lists(element, min_size=5, max_size=40))
        return element


@st.composite
def _message(draw: st.DrawFn, strategies: MessageStrategies, descriptor: descriptors.Descriptor, depth: int) -> Message:
    message = GetMessageClass(descriptor)()
    if depth > strategies._max_depth:
        return message
    for field in draw(st.permutations(list(descriptor.fields))):
        if not draw(st.booleans()):
            continue
        value = draw(strategies.field(field, depth))
        if field.is_repeated:
            getattr(message, field.name).extend(value)
        elif field.type == Field.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(value)
        else:
            setattr(message, field.name, value)
    return message


@st.composite
def mutated(draw: st.DrawFn, strategies: MessageStrategies, base: Message, max_changes: int = 3) -> Message:
    """``base`` (a valid request) with up to ``max_changes`` fields, at any depth, cleared or set to drawn values:
    near misses that get past most validation and reach the code behind it."""
    message = type(base)()
    message.CopyFrom(base)
    for _ in range(draw(st.integers(0, max_changes))):
        _mutate(draw, strategies, message, 0)
    return message


def _mutate(draw: st.DrawFn, strategies: MessageStrategies, message: Message, depth: int) -> None:
    fields = list(message.DESCRIPTOR.fields)
    if not fields:
        return
    field = draw(st.sampled_from(fields))
    value = getattr(message, field.name)
    if field.type == Field.TYPE_MESSAGE and draw(st.booleans()):  # change something inside it instead
        if field.is_repeated and len(value):
            _mutate(draw, strategies, value[draw(st.integers(0, len(value) - 1))], depth + 1)
            return
        if not field.is_repeated and message.HasField(field.name):
            _mutate(draw, strategies, value, depth + 1)
            return
    if draw(st.integers(0, 3)) == 0:
        message.ClearField(field.name)
        return
    drawn = draw(strategies.field(field, depth))
    if field.is_repeated:
        message.ClearField(field.name)
        getattr(message, field.name).extend(drawn)
    elif field.type == Field.TYPE_MESSAGE:
        value.CopyFrom(drawn)
    else:
        setattr(message, field.name, drawn)


@st.composite
def mutated_stream(draw: st.DrawFn, strategies: MessageStrategies, base: Sequence[Message]) -> list[Message]:
    """A request stream near ``base``: a few fields of its messages changed, messages dropped, repeated or added."""
    messages = []
    for message in base:
        copy = type(message)()
        copy.CopyFrom(message)
        messages.append(copy)
    for _ in range(draw(st.integers(0, 2))):
        _mutate(draw, strategies, messages[draw(st.integers(0, len(messages) - 1))], 0)
    for _ in range(draw(st.integers(0, 1))):
        operation = draw(st.sampled_from(["drop", "repeat", "add"]))
        position = draw(st.integers(0, max(0, len(messages) - 1)))
        if operation == "drop" and messages:
            del messages[position]
        elif operation == "repeat" and messages:
            messages.insert(position, messages[position])
        else:
            messages.insert(position, draw(strategies.message(base[0].DESCRIPTOR)))
    return messages


# --- wire format ---------------------------------------------------------------------------------------------------

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LENGTH_DELIMITED) + varint(len(payload)) + payload


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Well-formed fields with numbers no stepaudio message uses: a parser must skip them."""
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        number = draw(st.integers(1000, 2**29 - 1))
        kind = draw(st.sampled_from([VARINT, FIXED64, LENGTH_DELIMITED, FIXED32]))
        if kind == VARINT:
            parts.append(tag(number, kind) + varint(draw(st.integers(0, 2**64 - 1))))
        elif kind == LENGTH_DELIMITED:
            parts.append(length_delimited(number, draw(st.binary(max_size=32))))
        else:
            width = 8 if kind == FIXED64 else 4
            parts.append(tag(number, kind) + draw(st.binary(min_size=width, max_size=width)))
    return b"".join(parts)


INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\x80", b"\xc0\xaf")


def string_paths(descriptor: descriptors.Descriptor, depth: int = 3) -> list[tuple[Field, ...]]:
    """Every path of fields from ``descriptor`` down to a string field, through at most ``depth`` messages."""
    paths: list[tuple[Field, ...]] = []
    for field in descriptor.fields:
        if field.type == Field.TYPE_STRING:
            paths.append((field,))
        elif field.type == Field.TYPE_MESSAGE and depth > 1:
            paths += [(field, *rest) for rest in string_paths(field.message_type, depth - 1)]
    return paths


def _nest(path: Sequence[Field], payload: bytes) -> bytes:
    for field in reversed(path):
        payload = length_delimited(field.number, payload)
    return payload


@st.composite
def malformed(draw: st.DrawFn, descriptor: descriptors.Descriptor, valid: st.SearchStrategy[bytes]) -> bytes:
    """Bytes that are (mostly) not a valid encoding of ``descriptor``'s message; ``valid`` draws valid encodings."""
    paths = string_paths(descriptor)
    kinds = ["random", "truncated", "corrupted", "bad length", "runaway nesting", "open group"]
    if paths:
        kinds.append("invalid utf-8")
    kind = draw(st.sampled_from(kinds))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=512))
    if kind == "invalid utf-8":
        path = draw(st.sampled_from(paths))
        bad = draw(st.sampled_from(INVALID_UTF8))
        return draw(valid) + _nest(path, bad)
    if kind == "bad length":  # a length prefix that runs past the end of the message
        number = draw(st.integers(1, 20))
        return draw(valid) + tag(number, LENGTH_DELIMITED) + varint(draw(st.integers(1, 2**31))) + b"x"
    if kind == "runaway nesting":  # deeper than any parser's recursion limit
        fields = [field for field in descriptor.fields if field.type == Field.TYPE_MESSAGE] or list(descriptor.fields)
        number = fields[0].number if fields else 1
        payload = b""
        for _ in range(draw(st.integers(101, 300))):
            payload = length_delimited(number, payload)
        return payload
    if kind == "open group":
        return draw(valid) + tag(draw(st.integers(1, 2**29 - 1)), START_GROUP)
    encoded = draw(valid)
    if not encoded:
        return b"\x0a\x05ab"  # field 1, 5 bytes announced, 2 sent
    if kind == "truncated":
        return encoded[: draw(st.integers(0, len(encoded) - 1))]
    position = draw(st.integers(0, len(encoded) - 1))
    return encoded[:position] + bytes([encoded[position] ^ draw(st.integers(1, 255))]) + encoded[position + 1 :]

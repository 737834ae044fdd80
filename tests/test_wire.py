"""Wire framing on byte vectors: no sockets, both endiannesses, every malformed case.

The vectors are built by a tiny marshaller written here from the spec (not by
dbus-fast, which only writes little-endian with its own field order), so big
endian and unusual header field orders are covered by bytes we control.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from dbus_fast import Variant
from dbus_fast.signature import SignatureType, get_signature_tree

from ipcproxy.dbus import wire
from ipcproxy.dbus.wire import (
    DESTINATION,
    ERROR_NAME,
    INTERFACE,
    MAX_MESSAGE_SIZE,
    MEMBER,
    PATH,
    REPLY_SERIAL,
    SENDER,
    SIGNATURE,
    UNIX_FDS,
    FrameError,
    FrameParser,
    frame_size,
    parse_header_fields,
    parse_message,
)
from ipcproxy.model import MessageType

# ---------------------------------------------------------------- a marshaller from the spec

_BASIC = {
    "y": ("B", 1),
    "b": ("I", 4),
    "n": ("h", 2),
    "q": ("H", 2),
    "i": ("i", 4),
    "u": ("I", 4),
    "h": ("I", 4),
    "x": ("q", 8),
    "t": ("Q", 8),
    "d": ("d", 8),
}
_ALIGN = {**{k: v[1] for k, v in _BASIC.items()}, "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}


def split_types(sig: str) -> list[str]:
    """The complete types of a signature, in order."""
    out: list[str] = []
    i = 0
    while i < len(sig):
        j = _type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _type_end(sig: str, i: int) -> int:
    c = sig[i]
    if c == "a":
        return _type_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        i += 1
        while sig[i] != close:
            i = _type_end(sig, i)
        return i + 1
    return i + 1


class Writer:
    """Appends D-Bus values to a buffer; offsets are from the start of the message."""

    def __init__(self, endian: str, buf: bytearray | None = None) -> None:
        self.e = "<" if endian == "l" else ">"
        self.buf = buf if buf is not None else bytearray()

    def pad(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def put(self, t: str, v: Any) -> None:
        c = t[0]
        if c in _BASIC:
            fmt, size = _BASIC[c]
            self.pad(size)
            self.buf += struct.pack(self.e + fmt, v)
        elif c in "so":
            data = v.encode()
            self.pad(4)
            self.buf += struct.pack(self.e + "I", len(data)) + data + b"\0"
        elif c == "g":
            data = v.encode()
            self.buf += bytes([len(data)]) + data + b"\0"
        elif c == "v":
            inner, value = v
            self.put("g", inner)
            self.put(inner, value)
        elif t == "ay" and isinstance(v, bytes | bytearray):
            self.pad(4)
            self.buf += struct.pack(self.e + "I", len(v)) + v
        elif c == "a":
            self.pad(4)
            at = len(self.buf)
            self.buf += b"\0\0\0\0"
            self.pad(_ALIGN[t[1]])
            start = len(self.buf)
            items = v.items() if isinstance(v, dict) else v
            for item in items:
                self.put(t[1:], item)
            struct.pack_into(self.e + "I", self.buf, at, len(self.buf) - start)
        elif c in "({":
            self.pad(8)
            for sub, value in zip(split_types(t[1:-1]), v, strict=True):
                self.put(sub, value)
        else:
            raise ValueError(t)


def plain(t: SignatureType, v: Any) -> Any:
    """dbus-fast values as test_wire.Writer wants them (variants as (signature, value))."""
    if t.token == "v":
        assert isinstance(v, Variant)
        return (v.signature, plain(get_signature_tree(v.signature).types[0], v.value))
    if t.token == "a":
        child = t.children[0]
        if child.token == "y":
            return bytes(v)
        if child.token == "{":
            k, val = child.children
            return {plain(k, a): plain(val, b) for a, b in v.items()}
        return [plain(child, x) for x in v]
    if t.token == "(":
        return [plain(c, x) for c, x in zip(t.children, v, strict=True)]
    return v


Field = tuple[int, str, Any]


def frame(
    endian: str = "l",
    mtype: int = 1,
    serial: int = 1,
    fields: list[Field] | None = None,
    body_sig: str = "",
    body: list[Any] | None = None,
    flags: int = 0,
    raw_body: bytes | None = None,
    version: int = 1,
) -> bytes:
    """One message with exactly the header fields given, in the order given."""
    e = "<" if endian == "l" else ">"
    if raw_body is None:
        bw = Writer(endian)
        for t, v in zip(split_types(body_sig), body or [], strict=True):
            bw.put(t, v)
        raw_body = bytes(bw.buf)
    head = bytearray(endian.encode() + bytes([mtype, flags, version]))
    head += struct.pack(e + "II", len(raw_body), serial)
    w = Writer(endian, head)
    w.put("a(yv)", [(code, (sig, value)) for code, sig, value in fields or []])
    w.pad(8)
    return bytes(w.buf) + raw_body


def call_fields(
    path: str = "/org/example/Obj",
    interface: str | None = "org.example.Iface",
    member: str = "Frob",
    destination: str | None = "org.example.Service",
    signature: str | None = None,
) -> list[Field]:
    out: list[Field] = [(PATH, "o", path)]
    if interface:
        out.append((INTERFACE, "s", interface))
    out.append((MEMBER, "s", member))
    if destination:
        out.append((DESTINATION, "s", destination))
    if signature:
        out.append((SIGNATURE, "g", signature))
    return out


def call(endian: str = "l", serial: int = 1, body_sig: str = "", body: list[Any] | None = None, **kw: Any) -> bytes:
    return frame(endian, 1, serial, call_fields(signature=body_sig or None, **kw), body_sig, body)


def reply(
    endian: str = "l", serial: int = 2, reply_serial: int = 1, body_sig: str = "", body: list[Any] | None = None
) -> bytes:
    fields: list[Field] = [(REPLY_SERIAL, "u", reply_serial), (DESTINATION, "s", ":1.1")]
    if body_sig:
        fields.append((SIGNATURE, "g", body_sig))
    return frame(endian, 2, serial, fields, body_sig, body)


def with_fds(endian: str, serial: int, n: int) -> bytes:
    fields = [*call_fields(member="TakeFds", signature="h" * n), (UNIX_FDS, "u", n)]
    return frame(endian, 1, serial, fields, "h" * n, list(range(n)))


def patch_u32(raw: bytes, offset: int, value: int) -> bytes:
    e = "<" if raw[0:1] == b"l" else ">"
    out = bytearray(raw)
    struct.pack_into(e + "I", out, offset, value)
    return bytes(out)


def parse_all(data: bytes, chunks: list[int] | None = None) -> list[wire.Message]:
    parser = FrameParser()
    out: list[wire.Message] = []
    pos = 0
    for size in chunks or [len(data)]:
        parser.feed(data[pos : pos + size])
        pos += size
        out.extend(parser.frames())
    assert pos >= len(data)
    assert parser.buffered == 0
    return out


# ---------------------------------------------------------------- valid messages, both endiannesses

BODY_SIG = "syuna(si)a{sv}ayxdb"
BODY = [
    "héllo",
    7,
    0xDEADBEEF,
    -3,
    [("a", 1), ("bb", -2)],
    {"k": ("s", "v"), "n": ("u", 5)},
    b"\x00\x01\xff",
    -(2**40),
    1.5,
    True,
]


@pytest.mark.parametrize("endian", ["l", "B"])
def test_call_parses_in_both_endiannesses(endian: str) -> None:
    raw = call(endian, serial=0x01020304, body_sig=BODY_SIG, body=BODY)
    assert frame_size(raw[:16]) == len(raw)
    m = parse_message(raw)
    assert m.raw == raw
    assert m.endian == endian
    assert m.type is MessageType.METHOD_CALL
    assert m.serial == 0x01020304
    assert (m.path, m.interface, m.member, m.destination) == (
        "/org/example/Obj",
        "org.example.Iface",
        "Frob",
        "org.example.Service",
    )
    assert m.signature == BODY_SIG
    args = m.args
    assert args[:4] == ["héllo", 7, 0xDEADBEEF, -3]
    assert [list(s) for s in args[4]] == [["a", 1], ["bb", -2]]
    assert {k: v.value for k, v in args[5].items()} == {"k": "v", "n": 5}
    assert args[6:] == [b"\x00\x01\xff", -(2**40), 1.5, True]
    assert wire.jsonable(args)[6] == "0001ff"


@pytest.mark.parametrize("endian", ["l", "B"])
def test_every_message_type(endian: str) -> None:
    ret = reply(endian, serial=9, reply_serial=4, body_sig="s", body=["ok"])
    err = frame(
        endian,
        3,
        10,
        [(ERROR_NAME, "s", "org.example.Error.Bad"), (REPLY_SERIAL, "u", 5), (SIGNATURE, "g", "s")],
        "s",
        ["why"],
    )
    sig = frame(
        endian,
        4,
        11,
        [(PATH, "o", "/a"), (INTERFACE, "s", "org.example.I"), (MEMBER, "s", "Changed"), (SENDER, "s", ":1.4")],
    )
    r, e, s = (parse_message(x) for x in (ret, err, sig))
    assert (r.type, r.reply_serial, r.args) == (MessageType.METHOD_RETURN, 4, ["ok"])
    assert (e.type, e.reply_serial, e.error_name, e.args) == (MessageType.ERROR, 5, "org.example.Error.Bad", ["why"])
    assert (s.type, s.sender, s.member, s.args) == (MessageType.SIGNAL, ":1.4", "Changed", [])


@pytest.mark.parametrize("endian", ["l", "B"])
def test_unusual_header_field_order_and_unknown_fields_are_kept_verbatim(endian: str) -> None:
    fields: list[Field] = [
        (SIGNATURE, "g", "su"),
        (0x2A, "u", 99),  # unknown field code: must be ignored, not rejected
        (DESTINATION, "s", "org.example.Service"),
        (MEMBER, "s", "Frob"),
        (0xF0, "s", "future"),
        (INTERFACE, "s", "org.example.Iface"),
        (PATH, "o", "/p"),
    ]
    raw = frame(endian, 1, 77, fields, "su", ["x", 1])
    m = parse_message(raw)
    assert m.raw == raw
    assert (m.path, m.member, m.signature, m.args) == ("/p", "Frob", "su", ["x", 1])
    hand = parse_header_fields(raw)
    assert hand == {
        SIGNATURE: "su",
        DESTINATION: "org.example.Service",
        MEMBER: "Frob",
        INTERFACE: "org.example.Iface",
        PATH: "/p",
    }


def test_no_reply_expected_flag_and_serials_up_to_2_32() -> None:
    raw = call("B", serial=0xFFFFFFFF)
    raw = raw[:2] + b"\x01" + raw[3:]
    m = parse_message(raw)
    assert m.no_reply_expected and m.serial == 0xFFFFFFFF


# ---------------------------------------------------------------- framing: split and coalesced feeds

STREAM = [
    call("l", 1, "s", ["first"]),
    call("B", 2, "ay", [bytes(range(256)) * 3]),
    reply("l", 3, 1),
    call("B", 4, "a{ss}", [{"a": "b"}]),
]


def test_coalesced_feed_yields_every_frame_in_order() -> None:
    data = b"".join(STREAM)
    got = parse_all(data)
    assert [m.raw for m in got] == STREAM
    assert [m.serial for m in got] == [1, 2, 3, 4]


def test_byte_by_byte_feed() -> None:
    data = b"".join(STREAM)
    got = parse_all(data, [1] * len(data))
    assert [m.raw for m in got] == STREAM


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 23, 24, 40, 100, 333, 800, 900])
def test_split_anywhere(cut: int) -> None:
    data = b"".join(STREAM)
    got = parse_all(data, [cut, len(data) - cut])
    assert [m.raw for m in got] == STREAM


def test_partial_frame_stays_buffered() -> None:
    parser = FrameParser()
    raw = STREAM[1]
    parser.feed(raw[:-1])
    assert list(parser.frames()) == []
    assert parser.buffered == len(raw) - 1
    parser.feed(raw[-1:])
    assert [m.raw for m in parser.frames()] == [raw]
    assert parser.buffered == 0


# ---------------------------------------------------------------- fds claimed by their own message


def test_fds_are_claimed_by_the_message_that_announces_them() -> None:
    parser = FrameParser()
    data = call("l", 1) + with_fds("l", 2, 2) + call("B", 3) + with_fds("B", 4, 1)
    parser.feed(data, [100, 101, 102])
    got = list(parser.frames())
    assert [(m.serial, m.unix_fds, m.fds) for m in got] == [(1, 0, []), (2, 2, [100, 101]), (3, 0, []), (4, 1, [102])]
    assert parser.take_fds() == []


def test_fds_arriving_with_the_first_chunk_wait_for_the_rest_of_their_message() -> None:
    parser = FrameParser()
    raw = with_fds("l", 5, 3)
    parser.feed(raw[:20], [7, 8, 9])
    assert list(parser.frames()) == []
    parser.feed(raw[20:])
    (m,) = parser.frames()
    assert m.fds == [7, 8, 9] and m.args == [0, 1, 2]


def test_fds_of_two_messages_in_separate_reads() -> None:
    parser = FrameParser()
    a, b = with_fds("l", 1, 1), with_fds("B", 2, 2)
    parser.feed(a + b[:10], [3])
    parser.feed(b[10:], [4, 5])
    got = list(parser.frames())
    assert [m.fds for m in got] == [[3], [4, 5]]


def test_message_announcing_more_fds_than_arrived_is_malformed() -> None:
    parser = FrameParser()
    parser.feed(with_fds("l", 1, 2), [3])
    with pytest.raises(FrameError, match="fds"):
        list(parser.frames())
    assert parser.take_fds() == [3]


def test_unclaimed_fds_are_handed_back() -> None:
    parser = FrameParser()
    parser.feed(call("l", 1), [11, 12])
    (m,) = parser.frames()
    assert m.fds == []
    assert parser.take_fds() == [11, 12]


def test_more_fds_than_a_message_can_carry() -> None:
    raw = frame("l", 1, 1, [*call_fields(), (UNIX_FDS, "u", wire.MAX_UNIX_FDS + 1)])
    with pytest.raises(FrameError):
        parse_message(raw)


# ---------------------------------------------------------------- size limits from the first 16 bytes


def _head(endian: str, body_len: int, fields_len: int, mtype: int = 1) -> bytes:
    e = "<" if endian == "l" else ">"
    return endian.encode() + bytes([mtype, 0, 1]) + struct.pack(e + "III", body_len, 1, fields_len)


@pytest.mark.parametrize("endian", ["l", "B"])
def test_exactly_128_mib_is_accepted_and_one_byte_more_is_not(endian: str) -> None:
    fields_len = 0x40
    body = MAX_MESSAGE_SIZE - 16 - fields_len
    assert frame_size(_head(endian, body, fields_len)) == MAX_MESSAGE_SIZE
    with pytest.raises(FrameError, match="128 MiB"):
        frame_size(_head(endian, body + 1, fields_len))


@pytest.mark.parametrize(
    ("body_len", "fields_len"),
    [(MAX_MESSAGE_SIZE, 0), (0xFFFFFFFF, 8), (8, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (1 << 26, (1 << 26) + 8)],
)
@pytest.mark.parametrize("endian", ["l", "B"])
def test_oversized_announcement_is_rejected_before_buffering(endian: str, body_len: int, fields_len: int) -> None:
    head = _head(endian, body_len, fields_len)
    with pytest.raises(FrameError):
        frame_size(head)
    parser = FrameParser()
    parser.feed(head)
    with pytest.raises(FrameError):
        list(parser.frames())


def test_configured_limit_below_the_spec() -> None:
    parser = FrameParser(max_size=1024)
    parser.feed(call("l", 1, "ay", [b"x" * 2000])[:16])
    with pytest.raises(FrameError, match="configured limit"):
        list(parser.frames())
    small = FrameParser(max_size=1024)
    small.feed(call("l", 1, "ay", [b"x" * 100]))
    assert len(list(small.frames())) == 1


# ---------------------------------------------------------------- malformed frames


def _set_byte(raw: bytes, i: int, v: int) -> bytes:
    return raw[:i] + bytes([v]) + raw[i + 1 :]


GOOD = call("l", 3, "su", ["abc", 5])
GOOD_BE = call("B", 3, "su", ["abc", 5])


def _body_start(raw: bytes) -> int:
    e = "<" if raw[0:1] == b"l" else ">"
    (fl,) = struct.unpack_from(e + "I", raw, 12)
    return 16 + fl + (-fl & 7)


MALFORMED: dict[str, bytes] = {
    "bad endianness": _set_byte(GOOD, 0, ord("x")),
    "endianness NUL": _set_byte(GOOD, 0, 0),
    "type 0": _set_byte(GOOD, 1, 0),
    "type 5": _set_byte(GOOD, 1, 5),
    "type 255": _set_byte(GOOD_BE, 1, 255),
    "version 0": _set_byte(GOOD, 3, 0),
    "version 2": _set_byte(GOOD_BE, 3, 2),
    "serial 0": patch_u32(GOOD, 8, 0),
    "serial 0 BE": patch_u32(GOOD_BE, 8, 0),
    "method call without member": frame("l", 1, 1, [(PATH, "o", "/a"), (DESTINATION, "s", "x.y")]),
    "method call without path": frame("B", 1, 1, [(MEMBER, "s", "M"), (DESTINATION, "s", "x.y")]),
    "signal without interface": frame("l", 4, 1, [(PATH, "o", "/a"), (MEMBER, "s", "S")]),
    "signal without path": frame("B", 4, 1, [(INTERFACE, "s", "a.b"), (MEMBER, "s", "S")]),
    "error without reply serial": frame("l", 3, 1, [(ERROR_NAME, "s", "a.b.C")]),
    "error without error name": frame("B", 3, 1, [(REPLY_SERIAL, "u", 1)]),
    "return without reply serial": frame("l", 2, 1, [(DESTINATION, "s", ":1.1")]),
    "body without signature": frame("l", 1, 1, call_fields(), raw_body=b"\x01\x00\x00\x00"),
    "signature without body": frame("B", 1, 1, call_fields(signature="s"), raw_body=b""),
    "body shorter than signature": frame("l", 1, 1, call_fields(signature="su"), raw_body=b"\x01\0\0\0a\0\0\0"),
    "body longer than signature": frame("l", 1, 1, call_fields(signature="u"), raw_body=b"\x01\0\0\0\x02\0\0\0"),
    "body string not NUL-terminated": frame("B", 1, 1, call_fields(signature="s"), raw_body=b"\0\0\0\x01aa\0\0"),
    "body string overruns body": frame("l", 1, 1, call_fields(signature="s"), raw_body=b"\x40\0\0\0abc\0"),
    "body invalid utf-8": frame("l", 1, 1, call_fields(signature="s"), raw_body=b"\x02\0\0\0\xff\xfe\0\0"),
    "body invalid signature": frame("l", 1, 1, call_fields(signature="a"), raw_body=b"\0\0\0\0"),
    "body array overruns body": frame("l", 1, 1, call_fields(signature="ay"), raw_body=b"\xff\0\0\0ab\0\0"),
    "header string overruns header": patch_u32(GOOD, 20, 0x1000),
    "header string overruns header BE": patch_u32(GOOD_BE, 20, 0x1000),
    "header array shorter than its fields": patch_u32(GOOD, 12, 13),
    "header field signature overruns": _set_byte(GOOD, 17, 200),
    "path field with type u": frame("l", 1, 1, [(PATH, "u", 5), (MEMBER, "s", "M")]),
    "reply serial with type s": frame("l", 2, 2, [(REPLY_SERIAL, "s", "1")]),
    "unix fds with type s": frame("l", 1, 1, [*call_fields(), (UNIX_FDS, "s", "2")]),
    "error name with type u": frame("B", 3, 1, [(ERROR_NAME, "u", 3), (REPLY_SERIAL, "u", 1)]),
    "struct in body overruns": frame("l", 1, 1, call_fields(signature="(us)"), raw_body=b"\x01\0\0\0\x09\0\0\0ab\0"),
    "variant with bad signature": frame("l", 1, 1, call_fields(signature="v"), raw_body=b"\x01!\0\0\0\0\0\0"),
    # each of these once crashed the process (dbus-fast's compiled decoder), not just the parser
    "variant with empty signature": frame("l", 1, 1, call_fields(signature="v"), raw_body=b"\0\0\0\0\0\0\0\0"),
    "empty variant signature in a{sv}": frame(
        "B", 1, 1, call_fields(signature="a{sv}"), raw_body=b"\0\0\0\x0c\0\0\0\0\0\0\0\x01k\0\0s\0\0\0\0\0"
    ),
    "empty variant signature in header": _set_byte(frame("l", 1, 1, [(0x30, "y", 0), *call_fields()]), 18, ord("v")),
    "byte array length wraps 32 bits": frame("l", 1, 1, call_fields(signature="ay"), raw_body=b"\xff\xff\xff\xffabcd"),
    "string length wraps 32 bits": frame("B", 1, 1, call_fields(signature="s"), raw_body=b"\xff\xff\xff\xf0abc\0"),
    "header string length wraps 32 bits": patch_u32(GOOD, 20, 0xFFFFFFFF),
    "nested string length wraps": frame(
        "l", 1, 1, call_fields(signature="as"), raw_body=b"\x0c\0\0\0\xfe\xff\xff\xffabc\0"
    ),
}

# Invalid, but only in ways the proxy need not judge: the bus rejects them and
# closes the sender's connection. The parser may accept them; it must not crash.
LEFT_TO_THE_BUS: dict[str, bytes] = {
    "member with type g": frame("B", 1, 1, [(PATH, "o", "/a"), (MEMBER, "g", "ss")]),
    "string not NUL-terminated but sized right": frame("l", 1, 1, call_fields(signature="s"), raw_body=b"\x01\0\0\0ab"),
    "invalid object path": frame("l", 1, 1, call_fields(path="no/slash")),
    "invalid member name": frame("B", 1, 1, call_fields(member="1.x")),
    "non-zero padding": frame("l", 1, 1, call_fields(signature="yu"), raw_body=b"\x01\xff\xff\xff\x02\0\0\0"),
}


@pytest.mark.parametrize("name", list(LEFT_TO_THE_BUS))
def test_invalid_content_left_to_the_bus_never_crashes_the_parser(name: str) -> None:
    try:
        m = parse_message(LEFT_TO_THE_BUS[name])
    except FrameError:
        return
    assert m.raw == LEFT_TO_THE_BUS[name]


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_frame_raises_frame_error(name: str) -> None:
    raw = MALFORMED[name]
    with pytest.raises(FrameError):
        parse_message(raw)
    # and the same through the streaming parser, with a valid frame before it
    parser = FrameParser()
    parser.feed(GOOD + raw + GOOD)
    it = parser.frames()
    assert next(it).raw == GOOD
    with pytest.raises(FrameError):
        next(it)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_strict_header_walker_never_raises_anything_else(name: str) -> None:
    raw = MALFORMED[name]
    if raw[0] not in b"lB":
        return
    try:
        parse_header_fields(raw)
    except FrameError:
        pass


def test_truncated_frame_is_rejected_by_parse_message() -> None:
    with pytest.raises(FrameError):
        parse_message(GOOD[:-1])
    with pytest.raises(FrameError):
        parse_message(GOOD[:10])
    with pytest.raises(FrameError):
        parse_message(GOOD + b"\0" * 8)


# ---------------------------------------------------------------- building messages


def test_build_and_marshal_round_trip_with_sender() -> None:
    m = wire.build(
        MessageType.SIGNAL,
        serial=42,
        path="/x",
        interface="a.b",
        member="Sig",
        sender=":1.9",
        destination=":1.3",
        signature="sa{sv}",
        body=["v", {"k": wire.Variant("i", -1)}],
    )
    again = parse_message(m.raw)
    assert (again.sender, again.destination, again.serial, again.args[0]) == (":1.9", ":1.3", 42, "v")
    assert parse_header_fields(m.raw)[SENDER] == ":1.9"
    fast = wire.to_fast(again)
    assert wire.marshal(fast) == m.raw


def test_error_reply_answers_the_call() -> None:
    c = parse_message(frame("B", 1, 17, [*call_fields(), (SENDER, "s", ":1.5")]))
    e = wire.error_reply(c, serial=99, error_name="org.example.Error.Nope", text="no")
    assert (e.type, e.reply_serial, e.destination, e.sender, e.args) == (
        MessageType.ERROR,
        17,
        ":1.5",
        "org.freedesktop.DBus",
        ["no"],
    )


@pytest.mark.parametrize("endian", ["l", "B"])
def test_with_serial_changes_only_the_serial(endian: str) -> None:
    m = parse_message(call(endian, 5, "s", ["x"]))
    n = wire.with_serial(m, 6)
    assert n.serial == 6
    assert n.raw[:8] == m.raw[:8] and n.raw[12:] == m.raw[12:]


def test_marshal_refuses_oversized() -> None:
    half = b"\0" * (1 << 26)  # the largest array the spec allows; two make a message over 128 MiB
    fast = wire.FastMessage(path="/a", member="M", signature="ayay", body=[half, half])
    with pytest.raises(FrameError):
        wire.marshal(fast)

"""Property tests: the parser and the SASL code never crash, never accept an oversized frame.

Seeds come from tests/corpus/: real messages captured from busctl, gdbus and
dbus-send traffic (capture.py), crafted edge cases and malformed frames
(craft.py). Hypothesis mutates them, generates random valid messages, and
random SASL transcripts. Example counts are kept modest so the suite is fast.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ipcproxy.dbus import wire
from ipcproxy.dbus.auth import AuthError, ClientAuth, ServerAuth
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
    FrameError,
    FrameParser,
    frame_size,
    parse_header_fields,
    parse_message,
)
from ipcproxy.model import Message, MessageType
from test_wire import Field, frame, plain, split_types

CORPUS = Path(__file__).resolve().parent / "corpus"
VALID = {p.name: p.read_bytes() for p in sorted([*CORPUS.glob("captured-*.bin"), *CORPUS.glob("crafted-*.bin")])}
BAD = {p.name: p.read_bytes() for p in sorted(CORPUS.glob("malformed-*.bin"))}
# frames found by fuzzing that once crashed the process (dbus-fast's decoder), not just the parser
CRASHERS = {p.name: p.read_bytes() for p in sorted(CORPUS.glob("crash-*.bin"))}
# IPCPROXY_FUZZ_EXAMPLES=20000 for a long local run; the default keeps the suite quick
EXAMPLES = int(os.environ.get("IPCPROXY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


def test_corpus_is_there() -> None:
    assert sum(n.startswith("captured-") for n in VALID) >= 30
    assert sum(n.startswith("crafted-") for n in VALID) >= 20
    assert len(BAD) >= 20
    assert any(raw[0:1] == b"B" for raw in VALID.values())


@pytest.mark.parametrize("name", list(VALID))
def test_corpus_message_parses_and_keeps_its_bytes(name: str) -> None:
    raw = VALID[name]
    m = parse_message(raw)
    assert m.raw == raw and m.size == len(raw) == frame_size(raw[:16])
    m.args  # noqa: B018 - decodes
    fields = parse_header_fields(raw)
    assert (fields.get(PATH), fields.get(MEMBER), fields.get(SENDER)) == (m.path, m.member, m.sender)
    again = parse_message(wire.marshal(wire.to_fast(m), unix_fds=m.unix_fds))
    assert _facts(again) == _facts(m)


@pytest.mark.parametrize("name", list(BAD))
def test_corpus_malformed_frame_is_rejected(name: str) -> None:
    with pytest.raises(FrameError):
        parse_message(BAD[name])


@pytest.mark.parametrize("name", list(CRASHERS))
def test_frames_that_crashed_the_decoder_are_rejected(name: str) -> None:
    raw = CRASHERS[name]
    with pytest.raises(FrameError):
        parse_message(raw)
    parser = FrameParser()
    parser.feed(raw)
    with pytest.raises(FrameError):
        list(parser.frames())


def _facts(m: Message) -> tuple[Any, ...]:
    return (m.type, m.serial, m.flags, m.reply_serial, m.path, m.interface, m.member, m.error_name)[:8] + (
        m.destination,
        m.sender,
        m.signature,
        m.unix_fds,
        repr(m.args),
    )


# ---------------------------------------------------------------- mutated real messages

corpus_message = st.sampled_from(sorted(VALID.values()))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(corpus_message))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["byte", "u32", "truncate", "extend", "splice"]))
        if how == "byte" and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        elif how == "u32" and len(raw) >= 4:
            at = draw(st.integers(0, (len(raw) - 4) // 4)) * 4
            value = draw(st.sampled_from([0, 1, 7, 8, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, MAX_MESSAGE_SIZE]))
            raw[at : at + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
        elif how == "truncate" and raw:
            del raw[draw(st.integers(0, len(raw) - 1)) :]
        elif how == "extend":
            raw += draw(st.binary(max_size=16))
        elif how == "splice":
            other = draw(corpus_message)
            at = draw(st.integers(0, len(raw)))
            raw[at:] = other[at:]
    return bytes(raw)


def _parse_or_reject(raw: bytes) -> Message | None:
    try:
        m = parse_message(raw)
    except FrameError:
        return None
    assert m.raw == raw and len(raw) <= MAX_MESSAGE_SIZE
    assert m.type in (MessageType.METHOD_CALL, MessageType.METHOD_RETURN, MessageType.ERROR, MessageType.SIGNAL)
    assert m.serial > 0
    return m


@FUZZ
@given(mutated())
def test_mutated_messages_never_crash_the_parser(raw: bytes) -> None:
    m = _parse_or_reject(raw)
    if m is None:
        return
    # what dbus-fast accepted, the strict hand-written walker reads the same way (or rejects)
    try:
        fields = parse_header_fields(raw)
    except FrameError:
        return
    assert fields.get(PATH) == m.path and fields.get(MEMBER) == m.member
    assert fields.get(DESTINATION) == m.destination and fields.get(SIGNATURE, "") == m.signature
    assert (fields.get(REPLY_SERIAL) or None) == m.reply_serial


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=4), st.lists(st.integers(1, 300), max_size=8), st.integers(64, 1 << 16))
def test_stream_of_mutated_messages_only_raises_frame_error(chunks: list[bytes], cuts: list[int], limit: int) -> None:
    data = b"".join(chunks)
    parser = FrameParser(max_size=limit)
    got: list[Message] = []
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            parser.feed(data[pos : pos + cut], [])
            pos += cut
            got.extend(parser.frames())
            if pos >= len(data):
                break
    except FrameError:
        pass
    assert all(m.size <= limit for m in got)
    assert b"".join(m.raw for m in got) == data[: sum(m.size for m in got)]


@FUZZ
@given(st.binary(max_size=300))
@example(b"l\x01\x00\x01" + b"\xff" * 12)
@example(b"B\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00")
def test_random_bytes_only_raise_frame_error(data: bytes) -> None:
    parser = FrameParser()
    parser.feed(data)
    try:
        for m in parser.frames():
            assert m.size <= MAX_MESSAGE_SIZE
    except FrameError:
        pass
    if len(data) >= 16:
        try:
            assert frame_size(data[:16]) <= MAX_MESSAGE_SIZE
        except FrameError:
            pass
    if data[:1] in (b"l", b"B"):
        try:
            parse_header_fields(data + b"\0" * 16)
        except FrameError:
            pass


@FUZZ
@given(
    st.sampled_from(["l", "B"]),
    st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(MAX_MESSAGE_SIZE - 200, MAX_MESSAGE_SIZE)),
    st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0, 200)),
)
def test_announced_size_decides_from_16_bytes(endian: str, body_len: int, fields_len: int) -> None:
    order = "little" if endian == "l" else "big"
    head = (
        endian.encode()
        + b"\x01\x00\x01"
        + body_len.to_bytes(4, order)
        + b"\x01\0\0\0"[:: 1 if order == "little" else -1]
    )
    head += fields_len.to_bytes(4, order)
    total = 16 + fields_len + (-fields_len & 7) + body_len
    parser = FrameParser()
    parser.feed(head)
    if total > MAX_MESSAGE_SIZE or fields_len > wire.MAX_HEADER_FIELDS:  # the header is an array: 64 MiB at most
        with pytest.raises(FrameError):
            frame_size(head)
        with pytest.raises(FrameError):
            list(parser.frames())
    else:
        assert frame_size(head) == total
        try:
            assert list(parser.frames()) == []  # waits for the rest
        except FrameError:
            assert total == 16  # complete already, and not a valid message
        if total > 16:
            assert parser.buffered == 16


# ---------------------------------------------------------------- random valid messages round-trip

BASIC_CODES = "ybnqiuxtdsog"
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_path = st.lists(_name, max_size=3).map(lambda parts: "/" + "/".join(parts))
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_dotted = st.lists(_name, min_size=2, max_size=3).map(".".join)
BASIC_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "y": st.integers(0, 255),
    "b": st.booleans(),
    "n": st.integers(-(2**15), 2**15 - 1),
    "q": st.integers(0, 2**16 - 1),
    "i": st.integers(-(2**31), 2**31 - 1),
    "u": st.integers(0, 2**32 - 1),
    "x": st.integers(-(2**63), 2**63 - 1),
    "t": st.integers(0, 2**64 - 1),
    "d": st.floats(allow_nan=False),
    "s": _text,
    "o": _path,
    "g": st.sampled_from(["", "s", "a{sv}", "(ii)", "av"]),
}

single_type = st.recursive(
    st.sampled_from(list(BASIC_CODES)),
    lambda inner: st.one_of(
        inner.map(lambda t: "a" + t),
        st.tuples(st.sampled_from(list(BASIC_CODES)), inner).map(lambda kv: "a{" + kv[0] + kv[1] + "}"),
        st.lists(inner, min_size=1, max_size=3).map(lambda ts: "(" + "".join(ts) + ")"),
        st.just("v"),
    ),
    max_leaves=4,
)


def values_for(t: str) -> st.SearchStrategy[Any]:
    c = t[0]
    if c in BASIC_VALUES:
        return BASIC_VALUES[c]
    if c == "v":
        return st.sampled_from(list(BASIC_CODES) + ["as", "(yv)"]).flatmap(
            lambda inner: (
                values_for(inner).map(lambda v: (inner, v)) if inner != "(yv)" else st.just((inner, [1, ("s", "x")]))
            )
        )
    if t == "ay":
        return st.binary(max_size=16)
    if t.startswith("a{"):
        k, v = split_types(t[2:-1])
        return st.dictionaries(values_for(k), values_for(v), max_size=3)
    if c == "a":
        return st.lists(values_for(t[1:]), max_size=3)
    return st.tuples(*(values_for(s) for s in split_types(t[1:-1]))).map(list)


@st.composite
def valid_message(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    sig = "".join(draw(st.lists(single_type, max_size=4)))
    body = [draw(values_for(t)) for t in split_types(sig)]
    mtype = draw(st.sampled_from([1, 2, 3, 4]))
    facts: dict[str, Any] = {"type": mtype, "serial": draw(st.integers(1, 2**32 - 1)), "signature": sig, "body": body}
    fields: list[Field] = []
    if mtype in (1, 4):
        facts["path"], facts["member"] = draw(_path), draw(_name)
        fields += [(PATH, "o", facts["path"]), (MEMBER, "s", facts["member"])]
        if mtype == 4 or draw(st.booleans()):
            facts["interface"] = draw(_dotted)
            fields.append((INTERFACE, "s", facts["interface"]))
    else:
        facts["reply_serial"] = draw(st.integers(1, 2**32 - 1))
        fields.append((REPLY_SERIAL, "u", facts["reply_serial"]))
        if mtype == 3:
            facts["error_name"] = draw(_dotted)
            fields.append((ERROR_NAME, "s", facts["error_name"]))
    if draw(st.booleans()):
        facts["destination"] = draw(_dotted)
        fields.append((DESTINATION, "s", facts["destination"]))
    if draw(st.booleans()):
        facts["sender"] = ":1." + str(draw(st.integers(0, 999)))
        fields.append((SENDER, "s", facts["sender"]))
    if sig or draw(st.booleans()):
        fields.append((SIGNATURE, "g", sig))
    fields = draw(st.permutations(fields))
    endian = draw(st.sampled_from(["l", "B"]))
    flags = draw(st.integers(0, 7))
    return frame(endian, mtype, facts["serial"], fields, sig, body, flags), facts


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@FUZZ
@given(valid_message(), st.integers(1, 64))
def test_valid_messages_round_trip(case: tuple[bytes, dict[str, Any]], chunk: int) -> None:
    raw, facts = case
    m = parse_message(raw)
    assert m.raw == raw
    assert int(m.type) == facts["type"] and m.serial == facts["serial"] and m.signature == facts["signature"]
    for key in ("path", "interface", "member", "error_name", "destination", "sender", "reply_serial"):
        assert getattr(m, key) == facts.get(key), key
    from dbus_fast.signature import get_signature_tree

    decoded = [plain(t, v) for t, v in zip(get_signature_tree(m.signature).types, m.args, strict=True)]
    assert _same(decoded, facts["body"])
    # split anywhere, the stream parser finds the same frame
    parser = FrameParser()
    out: list[Message] = []
    for i in range(0, len(raw), chunk):
        parser.feed(raw[i : i + chunk])
        out.extend(parser.frames())
    assert [x.raw for x in out] == [raw]
    # re-marshalled (little endian, canonical field order) it means the same
    again = parse_message(wire.marshal(wire.to_fast(m)))
    assert _facts(again) == _facts(m)


# ---------------------------------------------------------------- SASL

UID = 1000
GUID = "a" * 32
LINES = [
    b"AUTH EXTERNAL 31303030",
    b"AUTH EXTERNAL 30",
    b"AUTH EXTERNAL",
    b"AUTH EXTERNAL zz",
    b"AUTH ANONYMOUS",
    b"AUTH",
    b"DATA",
    b"DATA 31303030",
    b"NEGOTIATE_UNIX_FD",
    b"BEGIN",
    b"CANCEL",
    b"ERROR",
    b'ERROR "x"',
    b"OK " + GUID.encode(),
    b"STARTTLS",
]
ALLOWED_ANSWERS = (b"OK ", b"REJECTED ", b"DATA", b"ERROR ", b"AGREE_UNIX_FD")


@st.composite
def transcript(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(st.sampled_from(LINES), st.binary(max_size=20)), max_size=10))
    data = (b"\0" if draw(st.integers(0, 9)) else b"") + b"".join(line + b"\r\n" for line in lines)
    data += draw(st.binary(max_size=32))
    if draw(st.booleans()) and data:
        data = bytearray(data)
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    return data


@FUZZ
@given(transcript(), st.lists(st.integers(1, 40), max_size=6), st.integers(0, 6), st.booleans())
def test_server_auth_only_raises_auth_error(data: bytes, cuts: list[int], ready_at: int, fds: bool) -> None:
    auth = ServerAuth(UID, unix_fd_possible=fds)
    out = b""
    pos = 0
    try:
        for step, cut in enumerate([*cuts, len(data)]):
            if step == ready_at:
                auth.upstream_ready(GUID, True)
            if auth.done:
                break
            auth.feed(data[pos : pos + cut])
            pos += cut
            out += auth.output()
        if auth.guid is None:
            auth.upstream_ready(GUID, True)
        out += auth.output()
    except AuthError:
        return
    for line in out.split(b"\r\n")[:-1]:
        assert line.startswith(ALLOWED_ANSWERS), line
    if auth.done:
        assert auth.claimed_uid == UID
        assert f"OK {GUID}".encode() in out
        assert data.endswith(auth.leftover) if pos >= len(data) else True
        assert auth.unix_fd <= fds


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"OK " + GUID.encode(), b"AGREE_UNIX_FD", b"REJECTED EXTERNAL", b"ERROR"]),
            st.binary(max_size=20),
        ),
        max_size=4,
    ),
    st.binary(max_size=20),
    st.booleans(),
)
def test_client_auth_only_raises_auth_error(lines: list[bytes], tail: bytes, fds: bool) -> None:
    auth = ClientAuth(UID, unix_fd=fds)
    auth.start()
    data = b"".join(line + b"\r\n" for line in lines) + tail
    try:
        auth.feed(data)
    except AuthError:
        return
    if auth.done:
        assert auth.guid is not None
        assert auth.unix_fd <= fds
        assert data.endswith(auth.leftover)


def test_printable_garbage_never_authenticates() -> None:
    # every printable single line other than a correct AUTH is not an authentication
    for c in string.printable:
        auth = ServerAuth(UID)
        auth.upstream_ready(GUID, True)
        try:
            auth.feed(b"\0" + c.encode() * 5 + b"\r\nBEGIN\r\n")
        except AuthError:
            continue
        assert not auth.done


# ---------------------------------------------------------------- the proxy's fast path agrees with the strict parser


def _fast_path_seeds() -> list[bytes]:
    """Frames whose headers the fast path remembers: no body, or one byte array; both byte orders."""
    out: list[bytes] = []
    for endian in ("l", "B"):
        out.append(frame(endian, 1, 3, [*_echo_fields("ay"), (SENDER, "s", ":1.4")], "ay", [b"payload"]))
        out.append(
            frame(
                endian,
                2,
                4,
                [(REPLY_SERIAL, "u", 3), (DESTINATION, "s", ":1.4"), (SIGNATURE, "g", "ay")],
                "ay",
                [b"x" * 40],
            )
        )
        out.append(frame(endian, 2, 5, [(DESTINATION, "s", ":1.4"), (REPLY_SERIAL, "u", 9)]))
        out.append(frame(endian, 4, 6, [(PATH, "o", "/s"), (INTERFACE, "s", "a.b"), (MEMBER, "s", "Tick")]))
        out.append(frame(endian, 3, 7, [(ERROR_NAME, "s", "a.b.E"), (REPLY_SERIAL, "u", 2)]))
    return out


def _echo_fields(sig: str) -> list[Field]:
    return [
        (PATH, "o", "/e"),
        (INTERFACE, "s", "org.example.Echo"),
        (MEMBER, "s", "Echo"),
        (DESTINATION, "s", ":1.9"),
        (SIGNATURE, "g", sig),
    ]


FAST_SEEDS = _fast_path_seeds()


@st.composite
def fast_path_stream(draw: st.DrawFn) -> bytes:
    frames = []
    for _ in range(draw(st.integers(1, 5))):
        raw = bytearray(draw(st.sampled_from(FAST_SEEDS)))
        for _ in range(draw(st.integers(0, 3))):
            if not raw:
                break
            at = draw(st.integers(0, len(raw) - 1))
            how = draw(st.sampled_from(["byte", "u32", "cut", "grow"]))
            if how == "byte":
                raw[at] = draw(st.sampled_from([0, 1, 0xFF, 0x80, draw(st.integers(0, 255))]))
            elif how == "u32":
                at -= at % 4
                raw[at : at + 4] = draw(st.sampled_from([0, 1, 7, 0xFFFFFFFF, 0xF8000000, 1 << 26])).to_bytes(
                    4, "little"
                )
            elif how == "cut":
                del raw[at:]
            else:
                raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        frames.append(bytes(raw))
    return b"".join(frames)


@FUZZ
@given(fast_path_stream(), st.lists(st.integers(1, 200), max_size=6))
def test_fast_path_accepts_only_what_the_strict_parser_accepts(data: bytes, cuts: list[int]) -> None:
    heads = wire.HeaderCache()
    for raw in FAST_SEEDS:
        assert heads.learn(parse_message(raw)) is not None
    parser = FrameParser()
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            parser.feed(data[pos : pos + cut])
            pos += cut
            for raw, head, serial, reply_serial in parser.scan(heads):
                assert len(raw) <= MAX_MESSAGE_SIZE
                if head is None:
                    parser.message(raw)  # the strict path; may raise FrameError
                    continue
                m = parse_message(raw)  # what the fast path waved through must be valid
                assert (serial, reply_serial or None) == (m.serial, m.reply_serial)
                assert (head.type, head.path, head.interface, head.member, head.error_name) == (
                    m.type,
                    m.path,
                    m.interface,
                    m.member,
                    m.error_name,
                )
                assert (head.destination, head.sender, head.signature, head.no_reply) == (
                    m.destination,
                    m.sender,
                    m.signature,
                    m.no_reply_expected,
                )
            if pos >= len(data):
                break
    except FrameError:
        pass

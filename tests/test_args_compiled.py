"""The compiled body decoder writes exactly the JSON the Python path writes, or declines.

The Python path is the oracle: a frame around the body goes through
``wire.parse_message`` (dbus-fast's decoder and the frame checks), and its
arguments through ``wire.jsonable`` and msgspec. The compiled
``args_to_json`` must give the same bytes, or None where it declines (the
caller then takes the Python path); it must decline whatever the Python path
rejects.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgspec
import pytest
from dbus_fast import Variant
from dbus_fast._private.marshaller import Marshaller
from dbus_fast.signature import SignatureType, get_signature_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipcproxy.dbus import _plane, wire  # built by scripts/setup.sh: a missing build fails here, never skips

# ------------------------------------------------------------------ helpers

_FIXED = {"y": "B", "n": "h", "q": "H", "i": "i", "u": "I", "h": "I", "x": "q", "t": "Q", "d": "d"}
_ALIGN8 = "xtd({"


def marshal(signature: str, values: list[Any], little: bool) -> bytes:
    """A body in either byte order (dbus-fast's Marshaller writes little-endian only)."""
    e = "<" if little else ">"
    buf = bytearray()

    def align(n: int) -> None:
        buf.extend(b"\0" * (-len(buf) % n))

    def write(t: SignatureType, v: Any) -> None:
        tok = t.token
        if tok in _FIXED:
            fmt = e + _FIXED[tok]
            align(struct.calcsize(fmt))
            buf.extend(struct.pack(fmt, v))
        elif tok == "b":
            align(4)
            buf.extend(struct.pack(e + "I", 1 if v else 0))
        elif tok in "so":
            data = v.encode()
            align(4)
            buf.extend(struct.pack(e + "I", len(data)) + data + b"\0")
        elif tok == "g":
            data = v.encode()
            buf.extend(bytes([len(data)]) + data + b"\0")
        elif tok == "v":
            data = v.signature.encode()
            buf.extend(bytes([len(data)]) + data + b"\0")
            write(v.type, v.value)
        elif tok == "(":
            align(8)
            for child, item in zip(t.children, v, strict=True):
                write(child, item)
        else:  # an array
            align(4)
            at = len(buf)
            buf.extend(b"\0\0\0\0")
            child = t.children[0]
            if child.token in _ALIGN8:
                align(8)
            start = len(buf)
            if child.token == "y":
                buf.extend(v)
            elif child.token == "{":
                key, value = child.children
                for k, item in v.items():
                    align(8)
                    write(key, k)
                    write(value, item)
            else:
                for item in v:
                    write(child, item)
            struct.pack_into(e + "I", buf, at, len(buf) - start)

    for t, v in zip(get_signature_tree(signature).types, values, strict=True):
        write(t, v)
    return bytes(buf)


def frame(signature: str, body: bytes, little: bool) -> bytes:
    """A METHOD_RETURN frame carrying ``body``: REPLY_SERIAL and SIGNATURE header fields."""
    e = "<" if little else ">"
    fields = bytearray(bytes([5, 1, ord("u"), 0]) + struct.pack(e + "I", 1))
    if signature:
        fields.extend(b"\0" * (-len(fields) % 8))
        sig = signature.encode()
        fields.extend(bytes([8, 1, ord("g"), 0, len(sig)]) + sig + b"\0")
    head = (b"l" if little else b"B") + bytes([2, 0, 1]) + struct.pack(e + "III", len(body), 7, len(fields)) + fields
    return bytes(head) + b"\0" * (-len(head) % 8) + body


def python_json(signature: str, body: bytes, little: bool) -> bytes | None:
    """What the Python path records for this body, or None where it rejects the frame."""
    try:
        message = wire.parse_message(frame(signature, body, little))
    except wire.FrameError:
        return None
    return msgspec.json.encode(wire.jsonable(message.args))


def compiled(signature: str, body: bytes, little: bool) -> bytes | None:
    return _plane.args_to_json(body, signature, little)


def agree(signature: str, body: bytes, little: bool) -> bytes | None:
    """The compiled output equals the Python one, or is None; None wherever Python rejects."""
    expected = python_json(signature, body, little)
    got = compiled(signature, body, little)
    if expected is None:
        assert got is None, (signature, body, little, got)
    elif got is not None:
        assert got == expected, (signature, body, little)
    return got


def same(signature: str, values: list[Any], little: bool = True) -> bytes:
    """Both paths accept the marshalled values and agree byte for byte."""
    body = marshal(signature, values, little)
    expected = python_json(signature, body, little)
    assert expected is not None
    assert compiled(signature, body, little) == expected
    return expected


def declined(signature: str, body: bytes, little: bool = True) -> None:
    assert compiled(signature, body, little) is None


# --------------------------------------------------------------- strategies

_INTS = {
    "y": (0, 255),
    "n": (-(2**15), 2**15 - 1),
    "q": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "u": (0, 2**32 - 1),
    "h": (0, 2**32 - 1),
    "x": (-(2**63), 2**63 - 1),
    "t": (0, 2**64 - 1),
}
_KEYS = "ybnqiuxtsogh"  # every basic type but DOUBLE, whose keys are declined
_BASIC = _KEYS + "d"

doubles = st.floats() | st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0])
# dbus-fast's Marshaller refuses NUL in strings and invalid signatures (the decoders take both: see the explicit tests)
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12) | st.sampled_from(
    ["", '"', "\\", "\x1f\x7f", "\u2028\u2029", "é✓😀", "/a/b_1"]
)


def types(depth: int) -> st.SearchStrategy[str]:
    """Signatures of single complete types, containers nested up to ``depth``."""
    basic = st.sampled_from(_BASIC)
    if depth == 0:
        return basic
    inner = types(depth - 1)
    return st.one_of(
        basic,
        st.just("v"),
        inner.map(lambda t: "a" + t),
        st.tuples(st.sampled_from(_KEYS), inner).map(lambda kv: f"a{{{kv[0]}{kv[1]}}}"),
        st.lists(inner, min_size=1, max_size=3).map(lambda ts: "(" + "".join(ts) + ")"),
    )


def values(t: SignatureType, depth: int) -> st.SearchStrategy[Any]:
    tok = t.token
    if tok in _INTS:
        lo, hi = _INTS[tok]
        return st.integers(lo, hi)
    if tok == "b":
        return st.booleans()
    if tok == "d":
        return doubles
    if tok in "so":
        return texts
    if tok == "g":
        return st.lists(types(1), max_size=4).map("".join)
    if tok == "v":
        inner = types(max(depth - 1, 0))
        return inner.flatmap(
            lambda sig: values(get_signature_tree(sig).root_type, depth - 1).map(
                lambda v: Variant(sig, v, verify=False)
            )
        )
    if tok == "(":
        return st.tuples(*(values(c, depth) for c in t.children)).map(list)
    child = t.children[0]
    if child.token == "y":
        return st.binary(max_size=40)
    if child.token == "{":
        key, value = child.children
        return st.dictionaries(values(key, depth), values(value, depth), max_size=3)
    return st.lists(values(child, depth), max_size=3)


@st.composite
def bodies(draw: Any) -> tuple[str, list[Any]]:
    sigs = draw(st.lists(types(3), min_size=1, max_size=4))
    signature = "".join(sigs)
    tree = get_signature_tree(signature)
    return signature, [draw(values(t, 2)) for t in tree.types]


# -------------------------------------------------------------- properties

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(bodies(), st.booleans())
def test_generated_bodies_match_python(case: tuple[str, list[Any]], little: bool) -> None:
    signature, vals = case
    body = marshal(signature, vals, little)
    if little:
        # the hand marshaller is dbus-fast's, byte for byte (which vouches for its big-endian bodies)
        assert bytes(Marshaller(signature, vals).marshall()) == body
    expected = python_json(signature, body, little)
    assert expected is not None
    assert compiled(signature, body, little) == expected


@_SETTINGS
@given(bodies(), st.booleans(), st.data())
def test_garbled_bodies_never_disagree(case: tuple[str, list[Any]], little: bool, data: Any) -> None:
    signature, vals = case
    body = bytearray(marshal(signature, vals, little))
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "drop", "append"]))
        at = data.draw(st.integers(0, len(body)))
        if how == "flip" and at < len(body):
            body[at] = data.draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF, body[at] ^ 1]))
        elif how == "cut":
            del body[at:]
        elif how == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif how == "drop" and at < len(body):
            del body[at]
        else:
            body.extend(data.draw(st.binary(min_size=1, max_size=8)))
    agree(signature, bytes(body), little)


def test_every_prefix_of_a_body_is_declined() -> None:
    signature = "sa{sv}a(yx)ayd"
    vals = ["name", {"k": Variant("as", ["x", "y"]), "n": Variant("t", 7)}, [[1, -2]], b"\x01\x02", 1.5]
    for little in (True, False):
        body = marshal(signature, vals, little)
        assert compiled(signature, body, little) == python_json(signature, body, little)
        for end in range(len(body)):
            assert agree(signature, body[:end], little) is None
        assert agree(signature, body + b"\0", little) is None  # bytes left over


# ---------------------------------------------------------------- strings


@pytest.mark.parametrize("little", [True, False])
def test_every_escape_class(little: bool) -> None:
    every_ascii = "".join(chr(c) for c in range(128))
    text = same("s", [every_ascii], little)
    assert b"\\u0000\\u0001" in text and b"\\u001f" in text and b"\\u000b" in text  # lowercase hex
    assert b"\\b\\t\\n" in text and b"\\f\\r" in text and b'\\"' in text and b"\\\\" in text
    assert b"~\x7f" in text  # DEL as is
    for s in ["", "plain", "\u2028\u2029", "é", "✓", "😀", "a\x00b", "x" * 40 + '"' + "y" * 40, "\\" * 33]:
        same("s", [s], little)
        same("o", [s], little)
        same("g", [s], little)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"\x80",
        b"\xc0\x80",
        b"\xc1\xbf",
        b"\xe0\x80\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xf5\x80\x80\x80",
        b"\xe2\x82",
        b"a\xf0\x9f\x98",
        b"\xc3\xa9\xe2\x9c\x93\xff",  # bad in the middle of a non-ASCII run
        b"\xe6\x97\xa5\xe6\x97",
    ],
)
def test_invalid_utf8_is_declined(raw: bytes) -> None:
    body = struct.pack("<I", len(raw)) + raw + b"\0"
    assert python_json("s", body, True) is None
    declined("s", body)


def test_valid_utf8_edges() -> None:
    for ch in ["\x7f", "\x80", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff"]:
        same("s", [ch * 3])
    same("s", ["日本語のテキスト" * 9 + "ascii" + "é" * 30 + "\n" + "😀" * 5])


def test_string_without_nul_terminator_is_declined() -> None:
    # dbus-fast does not check the terminator; declining sends the body to the Python path
    body = struct.pack("<I", 2) + b"ab\x01"
    assert python_json("s", body, True) == b'["ab"]'
    declined("s", body)
    declined("g", b"\x02ab\x01")


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("little", [True, False])
def test_integer_extremes(little: bool) -> None:
    for t, (lo, hi) in _INTS.items():
        same(t * 3, [lo, hi, 0], little)
    same("bb", [True, False], little)


def test_boolean_is_any_nonzero_u32_and_fd_is_the_index() -> None:
    body = struct.pack("<II", 2, 0xFFFFFFFF)
    assert compiled("bb", body, True) == python_json("bb", body, True) == b"[true,true]"
    assert compiled("h", struct.pack("<I", 3), True) == python_json("h", struct.pack("<I", 3), True) == b"[3]"


_DOUBLE_TEXTS = (
    "0.0 -0.0 1.0 -1.0 0.1 0.5 1.5 100.0 123.456 1e15 1e16 1e17 1e21 1e22 1e23 9007199254740992.0"
    " 9007199254740994.0 9223372036854775808.0 18446744073709551616.0 9007199254740993.0 0.001 0.0001"
    " 1e-5 1.5e-5 1e-7 5e-324 1e-323 2.2250738585072014e-308 2.225073858507201e-308 1.7976931348623157e308"
    " 12345678.9 4.35 0.3 29.99 1e100 1e-100 123e300 9.999999999999999e22 inf -inf nan"
)
_DOUBLES = [float(text) for text in _DOUBLE_TEXTS.split()] + [math.pi, math.e, 1 / 3, 2 / 3]


@pytest.mark.parametrize("little", [True, False])
def test_doubles_as_msgspec_writes_them(little: bool) -> None:
    same("ad", [_DOUBLES], little)
    same("d" * len(_DOUBLES), _DOUBLES, little)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=200))
def test_random_double_bit_patterns(bits: list[int]) -> None:
    raw = b"".join(struct.pack("<Q", b) for b in bits)
    body = struct.pack("<I", len(raw)) + b"\0" * 4 + raw
    expected = msgspec.json.encode([[struct.unpack("<d", struct.pack("<Q", b))[0] for b in bits]])
    assert compiled("ad", body, True) == expected == python_json("ad", body, True)


def test_many_random_doubles() -> None:
    import random

    rng = random.Random(5)
    bits = [rng.getrandbits(64) for _ in range(20000)]
    bits += [rng.getrandbits(52) for _ in range(5000)]  # subnormals
    bits += [(rng.randrange(2047) << 52) + rng.choice([-1, 0, 1]) for _ in range(5000)]  # around powers of two
    bits = [b % 2**64 for b in bits]
    floats = [struct.unpack("<d", struct.pack("<Q", b))[0] for b in bits]
    floats += [float(rng.randrange(-(2**62), 2**62)) for _ in range(5000)]
    floats += [float(f"{rng.randrange(1, 10**6)}e{rng.randrange(-320, 300)}") for _ in range(5000)]
    for little in (True, False):
        raw = b"".join(struct.pack("<d" if little else ">d", f) for f in floats)
        body = struct.pack("<I" if little else ">I", len(raw)) + b"\0" * 4 + raw
        assert compiled("ad", body, little) == msgspec.json.encode([floats])


# ------------------------------------------------------------- containers


@pytest.mark.parametrize("little", [True, False])
def test_empty_arrays_keep_their_alignment(little: bool) -> None:
    for signature, vals in [
        ("a(yx)", [[]]),
        ("ta(yx)", [1, []]),  # the length at 8, the padding to 16 still there
        ("ya{sv}y", [1, {}, 2]),
        ("yadu", [1, [], 2]),
        ("yatay", [1, [], b""]),
        ("aaiai", [[[], []], []]),
        ("(yaxy)", [[1, [], 2]]),
    ]:
        same(signature, vals, little)
    body = marshal("ta(yx)", [1, []], little)
    assert len(body) == 16
    declined("ta(yx)", body[:12], little)  # the padding is required even for no elements
    assert python_json("ta(yx)", body[:12], little) is None


def test_nested_variants() -> None:
    v = Variant("v", Variant("v", Variant("(sv)", ["x", Variant("ay", b"\x00\xff")])))
    assert same("v", [v]) == b'[["x","00ff"]]'
    same("av", [[Variant("i", 1), Variant("s", "a"), Variant("a{sv}", {"k": Variant("b", True)})]], False)
    same("a{sv}", [{"a": Variant("d", 0.5), "b": Variant("ao", ["/x"]), "c": Variant("g", "a{sv}")}])


@pytest.mark.parametrize("key", list(_KEYS))
def test_dict_keys_of_every_basic_type(key: str) -> None:
    lo, hi = _INTS.get(key, (0, 1))
    if key == "b":
        keys: list[Any] = [True, False]
    elif key in "sog":
        keys = ["", "a", 'q"uote', "é"]
    else:
        keys = [lo, hi, (lo + hi) // 2]
    for little in (True, False):
        out = same(f"a{{{key}v}}", [{k: Variant("u", i) for i, k in enumerate(keys)}], little)
        if key == "b":
            assert out == b'[{"True":0,"False":1}]'


def test_double_keys_are_declined() -> None:
    body = marshal("a{di}", [{1.5: 1}], True)
    assert python_json("a{di}", body, True) == b'[{"1.5":1}]'
    declined("a{di}", body)


def test_duplicate_keys_are_declined() -> None:
    # Python keeps the first key's place and the last value; the compiled path leaves that to it
    def entries(items: list[tuple[bytes, int]]) -> bytes:
        out = bytearray()
        for key, value in items:
            out.extend(b"\0" * (-len(out) % 8))
            out.extend(key)
            out.extend(b"\0" * (-len(out) % 4))
            out.extend(struct.pack("<I", value))
        return struct.pack("<I", len(out)) + b"\0\0\0\0" + bytes(out)

    s = [struct.pack("<I", 1) + c + b"\0" for c in (b"a", b"b")]
    body = entries([(s[0], 1), (s[1], 2), (s[0], 3)])
    assert python_json("a{su}", body, True) == b'[{"a":3,"b":2}]'
    declined("a{su}", body)
    body = entries([(struct.pack("<I", 1), 1), (struct.pack("<I", 2), 2)])
    assert python_json("a{bu}", body, True) == b'[{"True":2}]'  # 1 and 2 are both True
    declined("a{bu}", body)
    many = entries([(struct.pack("<I", i), i) for i in range(40)] + [(struct.pack("<I", 7), 0)])
    declined("a{uu}", many)  # past the small-dict case: hashed
    same("a{uu}", [{i: i for i in range(40)}])


def test_nesting_depth_limit() -> None:
    for n in (63, 64, 65):
        signature = "a" * n + "i"
        body = b"\0" * 4 if n <= 64 else b""
        agree(signature, body, True)
        value: Any = Variant("i", 1)
        for _ in range(n - 1):
            value = Variant("v", value)
        body = marshal("v", [value], True)
        got = agree("v", body, True)
        assert (got is not None) == (n <= 64)
    assert compiled("a" * 64 + "i", b"\0" * 4, True) == b"[[]]"


def test_malformed_variants_and_signatures_are_declined() -> None:
    declined("v", b"\x00\x00")  # empty variant signature
    declined("v", b"\x02ii\x00" + struct.pack("<ii", 1, 2))  # two complete types
    declined("v", b"\x01i\x01" + struct.pack("<i", 1))  # signature not NUL-terminated
    declined("v", b"\x04{sv}\x00")  # a dict entry outside an array
    for signature in ["a", "(", "()", "(i", "{sv}", "a{vs}", "a{(i)s}", "z", "a" * 65 + "i", "i" * 256]:
        declined(signature, b"\0" * 8)
    declined("", b"\0")
    assert compiled("", b"", True) == b"[]"


def test_array_lengths_are_checked() -> None:
    declined("ay", struct.pack("<I", 5) + b"abc")  # past the end
    declined("ay", struct.pack("<I", (1 << 26) + 1) + b"a")  # over the spec's 64 MiB
    declined("ai", struct.pack("<I", 3) + b"\0\0\0\0")  # not a whole number of elements
    declined("as", struct.pack("<I", 0xFFFFFFF0) + b"\0" * 8)


def test_large_byte_array_is_one_hex_string() -> None:
    data = bytes(range(256)) * 256  # 64 KiB
    for little in (True, False):
        body = marshal("ay", [data], little)
        assert compiled("ay", body, little) == b'["' + data.hex().encode() + b'"]' == python_json("ay", body, little)
    for n in range(0, 70):  # every tail length of the vector loop
        same("ay", [bytes(range(200, 200 + n % 56)) * 1 + bytes(n)])


def test_bytes_like_bodies() -> None:
    body = marshal("su", ["x", 1], True)
    assert compiled("su", bytearray(body), True) == compiled("su", memoryview(body), True) == b'["x",1]'

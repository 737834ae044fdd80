"""Type-aware changes to decoded D-Bus values: bit flips that keep a value valid,
boundary values and type-preserving random values.

Values are as dbus-fast decodes them (lists for structs and arrays, dicts,
``Variant``); types are dbus-fast ``SignatureType`` trees. Everything is a pure
function of its inputs and the given random generator, so a fault plan with a
seed always makes the same change.
"""

from __future__ import annotations

import random
import string
import struct
from collections.abc import Callable
from typing import Any

from dbus_fast import Variant
from dbus_fast.signature import SignatureType, get_signature_tree

_INT_WIDTH = {"y": 8, "n": 16, "q": 16, "i": 32, "u": 32, "x": 64, "t": 64}
_SIGNED = {"n", "i", "x"}
_PATH_CHARS = set(string.ascii_letters + string.digits + "_")
_FLIPPABLE = set(_INT_WIDTH) | {"b", "d", "s", "o", "a", "(", "{", "v"}


class MutationError(ValueError):
    """The requested change cannot be made to this value (e.g. an fd, an empty body)."""


def arg_types(signature: str) -> list[SignatureType]:
    return list(get_signature_tree(signature).types)


def _int_range(token: str) -> tuple[int, int]:
    width = _INT_WIDTH[token]
    if token in _SIGNED:
        return -(1 << (width - 1)), (1 << (width - 1)) - 1
    return 0, (1 << width) - 1


# ------------------------------------------------------------------ walking leaves

Leaf = tuple[str, str]  # (path text, type token)


def leaves(value: Any, t: SignatureType, path: str = "") -> list[Leaf]:
    """Every basic value inside ``value`` that a bit flip can change, in a fixed order."""
    token = t.token
    if token in _INT_WIDTH or token in ("b", "d"):
        return [(path, token)]
    if token == "s":
        return [(path, token)] if value else []
    if token == "o":
        return [(path, token)] if any(c in _PATH_CHARS for c in value) else []
    if token == "v":
        return leaves(value.value, value.type, path + "<v>")
    if token == "(":
        out: list[Leaf] = []
        for i, (child, ct) in enumerate(zip(value, t.children, strict=False)):
            out += leaves(child, ct, f"{path}[{i}]")
        return out
    if token == "a":
        child_t = t.children[0]
        if child_t.token == "{":
            kt, vt = child_t.children
            out = []
            for k, v in value.items():
                out += leaves(k, kt, f"{path}{{{k!r}}}.key")
                out += leaves(v, vt, f"{path}{{{k!r}}}")
            return out
        if child_t.token == "y" and isinstance(value, bytes | bytearray):
            return [(f"{path}[{i}]", "y") for i in range(len(value))]
        out = []
        for i, child in enumerate(value):
            out += leaves(child, child_t, f"{path}[{i}]")
        return out
    return []  # g, h: changing them would change the message's shape or meaning of fds


def replace_leaf(value: Any, t: SignatureType, k: int, fn: Callable[[Any, str], Any]) -> tuple[Any, int]:
    """Return ``value`` with its k-th leaf (in ``leaves`` order) replaced by ``fn(leaf, token)``.

    The second result is how many leaves remain to skip (negative once replaced).
    """
    token = t.token
    if token in _INT_WIDTH or token in ("b", "d") or token == "s" or token == "o":
        if not leaves(value, t):
            return value, k
        return (fn(value, token), -1) if k == 0 else (value, k - 1)
    if token == "v":
        inner, k = replace_leaf(value.value, value.type, k, fn)
        return (Variant(value.type, inner) if k < 0 else value), k
    if token == "(":
        items = list(value)
        for i, ct in enumerate(t.children[: len(items)]):
            items[i], k = replace_leaf(items[i], ct, k, fn)
            if k < 0:
                return items, k
        return value, k
    if token == "a":
        child_t = t.children[0]
        if child_t.token == "{":
            kt, vt = child_t.children
            pairs = list(value.items())
            for i, (key, val) in enumerate(pairs):
                new_key, k = replace_leaf(key, kt, k, fn)
                if k < 0:
                    pairs[i] = (new_key, val)
                    return dict(pairs), k
                new_val, k = replace_leaf(val, vt, k, fn)
                if k < 0:
                    pairs[i] = (key, new_val)
                    return dict(pairs), k
            return value, k
        if child_t.token == "y" and isinstance(value, bytes | bytearray):
            if k < len(value):
                data = bytearray(value)
                data[k] = fn(data[k], "y")
                return bytes(data), -1
            return value, k - len(value)
        items = list(value)
        for i, child in enumerate(items):
            items[i], k = replace_leaf(child, child_t, k, fn)
            if k < 0:
                return items, k
        return value, k
    return value, k


# ------------------------------------------------------------------ bit flips


def flip_bit(value: Any, token: str, rng: random.Random) -> tuple[Any, str]:
    """Flip one bit of a basic value so that it stays a valid value of its type."""
    if token in _INT_WIDTH:
        width = _INT_WIDTH[token]
        bit = rng.randrange(width)
        mask = (1 << width) - 1
        u = (value & mask) ^ (1 << bit)
        if token in _SIGNED and u >= 1 << (width - 1):
            u -= 1 << width
        return u, f"bit {bit}"
    if token == "b":
        return (not value), "bit 0"
    if token == "d":
        bit = rng.randrange(64)
        (u,) = struct.unpack("<Q", struct.pack("<d", value))
        (d,) = struct.unpack("<d", struct.pack("<Q", u ^ (1 << bit)))
        return d, f"bit {bit}"
    if token == "s":
        chars = list(value)
        i = rng.randrange(len(chars))
        code = ord(chars[i])
        if code < 128:
            bits = [b for b in range(7) if code ^ (1 << b) != 0]
        else:
            bits = [b for b in range(8) if not 0xD800 <= code ^ (1 << b) <= 0xDFFF]
        bit = rng.choice(bits)
        chars[i] = chr(code ^ (1 << bit))
        return "".join(chars), f"char {i} bit {bit}"
    if token == "o":
        positions = [i for i, c in enumerate(value) if c in _PATH_CHARS]
        i = rng.choice(positions)
        code = ord(value[i])
        bits = [b for b in range(7) if chr(code ^ (1 << b)) in _PATH_CHARS]
        bit = rng.choice(bits)
        return value[:i] + chr(code ^ (1 << bit)) + value[i + 1 :], f"char {i} bit {bit}"
    raise MutationError(f"cannot flip a bit of type {token!r}")


def flip_args(
    args: list[Any], signature: str, bits: int, rng: random.Random, only: int | None = None
) -> tuple[list[Any], list[str]]:
    """Flip ``bits`` bits across the arguments (or argument ``only``), keeping every value valid."""
    types = arg_types(signature)
    if only is not None and only >= len(types):
        raise MutationError(f"argument {only} does not exist (signature {signature!r})")
    indexes = [only] if only is not None else list(range(len(types)))
    args = list(args)
    changes: list[str] = []
    for _ in range(bits):
        candidates = [(i, n) for i in indexes for n in range(len(leaves(args[i], types[i])))]
        if not candidates:
            raise MutationError("no argument value that a bit flip can change")
        i, n = rng.choice(candidates)
        where = leaves(args[i], types[i])[n][0]
        note: list[str] = []

        def change(old: Any, token: str, _note: list[str] = note, _label: str = f"arg {i}{where}") -> Any:
            new, how = flip_bit(old, token, rng)
            _note.append(f"{_label}: {_short(old)} -> {_short(new)} ({how})")
            return new

        args[i], _ = replace_leaf(args[i], types[i], n, change)
        changes += note
    return args, changes


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------ boundary and random values


def boundary(value: Any, t: SignatureType, which: str) -> Any:
    """An edge value of the same type: min, max, zero, empty or long."""
    token = t.token
    if token in _INT_WIDTH:
        lo, hi = _int_range(token)
        return {"min": lo, "max": hi, "long": hi}.get(which, 0)
    if token == "b":
        return which in ("max", "long")
    if token == "d":
        return {"min": -1.7976931348623157e308, "max": 1.7976931348623157e308, "long": float("inf")}.get(which, 0.0)
    if token == "s":
        return "A" * 65536 if which in ("max", "long") else ""
    if token == "o":
        return "/" + "/".join(["a" * 63] * 64) if which in ("max", "long") else "/"
    if token == "g":
        return "s" * 255 if which in ("max", "long") else ""
    if token == "v":
        return Variant(value.type, boundary(value.value, value.type, which))
    if token == "(":
        return [boundary(v, ct, which) for v, ct in zip(value, t.children, strict=False)]
    if token == "a":
        child_t = t.children[0]
        if which not in ("max", "long"):
            return {} if child_t.token == "{" else (b"" if child_t.token == "y" else [])
        if child_t.token == "{":
            kt, vt = child_t.children
            return {_random(None, kt, random.Random(i)): _zero(vt) for i in range(1024)}
        if child_t.token == "y":
            return b"\xff" * 65536
        return [_zero(child_t) for _ in range(1024)]
    raise MutationError(f"no boundary value for type {token!r}")


def _zero(t: SignatureType) -> Any:
    return boundary(None, t, "zero") if t.token != "v" else Variant("s", "")


def random_value(value: Any, t: SignatureType, rng: random.Random) -> Any:
    """A random value of the same type (a variant keeps its inner type)."""
    return _random(value, t, rng)


def _random(value: Any, t: SignatureType, rng: random.Random, depth: int = 0) -> Any:
    token = t.token
    if token in _INT_WIDTH:
        lo, hi = _int_range(token)
        return rng.randint(lo, hi)
    if token == "b":
        return rng.random() < 0.5
    if token == "d":
        return rng.uniform(-1e9, 1e9)
    if token == "s":
        return "".join(rng.choice(string.ascii_letters + string.digits + " -_.") for _ in range(rng.randint(0, 32)))
    if token == "o":
        parts = [
            "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 8)))
            for _ in range(rng.randint(1, 3))
        ]
        return "/" + "/".join(parts)
    if token == "g":
        return "".join(rng.choice("ybnqiuxtdsog") for _ in range(rng.randint(0, 4)))
    if token == "v":
        if value is None:
            return Variant("s", _random(None, get_signature_tree("s").types[0], rng))
        return Variant(value.type, _random(value.value, value.type, rng, depth + 1))
    if token == "(":
        children = value if value is not None else [None] * len(t.children)
        return [_random(v, ct, rng, depth + 1) for v, ct in zip(children, t.children, strict=False)]
    if token == "a":
        child_t = t.children[0]
        n = rng.randint(0, 4 if depth < 3 else 0)
        if child_t.token == "{":
            kt, vt = child_t.children
            return {_random(None, kt, rng, depth + 1): _random(None, vt, rng, depth + 1) for _ in range(n)}
        if child_t.token == "y":
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 32)))
        return [_random(None, child_t, rng, depth + 1) for _ in range(n)]
    raise MutationError(f"no random value for type {token!r}")


def coerce(given: Any, value: Any, t: SignatureType) -> Any:
    """A value from a plan (plain YAML data) in the shape the marshaller needs for type ``t``."""
    token = t.token
    if token == "v":
        if isinstance(given, dict) and set(given) == {"signature", "value"}:
            inner_t = get_signature_tree(given["signature"]).types[0]
            return Variant(given["signature"], coerce(given["value"], None, inner_t))
        inner_type = value.type if value is not None else get_signature_tree("s").types[0]
        return Variant(inner_type, coerce(given, value.value if value is not None else None, inner_type))
    if token == "a" and t.children[0].token == "y" and isinstance(given, str):
        return bytes.fromhex(given)
    if token == "a" and t.children[0].token == "{" and isinstance(given, dict):
        kt, vt = t.children[0].children
        return {coerce(k, None, kt): coerce(v, None, vt) for k, v in given.items()}
    if token == "a" and isinstance(given, list):
        return [coerce(v, None, t.children[0]) for v in given]
    if token == "(" and isinstance(given, list):
        return [coerce(v, None, ct) for v, ct in zip(given, t.children, strict=False)]
    if token == "d" and isinstance(given, int):
        return float(given)
    if token in _INT_WIDTH and isinstance(given, str):
        return int(given, 0)
    return given

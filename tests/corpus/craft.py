"""Regenerate the crafted half of the fuzz corpus: edge cases real clients rarely send.

Big-endian twins of captured messages, header fields in reverse order,
unknown header fields, fds, empty and nested containers, the longest
signature; plus ``malformed-*.bin``, frames the parser must reject. Run from
the repository root:

    .venv/bin/python tests/corpus/craft.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent / "src")]

from dbus_fast.signature import get_signature_tree  # noqa: E402

from ipcproxy.dbus.wire import (  # noqa: E402
    DESTINATION,
    INTERFACE,
    MEMBER,
    PATH,
    SIGNATURE,
    UNIX_FDS,
    parse_header_fields,
    parse_message,
)
from test_wire import MALFORMED, call_fields, frame, plain  # noqa: E402


def twin(raw: bytes, endian: str, reverse: bool) -> bytes:
    """The same message in another byte order, header fields optionally reversed."""
    m = parse_message(raw)
    fields = parse_header_fields(raw)
    kinds = {1: "o", 2: "s", 3: "s", 4: "s", 5: "u", 6: "s", 7: "s", 8: "g", 9: "u"}
    items = [(code, kinds[code], value) for code, value in fields.items()]
    if reverse:
        items.reverse()
    types = get_signature_tree(m.signature).types
    body = [plain(t, v) for t, v in zip(types, m.args, strict=True)]
    return frame(endian, int(m.type), m.serial, items, m.signature, body, flags=m.flags)


def crafted() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    captured = sorted(HERE.glob("captured-*.bin"))
    for i, path in enumerate(captured):
        if i % 3 == 0:
            out[f"be-{path.stem[9:]}"] = twin(path.read_bytes(), "B", reverse=i % 2 == 0)
        elif i % 3 == 1:
            out[f"reversed-{path.stem[9:]}"] = twin(path.read_bytes(), "l", reverse=True)
    out["fds-le"] = frame("l", 1, 3, [*call_fields(signature="hsh"), (UNIX_FDS, "u", 2)], "hsh", [0, "x", 1])
    out["fds-be-first-field"] = frame("B", 1, 4, [(UNIX_FDS, "u", 1), *call_fields(signature="h")], "h", [0])
    out["unknown-fields"] = frame(
        "l", 1, 5, [(0x30, "s", "x"), *call_fields(), (0xFF, "u", 1), (0x31, "g", "a{sv}"), (0x32, "t", 7), (0, "y", 3)]
    )
    out["unknown-field-with-fds"] = frame(
        "B", 1, 6, [(0x31, "d", 1.5), *call_fields(signature="h"), (UNIX_FDS, "u", 1), (0x33, "o", "/x")], "h", [0]
    )
    out["empty-containers"] = frame(
        "l", 1, 7, call_fields(signature="a(ii)a{sv}atayas"), "a(ii)a{sv}atayas", [[], {}, [], b"", []]
    )
    out["empty-containers-be"] = frame("B", 1, 8, call_fields(signature="ya(yt)y"), "ya(yt)y", [1, [], 2])
    deep = "a" * 31 + "y"
    value: Any = b"\x01"
    for _ in range(30):
        value = [value]
    out["deep-arrays"] = frame("l", 1, 9, call_fields(signature=deep), deep, [value])
    nested = ("v", ("v", ("v", ("(sv)", ["x", ("ay", b"\x00\xff")]))))
    out["nested-variants-be"] = frame(
        "B",
        4,
        10,
        [(PATH, "o", "/v"), (INTERFACE, "s", "a.b"), (MEMBER, "s", "V"), (SIGNATURE, "g", "v")],
        "v",
        [nested],
    )
    longest = "y" * 255
    out["longest-signature"] = frame("l", 1, 11, call_fields(signature=longest), longest, list(range(255)))
    out["big-string-be"] = frame("B", 1, 12, call_fields(signature="s"), "s", ["é" * 20000])
    out["max-serial-flags"] = frame("l", 1, 0xFFFFFFFF, call_fields(destination=None), flags=0x07)
    out["all-basic-types-be"] = frame(
        "B",
        1,
        13,
        call_fields(signature="ybnqiuxtdsogh", interface=None),
        "ybnqiuxtdsogh",
        [255, True, -32768, 65535, -(2**31), 2**32 - 1, -(2**63), 2**64 - 1, -1.25, "s", "/o/p", "a{sv}", 0],
    )
    out["signal-with-sender"] = frame(
        "l",
        4,
        14,
        [(7, "s", ":1.99"), (PATH, "o", "/"), (INTERFACE, "s", "a.b"), (MEMBER, "s", "S"), (DESTINATION, "s", ":1.2")],
    )
    return out


def main() -> int:
    for old in [*HERE.glob("crafted-*.bin"), *HERE.glob("malformed-*.bin")]:
        old.unlink()
    made = crafted()
    for name, raw in made.items():
        parse_message(raw)  # every crafted message is valid
        (HERE / f"crafted-{name}.bin").write_bytes(raw)
    for name, raw in MALFORMED.items():
        (HERE / f"malformed-{name.replace(' ', '-')}.bin").write_bytes(raw)
    print(f"{len(made)} crafted and {len(MALFORMED)} malformed messages written to {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

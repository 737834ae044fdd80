"""Human rendering of records, shared by the live view and `show`.

A message is one header line in the spirit of ``dbus-monitor`` (type, sender
-> destination, serials, path/interface/member, latency, verdict), followed by
one line per argument labelled with its D-Bus type from the signature. Plain
string building only: `show` must keep up with traces of millions of records.
"""

from __future__ import annotations

from typing import Any

import msgspec
from dbus_fast.signature import SignatureType, get_signature_tree

ARG_LIMIT = 300  # characters of one rendered argument before it is cut
_json = msgspec.json.Encoder()

_TYPE_LABELS = {
    "y": "byte",
    "b": "boolean",
    "n": "int16",
    "q": "uint16",
    "i": "int32",
    "u": "uint32",
    "x": "int64",
    "t": "uint64",
    "d": "double",
    "h": "unix_fd",
    "s": "string",
    "o": "object_path",
    "g": "signature",
    "v": "variant",
}

# ANSI styles, used only when writing to a terminal
_STYLES = {
    "method_call": "\x1b[36m",
    "method_return": "\x1b[32m",
    "error": "\x1b[1;31m",
    "signal": "\x1b[35m",
    "event": "\x1b[33m",
    "verdict": "\x1b[1;31m",
    "dim": "\x1b[2m",
}
_RESET = "\x1b[0m"
_VERDICT_KEYS = ("error_name", "delay_ms", "copies", "hold_for", "side")


def endpoint_label(ep: dict[str, Any] | None) -> str:
    """Short name of an endpoint: well-known name, else comm or exe, with the unique name in brackets."""
    if not ep:
        return "-"
    names = [n for n in ep.get("names") or [] if not n.startswith(":")]
    exe = ep.get("exe")
    label = names[0] if names else (ep.get("comm") or (exe.rsplit("/", 1)[-1] if exe else None) or ep.get("bus_name"))
    unique = ep.get("bus_name")
    if label is None:
        return "*"
    if unique and unique != label:
        return f"{label}({unique})"
    return str(label)


def type_label(t: SignatureType) -> str:
    """Readable name of one complete type: ``array<string>``, ``dict<string,variant>``, ``struct<int32,string>``."""
    if t.token == "a":
        child = t.children[0]
        if child.token == "{":
            return f"dict<{type_label(child.children[0])},{type_label(child.children[1])}>"
        if child.token == "y":
            return "bytes"
        return f"array<{type_label(child)}>"
    if t.token == "(":
        return "struct<" + ",".join(type_label(c) for c in t.children) + ">"
    return _TYPE_LABELS.get(t.token, t.token)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} chars)"


def _value(value: Any) -> str:
    try:
        return _json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def format_args(signature: str, args: list[Any], limit: int = ARG_LIMIT) -> list[str]:
    """One line per argument, ``<type> <value>``; values stay JSON as in the trace (bytes as hex)."""
    try:
        types = get_signature_tree(signature).types if signature else []
    except Exception:  # noqa: BLE001 - a trace may hold any signature; render untyped
        types = []
    lines = []
    for i, value in enumerate(args):
        label = type_label(types[i]) if i < len(types) else "?"
        lines.append(_cut(f"{label} {_value(value)}", limit))
    return lines


def _verdict_text(verdict: Any) -> str | None:
    if verdict is None or verdict == "forwarded":
        return None
    if isinstance(verdict, str):
        return verdict
    if isinstance(verdict, dict):
        # the action and what caused it; the interceptors' own notes are in --json
        words = [str(verdict.get("action", "?"))]
        if verdict.get("reason"):
            words[0] += ":"
            words.append(str(verdict["reason"]))
        for key in _VERDICT_KEYS:
            if verdict.get(key) is not None:
                words.append(f"{key}={verdict[key]}")
        return " ".join(words)
    return str(verdict)


def _clock(rec: dict[str, Any], t0: int | None) -> str:
    if t0 is not None and isinstance(rec.get("ts"), int):
        return f"+{(rec['ts'] - t0) / 1e9:.6f}"
    text = str(rec.get("time", ""))
    return text[11:-1] if len(text) > 20 else text  # time of day, as dbus-monitor shows it


def _paint(text: str, style: str | None, color: bool) -> str:
    if not color or style is None or style not in _STYLES:
        return text
    return f"{_STYLES[style]}{text}{_RESET}"


def _opaque_line(rec: dict[str, Any]) -> str:
    """``opaque shared-memory mmap python(7) shm:/dev/shm/x 4096 B with python(7),python(8)``."""
    words = ["opaque", str(rec.get("mechanism")), str(rec.get("syscall")), process_label(rec.get("process"))]
    words.append(channel_label(rec.get("channel")))
    if rec.get("size") is not None:
        words.append(f"{rec['size']} B")
    processes = rec.get("processes")
    if isinstance(processes, list) and processes:
        words.append("with " + ",".join(process_label(p) for p in processes if isinstance(p, dict)))
    words.append(f"({rec.get('note')})")
    return " ".join(words)


def _event_line(rec: dict[str, Any]) -> str:
    if rec.get("event") == "opaque":
        return _opaque_line(rec)
    if rec.get("event") == "dbus_auth":  # a D-Bus handshake line seen by `trace --framing dbus`
        where = f"pid={rec.get('pid')} fd={rec.get('fd')} {channel_label(rec.get('channel'))}"
        return f"dbus_auth {rec.get('direction') or '?'} {where} {rec.get('line')!r}"
    words = [f"{rec.get('event')}"]
    if rec.get("connection") is not None:
        words.append(f"connection={rec['connection']}")
    client = rec.get("client")
    if isinstance(client, dict):
        words.append(endpoint_label(client))
        for key in ("pid", "uid", "exe"):
            if client.get(key) is not None:
                words.append(f"{key}={client[key]}")
    for key, value in rec.items():
        if key in ("seq", "ts", "time", "type", "event", "connection", "client"):
            continue
        words.append(f"{key}={value if isinstance(value, str) else _value(value)}")
    return " ".join(words)


def process_label(ep: dict[str, Any] | None) -> str:
    """A process endpoint (the syscall transport): ``comm(pid)``; ``?`` when nothing is known."""
    if not ep:
        return "?"
    exe = ep.get("exe")
    name = ep.get("comm") or (exe.rsplit("/", 1)[-1] if exe else None)
    pid = ep.get("pid")
    if pid is None:
        return str(name) if name else "?"
    return f"{name}({pid})" if name else f"pid {pid}"


def channel_label(channel: dict[str, Any] | None) -> str:
    """``pipe:[1234]``, ``fifo:/run/x``, ``unix:/run/x.sock``, ``tcp:127.0.0.1:4000->127.0.0.1:51234``."""
    if not channel:
        return "?"
    kind = channel.get("kind", "?")
    for ident in ("msqid", "shmid"):  # a SysV queue or segment: its key as ipcs prints it
        if ident in channel:
            key = channel.get("key")
            shown = f"key=0x{key & 0xFFFFFFFF:08x}," if isinstance(key, int) else ""
            return f"{kind}:{shown}{ident}={channel[ident]}"
    if channel.get("local"):
        remote = f"->{channel['remote']}" if channel.get("remote") else ""
        return f"{kind}:{channel['local']}{remote}"
    if channel.get("path"):
        return f"{kind}:{channel['path']}"
    return f"{kind}:[{channel.get('inode')}]"


def payload_preview(hex_text: str, limit: int = ARG_LIMIT) -> str:
    """A payload as escaped text (``"1\\n2\\n"``), cut like an argument."""
    try:
        data = bytes.fromhex(hex_text)
    except ValueError:
        return "(payload is not hex)"
    return _cut(repr(data)[1:], limit)


def _data_line(rec: dict[str, Any], parts: list[str], color: bool, args: bool, limit: int) -> str:
    parts.append(f"{process_label(rec.get('sender'))} -> {process_label(rec.get('destination'))}")
    fd = f" fd={rec['fd']}" if rec.get("fd") is not None else ""
    parts.append(f"{rec.get('syscall')}{fd} {rec.get('size')} B {channel_label(rec.get('channel'))}")
    for key in ("priority", "mtype", "msgtyp"):  # message queues
        if rec.get(key) is not None:
            parts.append(f"{key}={rec[key]}")
    consumed = rec.get("consumed")
    if isinstance(consumed, list):
        parts.append("consumed=" + ",".join(f"#{c}" if isinstance(c, int) else str(c) for c in consumed))
    if rec.get("fds"):
        parts.append(f"fds={rec['fds']}")
    syscalls = rec.get("syscalls")
    if isinstance(syscalls, list) and len(syscalls) > 1:  # a framed message carried by several calls
        parts.append(f"({len(syscalls)} syscalls)")
    if rec.get("partial"):
        parts.append("(partial: the trace ended inside it)")
    verdict = _verdict_text(rec.get("verdict"))
    if verdict:
        parts.append(_paint(f"[{verdict}]", "verdict", color))
    line = " ".join(parts)
    if rec.get("framing_error"):
        line += "\n    " + _paint(f"{rec.get('framing')} framing: {rec['framing_error']}", "error", color)
    if args and rec.get("payload"):
        line += "\n    " + payload_preview(str(rec["payload"]), limit)
        if rec.get("truncated"):
            line += " (truncated)"
    return line


def format_record(
    rec: dict[str, Any], t0: int | None = None, color: bool = False, args: bool = True, limit: int = ARG_LIMIT
) -> str:
    """Render a record; ``t0`` (a record ``ts``) switches the clock to time relative to it."""
    seq = _paint(f"#{rec.get('seq')}", "dim", color)
    clock = _paint(_clock(rec, t0), "dim", color)
    kind = str(rec.get("type", "?"))
    if kind == "event":
        return f"{seq} {clock} {_paint('**', 'event', color)} {_event_line(rec)}"
    if kind == "data":
        return _data_line(
            rec, [seq, clock, _paint(f"{rec.get('transport')} {rec.get('direction')}", kind, color)], color, args, limit
        )
    destination = endpoint_label(rec.get("destination"))
    if destination == "*" and rec.get("destination_name"):
        destination = str(rec["destination_name"])
    parts = [seq, clock, _paint(kind, kind, color), f"{endpoint_label(rec.get('sender'))} -> {destination}"]
    parts.append(f"serial={rec.get('serial')}")
    if rec.get("reply_serial") is not None:
        parts.append(f"reply_serial={rec['reply_serial']}")
    for key in ("path", "interface", "member"):
        if rec.get(key):
            parts.append(f"{key}={rec[key]}")
    if rec.get("error_name"):
        parts.append(_paint(f"error={rec['error_name']}", "error", color))
    if rec.get("latency_ns") is not None:
        parts.append(f"latency={rec['latency_ns'] / 1e6:.3f}ms")
    if rec.get("fds"):
        parts.append(f"fds={rec['fds']}")
    verdict = _verdict_text(rec.get("verdict"))
    if verdict:
        parts.append(_paint(f"[{verdict}]", "verdict", color))
    line = " ".join(str(p) for p in parts)
    if args and rec.get("args"):
        for text in format_args(str(rec.get("signature") or ""), list(rec["args"]), limit):
            line += "\n    " + text
    if rec.get("args_error"):
        line += f"\n    (body undecodable: {rec['args_error']})"
    return line

"""One-line rendering of records, shared by the live view and `show`."""

from __future__ import annotations

from typing import Any


def _name(ep: dict[str, Any] | None) -> str:
    if not ep:
        return "-"
    names = [n for n in ep.get("names") or [] if not n.startswith(":")]
    label = names[0] if names else (ep.get("comm") or ep.get("bus_name") or "?")
    unique = ep.get("bus_name")
    if unique and unique != label:
        return f"{label}({unique})"
    return str(label)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_record(rec: dict[str, Any]) -> str:
    seq = rec.get("seq")
    if rec.get("type") == "event":
        extra = {k: v for k, v in rec.items() if k not in ("seq", "ts", "time", "type", "event")}
        return f"#{seq} {rec.get('time', '')} -- {rec.get('event')} {_short(extra, 200)}"
    kind = rec.get("type", "?")
    parts = [
        f"#{seq}",
        rec.get("time", ""),
        kind,
        f"{_name(rec.get('sender'))} -> {_name(rec.get('destination'))}",
    ]
    parts.append(f"serial={rec.get('serial')}")
    if rec.get("reply_serial") is not None:
        parts.append(f"reply_serial={rec.get('reply_serial')}")
    if rec.get("path"):
        parts.append(f"path={rec['path']}")
    if rec.get("interface"):
        parts.append(f"interface={rec['interface']}")
    if rec.get("member"):
        parts.append(f"member={rec['member']}")
    if rec.get("error_name"):
        parts.append(f"error={rec['error_name']}")
    if rec.get("latency_ns") is not None:
        parts.append(f"latency={rec['latency_ns'] / 1e6:.3f}ms")
    verdict = rec.get("verdict")
    if verdict and verdict != "forwarded":
        parts.append(f"verdict={verdict if isinstance(verdict, str) else verdict}")
    line = " ".join(str(p) for p in parts)
    args = rec.get("args")
    if args:
        line += "\n    " + _short(args, 400)
    if rec.get("args_error"):
        line += f"\n    (body undecodable: {rec['args_error']})"
    return line

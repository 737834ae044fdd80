"""Filter expressions over trace records, shared by `show`, `stats`-like tools and the live view.

An expression is a list of ``key=value`` / ``key!=value`` terms, all of which
must hold. Values are shell-style globs and may list alternatives separated by
commas (``member=Get,GetAll``). The matcher works on record dicts, so the same
expression means the same thing live, on a trace file, and on an imported pcap.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import InputError

Record = dict[str, Any]
Matcher = Callable[[Record], bool]

TYPES = ("method_call", "method_return", "error", "signal", "data", "event")
TYPE_ALIASES = {"call": "method_call", "return": "method_return", "reply": "method_return"}
KEYS = (
    "type",
    "member",
    "interface",
    "path",
    "sender",
    "destination",
    "component",
    "error",
    "verdict",
    "serial",
    "reply_serial",
    "connection",
    "event",
    "direction",
    "signature",
)
_INT_KEYS = ("serial", "reply_serial", "connection")


class FilterError(ValueError, InputError):
    """A bad expression: a ValueError for callers, and a one-line usage error if nobody catches it."""


_TERM = re.compile(r"^([A-Za-z_]+)(!=|=)(.*)$", re.DOTALL)


def endpoint_identities(ep: dict[str, Any] | None) -> list[str]:
    """Every name a component may be called by: unique name, owned names, exe (and its basename), comm."""
    if not ep:
        return []
    out: list[str] = []
    if ep.get("bus_name"):
        out.append(str(ep["bus_name"]))
    out.extend(str(n) for n in ep.get("names") or [])
    exe = ep.get("exe")
    if exe:
        out.append(str(exe))
        out.append(str(exe).rsplit("/", 1)[-1])
    if ep.get("comm"):
        out.append(str(ep["comm"]))
    return out


def verdict_action(verdict: Any) -> str | None:
    """The action word of a verdict, whichever form (string or object) it was recorded in."""
    if isinstance(verdict, str):
        return verdict
    if isinstance(verdict, dict):
        action = verdict.get("action")
        return str(action) if action is not None else None
    return None


def _sender_names(rec: Record) -> list[str]:
    if rec.get("type") == "event":
        return endpoint_identities(rec.get("client"))
    return endpoint_identities(rec.get("sender"))


def _destination_names(rec: Record) -> list[str]:
    if rec.get("type") == "event":
        return endpoint_identities(rec.get("client"))
    names = endpoint_identities(rec.get("destination"))
    if rec.get("destination_name"):
        names.append(str(rec["destination_name"]))
    return names


def _field(name: str) -> Callable[[Record], list[str]]:
    def get(rec: Record) -> list[str]:
        value = rec.get(name)
        return [] if value is None else [str(value)]

    return get


_EXTRACTORS: dict[str, Callable[[Record], list[str]]] = {
    "type": _field("type"),
    "member": _field("member"),
    "interface": _field("interface"),
    "path": _field("path"),
    "sender": _sender_names,
    "destination": _destination_names,
    "component": lambda rec: _sender_names(rec) + _destination_names(rec),
    "error": _field("error_name"),
    "verdict": lambda rec: [a] if (a := verdict_action(rec.get("verdict"))) else [],
    "serial": _field("serial"),
    "reply_serial": _field("reply_serial"),
    "connection": _field("connection"),
    "event": _field("event"),
    "direction": _field("direction"),
    "signature": _field("signature"),
}


def _value_matcher(key: str, pattern: str) -> Callable[[Iterable[str]], bool]:
    """Whether any of the record's values for ``key`` matches one of the comma-separated alternatives."""
    alternatives = pattern.split(",") if pattern else [""]
    if key == "type":
        alternatives = [TYPE_ALIASES.get(a, a) for a in alternatives]
        for alt in alternatives:
            if not _is_glob(alt) and alt not in TYPES:
                raise FilterError(f"unknown message type {alt!r} in filter (known: {', '.join(TYPES)})")
    if key in _INT_KEYS:
        for alt in alternatives:
            if not _is_glob(alt) and not alt.isdigit():
                raise FilterError(f"{key} must be a number, not {alt!r}")
    plain = [a for a in alternatives if not _is_glob(a)]
    globs = [a for a in alternatives if _is_glob(a)]
    plain_set = set(plain)

    def match(values: Iterable[str]) -> bool:
        seen = False
        for value in values:
            seen = True
            if value in plain_set:
                return True
            for g in globs:
                if fnmatch.fnmatchcase(value, g):
                    return True
        # an empty value asks for records where the field is absent
        return not seen and "" in plain_set

    return match


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def parse_filter(expr: str) -> Matcher:
    """Compile ``expr`` into a predicate on records; raise FilterError (a ValueError) with a one-line reason."""
    try:
        terms = shlex.split(expr or "")
    except ValueError as exc:
        raise FilterError(f"bad filter {expr!r}: {exc}") from None
    checks: list[tuple[Callable[[Record], list[str]], Callable[[Iterable[str]], bool], bool]] = []
    for term in terms:
        m = _TERM.match(term)
        if m is None:
            raise FilterError(f"bad filter term {term!r}: expected key=value or key!=value")
        key, op, value = m.group(1), m.group(2), m.group(3)
        if key not in _EXTRACTORS:
            raise FilterError(f"unknown filter key {key!r} (known: {', '.join(KEYS)})")
        checks.append((_EXTRACTORS[key], _value_matcher(key, value), op == "!="))

    def matches(rec: Record) -> bool:
        return all(match(extract(rec)) != negate for extract, match, negate in checks)

    return matches

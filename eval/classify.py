"""Reading a run's trace: which messages were denied, and by whom, and what became of a misuse call.

The proxy records every run (also the dbus-daemon ones, where it enforces
nothing), so ipcproxy's denials (verdict ``denied``) and the bus's own
(an AccessDenied error from org.freedesktop.DBus that ipcproxy did not make
up) are read from the same kind of file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ipcproxy.model import BUS_DRIVER_NAME

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"


def _action(record: dict[str, Any]) -> str:
    verdict = record.get("verdict")
    return str(verdict.get("action")) if isinstance(verdict, dict) else str(verdict)


def messages(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") != "event"]


def enforcer_denials(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in messages(records) if _action(r) == "denied"]


def bus_denials(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AccessDenied errors the bus itself sent (ipcproxy's own answers are recorded as 'injected')."""
    return [
        r
        for r in messages(records)
        if r.get("type") == "error"
        and r.get("error_name") == ACCESS_DENIED
        and (r.get("sender") or {}).get("bus_name") == BUS_DRIVER_NAME
        and r.get("direction") == "from_bus"
        and _action(r) != "injected"
    ]


@dataclass
class Outcome:
    attempted: bool
    blocked: bool
    by: str | None = None  # ipcproxy | dbus-daemon
    kind: str | None = None  # ipcproxy's kind of denial (no-rule, args, order, own, ...)
    reason: str = ""

    def cell(self) -> str:
        if not self.attempted:
            return "not attempted"
        if not self.blocked:
            return "let through"
        return f"blocked ({self.kind})" if self.kind else "blocked"


def outcome(records: list[dict[str, Any]], member: str, uid: int, arg0: object = None) -> Outcome:
    msgs = messages(records)
    calls = [
        r
        for r in msgs
        if r.get("direction") == "to_bus"
        and r.get("type") == "method_call"
        and r.get("member") == member
        and (r.get("sender") or {}).get("uid") == uid
        and (arg0 is None or (r.get("args") or [None])[0] == arg0)
    ]
    if not calls:
        return Outcome(False, False)
    call = calls[-1]
    sender = (call.get("sender") or {}).get("bus_name")
    if _action(call) == "denied":
        return _denied_by_ipcproxy(call)
    delivered = [
        r
        for r in msgs
        if r.get("direction") == "from_bus"
        and r.get("type") == "method_call"
        and r.get("serial") == call.get("serial")
        and (r.get("sender") or {}).get("bus_name") == sender
    ]
    for record in delivered:
        if _action(record) == "denied":
            return _denied_by_ipcproxy(record)
    for record in bus_denials(records):
        if record.get("connection") == call.get("connection") and record.get("reply_serial") == call.get("serial"):
            text = (record.get("args") or [""])[0]
            return Outcome(True, True, "dbus-daemon", None, str(text))
    return Outcome(True, False)


def _denied_by_ipcproxy(record: dict[str, Any]) -> Outcome:
    verdict = record.get("verdict") or {}
    return Outcome(True, True, "ipcproxy", verdict.get("policy"), str(verdict.get("reason", "")))

"""Checking traces against a policy offline: the enforcer's own decisions, replayed.

Every message is decided exactly as the live enforcer would (same code, same
per-connection order state) in complain semantics: the traffic happened, so
order history advances past a violation and later messages are judged on
their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..model import MessageType
from ..trace.replay import Replayed
from .decide import ORDER, Decision, OrderTracker, decide
from .identity import peer_label
from .model import Policy


@dataclass(slots=True)
class Finding:
    """One message the policy would not allow."""

    trace: str
    seq: int
    component: str
    kind: str  # no-rule, args, own, reply, order, no-profile, undecidable
    reason: str
    needed: str | None
    message: str  # short description of the message

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "seq": self.seq,
            "component": self.component,
            "kind": self.kind,
            "reason": self.reason,
            "needed": self.needed,
            "message": self.message,
        }


@dataclass(slots=True)
class Report:
    checked: int = 0
    violations: list[Finding] = field(default_factory=list)
    anomalies: list[Finding] = field(default_factory=list)  # order anomalies

    @property
    def clean(self) -> bool:
        return not self.violations and not self.anomalies


def describe(item: Replayed) -> str:
    r = item.record
    if item.ctx.message.type is MessageType.DATA:
        return _describe_data(item)
    what = r.get("member") or r.get("error_name") or ""
    if r.get("interface"):
        what = f"{r['interface']}.{what}"
    text = f"{r.get('type')} {what}".strip()
    if r.get("path"):
        text += f" on {r['path']}"
    peer = item.ctx.destination if item.ctx.direction.value == "to_bus" else item.ctx.sender
    arrow = "to" if item.ctx.direction.value == "to_bus" else "from"
    return f"{text} {arrow} {peer.component}"


def _describe_data(item: Replayed) -> str:
    """``send write pipe fd=1 3893 B to /usr/bin/sort``, with the channel's name when it has one."""
    r = item.record
    channel = r.get("channel") or {}
    where = channel.get("path") or " ".join(str(channel[k]) for k in ("local", "remote") if channel.get(k))
    send = r.get("direction") == "send"
    peer = peer_label(item.ctx.destination if send else item.ctx.sender)
    text = f"data {r.get('direction')} {r.get('syscall')} {r.get('transport')} fd={r.get('fd')}"
    if where:
        text += f" {where}"
    return f"{text} {r.get('size')} B {'to' if send else 'from'} {peer}"


def check(policy: Policy, items: Iterable[Replayed]) -> Report:
    report = Report()
    order = OrderTracker(max(policy.order_n, 1))
    for item in items:
        data = item.ctx.message.type is MessageType.DATA
        if item.injected or (item.ctx.message.transport != "dbus" and not data):
            continue
        report.checked += 1
        try:
            decision = decide(policy, item.ctx, order, advance_on_deny=True)
        except Exception as exc:  # noqa: BLE001 - what the enforcer would deny, reported as such
            decision = Decision(False, "undecidable", f"cannot decide: {exc}", item.ctx.client.component)
        if decision.allowed:
            continue
        finding = Finding(
            trace=item.trace,
            seq=int(item.record.get("seq") or 0),
            component=decision.subject,
            kind=decision.kind,
            reason=decision.reason,
            needed=decision.needed,
            message=describe(item),
        )
        (report.anomalies if decision.kind == ORDER else report.violations).append(finding)
    return report

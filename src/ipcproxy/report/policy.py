"""A policy as the report's matrix: component × peer × member, with rule hit counts and violations.

No I/O: a loaded policy and (optionally) replayed traces in, a dict out. The
violations are `ipcproxy check`'s own findings (``policy.check``); a hit is a
message the enforcer's decision (``policy.decide``, replayed the same way)
let through by that rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..policy.check import check
from ..policy.decide import OrderTracker, decide
from ..policy.model import Policy, Rule
from ..trace.replay import Replayed


def _peer_of(item: Replayed) -> str:
    ctx = item.ctx
    return ctx.destination.component if ctx.direction.value == "to_bus" else ctx.sender.component


def _rule_json(rule: Rule, index: int) -> dict[str, Any]:
    return {
        "id": index,
        "direction": rule.direction,
        "type": rule.type,
        "peer": rule.peer,
        "interface": rule.interface,
        "member": rule.member,
        "path": rule.path_prefix or (", ".join(rule.paths) if rule.paths else None),
        "args": bool(rule.args),
        "text": rule.describe(),
        "line": rule.line,
        "hits": 0,
    }


def build_policy(policy: Policy, items: Iterable[Replayed] | None = None) -> dict[str, Any]:
    """The matrix's data: each subject's rules (with hits) and every violation found in the traces."""
    subjects = []
    rule_ids: dict[int, dict[str, Any]] = {}  # id(rule) -> its JSON
    for subject in policy.subjects:
        rules = []
        for rule in subject.rules:
            data = _rule_json(rule, len(rule_ids))
            rule_ids[id(rule)] = data
            rules.append(data)
        subjects.append({"component": subject.label, "own": list(subject.own), "rules": rules, "line": subject.line})
    out: dict[str, Any] = {
        "source": policy.source,
        "unknown": policy.unknown,
        "subjects": subjects,
        "checked": None,
        "violations": [],
        "anomalies": [],
    }
    if items is None:
        return out
    replayed = [item for item in items if not item.injected]
    order = OrderTracker(max(policy.order_n, 1))
    for item in replayed:
        try:
            decision = decide(policy, item.ctx, order, advance_on_deny=True)
        except Exception:  # noqa: BLE001 - undecidable: check() reports it
            continue
        if decision.allowed and decision.rule is not None and id(decision.rule) in rule_ids:
            rule_ids[id(decision.rule)]["hits"] += 1
    peers = {(item.trace, int(item.record.get("seq") or 0)): (_peer_of(item), item.record) for item in replayed}
    report = check(policy, replayed)
    out["checked"] = report.checked
    for key, findings in (("violations", report.violations), ("anomalies", report.anomalies)):
        for finding in findings:
            peer, record = peers.get((finding.trace, finding.seq), ("?", {}))
            out[key].append(
                {
                    **finding.to_json(),
                    "peer": peer,
                    "member": record.get("member") or record.get("error_name") or record.get("type"),
                }
            )
    return out

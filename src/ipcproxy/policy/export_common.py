"""What every exporter shares: choosing profiles, and listing what a target cannot say.

Each exporter writes its own syntax but must say, as comments, what of the
ipcproxy policy it leaves out, so nobody believes the export enforces more
than it does.
"""

from __future__ import annotations

from .model import BROADCAST, Policy, Rule, Subject


class ExportError(ValueError):
    """The policy cannot be exported as asked (e.g. an unknown component)."""


def chosen(policy: Policy, component: str | None) -> list[Subject]:
    if component is None:
        return list(policy.subjects)
    found = [s for s in policy.subjects if component in (s.component, s.exe, s.label)]
    if not found:
        known = ", ".join(sorted({s.component for s in policy.subjects})) or "none"
        raise ExportError(f"no component {component!r} in the policy (it has: {known})")
    return found


def lost_detail(rule: Rule, *, signature: bool = True, peer_uid: bool = True) -> list[str]:
    """The parts of a rule that none of the targets can check."""
    lost = []
    if signature and rule.signature:
        lost.append(f"signature {rule.signature!r}")
    for index, c in sorted(rule.args.items()):
        lost.append(f"argument {index} {_constraint_text(c.to_dict())}")
    if peer_uid and rule.peer_uid is not None:
        lost.append(f"peer uid {rule.peer_uid}")
    return lost


def _constraint_text(data: dict[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in data.items())


def bus_rules(subject: Subject) -> list[Rule]:
    """The rules about D-Bus messages: rules about pipes and sockets (type data) have no bus to go to."""
    return [rule for rule in subject.rules if not rule.is_data]


def data_note(subject: Subject) -> str | None:
    count = sum(rule.is_data for rule in subject.rules)
    if count:
        return f"{count} rules about pipes and sockets (type data) are not D-Bus rules: left out"
    return None


def order_note(subject: Subject) -> str | None:
    if subject.order:
        return f"order model ({len(subject.order)} n-grams of calls) is not enforced"
    return None


def is_named(peer: str) -> bool:
    """A peer a bus policy can name: a well-known bus name (not an executable, not broadcast/any)."""
    return not peer.startswith("/") and peer not in ("*", BROADCAST)

"""What one policy grants that another does not.

A rule of A counts as granted by B when some rule of B allows at least every
message A's rule allows (conservatively: when containment cannot be shown,
the rule is reported). Owned names, order n-grams and whole profiles are
compared the same way, per component and uid.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ANY, ArgConstraint, Policy, Rule, Subject


@dataclass(slots=True)
class Grant:
    component: str
    kind: str  # profile, rule, own, order, unknown
    text: str


def constraint_covers(b: ArgConstraint, a: ArgConstraint) -> bool:
    """Whether every value ``a`` allows is allowed by ``b``."""
    if a.values is not None:
        return all(b.violation(v) is None for v in a.values)
    if b.values is not None:
        return False
    if b.range is not None and (a.range is None or a.range[0] < b.range[0] or a.range[1] > b.range[1]):
        return False
    if b.pattern is not None and a.pattern != b.pattern:
        return False
    return not (b.max_len is not None and (a.max_len is None or a.max_len > b.max_len))


def rule_covers(b: Rule, a: Rule) -> bool:
    """Whether rule ``b`` allows every message rule ``a`` allows."""
    if b.direction != a.direction or (b.type != "any" and b.type != a.type):
        return False
    if b.peer != ANY and b.peer != a.peer:
        return False
    if b.peer_uid is not None and b.peer_uid != a.peer_uid:
        return False
    if not _paths_cover(b, a):
        return False
    for key in ("interface", "member", "signature"):
        want = getattr(b, key)
        if want is not None and want != getattr(a, key):
            return False
    if not _data_covers(b, a):
        return False
    return all(index in a.args and constraint_covers(c, a.args[index]) for index, c in b.args.items())


def _data_covers(b: Rule, a: Rule) -> bool:
    """Transport, channel, size, fds and payload of data rules (D-Bus rules have none of them)."""
    if b.transport is not None and b.transport != a.transport:
        return False
    if b.channel is not None and not b.channel.covers(a.channel):
        return False
    if b.size is not None and (a.size is None or a.size[0] < b.size[0] or a.size[1] > b.size[1]):
        return False
    if b.fds is not None and (a.fds is None or a.fds > b.fds):
        return False
    return b.payload is None or b.payload.covers(a.payload)


def _paths_cover(b: Rule, a: Rule) -> bool:
    if b.paths is None and b.path_prefix is None:
        return True
    if b.paths is not None:
        return a.paths is not None and set(a.paths) <= set(b.paths)
    prefix = b.path_prefix or "/"
    if a.paths is not None:
        return all(b.path_ok(p) for p in a.paths)
    return a.path_prefix is not None and a.path_prefix.startswith(prefix)


def granted_only_by(a: Policy, b: Policy) -> list[Grant]:
    """What ``a`` grants and ``b`` does not."""
    out: list[Grant] = []
    if a.unknown == "allow" and b.unknown != "allow":
        out.append(Grant("*", "unknown", "components without a profile are allowed"))
    for sa in a.subjects:
        sb = b.subject(sa.component, sa.uid)
        if sb is None:
            out.append(Grant(sa.label, "profile", f"whole profile ({len(sa.rules)} rules, own {sa.own or []})"))
            continue
        out += _subject_grants(sa, sb)
    return out


def _subject_grants(sa: Subject, sb: Subject) -> list[Grant]:
    out = []
    for name in sa.own:
        if name not in sb.own:
            out.append(Grant(sa.label, "own", f"own: [{name}]"))
    for rule in sa.rules:
        if not any(rule_covers(other, rule) for other in sb.rules):
            out.append(Grant(sa.label, "rule", rule.describe()))
    if sb.order is not None:
        if sa.order is None:
            out.append(Grant(sa.label, "order", "calls in any order (no order model)"))
        else:
            for gram in sorted(sa.order - sb.order):
                out.append(Grant(sa.label, "order", " → ".join(gram)))
    return out

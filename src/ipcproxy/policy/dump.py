"""Writing a policy file: readable, hand-editable YAML with a comment on every rule.

PyYAML cannot write comments, so the layout is written here and PyYAML only
renders scalars and small flow collections (it knows which strings need
quoting, e.g. ``yes`` or ``:*``). The result reads back with ``loader``.
"""

from __future__ import annotations

from typing import Any

import yaml

from .datamatch import DEFAULT_ERRNO
from .model import FORMAT, VERSION, Policy, Rule, Subject


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True, sort_keys=False)
    text = text.rstrip("\n")
    if text.endswith("\n..."):
        text = text[:-4]
    return text


def dump_policy(policy: Policy, header: list[str] | None = None) -> str:
    lines = [f"# {line}" if line else "#" for line in header or []]
    lines += [
        f"format: {FORMAT}",
        f"version: {VERSION}",
    ]
    if policy.threshold is not None:
        lines.append(f"threshold: {policy.threshold}   # distinct values before an argument was generalised")
    lines.append(f"order: {policy.order_n}   # n-gram length of the order model (0: none)")
    lines.append(f"unknown: {policy.unknown}   # components without a profile: deny | allow")
    if policy.errno != DEFAULT_ERRNO or any(r.is_data for s in policy.subjects for r in s.rules):
        lines.append(f"errno: {policy.errno}   # a denied pipe or socket message fails its syscall with this")
    lines.append("components:")
    for subject in policy.subjects:
        lines += _subject(subject, policy.order_n)
    return "\n".join(lines) + "\n"


def _subject(subject: Subject, n: int) -> list[str]:
    out = [""]
    if subject.messages:
        out.append(f"# {subject.label}: {subject.messages} messages seen")
    out.append(f"- component: {_flow(subject.component)}")
    if subject.uid is not None:
        out.append(f"  uid: {subject.uid}")
    if subject.exe is not None:
        out.append(f"  exe: {_flow(subject.exe)}")
    out.append(f"  own: {_flow(list(subject.own))}")
    if subject.errno is not None:
        out.append(f"  errno: {subject.errno}")
    out.append("  rules:" if subject.rules else "  rules: []")
    for rule in subject.rules:
        out += _rule(rule, subject.messages)
    if subject.order is not None:
        grams = sorted(subject.order)
        out.append(f"  # order: the {n}-grams of method calls it sends to services, per connection ({START_NOTE})")
        out.append("  order:" if grams else "  order: []")
        for gram in grams:
            out.append(f"  - {_flow(list(gram))}")
    return out


START_NOTE = "^ is the connection's start"


def _rule(rule: Rule, total: int) -> list[str]:
    data = rule.to_dict()
    args = data.pop("args", None)
    if rule.count:
        share = f", {100.0 * rule.count / total:.1f}% of its messages" if total else ""
        out = [f"  # seen {rule.count} time{'s' if rule.count != 1 else ''}{share}"]
    else:
        out = []
    first = True
    for key, value in data.items():
        out.append(f"  {'- ' if first else '  '}{key}: {_flow(value)}")
        first = False
    if args:
        out.append("    args:")
        for index, constraint in args.items():
            out.append(f"      {index}: {_flow(constraint)}")
    return out

"""`learn`, `check`, `diff-policy`, `export-policy`: thin adapters from the command line to the policy modules.

Each takes (args, env) and returns an exit status; bad input (a broken
policy or trace, an unknown component) is a UsageError: one line, status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Mapping
from typing import TextIO

from .. import __version__
from ..cli import ExitStatus, UsageError
from ..trace.reader import TraceError
from ..trace.replay import replay
from .check import check
from .diff import granted_only_by
from .dump import dump_policy
from .export_apparmor import export_apparmor
from .export_common import ExportError
from .export_dbus import export_dbus
from .export_xdg import export_xdg
from .learn import Coverage, Learner
from .loader import PolicyError, load_policy
from .model import Policy

EXPORTERS = {"dbus-daemon": export_dbus, "xdg-dbus-proxy": export_xdg, "apparmor": export_apparmor}


def _load(path: str) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise UsageError(f"policy {exc}") from None


def learn_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.threshold < 1:
        raise UsageError("learn: --threshold must be at least 1")
    if args.ngram < 0:
        raise UsageError("learn: --ngram cannot be negative")
    learner = Learner(args.threshold, args.ngram, args.coarse)
    try:
        for item in replay(args.traces):
            learner.feed(item)
    except TraceError as exc:
        raise UsageError(str(exc)) from None
    policy = learner.policy()
    kind = "coarse (destination-only) baseline" if args.coarse else "least-privilege policy"
    header = [
        f"ipcproxy {kind}, learnt by ipcproxy {__version__} on {datetime.date.today().isoformat()}",
        f"from {', '.join(args.traces)}",
        f"({learner.messages} messages; each rule's comment says how often it was seen).",
        "Replies are not listed: a reply is allowed when it answers a call that was let through.",
    ]
    text = dump_policy(policy, header)
    out = sys.stdout
    if args.output == "-":
        out = sys.stderr
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as stream:
                stream.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    print_summary(learner, policy, args.output, kind, out)
    return ExitStatus.OK


def print_summary(learner: Learner, policy: Policy, output: str, kind: str, out: TextIO) -> None:
    print(
        f"learnt a {kind} for {len(policy.subjects)} components: {policy.rule_count()} rules, "
        f"{sum(len(s.own) for s in policy.subjects)} owned names, "
        f"{sum(len(s.order or ()) for s in policy.subjects)} order n-grams -> {output}",
        file=out,
    )
    print(f"from {learner.messages} messages ({learner.skipped} denied or injected ones left out)", file=out)
    for cov in learner.coverage(policy):
        _print_coverage(cov, out)


def _print_coverage(cov: Coverage, out: TextIO) -> None:
    uid = "" if cov.uid is None else f" (uid {cov.uid})"
    print(f"\n{cov.component}{uid}: {cov.messages} messages", file=out)
    total = cov.messages or 1
    rows = [(count, rule.describe()) for rule, count in cov.rules]
    if cov.replies:
        rows.append((cov.replies, "replies to calls let through (implicit)"))
    if cov.own:
        rows.append((cov.own, "RequestName/ReleaseName of owned names"))
    for count, text in sorted(rows, key=lambda r: -r[0]):
        print(f"  {count:6d} {100.0 * count / total:5.1f}%  {text}", file=out)


def check_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    policy = _load(args.policy)
    try:
        report = check(policy, replay(args.traces))
    except TraceError as exc:
        raise UsageError(str(exc)) from None
    findings = [*report.violations, *report.anomalies]
    findings.sort(key=lambda f: (f.trace, f.seq))
    if args.json:
        for finding in findings:
            print(json.dumps({"finding": "order" if finding.kind == "order" else "violation", **finding.to_json()}))
    else:
        for finding in findings:
            label = "ORDER" if finding.kind == "order" else "VIOLATION"
            print(f"{label} {finding.trace}#{finding.seq} {finding.component}: {finding.message}")
            print(f"    {finding.reason}")
            if finding.needed and finding.kind != "no-rule":
                print(f"    needed: {finding.needed}")
    print(
        f"checked {report.checked} messages against {args.policy}: "
        f"{len(report.violations)} violations, {len(report.anomalies)} order anomalies",
        file=sys.stderr if args.json else sys.stdout,
    )
    return ExitStatus.OK if report.clean else ExitStatus.FAILED


def diff_policy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    a, b = _load(args.a), _load(args.b)
    only_a = granted_only_by(a, b)
    only_b = granted_only_by(b, a)
    for title, grants in ((f"granted by {args.a} only", only_a), (f"granted by {args.b} only", only_b)):
        print(f"{title}: {len(grants) or 'nothing'}")
        for grant in grants:
            print(f"  {grant.component}: {grant.kind}: {grant.text}")
    return ExitStatus.OK if not only_a and not only_b else ExitStatus.FAILED


def export_policy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    policy = _load(args.policy)
    try:
        text = EXPORTERS[args.format](policy, args.bus, args.component)
    except ExportError as exc:
        raise UsageError(f"export-policy: {exc}") from None
    sys.stdout.write(text)
    return ExitStatus.OK

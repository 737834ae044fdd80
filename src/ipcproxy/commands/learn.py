"""`ipcproxy learn`: a least-privilege policy learnt from traces, and how much of them each rule covers."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

from ..outputs import add_output_options

if TYPE_CHECKING:
    from ..policy.learn import Coverage, Learner
    from ..policy.model import Policy

HELP = "learn a least-privilege policy from traces"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("-o", "--output", required=True, metavar="POLICY", help="the policy file to write (-: stdout)")
    add_output_options(p, "POLICY")
    p.add_argument("--coarse", action="store_true", help="destination-only baseline policy")
    p.add_argument("--threshold", type=int, default=5, help="distinct values before an argument is generalised")
    p.add_argument("--ngram", type=int, default=2, help="length of the order model's n-grams (0: none)")


def learn_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import datetime
    import sys

    from .. import __version__
    from ..errors import InputError
    from ..outputs import OutputRules, check_file, write_file
    from ..policy.dump import dump_policy
    from ..policy.learn import Learner
    from ..trace.reader import TraceError
    from ..trace.replay import replay
    from .status import ExitStatus

    if args.threshold < 1:
        raise InputError("learn: --threshold must be at least 1")
    if args.ngram < 0:
        raise InputError("learn: --ngram cannot be negative")
    rules = OutputRules.from_args(args, args.traces)
    if args.output != "-":
        check_file(args.output, rules)  # before reading the traces, which may take a while
    learner = Learner(args.threshold, args.ngram, args.coarse)
    try:
        for item in replay(args.traces):
            learner.feed(item)
    except TraceError as exc:
        raise InputError(str(exc)) from None
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
        data = text.encode("utf-8")
        write_file(args.output, lambda stream: stream.write(data), rules)
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

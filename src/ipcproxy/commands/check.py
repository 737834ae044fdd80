"""`ipcproxy check`: every message of the traces that a policy would not allow (exit 1 if any)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

HELP = "check traces against a policy"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("--json", action="store_true")


def check_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import json
    import sys

    from ..errors import InputError
    from ..policy.check import check
    from ..trace.reader import TraceError
    from ..trace.replay import replay
    from .policy_file import load_policy_file
    from .status import ExitStatus

    policy = load_policy_file(args.policy)
    try:
        report = check(policy, replay(args.traces))
    except TraceError as exc:
        raise InputError(str(exc)) from None
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

"""`ipcproxy report`: a trace, a campaign's folder or a policy as one self-contained HTML page (docs/report.md)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ..outputs import add_output_options

HELP = "a trace, campaign or policy as one self-contained HTML page"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input", metavar="TRACE|CAMPAIGN_DIR", nargs="?", help="a trace (or pcap) file, or a campaign's output folder"
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    add_output_options(p, "FILE.html")
    p.add_argument(
        "--policy", metavar="POLICY", help="add the policy's matrix: rules, their hits in TRACE, its violations"
    )
    p.add_argument(
        "--max-messages", type=int, default=None, metavar="N", help="draw only the first N messages (default: all)"
    )


def report_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import os
    import sys

    from ..errors import InputError
    from ..outputs import OutputRules, check_file, write_file
    from ..report.model import ModelBuilder
    from ..report.page import render
    from ..report.sources import read_campaign, read_policy, read_trace
    from .status import ExitStatus

    if args.input is None and args.policy is None:
        raise InputError("report: give a TRACE or CAMPAIGN_DIR, or --policy POLICY")
    if args.max_messages is not None and args.max_messages < 1:
        raise InputError("report: --max-messages must be at least 1")
    campaign = args.input is not None and os.path.isdir(args.input)
    if campaign and (args.policy or args.max_messages is not None):
        option = "--policy" if args.policy else "--max-messages"
        raise InputError(f"report: {option} goes with a trace, not with a campaign's folder")
    rules = OutputRules.from_args(args, [args.input, args.policy])
    check_file(args.output, rules)  # before reading the input, which may take a while
    if campaign:
        model, details = read_campaign(args.input)
        summary = f"{len(model['campaign']['runs'])} runs"
        page = render(model, details)
    else:
        builder = read_trace(args.input, args.max_messages) if args.input else ModelBuilder("", {})
        model = builder.to_json()
        if args.policy:
            model["policy"] = read_policy(args.policy, [args.input] if args.input else [])
            if not args.input:
                model["kind"] = "policy"
                model["title"] = os.path.basename(args.policy)
        cut = f" (only the first {builder.limit}: --max-messages)" if builder.truncated else ""
        summary = f"{len(builder.records)} messages{cut}, {len(model['lifelines'])} components"
        if args.policy:
            policy = model["policy"]
            summary += f", {sum(len(s['rules']) for s in policy['subjects'])} rules"
            if policy["checked"] is not None:
                summary += f", {len(policy['violations'])} violations"
        page = render(model, builder.details())
    data = page.encode("utf-8")
    write_file(args.output, lambda stream: stream.write(data), rules)
    print(f"{summary} -> {args.output}", file=sys.stderr)
    return ExitStatus.OK

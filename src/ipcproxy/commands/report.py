"""`ipcproxy report`: a trace as one self-contained HTML page (docs/report.md)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ..outputs import add_output_options

HELP = "a trace as one self-contained HTML page: sequence diagram, component graph, stats"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="TRACE", help="a trace (or pcap) file")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    add_output_options(p, "FILE.html")
    p.add_argument(
        "--max-messages", type=int, default=None, metavar="N", help="draw only the first N messages (default: all)"
    )


def report_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import sys

    from ..errors import InputError
    from ..outputs import OutputRules, check_file, write_file
    from ..report.page import render
    from ..report.sources import read_trace
    from .status import ExitStatus

    if args.max_messages is not None and args.max_messages < 1:
        raise InputError("report: --max-messages must be at least 1")
    rules = OutputRules.from_args(args, [args.input])
    check_file(args.output, rules)  # before reading the input, which may take a while
    builder = read_trace(args.input, args.max_messages)
    model = builder.to_json()
    data = render(model, builder.details()).encode("utf-8")
    write_file(args.output, lambda stream: stream.write(data), rules)
    cut = f" (only the first {builder.limit}: --max-messages)" if builder.truncated else ""
    print(
        f"{len(builder.records)} messages{cut}, {len(model['lifelines'])} components -> {args.output}",
        file=sys.stderr,
    )
    return ExitStatus.OK

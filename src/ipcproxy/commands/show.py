"""`ipcproxy show`: print a trace like dbus-monitor."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

HELP = "print a trace like dbus-monitor"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace")
    p.add_argument("--filter", metavar="EXPR", help="e.g. 'member=Get type=method_call component=busctl'")
    p.add_argument("--follow", "-f", action="store_true", help="keep reading as the trace grows")
    p.add_argument("--json", action="store_true", help="print matching records as JSON lines")


def show_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import os
    import sys

    from ..errors import InputError
    from ..trace.filters import parse_filter
    from ..trace.reader import TraceError
    from ..trace.show import show_trace, use_color
    from .status import ExitStatus

    try:
        matcher = parse_filter(args.filter) if args.filter else None
    except ValueError as exc:
        raise InputError(f"show: {exc}") from None
    path = args.trace
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a trace")
    out = sys.stdout
    try:
        show_trace(
            path,
            out,
            matcher=matcher,
            filter_text=args.filter,
            follow=args.follow,
            as_json=args.json,
            color=use_color(out, env),
        )
    except TraceError as exc:  # not a trace, unreadable, or a header this version cannot read
        raise InputError(str(exc)) from None
    except KeyboardInterrupt:
        # --follow ends with Ctrl-C: that is the normal way out, not a failure
        out.flush()
        return ExitStatus.OK if args.follow else 130
    out.flush()
    return ExitStatus.OK

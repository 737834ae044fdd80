"""`ipcproxy convert IN OUT`: trace <-> pcap/pcapng (DLT_DBUS), chosen by OUT's extension."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ..outputs import add_output_options

HELP = "trace <-> pcap/pcapng (DLT_DBUS)"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("input")
    p.add_argument("output")
    add_output_options(p, "OUT")


def convert_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import sys

    from ..outputs import OutputRules
    from ..trace.convert import convert
    from .status import ExitStatus

    done = convert(args.input, args.output, rules=OutputRules.from_args(args, [args.input]))
    print(f"ipcproxy: {done.summary}", file=sys.stderr)
    return ExitStatus.OK if done.complete else ExitStatus.FAILED

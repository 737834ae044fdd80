"""`ipcproxy diff A B`: where two traces diverge (exit 1 if they do)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

HELP = "where two traces diverge"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")


def diff_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import json

    from ..errors import InputError
    from ..faults.diff import diff_records, render
    from ..trace.reader import TraceError, iter_trace
    from .status import ExitStatus

    try:
        a = list(iter_trace(args.a))
        b = list(iter_trace(args.b))
    except TraceError as exc:
        raise InputError(str(exc)) from None
    d = diff_records(a, b)
    if args.json:
        print(json.dumps(d.to_json(), indent=1))
    else:
        print(render(d, args.a, args.b))
    return ExitStatus.OK if d.same else ExitStatus.FAILED

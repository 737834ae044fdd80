"""`ipcproxy stats`: counts, bytes and latency per component and pair, over one or more traces."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

HELP = "counts, bytes, latency per component and pair"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", nargs="+")
    p.add_argument("--json", action="store_true")


def stats_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Accumulate every trace given, then print tables (or one JSON object)."""
    import sys

    import msgspec

    from ..trace.stats import collect, render
    from .status import ExitStatus

    stats = collect(args.trace)
    if args.json:
        sys.stdout.write(msgspec.json.encode(stats.to_json()).decode() + "\n")
    else:
        sys.stdout.write(render(stats) + "\n")
    return ExitStatus.OK

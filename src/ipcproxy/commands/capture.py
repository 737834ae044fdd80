"""Options shared by the capturing commands: run, proxy, interpose, monitor."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..outputs import add_output_options


def add_capture_options(p: argparse.ArgumentParser, manipulate: bool = True) -> None:
    """The trace and live-view options; with ``manipulate``, also policy, faults and scripts."""
    p.add_argument("-w", "--write", metavar="FILE", help="write the trace (.pcap/.pcapng: pcap)")
    add_output_options(p, "the -w file")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print messages live")
    p.add_argument("--filter", metavar="EXPR", help="live view: only messages matching EXPR")
    p.add_argument("--no-args", action="store_true", help="do not decode arguments into the trace")
    if manipulate:
        p.add_argument("--policy", metavar="FILE", help="policy to enforce (see docs/policy.md)")
        p.add_argument("--mode", choices=["enforce", "complain"], default="enforce")
        p.add_argument("--faults", metavar="PLAN", help="fault plan to apply (see docs/faults.md)")
        p.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults")
        p.add_argument(
            "-s",
            "--script",
            metavar="FILE.py",
            action="append",
            default=[],
            help="load interceptors from a Python file (repeatable)",
        )
        p.add_argument(
            "--auth-timeout",
            metavar="SECONDS",
            type=_positive(float),
            default=30.0,
            help="close a client that has not authenticated within SECONDS (default 30)",
        )
        p.add_argument(
            "--max-pending",
            metavar="N",
            type=_positive(int),
            default=256,
            help="refuse new clients while N are still authenticating (default 256)",
        )


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number above 0."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    return parse

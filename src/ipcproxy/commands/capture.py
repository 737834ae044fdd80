"""Options shared by the capturing commands: run, proxy, interpose, monitor (and trace's command words)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..dbus.proxy import ConnectionLimits
    from ..runtime import CaptureOptions

from ..outputs import add_output_options


def command_after_dashes(words: list[str]) -> list[str]:
    """The command given after ``--`` (argparse's REMAINDER keeps the ``--`` itself)."""
    return words[1:] if words and words[0] == "--" else list(words)


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


def capture_options(args: argparse.Namespace, *, live_to_stdout: bool = False) -> CaptureOptions:
    """The runtime's options from the parsed capture options (monitor has no chain options)."""
    from ..outputs import OutputRules
    from ..runtime import CaptureOptions

    options = CaptureOptions(
        write=args.write,
        quiet=args.quiet,
        filter=args.filter,
        no_args=args.no_args,
        live_to_stdout=live_to_stdout,
        policy=getattr(args, "policy", None),
        mode=getattr(args, "mode", "enforce"),
        faults=getattr(args, "faults", None),
        seed=getattr(args, "seed", None),
        scripts=list(getattr(args, "script", None) or []),
    )
    options.output_rules = OutputRules.from_args(args, options.input_files())
    return options


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """--auth-timeout and --max-pending: what clients that have not authenticated may cost."""
    from ..dbus.proxy import ConnectionLimits

    return ConnectionLimits(auth_timeout=args.auth_timeout, max_pending=args.max_pending)

"""Options shared by the capturing commands: run, proxy, interpose, monitor; trace and watch (syscall level)."""

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
    add_write_options(p, ".pcap/.pcapng: pcap")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print messages live")
    p.add_argument("--filter", metavar="EXPR", help="live view: only messages matching EXPR")
    p.add_argument("--no-args", action="store_true", help="do not decode arguments into the trace")
    if manipulate:
        add_chain_options(p)
        p.add_argument(
            "--auth-timeout",
            metavar="SECONDS",
            type=positive(float, "seconds"),
            default=30.0,
            help="close a client that has not authenticated within SECONDS (default 30)",
        )
        p.add_argument(
            "--max-pending",
            metavar="N",
            type=positive(int),
            default=256,
            help="refuse new clients while N are still authenticating (default 256)",
        )


def add_write_options(p: argparse.ArgumentParser, formats: str) -> None:
    """-w FILE and what decides which messages and fields reach it (``outputs``)."""
    p.add_argument("-w", "--write", metavar="FILE", help=f"write the trace ({formats})")
    add_output_options(p, "the -w file")


def add_chain_options(
    p: argparse.ArgumentParser,
    *,
    policy: str = "policy to enforce (see docs/policy.md)",
    mode: str | None = None,
    faults: str = "fault plan to apply (see docs/faults.md)",
    seed: str = "seed for probabilistic faults",
    script: str = "load interceptors from a Python file (repeatable)",
) -> None:
    """--policy, --mode, --faults, --seed and -s: what builds the chain, the same for every transport (help aside)."""
    p.add_argument("--policy", metavar="FILE", help=policy)
    p.add_argument("--mode", choices=["enforce", "complain"], default="enforce", help=mode)
    p.add_argument("--faults", metavar="PLAN", help=faults)
    p.add_argument("--seed", type=int, default=None, help=seed)
    p.add_argument("-s", "--script", metavar="FILE.py", action="append", default=[], help=script)


def add_max_payload_option(p: argparse.ArgumentParser, maximum: int, *, say_maximum: bool) -> None:
    """--max-payload for the syscall-level commands: how much of each message the trace keeps."""
    most = f", at most {maximum}" if say_maximum else ""
    p.add_argument(
        "--max-payload",
        type=byte_count(maximum),
        default=4096,
        metavar="N",
        help=f"bytes of each message's payload to record{most} (the full size is always recorded; default 4096)",
    )


def add_framing_option(p: argparse.ArgumentParser, modes: str, like: str = "") -> None:
    """--framing for the syscall-level commands (rules parsed by ``syscall.framing.parse_rule``)."""
    p.add_argument(
        "--framing",
        action="append",
        default=[],
        metavar="[WHERE=]MODE",
        help=f"turn the byte streams of pipes, FIFOs, Unix stream and TCP sockets into messages{like}: {modes}; "
        "WHERE (pipe, fifo, unix, tcp, tcp:PORT or a socket or FIFO path) selects channels; repeat it, "
        "the first match wins",
    )


def positive(kind: type[int] | type[float], unit: str = "") -> Callable[[str], int | float]:
    """An argparse type: a number above 0 (of ``unit``, named in its errors)."""
    of_unit = f" of {unit}" if unit else ""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            whole = "whole " if kind is int else ""
            raise argparse.ArgumentTypeError(f"not a {whole}number{of_unit}: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0{' ' + unit if unit else ''}: {text}")
        return value

    return parse


def byte_count(maximum: int) -> Callable[[str], int]:
    """An argparse type: a number of bytes from 0 to ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 0 and {maximum} bytes: {value}")
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

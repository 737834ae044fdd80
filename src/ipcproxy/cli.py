"""Command line: parse arguments, hand over to the module that does the job.

``main(argv, env)`` returns an exit status and never lets a traceback reach
the user: input errors become one line on stderr and status 2.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from . import __version__


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILED = 1  # a check found violations, or a run failed
    USAGE = 2  # usage or input error


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# subcommand -> "module:function"; each function takes (args, env) and returns an exit status.
COMMANDS = {
    "run": "ipcproxy.serve:run_command",
    "proxy": "ipcproxy.serve:proxy_command",
    "interpose": "ipcproxy.dbus.interpose:interpose_command",
    "monitor": "ipcproxy.dbus.monitor:monitor_command",
    "show": "ipcproxy.trace.show:show_command",
    "stats": "ipcproxy.trace.stats:stats_command",
    "convert": "ipcproxy.trace.pcap:convert_command",
    "learn": "ipcproxy.policy.commands:learn_command",
    "check": "ipcproxy.policy.commands:check_command",
    "diff-policy": "ipcproxy.policy.commands:diff_policy_command",
    "export-policy": "ipcproxy.policy.commands:export_policy_command",
    "campaign": "ipcproxy.faults.commands:campaign_command",
    "diff": "ipcproxy.faults.commands:diff_command",
}


def add_capture_options(p: argparse.ArgumentParser, manipulate: bool = True) -> None:
    """Options shared by run, proxy, interpose, monitor (DESIGN §4)."""
    p.add_argument("-w", "--write", metavar="FILE", help="write the trace (.pcap/.pcapng: pcap)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ipcproxy", description="Intercept, log and manipulate IPC messages.")
    parser.add_argument("--version", action="version", version=f"ipcproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="run CMD on a private bus behind the proxy")
    add_capture_options(p)
    p.add_argument("--broker", action="store_true", help="use dbus-broker instead of dbus-daemon")
    p.add_argument("--system-too", action="store_true", help="point DBUS_SYSTEM_BUS_ADDRESS at it as well")
    p.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="CMD",
        help="start this service on the private bus first, unproxied (repeatable)",
    )
    p.add_argument(
        "--wait-for",
        action="append",
        default=[],
        metavar="NAME",
        help="wait until NAME is owned on the bus before starting CMD",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")

    p = sub.add_parser("proxy", help="proxy an existing bus")
    add_capture_options(p)
    p.add_argument("--upstream", required=True, metavar="ADDR", help="the bus to proxy")
    p.add_argument("--listen", required=True, metavar="ADDR", help="where clients connect")

    p = sub.add_parser("interpose", help="take over a live bus's socket path")
    add_capture_options(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--system", action="store_true")
    g.add_argument("--session", action="store_true")
    g.add_argument("--socket", metavar="PATH")
    p.add_argument("--recover", action="store_true", help="only restore a socket left moved aside, then exit")

    p = sub.add_parser("monitor", help="passive capture with BecomeMonitor")
    add_capture_options(p, manipulate=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--system", action="store_true")
    g.add_argument("--session", action="store_true")
    g.add_argument("--address", metavar="ADDR")
    p.add_argument("match", nargs="*", help="match rules, as for dbus-monitor")

    p = sub.add_parser("show", help="print a trace like dbus-monitor")
    p.add_argument("trace")
    p.add_argument("--filter", metavar="EXPR", help="e.g. 'member=Get type=method_call component=busctl'")
    p.add_argument("--follow", "-f", action="store_true", help="keep reading as the trace grows")
    p.add_argument("--json", action="store_true", help="print matching records as JSON lines")

    p = sub.add_parser("stats", help="counts, bytes, latency per component and pair")
    p.add_argument("trace", nargs="+")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("convert", help="trace <-> pcap/pcapng (DLT_DBUS)")
    p.add_argument("input")
    p.add_argument("output")

    p = sub.add_parser("learn", help="learn a least-privilege policy from traces")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("-o", "--output", required=True, metavar="POLICY")
    p.add_argument("--coarse", action="store_true", help="destination-only baseline policy")
    p.add_argument("--threshold", type=int, default=5, help="distinct values before an argument is generalised")
    p.add_argument("--ngram", type=int, default=2, help="length of the order model's n-grams (0: none)")

    p = sub.add_parser("check", help="check traces against a policy")
    p.add_argument("policy")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("diff-policy", help="what one policy grants that the other does not")
    p.add_argument("a")
    p.add_argument("b")

    p = sub.add_parser("export-policy", help="export to dbus-daemon XML, xdg-dbus-proxy, AppArmor")
    p.add_argument("policy")
    p.add_argument("--format", required=True, choices=["dbus-daemon", "xdg-dbus-proxy", "apparmor"])
    p.add_argument("--bus", choices=["session", "system"], default="session")
    p.add_argument("--component", help="only this component (xdg-dbus-proxy, apparmor)")

    p = sub.add_parser("campaign", help="run a fault-injection campaign")
    p.add_argument("plan")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("-j", "--jobs", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("diff", help="where two traces diverge")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if not args.command:
            build_parser().print_help(sys.stderr)
            return ExitStatus.USAGE
        target = COMMANDS[args.command]
        module_name, func_name = target.split(":")
        module = importlib.import_module(module_name)
        return int(getattr(module, func_name)(args, env))
    except UsageError as exc:
        print(f"ipcproxy: {exc}" if not str(exc).startswith("ipcproxy") else str(exc), file=sys.stderr)
        return ExitStatus.USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return ExitStatus.OK


def entry() -> NoReturn:
    sys.exit(main())

"""Command line: build the parser from ``commands/``, run the command, turn errors into exit statuses.

``main(argv, env)`` returns an exit status and never lets a traceback reach
the user: an InputError is one line on stderr and status 2, a RunFailed one
line and status 1 (see docs/architecture.md).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from . import __version__
from .commands import NAMES, function_name, module_name
from .commands.status import ExitStatus
from .errors import InputError, IpcproxyError, RunFailed

# subcommand -> "module:function"; each function takes (args, env) and returns an exit status
COMMANDS = {name: f"{module_name(name)}:{function_name(name)}" for name in NAMES}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ipcproxy", description="Intercept, log and manipulate IPC messages.")
    parser.add_argument("--version", action="version", version=f"ipcproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in NAMES:
        module = importlib.import_module(module_name(name))
        p = sub.add_parser(name, help=module.HELP)
        module.add_options(p)
        p.set_defaults(handler=getattr(module, function_name(name)))
    return parser


def _one_line(exc: IpcproxyError) -> str:
    text = str(exc)
    return text if text.startswith("ipcproxy") else f"ipcproxy: {text}"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help(sys.stderr)
            return ExitStatus.USAGE
        return int(args.handler(args, env))
    except InputError as exc:
        print(_one_line(exc), file=sys.stderr)
        return ExitStatus.USAGE
    except RunFailed as exc:
        print(_one_line(exc), file=sys.stderr)
        return ExitStatus.FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return ExitStatus.OK


def entry() -> NoReturn:
    # SIGINT stops every command, as Ctrl-C does, even when whoever started us ignored it (a shell
    # starts its background jobs so): commands with no handler of their own (campaign, show --follow)
    # stop through KeyboardInterrupt, which Python does not raise for a signal ignored at start-up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())

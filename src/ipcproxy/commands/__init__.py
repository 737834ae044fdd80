"""The ``ipcproxy`` commands: one module each, on top of the library.

A command module declares its options (``HELP``, ``add_options``) and holds
``<name>_command(args, env) -> int``, which calls the library and turns its
errors into exit statuses (see docs/architecture.md). The parser is built
from every module on each call, so a command module imports the library
inside its command function only: `ipcproxy show` does not pay for the
proxy's imports.
"""

from __future__ import annotations

# in the order `ipcproxy --help` lists them
NAMES: tuple[str, ...] = (
    "run",
    "proxy",
    "interpose",
    "monitor",
    "trace",
    "watch",
    "show",
    "stats",
    "convert",
    "learn",
    "check",
    "diff-policy",
    "export-policy",
    "campaign",
    "diff",
    "report",
    "serve",
)


def module_name(command: str) -> str:
    """The module that holds ``command``: ``diff-policy`` -> ``ipcproxy.commands.diff_policy``."""
    return f"{__name__}.{command.replace('-', '_')}"


def function_name(command: str) -> str:
    return f"{command.replace('-', '_')}_command"

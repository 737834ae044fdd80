"""`ipcproxy export-policy`: a policy as dbus-daemon XML, xdg-dbus-proxy arguments or an AppArmor profile."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

HELP = "export to dbus-daemon XML, xdg-dbus-proxy, AppArmor"
FORMATS = ("dbus-daemon", "xdg-dbus-proxy", "apparmor")


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy")
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument("--bus", choices=["session", "system"], default="session")
    p.add_argument("--component", help="only this component (xdg-dbus-proxy, apparmor)")


def export_policy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import sys

    from ..errors import InputError
    from ..policy.export_apparmor import export_apparmor
    from ..policy.export_common import ExportError
    from ..policy.export_dbus import export_dbus
    from ..policy.export_xdg import export_xdg
    from .policy_file import load_policy_file
    from .status import ExitStatus

    exporters = {"dbus-daemon": export_dbus, "xdg-dbus-proxy": export_xdg, "apparmor": export_apparmor}
    policy = load_policy_file(args.policy)
    try:
        text = exporters[args.format](policy, args.bus, args.component)
    except ExportError as exc:
        raise InputError(f"export-policy: {exc}") from None
    sys.stdout.write(text)
    return ExitStatus.OK

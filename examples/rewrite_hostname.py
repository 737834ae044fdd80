"""Lie about the host name, and refuse to let anyone change it.

    ipcproxy run --system-too --service /lib/systemd/systemd-hostnamed \
        --wait-for org.freedesktop.hostname1 -s examples/rewrite_hostname.py -- \
        busctl get-property org.freedesktop.hostname1 /org/freedesktop/hostname1 \
        org.freedesktop.hostname1 Hostname

prints ``s "proxied-host"`` (or the value of $FAKE_HOSTNAME) whatever the
machine is called. Calls to SetHostname and SetStaticHostname are answered
with org.freedesktop.DBus.Error.AccessDenied and never reach hostnamed.
"""

from __future__ import annotations

import os

from ipcproxy.api import Context, MessageType, Variant, Verdict, error, interceptor, with_args

HOSTNAME1 = "org.freedesktop.hostname1"
PROPERTIES = "org.freedesktop.DBus.Properties"
FAKE = os.environ.get("FAKE_HOSTNAME", "proxied-host")
HOSTNAME_PROPERTIES = {"Hostname", "StaticHostname"}


@interceptor
def rewrite_hostname(ctx: Context) -> Verdict | None:
    """Replace the value in replies to Properties.Get/GetAll on org.freedesktop.hostname1."""
    msg = ctx.message
    call = ctx.call_message  # for a reply: the call it answers, when the proxy saw it
    if msg.type is not MessageType.METHOD_RETURN or call is None:
        return None
    if call.interface != PROPERTIES or not call.args or call.args[0] != HOSTNAME1:
        return None
    if call.member == "Get" and call.args[1] in HOSTNAME_PROPERTIES:
        return with_args(msg, [Variant("s", FAKE)], reason="fake host name")
    if call.member == "GetAll":
        props = dict(msg.args[0])
        for name in HOSTNAME_PROPERTIES & props.keys():
            props[name] = Variant("s", FAKE)
        return with_args(msg, [props], reason="fake host name")
    return None


@interceptor(fail_closed=True)
def deny_hostname_changes(ctx: Context) -> Verdict | None:
    """Nobody behind the proxy may rename the machine."""
    msg = ctx.message
    if (
        msg.type is MessageType.METHOD_CALL
        and msg.interface == HOSTNAME1
        and msg.member in ("SetHostname", "SetStaticHostname")
    ):
        return error(
            "org.freedesktop.DBus.Error.AccessDenied",
            f"{msg.member} is not allowed through this proxy",
            reason="host name is read-only",
        )
    return None

"""The proxy in front of real buses, with real services and real clients."""

from __future__ import annotations

import os

from conftest import HOSTNAMED, busctl, dbus_send, gdbus, messages


def test_busctl_gdbus_dbus_send_through_proxy_are_logged(any_bus, proxy_factory, services):
    proxy = proxy_factory(any_bus.address)
    services.dbusmock(proxy.address)
    services.start([HOSTNAMED], proxy.address, wait_name="org.freedesktop.hostname1")
    out = busctl(
        proxy.address,
        "get-property",
        "org.freedesktop.hostname1",
        "/org/freedesktop/hostname1",
        "org.freedesktop.hostname1",
        "Hostname",
    ).stdout
    assert out.startswith('s "')
    gdbus(
        proxy.address,
        "call",
        "--dest",
        "org.freedesktop.hostname1",
        "--object-path",
        "/org/freedesktop/hostname1",
        "--method",
        "org.freedesktop.DBus.Properties.Get",
        "org.freedesktop.hostname1",
        "KernelName",
    )
    dbus_send(
        proxy.address,
        "--dest=org.example.Mock",
        "/org/example/Mock",
        "org.freedesktop.DBus.Introspectable.Introspect",
    )
    proxy.stop()
    recs = messages(proxy.records())
    gets = [r for r in recs if r["member"] == "Get" and r["type"] == "method_call"]
    # each Get appears twice: leaving the client and arriving at hostnamed (both behind the proxy)
    assert {r["direction"] for r in gets} == {"to_bus", "from_bus"}
    names = {r["args"][1] for r in gets}
    assert names == {"Hostname", "KernelName"}
    to_host = [r for r in gets if r["direction"] == "from_bus"]
    assert all("org.freedesktop.hostname1" in r["destination"]["names"] for r in to_host)
    assert all(r["destination"]["exe"] == os.path.realpath(HOSTNAMED) for r in to_host)
    replies = [r for r in recs if r["type"] == "method_return" and r.get("latency_ns") is not None]
    assert replies and all(r["latency_ns"] > 0 for r in replies)
    intro = [
        r
        for r in recs
        if r["member"] == "Introspect" and r["direction"] == "to_bus" and r["destination_name"] == "org.example.Mock"
    ]
    assert [r["sender"]["comm"] for r in intro] == ["dbus-send"]
    seqs = [r["seq"] for r in proxy.records()]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))

"""Exporters: dbus-daemon XML (loaded by a real dbus-daemon), xdg-dbus-proxy arguments, AppArmor rules."""

from __future__ import annotations

import pwd
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import SYSTEM_PYTHON, have, wait_for, wait_name_owned
from ipcproxy.cli import main
from ipcproxy.dbus.launcher import PrivateBus
from ipcproxy.policy.export_apparmor import export_apparmor
from ipcproxy.policy.export_dbus import export_dbus
from ipcproxy.policy.export_xdg import component_arguments, export_xdg
from ipcproxy.policy.loader import parse_policy

MOCK = "org.example.Mock"

POLICY = f"""\
version: 1
order: 2
components:
- component: /usr/bin/busctl
  uid: 1
  exe: /usr/bin/busctl
  rules:
  - send: method_call
    to: org.freedesktop.DBus
    path: /org/freedesktop/DBus
    interface: org.freedesktop.DBus
    member: Hello
  - send: method_call
    to: {MOCK}
    path: /org/example/Mock
    interface: org.freedesktop.DBus.Introspectable
    member: Introspect
    signature: ''
  - send: method_call
    to: {MOCK}
    path_prefix: /org/example/
    interface: org.freedesktop.DBus.Properties
    member: Get
    signature: ss
    args:
      1: {{values: [Volume]}}
  - receive: signal
    from: {MOCK}
    interface: org.example.Mock
    member: Changed
  order:
  - [^, org.freedesktop.DBus org.freedesktop.DBus.Hello]
- component: {MOCK}
  uid: 2
  exe: /usr/bin/python3.11
  own: [{MOCK}]
  rules:
  - send: method_call
    to: org.freedesktop.DBus
  - receive: method_call
    from: /usr/bin/busctl
    peer_uid: 1
    interface: org.freedesktop.DBus.Introspectable
    member: Introspect
"""


@pytest.fixture
def policy():
    return parse_policy(POLICY, "p.yaml")


def test_dbus_daemon_xml_allows_the_rules_and_says_what_it_cannot(policy):
    text = export_dbus(policy, "system")
    root = ET.fromstring(text.split("\n", 3)[3])  # after the XML declaration and the two DOCTYPE lines
    policies = {p.get("user"): p for p in root.findall("policy")}
    daemon = policies[pwd.getpwuid(1).pw_name]
    allows = [a.attrib for a in daemon.findall("allow")]
    assert {
        "send_destination": MOCK,
        "send_type": "method_call",
        "send_path": "/org/example/Mock",
        "send_interface": "org.freedesktop.DBus.Introspectable",
        "send_member": "Introspect",
    } in allows
    # a path prefix cannot be said: the path is dropped, and the comment says so
    assert {
        "send_destination": MOCK,
        "send_type": "method_call",
        "send_interface": "org.freedesktop.DBus.Properties",
        "send_member": "Get",
    } in allows
    assert "path prefix /org/example/ widened to any path" in text
    assert "argument 1 values ['Volume']" in text
    assert "order model (1 n-grams of calls) is not enforced" in text
    assert [d.attrib for d in daemon.findall("deny")][:2] == [{"own": "*"}, {"send_type": "method_call"}]
    service = policies[pwd.getpwuid(2).pw_name]
    assert {"own": MOCK} in [a.attrib for a in service.findall("allow")]
    assert "peer /usr/bin/busctl (an executable) widened to any peer" in text


def test_xdg_dbus_proxy_arguments(policy):
    text = export_xdg(policy, "session", "/usr/bin/busctl")
    assert "--call=org.example.Mock=org.freedesktop.DBus.Introspectable.Introspect@/org/example/Mock" in text
    assert "--call=org.example.Mock=org.freedesktop.DBus.Properties.Get@/org/example/*" in text
    assert "--broadcast=org.example.Mock=org.example.Mock.Changed" in text
    assert "not checked: signature 'ss'; argument 1 values ['Volume']" in text
    assert "Hello to the bus driver: handled by xdg-dbus-proxy itself" in text
    service = export_xdg(policy, "session", MOCK)
    assert "--own=org.example.Mock" in service and "incoming calls are not filtered" in service


def test_apparmor_rules(policy):
    text = export_apparmor(policy, "system")
    assert "/usr/bin/busctl {" in text
    assert (
        "dbus (send) bus=system path=/org/example/Mock interface=org.freedesktop.DBus.Introspectable "
        "member=Introspect peer=(name=org.example.Mock)," in text
    )
    assert "path=/org/example/** interface=org.freedesktop.DBus.Properties member=Get" in text
    assert "dbus (bind) bus=system name=org.example.Mock," in text
    assert "peer=(label=/usr/bin/busctl)" in text  # a peer named by executable: its profile
    assert "cannot check: argument constraints, signatures" in text


def test_export_command_and_unknown_component(tmp_path: Path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    assert main(["export-policy", str(path), "--format", "apparmor"]) == 0
    assert "/usr/bin/busctl {" in capsys.readouterr().out
    assert main(["export-policy", str(path), "--format", "xdg-dbus-proxy", "--component", "/bin/nope"]) == 2
    assert "no component '/bin/nope'" in capsys.readouterr().err


@pytest.mark.skipif(not have("setpriv"), reason="needs setpriv to run a client as another user")
def test_real_dbus_daemon_enforces_the_exported_xml(policy, tmp_path: Path):
    xml = tmp_path / "exported.conf"
    xml.write_text(export_dbus(policy, "session"))
    with PrivateBus(extra_config=f"<include>{xml}</include>") as bus:
        mock = subprocess.Popen(
            [
                "setpriv",
                "--reuid=2",
                "--regid=2",
                "--clear-groups",
                SYSTEM_PYTHON,
                "-m",
                "dbusmock",
                MOCK,
                "/org/example/Mock",
                "org.example.Mock",
            ],
            env={"DBUS_SESSION_BUS_ADDRESS": bus.address, "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_name_owned(bus.address, MOCK)
            as_daemon = ["setpriv", "--reuid=1", "--regid=1", "--clear-groups", "busctl", f"--address={bus.address}"]
            ok = subprocess.run(
                [*as_daemon, "call", MOCK, "/org/example/Mock", "org.freedesktop.DBus.Introspectable", "Introspect"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert ok.returncode == 0, ok.stderr
            denied = subprocess.run(
                [*as_daemon, "call", MOCK, "/org/example/Mock", "org.freedesktop.DBus.Peer", "Ping"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert denied.returncode != 0 and "Access denied" in denied.stderr
        finally:
            mock.terminate()
            mock.wait(10)


@pytest.mark.skipif(not have("apparmor_parser"), reason="needs apparmor_parser (package apparmor)")
def test_apparmor_parser_accepts_the_export(policy, tmp_path: Path):
    profile = tmp_path / "profiles"
    profile.write_text(export_apparmor(policy, "system"))
    r = subprocess.run(["apparmor_parser", "-Q", "-K", str(profile)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "broken"
    broken.write_text(profile.read_text().replace("dbus (send)", "dbus (sendd)", 1))
    r = subprocess.run(["apparmor_parser", "-Q", "-K", str(broken)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0  # the parser does check what we give it


@pytest.mark.skipif(not have("xdg-dbus-proxy"), reason="needs xdg-dbus-proxy")
def test_real_xdg_dbus_proxy_filters_with_the_exported_arguments(policy, bus, services, tmp_path: Path):
    services.dbusmock(bus.address)
    (busctl_subject,) = [s for s in policy.subjects if s.component == "/usr/bin/busctl"]
    args, notes = component_arguments(busctl_subject)
    assert any("handled by xdg-dbus-proxy itself" in n for n in notes)
    path = tmp_path / "xdg.sock"
    proc = subprocess.Popen(["xdg-dbus-proxy", bus.address, str(path), "--filter", *args])
    try:
        wait_for(path.exists, what="xdg-dbus-proxy's socket")
        # dbus-send: xdg-dbus-proxy does not accept sd-bus's (busctl's) header layout
        send = ["dbus-send", f"--bus=unix:path={path}", "--print-reply", f"--dest={MOCK}", "/org/example/Mock"]
        ok = subprocess.run([*send, "org.freedesktop.DBus.Introspectable.Introspect"], capture_output=True,
                            text=True, timeout=20)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        denied = subprocess.run([*send, "org.freedesktop.DBus.Peer.Ping"], capture_output=True, text=True,
                                timeout=20)  # fmt: skip
        assert denied.returncode != 0 and "org.freedesktop.DBus.Error.AccessDenied" in denied.stderr, denied.stderr
    finally:
        proc.terminate()
        proc.wait(10)

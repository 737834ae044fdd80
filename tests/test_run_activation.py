"""`run` gives the command a complete bus, as dbus-run-session does: D-Bus activation included.

Real activatable services from Debian packages (dconf-service for the session bus, polkitd and
systemd-hostnamed for the system bus), a .service file of our own that starts python-dbusmock,
and real clients (dconf, busctl), on dbus-daemon and on dbus-broker.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import HOSTNAMED, IPCPROXY, ROOT, SYSTEM_PYTHON, have, read_trace

BUSES = [
    pytest.param([], id="dbus-daemon"),
    pytest.param(
        ["--broker"],
        id="dbus-broker",
        marks=pytest.mark.skipif(not have("dbus-broker-launch") or os.geteuid() != 0, reason="needs dbus-broker, root"),
    ),
]
DCONF = pytest.mark.skipif(not have("dconf") or not have("/usr/libexec/dconf-service"), reason="needs dconf-cli")
POLKITD = "/usr/lib/polkit-1/polkitd"
AUTHORITY = [
    "org.freedesktop.PolicyKit1",
    "/org/freedesktop/PolicyKit1/Authority",
    "org.freedesktop.PolicyKit1.Authority",
]
HOSTNAME = ["org.freedesktop.hostname1", "/org/freedesktop/hostname1", "org.freedesktop.hostname1", "Hostname"]


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IPCPROXY, *argv], capture_output=True, text=True, timeout=90, cwd=ROOT, env=env)


def service_file(directory: Path, name: str, exec_line: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.service"
    path.write_text(f"[D-BUS Service]\nName={name}\nExec={exec_line}\n")
    return path


def connected_exes(trace: Path) -> set[str]:
    return {r["client"].get("exe") for r in read_trace(trace) if r.get("event") == "connect"}


@DCONF
@pytest.mark.parametrize("bus", BUSES)
def test_a_session_service_is_activated_from_the_standard_directories(tmp_path: Path, bus: list[str]) -> None:
    """dconf write needs ca.desrt.dconf, which only /usr/share/dbus-1/services provides."""
    trace = tmp_path / "t.jsonl"
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"))  # dconf-service writes there
    r = run(
        "run", "-q", *bus, "-w", str(trace), "--", "dconf", "write", "/org/ipcproxy/test/key", "'activated'", env=env
    )
    assert r.returncode == 0, r.stderr
    read = subprocess.run(["dconf", "read", "/org/ipcproxy/test/key"], capture_output=True, text=True, env=env)
    assert read.stdout.strip() == "'activated'"
    # the activated service is behind the proxy like any other component, and named with its identity
    assert "/usr/libexec/dconf-service" in connected_exes(trace)
    change = [r for r in read_trace(trace) if r.get("member") == "Change" and r["direction"] == "from_bus"]
    assert change and "ca.desrt.dconf" in change[0]["destination"]["names"]
    # the call that started the service names it: the proxy learns the owner from the service's own
    # connection, whether or not the bus's NameOwnerChanged has reached the resolver yet
    assert change[0]["destination"]["bus_name"].startswith(":")
    assert change[0]["destination"]["exe"] == "/usr/libexec/dconf-service"
    assert change[0]["destination"]["pid"] > 0


@DCONF
def test_the_system_bus_does_not_offer_session_services(tmp_path: Path) -> None:
    r = run("run", "-q", "--system-bus", "--", "dconf", "write", "/org/ipcproxy/test/key", "'no'")
    assert r.returncode != 0
    assert "ServiceUnknown" in r.stderr and "ca.desrt.dconf" in r.stderr


@pytest.mark.skipif(not os.path.exists(POLKITD), reason="needs polkitd")
@pytest.mark.parametrize("bus", BUSES)
def test_system_bus_activates_a_system_service(tmp_path: Path, bus: list[str]) -> None:
    """polkitd comes from /usr/share/dbus-1/system-services (Exec=/usr/lib/polkit-1/polkitd)."""
    trace = tmp_path / "t.jsonl"
    r = run(
        "run", "-q", *bus, "--system-bus", "-w", str(trace), "--", "busctl", "get-property", *AUTHORITY, "BackendName"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("s ")
    assert POLKITD in connected_exes(trace)


@pytest.mark.skipif(not os.path.exists(HOSTNAMED), reason="needs systemd-hostnamed")
@pytest.mark.parametrize("bus", BUSES)
def test_service_dir_wins_over_the_standard_directories(tmp_path: Path, bus: list[str]) -> None:
    """Debian's hostname1 system service file has Exec=/bin/false (systemd starts it); ours runs it."""
    service_file(tmp_path / "services", "org.freedesktop.hostname1", HOSTNAMED)
    argv = ["run", "-q", *bus, "--system-bus", "--service-dir", str(tmp_path / "services")]
    r = run(*argv, "--", "busctl", "get-property", *HOSTNAME)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("s ")
    without = run("run", "-q", *bus, "--system-bus", "--", "busctl", "get-property", *HOSTNAME)
    assert without.returncode != 0  # /bin/false


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="python3-dbusmock needs Debian's python3")
@pytest.mark.parametrize("bus", BUSES)
def test_service_dir_activates_a_dbusmock_service(tmp_path: Path, bus: list[str]) -> None:
    name = "org.example.Activated"
    service_file(tmp_path / "services", name, f"{SYSTEM_PYTHON} -m dbusmock {name} /org/example/Activated {name}")
    trace = tmp_path / "t.jsonl"
    argv = ["run", "-q", *bus, "-w", str(trace), "--service-dir", str(tmp_path / "services"), "--"]
    r = run(*argv, "busctl", "--user", "introspect", name, "/org/example/Activated")
    assert r.returncode == 0, r.stderr
    assert "org.freedesktop.DBus.Introspectable" in r.stdout
    # as delivered to the service (as sent, the name had no owner yet: activation started it)
    delivered = [r for r in read_trace(trace) if r.get("member") == "Introspect" and r["direction"] == "from_bus"]
    assert delivered and name in delivered[0]["destination"]["names"]
    assert delivered[0]["destination"]["exe"] == os.path.realpath(SYSTEM_PYTHON)
    assert os.path.realpath(SYSTEM_PYTHON) in connected_exes(trace)  # the service, behind the proxy


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="python3-dbusmock needs Debian's python3")
def test_xdg_data_dirs_choose_the_session_service_directories(tmp_path: Path) -> None:
    name = "org.example.FromXdg"
    service_file(tmp_path / "share" / "dbus-1" / "services", name, f"{SYSTEM_PYTHON} -m dbusmock {name} /x {name}")
    env = dict(os.environ, XDG_DATA_DIRS=f"{tmp_path / 'share'}:/usr/share")
    r = run("run", "-q", "--", "busctl", "--user", "introspect", name, "/x", env=env)
    assert r.returncode == 0, r.stderr
    assert run("run", "-q", "--", "busctl", "--user", "introspect", name, "/x").returncode != 0


def test_the_command_environment_names_only_the_private_bus() -> None:
    """As dbus-run-session: variables that would name another bus are removed."""
    env = dict(os.environ, DBUS_STARTER_ADDRESS="unix:path=/elsewhere", DBUS_STARTER_BUS_TYPE="session")
    env.update(DBUS_SESSION_BUS_PID="1", DBUS_SESSION_BUS_WINDOWID="2")
    r = run("run", "-q", "--", "env", env=env)
    assert r.returncode == 0, r.stderr
    names = {line.split("=", 1)[0] for line in r.stdout.splitlines()}
    assert "DBUS_SESSION_BUS_ADDRESS" in names
    assert not names & {
        "DBUS_STARTER_ADDRESS",
        "DBUS_STARTER_BUS_TYPE",
        "DBUS_SESSION_BUS_PID",
        "DBUS_SESSION_BUS_WINDOWID",
    }


def test_system_bus_points_both_addresses_at_the_proxy() -> None:
    r = run("run", "-q", "--system-bus", "--", "sh", "-c", 'echo "$DBUS_SESSION_BUS_ADDRESS $DBUS_SYSTEM_BUS_ADDRESS"')
    session, system = r.stdout.split()
    assert session == system and session.endswith("/proxy.sock")


def test_a_service_dir_that_is_not_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    r = run("run", "--service-dir", str(tmp_path / "missing"), "--", "true")
    assert r.returncode == 2
    assert r.stderr == f"ipcproxy: run: --service-dir {tmp_path / 'missing'}: not a directory\n"


# --- campaigns: the same buses -------------------------------------------------------------------

ACTIVATED_CAMPAIGN = """\
version: 1
seed: 1
service_dirs: [services]
system_bus: {system_bus}
workload: "busctl get-property org.freedesktop.hostname1 /org/freedesktop/hostname1 org.freedesktop.hostname1 KernelName"
golden_runs: 1
timeout_s: 20
faults:
  - name: error-get
    match: {{type: method_call, member: Get}}
    action: {{error: {{name: org.freedesktop.DBus.Error.Failed}}}}
"""


@pytest.mark.skipif(not os.path.exists(HOSTNAMED), reason="needs systemd-hostnamed")
def test_a_campaign_activates_services_from_its_service_dirs(tmp_path: Path) -> None:
    """No setup: hostnamed is started by the bus, from the campaign's service_dirs, on its first call."""
    from ipcproxy.faults.campaign import read_results

    service_file(tmp_path / "services", "org.freedesktop.hostname1", HOSTNAMED)
    plan = tmp_path / "c.yaml"
    plan.write_text(ACTIVATED_CAMPAIGN.format(system_bus="true"))
    out = tmp_path / "out"
    r = subprocess.run(
        [*IPCPROXY, "campaign", str(plan), "-o", str(out), "-q"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert r.returncode == 0, r.stderr
    golden = json.loads((out / "golden-1.result.json").read_text())
    assert golden["exit_status"] == 0, golden
    assert "s " in golden["stdout"]
    assert os.path.realpath(HOSTNAMED) in connected_exes(out / "golden-1.jsonl")
    (fault,) = read_results(str(out / "results.jsonl")).values()
    assert fault["outcome"] == "handled"


def test_campaign_service_dirs_and_system_bus_are_checked(tmp_path: Path) -> None:
    from ipcproxy.faults.plan import PlanError, parse_campaign

    plan = tmp_path / "c.yaml"
    (tmp_path / "services").mkdir()
    c = parse_campaign(ACTIVATED_CAMPAIGN.format(system_bus="true"), str(plan))
    assert c.service_dirs == [str(tmp_path / "services")] and c.system_bus
    with pytest.raises(PlanError, match=r"c.yaml:4: system_bus must be true or false"):
        parse_campaign(ACTIVATED_CAMPAIGN.format(system_bus="yes please"), str(plan))
    (tmp_path / "services").rmdir()
    with pytest.raises(PlanError, match=r"c.yaml:3: service_dirs: .*services is not a directory"):
        parse_campaign(ACTIVATED_CAMPAIGN.format(system_bus="false"), str(plan))

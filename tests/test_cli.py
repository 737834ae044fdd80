"""The command line as a contract (docs/architecture.md, Errors and exit statuses): help, usage errors, exit statuses.

Usage and input errors are one line on stderr, status 2, never a traceback;
`run` exits with its command's status.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import IPCPROXY, ROOT, read_trace, trace_header
from ipcproxy import __version__
from ipcproxy.cli import COMMANDS, main
from ipcproxy.commands.status import ExitStatus


def ipcproxy(*args: str, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IPCPROXY, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_usage_error(r: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert r.returncode == ExitStatus.USAGE, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ipcproxy")
    for fragment in fragments:
        assert fragment in lines[0]


# --- help and entry points -----------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    r = ipcproxy("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: ipcproxy")
    for command in COMMANDS:
        assert command in r.stdout


@pytest.mark.parametrize("command", ["run", "proxy"])
def test_subcommand_help(command: str) -> None:
    r = ipcproxy(command, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith(f"usage: ipcproxy {command}")
    for option in ("--write", "--quiet", "--script", "--policy", "--faults"):
        assert option in r.stdout


def test_python_dash_m_and_console_script_agree() -> None:
    via_module = subprocess.run([sys.executable, "-m", "ipcproxy", "--version"], capture_output=True, text=True)
    script = Path(sys.executable).parent / "ipcproxy"
    via_script = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert via_module.returncode == via_script.returncode == 0
    assert via_module.stdout.strip() == via_script.stdout.strip() == f"ipcproxy {__version__}"


def test_no_command_prints_usage_and_exits_2() -> None:
    r = ipcproxy()
    assert r.returncode == 2
    assert "usage: ipcproxy" in r.stderr and "Traceback" not in r.stderr


# --- usage errors: one line, status 2 ------------------------------------------------------------


def test_unknown_option() -> None:
    assert_usage_error(ipcproxy("--frobnicate"), "unrecognized arguments: --frobnicate")


def test_unknown_subcommand() -> None:
    assert_usage_error(ipcproxy("frobnicate"), "invalid choice: 'frobnicate'")


def test_unknown_option_of_a_subcommand() -> None:
    assert_usage_error(ipcproxy("run", "--frobnicate", "--", "true"), "--frobnicate")


@pytest.mark.parametrize("argv", [["run"], ["run", "--"], ["run", "-q", "--"]])
def test_run_without_a_command(argv: list[str]) -> None:
    assert_usage_error(ipcproxy(*argv), "give the command to run after --")


def test_run_with_a_command_that_does_not_exist(tmp_path: Path) -> None:
    assert_usage_error(ipcproxy("run", "-q", "--", str(tmp_path / "no-such-program")), "cannot run")


@pytest.mark.parametrize(
    ("service", "fragment"),
    [("/no/such/service", "cannot start service"), ("'unbalanced", "No closing quotation"), ("", "empty command")],
)
def test_run_with_a_service_that_cannot_start(service: str, fragment: str) -> None:
    assert_usage_error(ipcproxy("run", "-q", "--service", service, "--", "true"), fragment)


def test_run_with_an_unwritable_trace_leaves_no_bus_behind(tmp_path: Path) -> None:
    private_tmp = tmp_path / "tmp"  # where run creates its bus directory
    private_tmp.mkdir()
    r = ipcproxy(
        "run", "-w", str(tmp_path / "missing" / "t.jsonl"), "--", "true",
        env=dict(os.environ, TMPDIR=str(private_tmp)),
    )  # fmt: skip
    assert_usage_error(r, "cannot write", "no such folder")
    assert list(private_tmp.iterdir()) == []  # the bus was stopped and its directory removed
    left = subprocess.run(["pgrep", "-f", str(private_tmp)], capture_output=True, text=True)
    assert left.stdout == ""


def test_proxy_needs_upstream_and_listen() -> None:
    assert_usage_error(ipcproxy("proxy", "--listen", "unix:path=/tmp/x"), "--upstream")
    assert_usage_error(ipcproxy("proxy", "--upstream", "unix:path=/tmp/x"), "--listen")


@pytest.mark.parametrize(
    ("upstream", "fragment"),
    [
        ("unix:path=/nonexistent/bus.sock", "cannot connect to the bus at unix:path=/nonexistent/bus.sock"),
        ("garbage", "has no transport"),
        ("", "empty D-Bus address"),
    ],
)
def test_proxy_with_unreachable_or_bad_upstream(tmp_path: Path, upstream: str, fragment: str) -> None:
    r = ipcproxy("proxy", "--upstream", upstream, "--listen", f"unix:path={tmp_path}/p.sock")
    assert_usage_error(r, fragment)
    assert r.stdout == ""


def test_proxy_with_unusable_listen(tmp_path: Path, bus: Any) -> None:
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("keep me")
    for listen, fragment in [
        (f"unix:path={tmp_path}/missing/p.sock", "cannot listen on"),
        (f"unix:path={not_a_socket}", "exists and is not a socket"),
        ("tcp:host=256.0.0.1,port=1", "refusing to listen" if os.geteuid() == 0 else "cannot listen on"),
        ("nonsense", "no transport"),
    ]:
        r = ipcproxy("proxy", "--upstream", bus.address, "--listen", listen)
        assert_usage_error(r, fragment)
        assert r.stdout == ""
    assert not_a_socket.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal concerns a proxy running as root")
def test_root_proxy_refuses_unauthenticated_tcp_clients(bus: Any) -> None:
    """Over TCP nobody's uid is known: a root proxy would hand every local user root on the bus."""
    r = ipcproxy("proxy", "--upstream", bus.address, "--listen", "tcp:host=127.0.0.1,port=0")
    assert_usage_error(r, "TCP clients cannot be authenticated")


def test_in_process_main_returns_usage_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"], env={}) == ExitStatus.USAGE
    assert main(["no-such-command"], env={}) == ExitStatus.USAGE
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("ipcproxy: ") for line in err)


# --- run: CMD's status, CMD's environment ---------------------------------------------------------


@pytest.mark.parametrize(("cmd", "status"), [(["true"], 0), (["false"], 1), (["sh", "-c", "exit 7"], 7)])
def test_run_exits_with_the_command_status(cmd: list[str], status: int) -> None:
    r = ipcproxy("run", "-q", "--", *cmd)
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr


def test_run_reports_a_command_killed_by_a_signal_like_a_shell() -> None:
    r = ipcproxy("run", "-q", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM


def test_run_points_the_command_at_the_proxy(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    show_env = 'echo "$DBUS_SESSION_BUS_ADDRESS"; echo "${DBUS_SYSTEM_BUS_ADDRESS-unset}"'
    r = ipcproxy(
        "run", "-q", "-w", str(trace), "--", "sh", "-c", show_env, env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS="x")
    )
    session, system = r.stdout.splitlines()
    header = trace_header(trace)
    assert session.startswith("unix:path=") and session.endswith("/proxy.sock")
    assert session != header["bus_address"]  # the proxy, not the bus behind it
    assert system == "x"  # left alone without --system-too

    r = ipcproxy("run", "-q", "--system-too", "--", "sh", "-c", show_env)
    session, system = r.stdout.splitlines()
    assert system == session


def test_run_records_the_command_traffic_and_stops_cleanly(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    r = ipcproxy("run", "-w", str(trace), "--", "busctl", "--user", "list", "--no-pager")
    assert r.returncode == 0, r.stderr
    assert "org.freedesktop.DBus" in r.stdout
    assert "member=ListNames" in r.stderr  # printed live
    recs = read_trace(trace)
    events = [rec["event"] for rec in recs if rec["type"] == "event"]
    assert events[0] == "proxy_start" and events[-1] == "proxy_stop"
    assert any(rec.get("member") == "ListNames" for rec in recs)


def test_quiet_run_prints_nothing_of_its_own() -> None:
    r = ipcproxy("run", "-q", "--", "busctl", "--user", "list", "--no-pager")
    assert r.returncode == 0
    assert r.stderr == ""


# --- proxy: address on stdout when ready, clean stop on SIGINT/SIGTERM ----------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_proxy_prints_its_address_and_stops_cleanly(tmp_path: Path, bus: Any, sig: int) -> None:
    listen = f"unix:path={tmp_path}/p.sock"
    trace = tmp_path / "t.jsonl"
    proc = subprocess.Popen(
        [*IPCPROXY, "proxy", "-q", "-w", str(trace), "--upstream", bus.address, "--listen", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == listen
        r = subprocess.run(
            ["busctl", f"--address={listen}", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
             "org.freedesktop.DBus", "GetId"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + sig, err  # as a shell reports a job ended by that signal
    assert "Traceback" not in err
    recs = read_trace(trace)
    assert recs[-1]["event"] == "proxy_stop"
    assert recs[-1]["reason"] == f"signal {signal.Signals(sig).name}"
    assert any(rec.get("member") == "GetId" for rec in recs)


# --- the README's tour matches the command line ---------------------------------------------------


def test_readme_tours_every_command_with_an_example() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert f"**`{command}`**" in readme, command
        assert re.search(rf"^(\$ |sudo )?ipcproxy {re.escape(command)} ", readme, re.M), command
    for doc in ("install.md", "commands-run-proxy.md", "interceptors.md"):
        assert f"(docs/{doc})" in readme
        assert (ROOT / "docs" / doc).is_file()
    for snippet in re.findall(r"```python\n(.*?)```", readme, re.S):
        compile(snippet, "README.md", "exec")

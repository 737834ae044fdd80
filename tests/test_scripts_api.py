"""Users' interceptor scripts (-s FILE.py) against real services and real clients.

The two worked examples of docs/interceptors.md live in examples/ and run here
unchanged, through `ipcproxy run` and `ipcproxy proxy`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import HOSTNAMED, IPCPROXY, ROOT, SYSTEM_PYTHON, busctl, have, messages, read_trace
from ipcproxy import api
from ipcproxy.scripting import ScriptError, load_script

EXAMPLES = ROOT / "examples"
HOSTNAME1 = "org.freedesktop.hostname1"
HOSTNAME_PATH = "/org/freedesktop/hostname1"

pytestmark = pytest.mark.skipif(not have(HOSTNAMED) or not have("busctl"), reason="needs systemd-hostnamed and busctl")


def ipcproxy_run(
    tmp_path: Path,
    scripts: list[str | Path],
    shell: str,
    *,
    services: tuple[str, ...] = (HOSTNAMED,),
    wait_for: tuple[str, ...] = (HOSTNAME1,),
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`ipcproxy run` with hostnamed on the private bus; returns the result and the trace's messages."""
    trace = tmp_path / "trace.jsonl"
    argv = [*IPCPROXY, "run", "-q", "--system-too", "-w", str(trace)]
    for svc in services:
        argv += ["--service", svc]
    for name in wait_for:
        argv += ["--wait-for", name]
    for script in scripts:
        argv += ["-s", str(script)]
    argv += ["--", "sh", "-c", shell]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=dict(os.environ, **(env or {}))
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result, messages(read_trace(trace)) if trace.exists() else []


def write_script(tmp_path: Path, body: str, name: str = "script.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


GET_HOSTNAME = f"busctl get-property {HOSTNAME1} {HOSTNAME_PATH} {HOSTNAME1} Hostname"
GDBUS_GET_HOSTNAME = (
    f"gdbus call --system --dest {HOSTNAME1} --object-path {HOSTNAME_PATH} "
    f"--method org.freedesktop.DBus.Properties.Get {HOSTNAME1} Hostname"
)


# --- the worked examples -------------------------------------------------------------------------


def test_rewrite_hostname_example_changes_what_clients_see(tmp_path: Path) -> None:
    fake = f"fake-{uuid.uuid4().hex[:8]}"
    result, recs = ipcproxy_run(
        tmp_path,
        [EXAMPLES / "rewrite_hostname.py"],
        f"{GET_HOSTNAME}; {GDBUS_GET_HOSTNAME}; "
        f"gdbus call --system --dest {HOSTNAME1} --object-path {HOSTNAME_PATH} "
        f"--method org.freedesktop.DBus.Properties.GetAll {HOSTNAME1}",
        env={"FAKE_HOSTNAME": fake},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f's "{fake}"'  # busctl
    assert lines[1] == f"(<'{fake}'>,)"  # gdbus Get
    assert f"'Hostname': <'{fake}'>" in lines[2]  # gdbus GetAll, other properties untouched
    assert "'KernelName': <'Linux'>" in lines[2]
    assert socket.gethostname() != fake

    modified = [r for r in recs if isinstance(r["verdict"], dict) and r["verdict"].get("action") == "modified"]
    # the replies to Get (busctl, gdbus) and to GetAll, each seen leaving hostnamed and reaching the client
    assert {r["destination"].get("comm") for r in modified} == {"busctl", "gdbus"}
    assert all(r["verdict"]["by"] == "rewrite_hostname" for r in modified)
    assert all(r["type"] == "method_return" and r["sender"]["names"] == [HOSTNAME1] for r in modified)
    to_clients = [r for r in modified if r["direction"] == "from_bus" and r["signature"] == "v"]
    assert [r["args"] for r in to_clients] == [[fake], [fake]]


def test_rewrite_hostname_example_denies_set_hostname(tmp_path: Path) -> None:
    # The name asked for is the current one: even if the call leaked through, nothing would change.
    current = socket.gethostname()
    result, recs = ipcproxy_run(
        tmp_path,
        [EXAMPLES / "rewrite_hostname.py"],
        f"gdbus call --system --dest {HOSTNAME1} --object-path {HOSTNAME_PATH} "
        f"--method {HOSTNAME1}.SetHostname {current} false; "
        f"busctl call {HOSTNAME1} {HOSTNAME_PATH} {HOSTNAME1} SetStaticHostname sb {current} false",
    )
    assert result.returncode == 1  # busctl's status, passed on by run
    assert (
        "GDBus.Error:org.freedesktop.DBus.Error.AccessDenied: SetHostname is not allowed through this proxy"
        in result.stderr
    )
    assert "Access denied" in result.stderr  # busctl's wording of the same error

    calls = [r for r in recs if r["type"] == "method_call" and r["member"] in ("SetHostname", "SetStaticHostname")]
    # each call was stopped as it left its client: hostnamed never received one
    assert [r["direction"] for r in calls] == ["to_bus", "to_bus"]
    for r in calls:
        assert r["verdict"]["action"] == "error_reply"
        assert r["verdict"]["by"] == "deny_hostname_changes"
        assert r["verdict"]["reason"] == "host name is read-only"
    errors = [r for r in recs if r["type"] == "error" and r["error_name"] == "org.freedesktop.DBus.Error.AccessDenied"]
    assert {r["reply_serial"] for r in errors} == {r["serial"] for r in calls}
    assert all(r["verdict"]["action"] == "injected" for r in errors)


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs python3-dbusmock")
def test_log_property_reads_example_through_proxy_command(
    tmp_path: Path, bus: Any, proxy_factory: Any, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "reads.jsonl"
    monkeypatch.setenv("PROPERTY_LOG", str(log))
    proxy = proxy_factory(bus.address, "-s", str(EXAMPLES / "log_property_reads.py"))
    # UPower (python-dbusmock's template) sits directly on the bus, hostnamed behind the proxy
    services.start(
        [SYSTEM_PYTHON, "-m", "dbusmock", "--template", "upower"], bus.address, wait_name="org.freedesktop.UPower"
    )
    services.start([HOSTNAMED], proxy.address, wait_name=HOSTNAME1)
    version = busctl(
        proxy.address, "get-property", "org.freedesktop.UPower", "/org/freedesktop/UPower", "org.freedesktop.UPower",
        "DaemonVersion",
    ).stdout.strip()  # fmt: skip
    busctl(proxy.address, "get-property", HOSTNAME1, HOSTNAME_PATH, HOSTNAME1, "KernelName")
    missing = busctl(proxy.address, "get-property", HOSTNAME1, HOSTNAME_PATH, HOSTNAME1, "NoSuchThing", check=False)
    assert missing.returncode != 0
    proxy.stop()

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["service"], e["interface"], e["property"]) for e in entries] == [
        ("org.freedesktop.UPower", "org.freedesktop.UPower", "DaemonVersion"),
        (HOSTNAME1, HOSTNAME1, "KernelName"),
        (HOSTNAME1, HOSTNAME1, "NoSuchThing"),
    ]
    assert version == f's "{entries[0]["value"]}"'
    assert entries[1]["value"] == "Linux"
    assert "value" not in entries[2] and entries[2]["error"].startswith("org.freedesktop.DBus.Error.")
    assert all(e["client"] == "/usr/bin/busctl" for e in entries)
    assert all(isinstance(e["latency_ms"], float) and e["latency_ms"] >= 0 for e in entries)
    # a logger only looks: no message got a verdict from it
    assert not [r for r in messages(proxy.records()) if isinstance(r["verdict"], dict)]


# --- scripts that cannot be loaded: one line, exit 2, no traceback ------------------------------

BAD_SCRIPTS = {
    "syntax-error": ("def broken(:\n    pass\n", "line 1"),
    "no-interceptor": ("X = 1\n", "defines no interceptor"),
    "raises-on-load": ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
    "exits-on-load": ("import sys\nsys.exit(3)\n", "SystemExit"),
    "bad-interceptors-list": ("interceptors = [42]\n", "in `interceptors`"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCRIPTS))
def test_unloadable_script_is_a_usage_error(tmp_path: Path, bus: Any, case: str) -> None:
    body, expected = BAD_SCRIPTS[case]
    script = write_script(tmp_path, body, "bad.py")
    for argv in (
        [*IPCPROXY, "run", "-s", str(script), "--", "true"],
        [*IPCPROXY, "proxy", "-s", str(script), "--upstream", bus.address, "--listen", f"unix:path={tmp_path}/p.sock"],
    ):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        assert r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("ipcproxy: script ") and str(script) in lines[0]
        assert expected in lines[0]


def test_missing_script_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [*IPCPROXY, "run", "-s", str(tmp_path / "nope.py"), "--", "true"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"ipcproxy: cannot read script {tmp_path / 'nope.py'}: no such file"


def test_load_script_collects_decorated_functions_and_objects(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        from ipcproxy.api import interceptor, drop

        @interceptor
        def first(ctx):
            return None

        @interceptor(name="gatekeeper", fail_closed=True)
        def second(ctx):
            return drop()

        class Counter:
            name = "counter"
            fail_closed = False
            def intercept(self, ctx):
                return None

        interceptors = [Counter()]
        """,
    )
    found = load_script(str(script))
    assert [(i.name, i.fail_closed) for i in found] == [("first", False), ("gatekeeper", True), ("counter", False)]
    # a second load does not see the first one's registrations twice
    assert len(load_script(str(script))) == 3
    with pytest.raises(ScriptError):
        load_script(str(write_script(tmp_path, "pass\n", "empty.py")))
    assert api.take_registered() == []


def test_script_can_import_a_module_next_to_it(tmp_path: Path) -> None:
    write_script(tmp_path, "BLOCKED = {'SetHostname'}\n", "rules_helper_for_test.py")
    script = write_script(
        tmp_path,
        """
        from ipcproxy.api import drop, interceptor
        from rules_helper_for_test import BLOCKED

        @interceptor
        def block(ctx):
            return drop() if ctx.message.member in BLOCKED else None
        """,
    )
    assert [i.name for i in load_script(str(script))] == ["block"]


# --- interceptors that fail at run time ----------------------------------------------------------


def test_fail_open_interceptor_exception_lets_messages_pass(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        from ipcproxy.api import interceptor

        @interceptor
        def clumsy(ctx):
            if ctx.message.member == "Get":
                raise KeyError("oops")

        @interceptor
        def confused(ctx):
            if ctx.message.member == "Get":
                return True  # not a Verdict
        """,
    )
    result, recs = ipcproxy_run(tmp_path, [script], f"{GET_HOSTNAME}; {GDBUS_GET_HOSTNAME}")
    assert result.returncode == 0, result.stderr
    real = socket.gethostname()
    assert result.stdout.splitlines() == [f's "{real}"', f"(<'{real}'>,)"]
    assert "interceptor clumsy failed: KeyError: 'oops'" in result.stderr
    assert "interceptor confused failed: TypeError: returned bool, expected None or a Verdict" in result.stderr
    gets = [r for r in recs if r["member"] == "Get"]
    assert gets and all(r["verdict"] == "forwarded" for r in gets)


def test_fail_closed_interceptor_exception_denies_the_message(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        from ipcproxy.api import MessageType, interceptor

        @interceptor(fail_closed=True)
        def strict(ctx):
            msg = ctx.message
            if msg.type is MessageType.METHOD_CALL and msg.destination == "org.freedesktop.hostname1":
                raise ValueError("cannot decide")
        """,
    )
    result, recs = ipcproxy_run(tmp_path, [script], GDBUS_GET_HOSTNAME)
    assert result.returncode == 1
    assert "GDBus.Error:org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert "strict could not decide: ValueError: cannot decide" in result.stderr
    gets = [r for r in recs if r["member"] == "Get"]
    assert len(gets) == 1  # stopped at the client: hostnamed never saw it
    assert gets[0]["verdict"]["action"] == "denied"
    assert gets[0]["verdict"]["by"] == "strict"
    denial = [r for r in recs if r["type"] == "error" and r["reply_serial"] == gets[0]["serial"]]
    assert [r["error_name"] for r in denial] == ["org.freedesktop.DBus.Error.AccessDenied"]


def test_delay_and_drop_verdicts_are_recorded(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        from ipcproxy.api import MessageType, Direction, delay, drop, interceptor

        @interceptor
        def slow_kernel_name(ctx):
            msg = ctx.message
            if ctx.direction is Direction.TO_BUS and msg.member == "Get" and msg.args[1] == "KernelName":
                return delay(0.2, reason="slow")

        @interceptor
        def lose_chassis(ctx):
            msg = ctx.message
            if ctx.direction is Direction.TO_BUS and msg.member == "Get" and msg.args[1] == "Chassis":
                return drop(reason="lost")
        """,
    )
    get = f"busctl get-property {HOSTNAME1} {HOSTNAME_PATH} {HOSTNAME1}"
    get_chassis = f"busctl --timeout=1 call {HOSTNAME1} {HOSTNAME_PATH} org.freedesktop.DBus.Properties Get ss {HOSTNAME1} Chassis"
    result, recs = ipcproxy_run(tmp_path, [script], f"{get} KernelName; {get_chassis}")
    assert result.stdout.splitlines() == ['s "Linux"']
    assert result.returncode != 0  # the dropped call timed out
    gets = {r["args"][1]: r for r in recs if r["member"] == "Get" and r["direction"] == "to_bus"}
    assert gets["KernelName"]["verdict"] == {
        "action": "delayed",
        "reason": "slow",
        "by": "slow_kernel_name",
        "delay_ms": 200.0,
    }
    assert gets["Chassis"]["verdict"] == {"action": "dropped", "reason": "lost", "by": "lose_chassis"}
    # the delayed call still reached hostnamed; the dropped one did not
    reached = {r["args"][1] for r in recs if r["member"] == "Get" and r["direction"] == "from_bus"}
    assert reached == {"KernelName"}


def test_modified_then_delayed_message_is_delivered_modified(
    tmp_path: Path, bus: Any, proxy_factory: Any, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Non-terminal verdicts combine: the rewritten reply is the one delivered late."""
    script = write_script(
        tmp_path,
        """
        from ipcproxy.api import MessageType, delay, interceptor

        @interceptor
        def late(ctx):
            if ctx.message.type is MessageType.METHOD_RETURN and ctx.message.signature == "v":
                return delay(0.05, reason="late")
        """,
    )
    monkeypatch.setenv("FAKE_HOSTNAME", "late-host")
    # hostnamed directly on the bus, so its reply crosses the proxy once, on its way to busctl
    services.start([HOSTNAMED], bus.address, wait_name=HOSTNAME1)
    proxy = proxy_factory(bus.address, "-s", str(EXAMPLES / "rewrite_hostname.py"), "-s", str(script))
    out = busctl(proxy.address, "get-property", HOSTNAME1, HOSTNAME_PATH, HOSTNAME1, "Hostname").stdout
    assert out == 's "late-host"\n'
    proxy.stop()
    replies = [r for r in messages(proxy.records()) if r["signature"] == "v"]
    assert [r["args"] for r in replies] == [["late-host"]]
    assert replies[0]["verdict"]["action"] == "delayed"
    assert replies[0]["verdict"]["by"] == "late"
    assert replies[0]["verdict"]["modified"] == "fake host name"


# --- the documentation shows what really runs ----------------------------------------------------


def test_interceptor_docs_embed_the_examples_verbatim_and_their_snippets_compile() -> None:
    doc = (ROOT / "docs" / "interceptors.md").read_text()
    for name in ("log_property_reads.py", "rewrite_hostname.py"):
        source = (EXAMPLES / name).read_text()
        docstring_end = ast.parse(source).body[0].end_lineno
        code = "\n".join(source.splitlines()[docstring_end:]).strip("\n")
        assert code in doc, f"docs/interceptors.md is out of date with examples/{name}"
    snippets = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(snippets) >= 4
    for snippet in snippets:
        compile(snippet, "docs/interceptors.md", "exec")

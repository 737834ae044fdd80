"""The README's two commands: scripts/setup.sh (via scripts/demo.sh) and scripts/test.sh.

setup.sh must be idempotent: on a machine where everything is installed it
installs nothing and says nothing about installing. demo.sh must run its demo
end to end against the real services and exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, read_trace, trace_header

SCRIPTS = ROOT / "scripts"


def setup_packages() -> list[str]:
    """The apt packages setup.sh promises, read from the script itself."""
    text = (SCRIPTS / "setup.sh").read_text()
    match = re.search(r"PACKAGES=\(([^)]*)\)", text)
    assert match, "setup.sh lists its packages in PACKAGES=(...)"
    return match.group(1).split()


def run_setup(cwd: Path) -> subprocess.CompletedProcess[str]:
    # from another directory: the script must find the project by itself
    return subprocess.run(["bash", str(SCRIPTS / "setup.sh")], capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.mark.parametrize("name", ["setup.sh", "test.sh", "demo.sh"])
def test_scripts_are_executable_bash_with_strict_mode(name: str) -> None:
    path = SCRIPTS / name
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_setup_is_idempotent(tmp_path: Path) -> None:
    first = run_setup(tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_setup(tmp_path)
    assert second.returncode == 0, second.stderr
    output = second.stdout + second.stderr
    assert not [line for line in output.splitlines() if "install" in line.lower()], output
    # and what it promises is really there
    for package in setup_packages():
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        ).stdout  # fmt: skip
        assert status == "install ok installed", package
    r = subprocess.run([str(ROOT / ".venv/bin/ipcproxy"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ipcproxy ")


def test_test_sh_and_ci_run_the_same_thing() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/test.sh" in readme
    assert "./scripts/demo.sh" in readme


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    trace = tmp_path / "demo.jsonl"
    r = subprocess.run(
        [str(SCRIPTS / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=dict(os.environ, DEMO_TRACE=str(trace)),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    out = r.stdout
    # the clients got real answers from the real services
    assert re.search(r'^s "[^"]+"$', out, re.M)  # busctl: Hostname
    assert "(<'Linux'>,)" in out  # gdbus: KernelName
    assert 'variant       string "' in out  # dbus-send: Timezone
    assert "[objectpath '/org/freedesktop/UPower/devices/demo_battery']" in out
    assert "variant       double 42" in out
    # every message was printed live, and written
    assert trace_header(trace)["format"] == "ipcproxy-trace"
    records = read_trace(trace)
    live = [line for line in r.stderr.splitlines() if line.startswith("#")]
    assert len(live) == len(records)
    members = {rec.get("member") for rec in records}
    assert {"Hello", "Get", "GetAll", "Introspect", "AddDischargingBattery", "EnumerateDevices", "DeviceAdded"} <= (
        members
    )
    senders = {rec["sender"].get("exe") for rec in records if rec.get("type") == "method_call"}
    assert {"/usr/bin/busctl", "/usr/bin/gdbus", "/usr/bin/dbus-send"} <= senders
    assert f"{len(records)} records in {trace}" in out
    for command in ("show", "stats"):  # the demo ends by summarising its trace
        assert f"$ ipcproxy {command} {trace}" in out, command
    assert out.rstrip().splitlines()[-1].startswith("demo: done.")

"""What the commands do on the paths they are given, run as a user would: real runs, real files.

An output never replaces an input, a non-empty file (without --force) or the
target of a symbolic link, and is created private; an input that is a FIFO
or a device is refused at once, in one line, instead of hanging.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IPCPROXY, read_trace

DBUS_SEND = ["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus", "/"]


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the children inherit it
    try:
        yield
    finally:
        os.umask(old)


def ipcproxy(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One command; the timeout only guards against a hang, the asserts are on status and message."""
    return subprocess.run([*IPCPROXY, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def refused(r: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status 2 and one line on stderr holding ``words``."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trace: dbus-send calling the bus on run's private bus."""
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    r = ipcproxy("run", "-q", "-w", str(path), "--", *DBUS_SEND, "org.freedesktop.DBus.ListNames")
    assert r.returncode == 0, r.stderr
    return path


POLICY = "version: 1\ncomponents: []\nunknown: allow\n"
PLAN = "version: 1\nfaults: []\n"
SCRIPT = "from ipcproxy.api import interceptor\n\n\n@interceptor\ndef watch(ctx):\n    return None\n"


# ---------------------------------------------------------------- outputs


def test_run_trace_is_private_under_umask_022_and_output_mode_widens(tmp_path: Path) -> None:
    private, shared = tmp_path / "private.jsonl", tmp_path / "shared.pcapng"
    assert ipcproxy("run", "-q", "-w", str(private), "--", "true").returncode == 0
    r = ipcproxy("run", "-q", "-w", str(shared), "--output-mode", "0640", "--", "true")
    assert r.returncode == 0, r.stderr
    assert mode_of(private) == 0o600
    assert mode_of(shared) == 0o640
    pcap = tmp_path / "t.pcap"
    assert ipcproxy("run", "-q", "-w", str(pcap), "--", "true").returncode == 0
    assert mode_of(pcap) == 0o600
    refused(ipcproxy("run", "--output-mode", "0400", "--", "true"), "--output-mode", "owner")


def test_run_refuses_a_symlink_at_the_trace_path_and_leaves_its_target_alone(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    link = tmp_path / "t.jsonl"
    link.symlink_to(mine)
    for extra in ([], ["--force"]):
        refused(ipcproxy("run", "-q", "-w", str(link), *extra, "--", "true"), str(link), "symbolic link")
    assert mine.read_text() == "my notes\n" and mode_of(mine) == 0o644
    assert link.is_symlink()


def test_run_refuses_a_non_empty_file_then_replaces_it_with_force(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    out.write_text("not a trace, but mine\n")
    out.chmod(0o644)
    refused(ipcproxy("run", "-q", "-w", str(out), "--", "true"), str(out), "exists and is not empty", "--force")
    assert out.read_text() == "not a trace, but mine\n"
    r = ipcproxy("run", "-q", "-w", str(out), "--force", "--", "true")
    assert r.returncode == 0, r.stderr
    read_trace(out)  # a trace now
    assert mode_of(out) == 0o600


@pytest.mark.parametrize("option", ["--policy", "--faults", "-s"])
def test_run_never_writes_its_trace_over_its_policy_plan_or_script(tmp_path: Path, option: str) -> None:
    given = tmp_path / ("x.py" if option == "-s" else "x.yaml")
    text = {"--policy": POLICY, "--faults": PLAN, "-s": SCRIPT}[option]
    given.write_text(text)
    (tmp_path / "hard.yaml").hardlink_to(given)
    for out in (str(given), "./" + given.name, "hard.yaml"):
        r = ipcproxy("run", "-q", option, str(given), "-w", out, "--force", "--", "true", cwd=tmp_path)
        refused(r, "is also an input of this command")
    assert given.read_text() == text


def test_learn_never_writes_the_policy_over_a_trace_it_reads(trace: Path, tmp_path: Path) -> None:
    before = trace.read_bytes()
    refused(ipcproxy("learn", str(trace), "-o", str(trace)), "is also an input")
    refused(ipcproxy("learn", str(trace), "-o", str(trace), "--force"), "is also an input")
    alias = tmp_path / "alias.jsonl"
    alias.hardlink_to(trace)
    refused(ipcproxy("learn", str(trace), "-o", str(alias), "--force"), "is also an input")
    assert trace.read_bytes() == before


def test_learn_output_private_refused_when_non_empty_accepted_with_force(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    r = ipcproxy("learn", str(trace), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert mode_of(out) == 0o600
    first = out.read_text()
    refused(ipcproxy("learn", str(trace), "-o", str(out)), str(out), "exists and is not empty")
    assert out.read_text() == first
    assert ipcproxy("learn", str(trace), "-o", str(out), "--force", "--output-mode", "644").returncode == 0
    assert mode_of(out) == 0o644
    link = tmp_path / "l.yaml"
    link.symlink_to(tmp_path / "elsewhere.yaml")
    refused(ipcproxy("learn", str(trace), "-o", str(link), "--force"), "symbolic link")
    assert not (tmp_path / "elsewhere.yaml").exists()


def test_convert_output_rules(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.pcap"
    assert ipcproxy("convert", str(trace), str(out)).returncode == 0
    assert mode_of(out) == 0o600
    refused(ipcproxy("convert", str(trace), str(out)), "exists and is not empty")
    assert ipcproxy("convert", str(trace), str(out), "--force").returncode == 0
    back = tmp_path / "back.jsonl"
    back.symlink_to(trace)
    refused(ipcproxy("convert", str(out), str(back), "--force"), "symbolic link")


def test_missing_folders_and_inputs_are_named_in_words(trace: Path, tmp_path: Path) -> None:
    refused(ipcproxy("run", "-q", "-w", str(tmp_path / "no" / "x.jsonl"), "--", "true"), "no/x.jsonl: no such folder")
    refused(ipcproxy("learn", str(trace), "-o", str(tmp_path / "no" / "p.yaml")), "no such folder")
    refused(ipcproxy("run", "-q", "-w", str(tmp_path), "--", "true"), "it is a folder")
    refused(ipcproxy("show", str(tmp_path / "missing.jsonl")), "missing.jsonl: no such file")
    refused(ipcproxy("learn", str(tmp_path), "-o", "-"), "folder")
    r = ipcproxy("run", "--policy", str(tmp_path / "missing.yaml"), "--", "true")
    refused(r, "missing.yaml", "no such file")
    assert "Errno" not in r.stderr


# ---------------------------------------------------------------- campaign folders

CAMPAIGN = """\
version: 1
workload: "true"
golden_runs: 1
timeout_s: 5
faults:
  - {name: nothing, match: {member: NoSuchMember}, action: {drop: {}}}
"""


def test_campaign_folder_private_refused_when_foreign_resumed_when_its_own(tmp_path: Path) -> None:
    plan = tmp_path / "c.yaml"
    plan.write_text(CAMPAIGN)
    out = tmp_path / "out"
    r = ipcproxy("campaign", str(plan), "-o", str(out), "-q", timeout=120)
    assert r.returncode == 0, r.stderr
    assert mode_of(out) == 0o700
    assert mode_of(out / "golden-1.jsonl") == 0o600 and mode_of(out / "results.jsonl") == 0o600
    again = ipcproxy("campaign", str(plan), "-o", str(out), "-q", timeout=120)  # its own results: resumed
    assert again.returncode == 0, again.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused(ipcproxy("campaign", str(plan), "-o", str(foreign), "-q"), "exists and is not empty", "--force")
    wide = tmp_path / "wide"
    r = ipcproxy("campaign", str(plan), "-o", str(wide), "-q", "--output-mode", "0640", timeout=120)
    assert r.returncode == 0, r.stderr
    assert mode_of(wide) == 0o750 and mode_of(wide / "golden-1.jsonl") == 0o640


def test_campaign_into_an_existing_file_is_one_line_without_errno(tmp_path: Path) -> None:
    plan = tmp_path / "c.yaml"
    plan.write_text(CAMPAIGN)
    existing = tmp_path / "existing_file"
    existing.write_text("x")
    r = ipcproxy("campaign", str(plan), "-o", str(existing))
    line = refused(r, str(existing), "it is a file")
    assert "Errno" not in line and r.stderr.startswith("ipcproxy")


# ---------------------------------------------------------------- FIFO and device inputs


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "f.yaml"
    os.mkfifo(path)
    return path


def test_a_fifo_policy_is_refused_without_hanging(fifo: Path, tmp_path: Path) -> None:
    listen = f"unix:path={tmp_path / 'p.sock'}"
    r = ipcproxy("proxy", "--policy", str(fifo), "--upstream", "unix:path=/nonexistent", "--listen", listen, timeout=30)
    refused(r, str(fifo), "FIFO", "not a regular file")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--faults", "{f}", "--", "true"],
        ["run", "-s", "{f}", "--", "true"],
        ["campaign", "{f}", "-o", "{tmp}/out"],
        ["check", "{f}", "{trace}"],
        ["export-policy", "{f}", "--format", "dbus-daemon"],
        ["diff-policy", "{f}", "{f}"],
        ["show", "{f}"],
        ["stats", "{f}"],
        ["learn", "{f}", "-o", "-"],
        ["check", "{policy}", "{f}"],
        ["diff", "{trace}", "{f}"],
        ["convert", "{f}", "{tmp}/x.pcap"],
    ],
)
def test_every_input_that_is_a_fifo_is_refused_in_one_line(
    argv: list[str], fifo: Path, trace: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    args = [a.format(f=fifo, tmp=tmp_path, trace=trace, policy=policy) for a in argv]
    refused(ipcproxy(*args, timeout=30), str(fifo), "FIFO")


def test_a_device_as_a_plan_is_refused(tmp_path: Path) -> None:
    refused(ipcproxy("run", "--faults", "/dev/zero", "--", "true", timeout=30), "/dev/zero", "device")


def test_show_follow_still_reads_a_fifo_until_its_writer_closes_it(trace: Path, fifo: Path) -> None:
    def feed() -> None:
        with open(fifo, "wb") as writer:  # waits for show to open its end
            writer.write(trace.read_bytes())

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    r = ipcproxy("show", "--follow", str(fifo), timeout=30)
    feeder.join(5)
    assert r.returncode == 0, r.stderr
    assert "ListNames" in r.stdout and "Traceback" not in r.stderr


# ---------------------------------------------------------------- diff


def test_diff_of_unrelated_traces_says_so(trace: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    r = ipcproxy("run", "-q", "-w", str(other), "--", "busctl", "--user", "list", "--no-pager")
    assert r.returncode == 0, r.stderr
    d = ipcproxy("diff", str(trace), str(other))
    assert d.returncode == 1, d.stderr
    assert "None" not in d.stdout
    assert "no sender in common" in d.stdout


def test_syscall_trace_output_follows_the_same_rules(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    link = tmp_path / "t.jsonl"
    link.symlink_to(mine)
    refused(ipcproxy("trace", "-q", "-w", str(link), "--force", "--", "true"), "symbolic link")
    assert mine.read_text() == "my notes\n"
    out = tmp_path / "s.jsonl"
    assert ipcproxy("trace", "-q", "-w", str(out), "--", "true").returncode == 0
    assert mode_of(out) == 0o600
    refused(ipcproxy("trace", "-q", "-w", str(out), "--", "true"), "exists and is not empty")
    assert ipcproxy("trace", "-q", "-w", str(out), "--force", "--", "true").returncode == 0

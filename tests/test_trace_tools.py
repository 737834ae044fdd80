"""`show`, `stats` and filter expressions on a real trace: real bus, proxy, services and clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    HOSTNAMED,
    IPCPROXY,
    ROOT,
    ProxyProcess,
    Services,
    busctl,
    dbus_send,
    gdbus,
    messages,
    read_trace,
    wait_for,
)
from ipcproxy.cli import main
from ipcproxy.dbus.launcher import PrivateBus
from ipcproxy.trace.filters import parse_filter
from ipcproxy.trace.view import format_args

HOST = "org.freedesktop.hostname1"
HOST_PATH = "/org/freedesktop/hostname1"
BUSCTL = "/usr/bin/busctl"
PLAN = """\
version: 1
faults:
  - name: fail-kernel
    match: {type: method_call, member: Get, args: {1: KernelName}}
    action: {error: {name: org.freedesktop.DBus.Error.Failed, message: injected}}
"""


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real trace for the whole module: hostnamed behind the proxy, three kinds of clients, one injected fault."""
    d = tmp_path_factory.mktemp("trace")
    (d / "plan.yaml").write_text(PLAN)
    with PrivateBus() as bus:
        proxy = ProxyProcess(bus.address, d, ["--faults", str(d / "plan.yaml")])
        services = Services()
        try:
            services.start([HOSTNAMED], proxy.address, wait_name=HOST)
            busctl(proxy.address, "get-property", HOST, HOST_PATH, HOST, "Hostname")
            busctl(proxy.address, "get-property", HOST, HOST_PATH, HOST, "KernelName", check=False)
            busctl(proxy.address, "call", HOST, HOST_PATH, HOST, "NoSuchMethod", check=False)
            gdbus(
                proxy.address,
                "call",
                "--dest",
                HOST,
                "--object-path",
                HOST_PATH,
                "--method",
                "org.freedesktop.DBus.Properties.GetAll",
                HOST,
            )
            dbus_send(
                proxy.address,
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.GetNameOwner",
                f"string:{HOST}",
            )
        finally:
            services.stop()
            proxy.stop()
    return proxy.trace


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def assert_usage_error(status: int, err: str) -> str:
    assert status == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- filters


def select(trace: Path, expr: str) -> list[dict[str, Any]]:
    match = parse_filter(expr)
    return [r for r in read_trace(trace) if match(r)]


def test_filter_member_and_type(trace: Path) -> None:
    got = select(trace, "member=Get type=method_call")
    assert got and all(r["member"] == "Get" and r["type"] == "method_call" for r in got)
    assert {r["args"][1] for r in got} == {"Hostname", "KernelName"}
    # an alias and alternatives mean the same thing
    assert select(trace, "type=call member=Get") == got
    both = select(trace, "type=method_call member=Get,GetAll")
    assert {r["member"] for r in both} == {"Get", "GetAll"}


def test_filter_globs_and_negation(trace: Path) -> None:
    recs = read_trace(trace)
    props = select(trace, "interface=*.Properties type=method_call")
    assert {r["member"] for r in props} == {"Get", "GetAll"}
    not_get = select(trace, "member!=Get")
    assert not_get and all(r.get("member") != "Get" for r in not_get)
    assert len(not_get) + len(select(trace, "member=Get")) == len(recs)
    assert {r["member"] for r in select(trace, "member=GetA?? type=method_call")} == {"GetAll"}


def test_filter_component_matches_either_side_by_any_identity(trace: Path) -> None:
    for expr in ("component=busctl", f"component={BUSCTL}"):
        got = [r for r in select(trace, expr) if r["type"] != "event"]
        assert got, expr
        for r in got:
            sides = [r["sender"], r["destination"]]
            assert any(s.get("comm") == "busctl" or s.get("exe") == BUSCTL for s in sides), (expr, r)
    senders = select(trace, f"sender={HOST} type=method_return")
    assert senders and all(HOST in r["sender"]["names"] for r in senders)
    # a unique name works too, and picks the same connection
    unique = senders[0]["sender"]["bus_name"]
    assert unique.startswith(":")
    assert all(r["sender"]["bus_name"] == unique for r in select(trace, f"sender={unique} type=method_return"))
    to_host = select(trace, f"destination={HOST} type=method_call")
    assert {r["member"] for r in to_host} >= {"Get", "GetAll", "NoSuchMethod"}


def test_filter_error_verdict_serial_connection_events(trace: Path) -> None:
    errors = select(trace, "error=*.UnknownMethod")
    assert errors and all(r["type"] == "error" for r in errors)
    denied = select(trace, "verdict=error_reply")
    assert denied and all(r["member"] == "Get" and r["args"][1] == "KernelName" for r in denied)
    forwarded = select(trace, "verdict=forwarded type!=event")
    assert len(forwarded) + len(select(trace, "verdict!=forwarded type!=event")) == len(messages(read_trace(trace)))
    call = select(trace, "member=GetAll type=method_call")[0]
    same = select(trace, f"serial={call['serial']} connection={call['connection']} type=method_call")
    assert call in same and all(r["connection"] == call["connection"] for r in same)
    events = select(trace, "type=event")
    assert {r["event"] for r in events} >= {"connect", "disconnect", "proxy_start"}
    assert not select(trace, "type=event member=Get")
    assert select(trace, "event=connect component=busctl")


@pytest.mark.parametrize(
    "expr, words",
    [
        ("colour=red", "unknown filter key"),
        ("member", "expected key=value"),
        ("type=bogus", "unknown message type"),
        ("serial=abc", "must be a number"),
        ("member='Get", "bad filter"),
    ],
)
def test_bad_filter_is_a_one_line_value_error(expr: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_filter(expr)
    assert words in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- show


def test_show_renders_messages_events_args_latency_and_verdicts(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(["show", str(trace)], capsys)
    assert status == 0, err
    assert out.startswith(f"# {trace}: trace v2")
    assert "** connect connection=" in out and "** disconnect" in out
    assert "method_call busctl(" in out and "member=Get" in out
    assert 'string "Hostname"' in out  # arguments typed from the signature
    assert "dict<string,variant>" in out  # GetAll's reply
    assert "latency=" in out and "reply_serial=" in out
    assert "[error_reply: fault fail-kernel error_name=org.freedesktop.DBus.Error.Failed]" in out
    assert "error=org.freedesktop.DBus.Error.UnknownMethod" in out
    # one block per record, relative clock starting at zero
    blocks = [line for line in out.splitlines() if line.startswith("#") and not line.startswith("# ")]
    assert len(blocks) == len(read_trace(trace))
    assert blocks[0].split()[1] == "+0.000000"


def test_show_filter_and_json(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["show", str(trace), "--filter", "member=Get type=method_call"], capsys)
    assert status == 0
    heads = [line for line in out.splitlines() if line.startswith("#") and not line.startswith("# ")]
    assert heads and all("method_call" in h and "member=Get " in h + " " for h in heads)
    assert len(heads) == len(select(trace, "member=Get type=method_call"))

    status, out, _ = run_cli(["show", str(trace), "--json", "--filter", "type=error"], capsys)
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["format"] == "ipcproxy-trace" and lines[0]["filter"] == "type=error"
    assert lines[1:] == select(trace, "type=error") and len(lines) > 1


def test_show_reads_up_to_a_truncated_last_record(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = trace.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[: len(data) - 20])
    status, out, err = run_cli(["show", "--json", str(cut)], capsys)
    assert status == 0
    assert "truncated" in err and "Traceback" not in err
    shown = [json.loads(line) for line in out.splitlines()[1:]]
    assert shown == read_trace(trace)[:-1]


def test_show_follow_sees_live_records_and_stops_cleanly(bus: Any, proxy_factory: Any) -> None:
    proxy: ProxyProcess = proxy_factory(bus.address)
    out_path = proxy.trace.parent / "follow.out"
    with open(out_path, "wb") as out:
        show = subprocess.Popen(
            [*IPCPROXY, "show", "--follow", str(proxy.trace)], stdout=out, stderr=subprocess.PIPE, cwd=ROOT
        )
    try:
        busctl(proxy.address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId")
        wait_for(lambda: "member=GetId" in out_path.read_text(), what="show --follow to print the call")
        # the proxy is unaffected by a reader: it keeps serving and recording
        busctl(
            proxy.address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames"
        )
        wait_for(lambda: "member=ListNames" in out_path.read_text(), what="the second call")
    finally:
        show.send_signal(signal.SIGINT)
        status = show.wait(10)
        err = show.stderr.read().decode() if show.stderr else ""
    assert status == 0, err
    assert "Traceback" not in err
    assert proxy.proc.poll() is None  # the proxy still runs
    proxy.stop()
    members = {r["member"] for r in messages(proxy.records())}
    assert {"GetId", "ListNames"} <= members


def _follow(path: Path, out_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(out_path, "wb") as out:
        return subprocess.Popen(
            [*IPCPROXY, "show", "--follow", *extra, str(path)], stdout=out, stderr=subprocess.PIPE, cwd=ROOT
        )


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())
    except OSError:
        return False


def _stop_following(show: subprocess.Popen[bytes]) -> str:
    show.send_signal(signal.SIGINT)
    status = show.wait(10)
    err = show.stderr.read().decode() if show.stderr else ""
    assert status == 0, err
    assert "Traceback" not in err
    return err


def test_show_follow_starts_again_when_a_new_proxy_writes_the_same_trace(bus: Any, tmp_path: Path) -> None:
    workdir = tmp_path / "proxy"
    workdir.mkdir()
    first = ProxyProcess(bus.address, workdir)
    out_path = tmp_path / "follow.out"
    show = _follow(first.trace, out_path)
    try:
        call = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
        busctl(first.address, "call", *call, "GetId")
        wait_for(lambda: "member=GetId" in out_path.read_text(), what="the first proxy's call")
        first.stop()
        second = ProxyProcess(bus.address, workdir, ["--force"])  # same -w: emptied and written again
        try:
            busctl(second.address, "call", *call, "ListNames")
            wait_for(lambda: "member=ListNames" in out_path.read_text(), what="the second proxy's call")
        finally:
            second.stop()
    finally:
        err = _stop_following(show)
    assert "truncated or replaced" in err
    shown = out_path.read_text()
    # the second trace is read from its start: its own connection and Hello, not garbage from the old offset
    assert shown.count("member=Hello") >= 2
    assert "not valid JSON" not in err


def test_show_follow_waits_for_a_trace_being_created_and_for_whole_lines(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = trace.read_bytes()
    header_end = data.index(b"\n") + 1
    growing = tmp_path / "growing.jsonl"
    growing.write_bytes(b"")  # created, nothing written yet
    out_path = tmp_path / "follow.out"
    show = _follow(growing, out_path, "--json")
    try:
        wait_for(lambda: show.poll() is not None or _has_open(show.pid, growing), what="show to open the trace")
        with open(growing, "ab") as writer:
            for piece in (data[: header_end // 2], data[header_end // 2 : header_end + 7], data[header_end + 7 :]):
                writer.write(piece)
                writer.flush()
                os.fsync(writer.fileno())
        wanted = len(read_trace(trace))
        wait_for(lambda: len(out_path.read_text().splitlines()) == wanted + 1, what="every record")
    finally:
        err = _stop_following(show)
    shown = [json.loads(line) for line in out_path.read_text().splitlines()[1:]]
    assert shown == read_trace(trace)
    assert "warning" not in err


def test_show_follow_reads_a_replaced_trace_from_its_start(trace: Path, tmp_path: Path) -> None:
    data = trace.read_bytes()
    lines = data.splitlines(keepends=True)
    path = tmp_path / "replaced.jsonl"
    path.write_bytes(b"".join(lines[:3]))
    out_path = tmp_path / "follow.out"
    show = _follow(path, out_path, "--json")
    try:
        wait_for(lambda: len(out_path.read_text().splitlines()) == 3, what="the first two records")
        fresh = tmp_path / "fresh.jsonl"
        fresh.write_bytes(data)
        os.replace(fresh, path)  # another file now has the name
        wanted = 3 + 1 + len(read_trace(trace))  # the new file's header is shown too
        wait_for(lambda: len(out_path.read_text().splitlines()) == wanted, what="the new file's records")
    finally:
        err = _stop_following(show)
    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert lines[3] == dict(json.loads(data.splitlines()[0]), shown_from=str(path))
    assert lines[4:] == read_trace(trace)
    assert "truncated or replaced" in err


def test_show_follow_stops_on_sigint_even_when_started_with_it_ignored(trace: Path, tmp_path: Path) -> None:
    """A shell starts its background jobs with SIGINT ignored; ipcproxy stops on it all the same, as on Ctrl-C."""
    out_path = tmp_path / "follow.out"
    background = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]
    with open(out_path, "wb") as out:
        show = subprocess.Popen(
            [*background, *IPCPROXY, "show", "--follow", "--json", str(trace)],
            stdout=out,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
    try:
        wanted = 1 + len(read_trace(trace))
        wait_for(lambda: len(out_path.read_text().splitlines()) == wanted, what="every record")
        show.send_signal(signal.SIGINT)
        status = show.wait(30)
    finally:
        if show.poll() is None:
            show.kill()
            show.wait()
    err = show.stderr.read().decode() if show.stderr else ""
    assert status == 0, err
    assert "Traceback" not in err


def test_format_args_types() -> None:
    lines = format_args("sa{sv}(iu)ay", ["x", {"a": 1}, [1, 2], "00ff"])
    assert lines == ['string "x"', 'dict<string,variant> {"a":1}', "struct<int32,uint32> [1,2]", 'bytes "00ff"']
    assert format_args("s", ["y" * 1000], limit=50)[0].endswith("(1009 chars)")


# ---------------------------------------------------------------- stats


def test_stats_counts_each_message_once_with_latency_and_errors(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(["stats", "--json", str(trace)], capsys)
    assert status == 0, err
    data = json.loads(out)
    recs = messages(read_trace(trace))
    raw_gets = [r for r in recs if r["member"] == "Get" and r["type"] == "method_call"]
    # recorded leaving busctl and arriving at hostnamed; the failed one never reached it
    assert sorted(r["args"][1] for r in raw_gets) == ["Hostname", "Hostname", "KernelName"]
    pairs = {(p["sender"], p["destination"]): p for p in data["pairs"]}
    to_host = pairs[(BUSCTL, HOST)]
    assert to_host["method_call"] == 3  # Get Hostname, Get KernelName, NoSuchMethod: once each
    # answered by hostnamed: Hostname and NoSuchMethod (the proxy's own error reply carries no latency)
    assert to_host["calls_timed"] == 2 and to_host["latency_p50_ns"] > 0
    assert to_host["latency_p99_ns"] >= to_host["latency_p50_ns"]
    back = pairs[(HOST, BUSCTL)]
    assert back["method_return"] == 1 and back["error"] == 2  # the injected error and UnknownMethod
    comps = {c["component"]: c for c in data["components"]}
    # hostnamed said Hello before owning its name; it is still one component
    assert os.path.realpath(HOSTNAMED) not in comps
    host = comps[HOST]
    assert host["method_call"] >= 2 and host["errors"] == 2 and host["received"] >= 4
    assert host["bytes"] > 0 and host["bytes_in"] > 0 and host["latency_p50_ns"] is not None
    assert comps["org.freedesktop.DBus"]["method_return"] >= 3
    assert data["merged_copies"] > 0
    assert data["messages"] + data["merged_copies"] == len(recs)
    assert data["messages"] == sum(c["messages"] for c in data["components"])


def test_stats_tables(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["stats", str(trace), str(trace)], capsys)
    assert status == 0
    assert "per component" in out and "per pair sender -> destination" in out
    row = next(line for line in out.splitlines() if line.startswith(f"{BUSCTL} ") and HOST in line)
    cells = row.split()
    assert cells[:3] == [BUSCTL, HOST, "6"]  # two traces: three calls each


def test_stats_truncated_trace_warns(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = trace.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[:-5])
    status, out, err = run_cli(["stats", str(cut)], capsys)
    assert status == 0 and "truncated" in err and "per component" in out


# ---------------------------------------------------------------- bad input


def bad_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    future = tmp_path / "future.jsonl"
    future.write_text(json.dumps({"format": "ipcproxy-trace", "version": 99}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    return {"missing": tmp_path / "nope.jsonl", "text": text, "future": future, "empty": empty, "dir": tmp_path}


@pytest.mark.parametrize("command", ["show", "stats"])
@pytest.mark.parametrize("kind", ["missing", "text", "future", "empty", "dir"])
def test_bad_trace_is_one_line_exit_2(
    command: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = bad_files(tmp_path)[kind]
    status, out, err = run_cli([command, str(path)], capsys)
    line = assert_usage_error(status, err)
    assert str(path) in line
    if kind == "future":
        assert "version 99" in line
    assert out == ""


def test_bad_filter_on_the_command_line(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(["show", str(trace), "--filter", "colour=red"], capsys)
    assert "unknown filter key 'colour'" in assert_usage_error(status, err)
    assert out == ""


def test_bad_filter_for_the_live_view_is_a_usage_error(bus: Any, capsys: pytest.CaptureFixture[str]) -> None:
    r = subprocess.run(
        [
            *IPCPROXY,
            "proxy",
            "--upstream",
            bus.address,
            "--listen",
            "unix:path=/nonexistent/x",
            "--filter",
            "type=nope",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_only_proxy_copies_are_merged(trace: Path) -> None:
    """Copies exist only for messages seen on two proxied connections; driver messages are never merged."""
    from ipcproxy.trace.stats import Deliveries

    recs = messages(read_trace(trace))
    deliveries = Deliveries()
    copies = [r for r in recs if deliveries.seen(r)[0]]
    assert copies and all(r["direction"] == "from_bus" for r in copies)
    assert all(r["sender"]["bus_name"] != "org.freedesktop.DBus" for r in copies)
    observed = [dict(r, direction="observed") for r in recs]
    deliveries = Deliveries()
    assert not any(deliveries.seen(r)[0] for r in observed)

"""The compiled data plane records exactly what the Python path records, on real buses with real clients."""

from __future__ import annotations

import collections
import json
import re
from typing import Any

from conftest import busctl, dbus_send, gdbus, messages, read_trace
from ipcproxy.dbus import plane


def test_the_plane_is_built():
    assert plane.available(), "the compiled data plane did not build (scripts/setup.sh installs gcc and python3-dev)"


# dbus-send arguments of many types; each call is made twice, so the second one takes the
# plane's path (the first teaches it the header)
CALLS = [
    ["string:hello", "int32:-5", "uint64:18446744073709551615", "boolean:true", "byte:255"],
    ["array:string:a,b,c", "array:int32:1,2,3", "array:byte:1,2,250"],
    ["dict:string:int32:one,1,two,2", "dict:int32:string:1,x,2,y"],
    ["variant:string:inside", "variant:int16:-3", "objpath:/a/b"],
    ['string:quote " backslash \\ tab \t and ünïcødé ✓'],
]


def _workload(address: str) -> None:
    for _ in range(2):
        busctl(address, "call", "org.example.Mock", "/org/example/Mock", "org.freedesktop.DBus.Peer", "Ping")
        gdbus(
            address,
            "call",
            "--dest",
            "org.example.Mock",
            "--object-path",
            "/org/example/Mock",
            "--method",
            "org.freedesktop.DBus.Introspectable.Introspect",
        )
        for args in CALLS:
            dbus_send(
                address, "--dest=org.example.Mock", "/org/example/Mock", "org.example.Mock.Nothing", *args, check=False
            )


def _normalized(records: list[dict[str, Any]]) -> collections.Counter[str]:
    """What must not depend on the forwarding path: everything but numbering, clocks and run-specific names."""
    seen: collections.Counter[str] = collections.Counter()
    for record in messages(records):
        record = dict(record)
        for key in ("seq", "ts", "time", "latency_ns", "serial", "reply_serial", "connection"):
            record.pop(key, None)
        for side in ("sender", "destination"):
            record[side] = {k: v for k, v in record[side].items() if k not in ("bus_name", "pid")}
        if record.get("destination_name", "").startswith(":"):
            record["destination_name"] = ":unique"
        args = [a if not (isinstance(a, str) and a.startswith(":1.")) else ":unique" for a in record["args"]]
        if args != record["args"]:
            record.pop("size")  # a unique name's length varies from run to run
        record["args"] = args
        seen[json.dumps(record, sort_keys=True)] += 1
    return seen


def test_compiled_and_python_forwarding_record_the_same(any_bus, proxy_factory, services, monkeypatch):
    services.dbusmock(any_bus.address)
    compiled = proxy_factory(any_bus.address)
    monkeypatch.setenv("IPCPROXY_PLANE", "0")
    python = proxy_factory(any_bus.address)
    _workload(compiled.address)
    _workload(python.address)
    compiled.stop()
    python.stop()
    a, b = compiled.records(), python.records()
    assert [r["forwarding"] for r in a if r.get("event") == "proxy_start"] == ["compiled"]
    assert [r["forwarding"] for r in b if r.get("event") == "proxy_start"] == ["python"]
    (stop,) = [r for r in a if r.get("event") == "proxy_stop"]
    assert stop["frames"]["compiled"] + stop["frames"]["python"] == len(messages(a))
    # Hello, driver signals and the first of each header go to Python; the repeats do not
    assert stop["frames"]["compiled"] >= 2 * len(CALLS)
    assert _normalized(a) == _normalized(b)
    # every record of the compiled path has the full field set in the documented order
    for rec in messages(a):
        assert list(rec)[:6] == ["seq", "ts", "time", "transport", "type", "serial"]
    seqs = [r["seq"] for r in a]
    assert seqs == list(range(1, len(seqs) + 1))
    ts = [r["ts"] for r in messages(a)]
    assert ts == sorted(ts)
    calls = [r for r in messages(a) if r["member"] == "Nothing" and r["direction"] == "to_bus"]
    assert len(calls) == 2 * len(CALLS)
    again = calls[len(CALLS) :]  # the repeats, forwarded by the plane alone
    assert [c["args"] for c in again] == [c["args"] for c in calls[: len(CALLS)]]
    assert again[0]["args"] == ["hello", -5, 18446744073709551615, True, 255]
    assert again[1]["args"] == [["a", "b", "c"], [1, 2, 3], "0102fa"]
    assert again[2]["args"] == [{"one": 1, "two": 2}, {"1": "x", "2": "y"}]
    assert again[3]["args"] == ["inside", -3, "/a/b"]
    replies = [r for r in messages(a) if r["type"] in ("method_return", "error") and r["direction"] == "from_bus"]
    assert replies and all("latency_ns" in r for r in replies if r["sender"].get("names") != ["org.freedesktop.DBus"])


def test_interceptors_keep_the_python_path(bus, proxy_factory, tmp_path):
    script = tmp_path / "noop.py"
    script.write_text("from ipcproxy.api import interceptor\n\n@interceptor\ndef watch(ctx):\n    return None\n")
    proxy = proxy_factory(bus.address, "-s", str(script))
    busctl(proxy.address, "list")
    proxy.stop()
    assert [r["forwarding"] for r in proxy.records() if r.get("event") == "proxy_start"] == ["python"]


def test_a_trace_that_cannot_keep_up_stalls_forwarding_and_loses_nothing(bus, tmp_path):
    """The trace is a FIFO nobody reads for a while: forwarding waits (and says so), nothing is dropped."""
    import os
    import threading

    from conftest import ProxyProcess
    from ipcproxy.dbus.wire import DESTINATION, MEMBER, PATH, SIGNATURE
    from test_proxy_faithful import RawClient
    from test_wire import frame

    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    copy = tmp_path / "trace.jsonl"
    release = threading.Event()

    def slow_reader() -> None:
        with open(fifo, "rb") as pipe, open(copy, "wb") as out:
            release.wait(60)
            while chunk := pipe.read(1 << 20):
                out.write(chunk)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    workdir = tmp_path / "proxy"
    workdir.mkdir()
    proxy = ProxyProcess(bus.address, workdir, ["-w", str(fifo)])  # the later -w wins
    receiver = RawClient(proxy.address, timeout=120)
    receiver.hello()
    sender = RawClient(proxy.address, timeout=120)
    sender.hello()
    count, payload = 100, os.urandom(1 << 20)
    fields = [(PATH, "o", "/big"), (MEMBER, "s", "Big"), (DESTINATION, "s", receiver.name), (SIGNATURE, "g", "ay")]
    frames = [frame("l", 1, 10 + i, fields, "ay", [payload], flags=1) for i in range(count)]
    got: list[int] = []

    def receive() -> None:
        for _ in range(count):
            got.append(receiver.recv(lambda m: m.member == "Big", "a big call").serial)

    receiving = threading.Thread(target=receive)
    receiving.start()
    sending = threading.Thread(target=lambda: [sender.send(f, parse=False) for f in frames])
    sending.start()
    # with nobody reading the trace, at most the plane's 64 MiB and the writer's 64 MiB can wait:
    # forwarding must stall well before all 200 MiB (both directions) went through
    receiving.join(8)
    stalled = receiving.is_alive()
    release.set()
    sending.join(120)
    receiving.join(120)
    assert stalled, "forwarding went on although the trace could not be written"
    assert got == [10 + i for i in range(count)]
    sender.close()
    receiver.close()
    assert proxy.stop() == 143  # SIGTERM
    reader.join(60)
    records = read_trace(copy)
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(seqs) + 1))
    big = [r for r in messages(records) if r["member"] == "Big"]
    assert sorted((r["direction"], r["serial"]) for r in big) == sorted(
        (d, 10 + i) for d in ("to_bus", "from_bus") for i in range(count)
    )
    assert all(r["args"] == [payload.hex()] for r in big[:3])
    waits = [r for r in records if r.get("event") == "backpressure"]
    assert waits and all(r["waited_ms"] > 0 for r in waits)


def test_a_frame_handed_to_python_as_the_proxy_closes_is_recorded_as_discarded(bus, tmp_path):
    """The plane has handed a frame over; the proxy closes before Python got to it: the trace says so."""
    import asyncio
    import select

    from conftest import read_trace
    from ipcproxy.chain import Chain
    from ipcproxy.dbus.bus import Directory
    from ipcproxy.dbus.proxy import Proxy
    from ipcproxy.dbus.wire import DESTINATION, INTERFACE, MEMBER, PATH
    from ipcproxy.trace import records
    from ipcproxy.trace.recorder import Recorder
    from ipcproxy.trace.writer import JsonlWriter
    from test_proxy_faithful import RawClient
    from test_wire import frame

    loop = asyncio.new_event_loop()
    trace = tmp_path / "trace.jsonl"
    directory = Directory()
    recorder = Recorder([JsonlWriter(str(trace), records.header())], directory.endpoint)
    proxy = Proxy(bus.address, f"unix:path={tmp_path / 'proxy.sock'}", Chain([]), recorder, directory, loop=loop)
    try:
        assert proxy.plane is not None
        address = proxy.listen()

        def connect() -> RawClient:
            client = RawClient(address)
            client.hello()
            return client

        client = loop.run_until_complete(loop.run_in_executor(None, connect))
        # let Python take everything the plane handed over so far (Hello's reply, NameAcquired)
        for _ in range(200):
            loop.run_until_complete(asyncio.sleep(0.01))
            if proxy.plane.connections == 1 and not select.select([proxy.plane.fileno()], [], [], 0)[0]:
                break
        else:
            raise AssertionError("the plane did not settle")
        fields = [
            (PATH, "o", "/org/freedesktop/DBus"),
            (INTERFACE, "s", "org.freedesktop.DBus"),
            (MEMBER, "s", "GetId"),
            (DESTINATION, "s", "org.freedesktop.DBus"),
        ]
        client.send(frame("l", 1, client.next_serial(), fields))
        # a bus-driver call always goes to Python: the plane's eventfd says it is waiting
        assert select.select([proxy.plane.fileno()], [], [], 10)[0], "the plane did not hand the call over"
        proxy.close()  # before the event loop ran again
    finally:
        recorder.close()
        loop.close()
    recs = read_trace(trace)
    discarded = [r for r in recs if r.get("event") == "discarded"]
    assert [(r["connection"], r["reason"]) for r in discarded] == [(1, "connection closed")]
    assert not any(r.get("member") == "GetId" for r in messages(recs))  # never forwarded, so no message record
    assert client.wait_closed()
    seqs = [r["seq"] for r in recs]
    assert sorted(seqs) == seqs and len(set(seqs)) == len(seqs)


# what must differ between two runs of the same workload: numbering (the service numbers its messages
# across both runs), clocks, measured latencies, process ids
_RUN_SPECIFIC = re.compile(rb'"(seq|ts|serial|latency_ns|pid)":\d+')
_UNIQUE_NAME = re.compile(rb":1\.\d+")
_TEMPLATE = re.compile(rb'^\{"tpl":(\d+),')
_USES = re.compile(rb'"tpl":(\d+)')
_RAW_BODY = re.compile(rb',"bytes":(\d+)\}\n$')


def _masked(line: bytes) -> bytes:
    line = _RUN_SPECIFIC.sub(lambda m: m.group(0).split(b":")[0] + b":_", line)
    return _UNIQUE_NAME.sub(lambda m: b":1." + b"N" * (len(m.group(0)) - 3), line)


def _comparable_lines(path: Any) -> collections.Counter[bytes]:
    """A trace's message lines as bytes (each with its raw body), run-specific values masked (lengths kept).

    A record names its template by a number given in order of first use; it is
    replaced by the template's own (masked) line, so both are compared byte for byte.
    """
    data = path.read_bytes()
    at = data.index(b"\n") + 1
    templates: dict[bytes, bytes] = {}
    lines: collections.Counter[bytes] = collections.Counter()
    while at < len(data):
        end = data.index(b"\n", at) + 1
        line = data[at:end]
        raw = _RAW_BODY.search(line)
        if raw:
            end += int(raw.group(1)) + 1
            line = data[at:end]
        at = end
        defined = _TEMPLATE.match(line)
        if defined:
            templates[defined.group(1)] = _masked(line[defined.end() :])
        elif b'"type":"event"' not in line:
            lines[_USES.sub(lambda m: b'"tpl":' + templates[m.group(1)], _masked(line), count=1)] += 1
    return lines


def test_compiled_lines_are_byte_identical_to_python_lines(bus, proxy_factory, services, monkeypatch):
    """The plane's encoder and the Python encoder write the same bytes for the same messages."""
    from test_proxy_faithful import RawClient

    services.dbusmock(bus.address)
    for _ in range(100):  # unique names from :1.100 on have the same length in both runs: so have the sizes
        client = RawClient(bus.address)
        client.hello()
        client.close()
    compiled = proxy_factory(bus.address)
    monkeypatch.setenv("IPCPROXY_PLANE", "0")
    python = proxy_factory(bus.address)
    _workload(compiled.address)
    _workload(python.address)
    compiled.stop()
    python.stop()
    (stop,) = [r for r in compiled.records() if r.get("event") == "proxy_stop"]
    assert stop["frames"]["compiled"] >= 2 * len(CALLS)
    a, b = _comparable_lines(compiled.trace), _comparable_lines(python.trace)
    assert sum(a.values()) == len(messages(compiled.records()))
    assert a == b

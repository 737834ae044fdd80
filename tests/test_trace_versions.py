"""Reading traces of every version: version 1 as it was written, version 2's compact lines and raw bytes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from conftest import ROOT
from ipcproxy.cli import main
from ipcproxy.trace import reader, records

V1 = ROOT / "tests" / "fixtures" / "trace-v1.jsonl"


def test_a_version_1_trace_reads_as_the_records_it_holds(capsys) -> None:
    """Made by the version-1 proxy (busctl and dbus-send through it, an ay argument among them)."""
    lines = V1.read_text().splitlines()
    assert json.loads(lines[0])["version"] == 1
    read = list(reader.iter_trace(str(V1)))
    assert read == [json.loads(line) for line in lines[1:]]
    assert any(r.get("args") == ["0102fa"] for r in read)
    assert main(["stats", str(V1)]) == 0
    assert capsys.readouterr().out.startswith("30 messages, 14 events in 1 trace(s)")
    assert main(["show", "--json", str(V1)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in shown[1:]] == read


def _v2(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join([json.dumps(records.header()).encode() + b"\n", *lines]))
    return path


TEMPLATE = (
    b'{"tpl":1,"transport":"dbus","type":"method_call","sender":{"bus_name":":1.5","names":[]},'
    b'"destination":{"bus_name":":1.1","names":["org.example.Svc"]},"path":"/p","interface":"org.example.Svc",'
    b'"member":"Put","error_name":null,"signature":"ay","fds":0,"flags":0,"verdict":"forwarded",'
    b'"direction":"to_bus","connection":1,"destination_name":"org.example.Svc"}\n'
)


def _record(seq: int, body: bytes) -> bytes:
    return records.compact(seq, 1000 + seq, 1, seq, None, 100 + len(body), body=len(body)) + body + b"\n"


def test_compact_records_expand_into_full_records(tmp_path: Path) -> None:
    body = bytes(range(256)) + b"\n\n{" * 10  # newlines and braces inside the raw bytes
    path = _v2(tmp_path / "t.jsonl", TEMPLATE, _record(1, body), _record(2, b""))
    first, second = reader.iter_trace(str(path))
    assert list(first) == [
        "seq", "ts", "time", "transport", "type", "serial", "reply_serial", "sender", "destination", "path",
        "interface", "member", "error_name", "signature", "args", "size", "fds", "flags", "verdict", "direction",
        "connection", "destination_name",
    ]  # fmt: skip
    assert first["args"] == [body.hex()] and second["args"] == [""]
    assert first["member"] == "Put" and first["sender"] == {"bus_name": ":1.5", "names": []}
    assert first["time"] == records.wall_time(records.EPOCH_NS, 1001)
    assert first["reply_serial"] is None and first["size"] == 100 + len(body)


def test_raw_bytes_cut_short_end_the_trace_with_a_warning(tmp_path: Path) -> None:
    whole = _record(2, b"x" * 1000)
    path = _v2(tmp_path / "t.jsonl", TEMPLATE, _record(1, b"ab"), whole[:-10])
    warnings: list[str] = []
    read = list(reader.iter_trace(str(path), warn=warnings.append))
    assert [r["seq"] for r in read] == [1]
    assert len(warnings) == 1 and "truncated" in warnings[0]


def test_a_record_naming_an_undefined_template_is_skipped_with_a_warning(tmp_path: Path) -> None:
    stray = records.compact(1, 5, 9, 1, None, 10)
    path = _v2(tmp_path / "t.jsonl", stray, TEMPLATE, _record(2, b"ok"))
    warnings: list[str] = []
    read = list(reader.iter_trace(str(path), warn=warnings.append))
    assert [r["seq"] for r in read] == [2]
    assert warnings == [f"{path}: line 2: template 9 is not defined before it is used; skipped"]


def test_following_a_trace_waits_for_raw_bytes_still_being_written(tmp_path: Path) -> None:
    body = b"\n" * 3000
    record = _record(1, body)
    path = _v2(tmp_path / "t.jsonl", TEMPLATE, record[:200])
    got: list[dict[str, object]] = []

    def follow() -> None:
        for rec in reader.iter_trace(str(path), follow=True):
            got.append(rec)
            return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    for piece in (record[200:1000], record[1000:2000], record[2000:]):  # the rest of the bytes, in pieces
        time.sleep(0.3)
        assert not got
        with open(path, "ab") as f:
            f.write(piece)
    follower.join(10)
    assert got and got[0]["args"] == [body.hex()]

"""The recorder's compact trace lines read back as exactly the records the dict path builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ipcproxy.dbus import wire
from ipcproxy.model import Action, Endpoint, Message, MessageType, Verdict
from ipcproxy.trace import reader, records
from ipcproxy.trace import recorder as recorder_module
from ipcproxy.trace.recorder import Recorder
from ipcproxy.trace.writer import JsonlWriter


class _Collect:
    """A sink that is not a JsonlWriter, so the recorder builds dicts."""

    def __init__(self, path: Path) -> None:
        self.inner = JsonlWriter(str(path), records.header())

    def write(self, record: dict[str, Any], message: Message | None) -> None:
        self.inner.write(record, message)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


SERVICE = Endpoint(bus_name=":1.9", names=["org.example.Svc"], pid=42, uid=1000, exe="/usr/bin/svc", comm="svc")
CLIENT = Endpoint(bus_name=":1.3", names=[], pid=7, uid=0, exe="/usr/bin/cli", comm='cli %s "quoted"')


def _resolve(name: str | None) -> Endpoint:
    if name in (":1.9", "org.example.Svc"):
        return SERVICE
    if name == ":1.3":
        return CLIENT
    return Endpoint(bus_name=name)


def _messages() -> list[Message]:
    return [
        wire.build(
            MessageType.METHOD_CALL,
            serial=5,
            path="/org/example/Svc",
            interface="org.example.Svc",
            member="Echo",
            destination="org.example.Svc",
            signature="ay",
            body=[bytes(range(256)) * 70],
        ),
        wire.build(
            MessageType.METHOD_RETURN,
            serial=6,
            reply_serial=5,
            destination=":1.3",
            sender=":1.9",
            signature="ay",
            body=[b"\x00\xff"],
        ),
        wire.build(
            MessageType.METHOD_CALL,
            serial=7,
            path="/p",
            member="Ping",
            destination="org.example.Svc",
            flags=1,
        ),
        wire.build(
            MessageType.SIGNAL,
            serial=8,
            path="/org/example/Svc",
            interface="org.example.Svc",
            member="Changed",
            sender=":1.9",
            signature="sa{sv}",
            body=['naïve \u2028 "x"', {"k": wire.Variant("u", 3)}],
        ),
        wire.build(
            MessageType.ERROR,
            serial=9,
            reply_serial=7,
            error_name="org.example.Error.Nope",
            destination=":1.3",
            sender=":1.9",
            signature="s",
            body=["no"],
        ),
    ]


def _record_all(recorder: Recorder, fast_frames: bool) -> None:
    cache = wire.HeaderCache()
    verdicts: list[Verdict | str | dict[str, Any]] = [
        "forwarded",
        "forwarded",
        Verdict(Action.DELAY, reason="r", by="x", delay_s=0.25),
        "modified",
        {"action": "injected", "reason": None, "by": "t"},
    ]
    recorder.event("connect", connection=1, client=CLIENT.to_json())
    for i, (message, verdict) in enumerate(zip(_messages(), verdicts, strict=True)):
        direction = "to_bus" if i % 2 == 0 else "from_bus"
        latency = 1234 if message.reply_serial else None
        conn = None if i == 3 else 1
        head = cache.learn(message)
        if fast_frames and verdict == "forwarded" and head is not None:
            assert cache.lookup(message.raw) is head
            recorder.frame(message.raw, head, direction, conn, CLIENT, latency, 1_000_000 + i)
        else:
            recorder.message(message, direction, verdict, conn, CLIENT, latency, 1_000_000 + i)
    recorder.event("disconnect", connection=1, reason="closed by peer")
    recorder.close()


@pytest.mark.parametrize("decode_args", [True, False])
def test_compact_lines_read_back_as_the_dict_records(
    tmp_path: Path, decode_args: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module.time, "monotonic_ns", lambda: 999_000)  # events are stamped on arrival
    slow = Recorder([_Collect(tmp_path / "slow.jsonl")], _resolve, decode_args=decode_args)
    fast = Recorder([JsonlWriter(str(tmp_path / "fast.jsonl"), records.header())], _resolve)
    fast.decode_args = decode_args
    _record_all(slow, fast_frames=False)
    _record_all(fast, fast_frames=True)
    full = [json.loads(line) for line in (tmp_path / "slow.jsonl").read_bytes().splitlines()[1:]]
    compact = (tmp_path / "fast.jsonl").read_bytes()
    read = list(reader.iter_trace(str(tmp_path / "fast.jsonl")))
    assert read == full
    assert [list(r) for r in read] == [list(r) for r in full]  # the documented field order, too
    assert [r["seq"] for r in read] == list(range(1, 8))
    if decode_args:
        assert read[1]["args"] == [(bytes(range(256)) * 70).hex()]
        assert bytes(range(256)) * 70 in compact  # raw, once
        assert compact.count(b'"tpl":') == 2 * 5  # each message: a template of its own, then its record
        assert len(compact) < len((tmp_path / "slow.jsonl").read_bytes()) / 1.8  # hex took twice the room


def test_header_cache_masks_only_the_reply_serial() -> None:
    cache = wire.HeaderCache()
    first = wire.build(
        MessageType.METHOD_RETURN, serial=3, reply_serial=10, destination=":1.3", signature="ay", body=[b"ab"]
    )
    head = cache.learn(first)
    assert head is not None
    again = wire.build(
        MessageType.METHOD_RETURN, serial=4, reply_serial=99, destination=":1.3", signature="ay", body=[b"abc"]
    )
    assert cache.lookup(again.raw) is head
    other = wire.build(
        MessageType.METHOD_RETURN, serial=4, reply_serial=99, destination=":1.4", signature="ay", body=[b"abc"]
    )
    assert cache.lookup(other.raw) is None
    zero = bytearray(again.raw)
    zero[head.reply_at : head.reply_at + 4] = b"\0\0\0\0"
    assert cache.lookup(bytes(zero)) is None  # reply serial 0: the strict parser decides
    short = bytearray(again.raw)
    short[head.body_at : head.body_at + 4] = (7).to_bytes(4, "little")  # array longer than the body
    assert cache.lookup(bytes(short)) is None
    with pytest.raises(wire.FrameError):
        wire.parse_message(bytes(short))


def _stream() -> list[bytes]:
    frames = []
    for i in range(1, 40):
        kind = i % 4
        if kind == 0:
            m = wire.build(
                MessageType.METHOD_CALL,
                serial=i,
                path="/a",
                member="Echo",
                destination=":1.9",
                signature="ay",
                body=[bytes(i * 37 % 300)],
            )
        elif kind == 1:
            m = wire.build(
                MessageType.METHOD_RETURN,
                serial=i,
                reply_serial=i * 7,
                destination=":1.3",
                sender=":1.9",
                signature="ay",
                body=[b"x" * (i % 5)],
            )
        elif kind == 2:
            m = wire.build(MessageType.SIGNAL, serial=i, path="/a", interface="a.b", member="S", sender=":1.9")
        else:
            m = wire.build(
                MessageType.ERROR,
                serial=i,
                reply_serial=i,
                error_name="a.b.E",
                destination=":1.3",
                signature="s",
                body=["e"],
            )
        frames.append(m.raw)
    return frames


@pytest.mark.parametrize("cut", [1, 7, 16, 100, 4096])
def test_scan_borrows_fed_memory_and_matches_the_strict_parser(cut: int) -> None:
    frames = _stream()
    stream = b"".join(frames)
    parser = wire.FrameParser()
    cache = wire.HeaderCache()
    reused = bytearray(cut)  # like the proxy's receive buffer: overwritten after every scan
    seen: list[bytes] = []
    for start in range(0, len(stream), cut):
        chunk = stream[start : start + cut]
        reused[: len(chunk)] = chunk
        parser.feed(memoryview(reused)[: len(chunk)])
        for raw, head, serial, reply_serial in parser.scan(cache):
            seen.append(raw)
            message = parser.message(raw)
            assert message.serial == serial
            if head is None:
                cache.learn(message)
                continue
            assert (head.type, head.path, head.member, head.destination, head.sender, head.signature) == (
                message.type,
                message.path,
                message.member,
                message.destination,
                message.sender,
                message.signature,
            )
            assert reply_serial == (message.reply_serial or 0)
    assert seen == frames
    assert parser.buffered == 0
    assert len(cache) > 0

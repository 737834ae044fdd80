"""One record -> Message conversion for every offline reader: fault enumeration, learn/check replay, trace -> pcap.

A real proxied session in which a dbus-fast client passes a file descriptor to
a dbus-fast service is recorded twice, with and without arguments; both
replays must see the same messages, fds and transport included, and differ
only in what they make of arguments the trace lacks.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message as FastMessage
from dbus_fast.aio import MessageBus

from conftest import messages, read_trace
from ipcproxy.faults.offline import replay as offline_replay
from ipcproxy.faults.selectors import OwnedNames
from ipcproxy.model import Message, MessageType
from ipcproxy.trace.reader import iter_trace
from ipcproxy.trace.record_message import UnrecordedArgs, args_recorded, message_from_record
from ipcproxy.trace.replay import replay as trace_replay

NAME = "org.example.Fds"


async def _pass_an_fd(address: str) -> None:
    """A service that takes a pipe's read end, and a client that hands it one: both real dbus-fast connections."""
    service = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    client = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    try:
        await service.request_name(NAME)

        def answer(msg: FastMessage) -> bool:
            if msg.member != "Take":
                return False
            data = os.read(msg.unix_fds[msg.body[0]], 100).decode()
            for fd in msg.unix_fds:
                os.close(fd)
            service.send(FastMessage.new_method_return(msg, "s", [data]))
            return True

        service.add_message_handler(answer)
        read_end, write_end = os.pipe()
        os.write(write_end, b"through the proxy")
        os.close(write_end)
        call = FastMessage(
            destination=NAME,
            path="/fds",
            interface=NAME,
            member="Take",
            signature="h",
            body=[0],
            unix_fds=[read_end],
        )
        reply = await client.call(call)
        os.close(read_end)
        assert reply is not None and reply.body == ["through the proxy"], reply
    finally:
        client.disconnect()
        service.disconnect()


def _record_session(bus: Any, proxy_factory: Any, *extra: str) -> Path:
    proxy = proxy_factory(bus.address, *extra)
    asyncio.run(asyncio.wait_for(_pass_an_fd(proxy.address), 30))
    assert proxy.stop() == 143, proxy.stderr()  # SIGTERM
    return Path(proxy.trace)


@pytest.fixture
def traces(bus: Any, proxy_factory: Any) -> tuple[Path, Path]:
    """The same real session recorded with its arguments, and with --no-args."""
    return _record_session(bus, proxy_factory), _record_session(bus, proxy_factory, "--no-args")


def _take_calls_offline(path: Path) -> list[Message]:
    points = offline_replay(iter_trace(str(path)), OwnedNames())
    return [p.ctx.message for p in points if p.ctx.message.member == "Take"]


def _take_calls_replayed(path: Path) -> list[Message]:
    return [item.ctx.message for item in trace_replay([str(path)]) if item.ctx.message.member == "Take"]


def test_both_replays_keep_fds_and_transport(traces: tuple[Path, Path]) -> None:
    full, _bare = traces
    recorded = [r for r in messages(read_trace(full)) if r.get("member") == "Take"]
    assert [r["fds"] for r in recorded] == [1, 1]  # to_bus at the client, from_bus at the service
    for got in (_take_calls_offline(full), _take_calls_replayed(full)):
        assert [(m.type, m.unix_fds, m.transport, m.signature, m.args) for m in got] == [
            (MessageType.METHOD_CALL, 1, "dbus", "h", [0]),
        ] * 2
        assert {m.destination for m in got} == {NAME}


def test_unrecorded_arguments_raise_for_learn_and_check_and_are_empty_for_faults(traces: tuple[Path, Path]) -> None:
    _full, bare = traces
    recorded = [r for r in messages(read_trace(bare)) if r.get("member") == "Take"]
    assert recorded and all(r["args"] == [] and not args_recorded(r) for r in recorded)
    for message in _take_calls_replayed(bare):
        assert message.unix_fds == 1
        with pytest.raises(ValueError, match="not recorded"):
            _ = message.args
    offline = _take_calls_offline(bare)
    assert [(m.unix_fds, m.args) for m in offline] == [(1, [])] * 2


def test_every_header_fact_comes_back(traces: tuple[Path, Path]) -> None:
    full, _bare = traces
    for record in messages(read_trace(full)):
        sender = (record.get("sender") or {}).get("bus_name")
        for unrecorded in UnrecordedArgs:
            m = message_from_record(record, sender, unrecorded=unrecorded)
            assert m.type.wire_name == record["type"] and m.serial == record["serial"]
            assert (m.reply_serial, m.path, m.interface, m.member, m.error_name) == (
                record["reply_serial"],
                record["path"],
                record["interface"],
                record["member"],
                record["error_name"],
            )
            assert (m.destination, m.sender, m.signature, m.flags) == (
                record.get("destination_name"),
                sender,
                record["signature"],
                record["flags"],
            )
            assert (m.unix_fds, m.transport, m.args) == (record["fds"], record["transport"], record["args"])


def test_undecodable_body_and_other_transport() -> None:
    """Record vectors for what a live session rarely shows: a body that did not decode, a non-D-Bus transport."""
    record: dict[str, Any] = {
        "type": "signal",
        "serial": 7,
        "path": "/p",
        "interface": "a.b",
        "member": "M",
        "signature": "s",
        "args": [],
        "args_error": "string is not valid UTF-8",
        "fds": 0,
        "flags": 1,
        "transport": "pipe",
    }
    strict = message_from_record(record, ":1.5", unrecorded=UnrecordedArgs.RAISE)
    assert strict.transport == "pipe" and strict.sender == ":1.5" and strict.no_reply_expected
    with pytest.raises(ValueError, match="undecodable body: string is not valid UTF-8"):
        _ = strict.args
    assert message_from_record(record, None, unrecorded=UnrecordedArgs.EMPTY).args == []
    # a record of version 1 written before transports existed is D-Bus
    del record["transport"], record["args_error"]
    record["args"] = ["x"]
    assert message_from_record(record, None, unrecorded=UnrecordedArgs.RAISE).transport == "dbus"

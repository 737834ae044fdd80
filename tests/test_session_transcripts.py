"""The sans-IO session as exact transcripts: events in, commands out, no sockets.

Each test plays a client and a bus against ``dbus.session.Session`` and
asserts the exact commands it answers with (frames byte for byte), and the
records it leaves for the trace, in the spirit of mitmproxy's Playbook.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from ipcproxy.chain import Chain, Context
from ipcproxy.dbus import wire
from ipcproxy.dbus.session import (
    Authenticated,
    CarryFds,
    Close,
    CloseOther,
    Command,
    ConnectBus,
    HandOver,
    Later,
    ProxyState,
    SendToBus,
    SendToClient,
    Session,
)
from ipcproxy.dbus.wire import DESTINATION, INTERFACE, MEMBER, PATH, SIGNATURE, UNIX_FDS
from ipcproxy.model import Action, Endpoint, Message, MessageType, Verdict
from ipcproxy.trace.recorder import Recorder
from test_wire import frame

GUID = "0123456789abcdef0123456789abcdef"
DRIVER = "org.freedesktop.DBus"
UID = 1000
HEX_UID = b"31303030"
CLIENT_PID = 4242
PROXY_PID = 999  # what the bus says of every proxied connection: the pid of whoever connected to it
OUR_AUTH = b"\0AUTH EXTERNAL " + HEX_UID + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"


class MemorySink:
    """A trace sink that keeps the records it is given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any], message: Message | None) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Rule:
    """An interceptor deciding by member name, as a user's script or a policy would."""

    name = "rule"
    fail_closed = True

    def __init__(self, member: str, verdict: Verdict) -> None:
        self.member = member
        self.verdict = verdict

    def intercept(self, ctx: Context) -> Verdict | None:
        return self.verdict if ctx.message.member == self.member else None


class Playbook:
    """One proxy's shared state and its sessions, with the trace they leave."""

    def __init__(self, *interceptors: Any, hand_over: bool = False, auth_timeout: float | None = None) -> None:
        self.sink = MemorySink()
        self.state = ProxyState(
            Chain(list(interceptors)),
            Recorder([self.sink], lambda n: Endpoint(bus_name=n)),
            hand_over=hand_over,
            auth_timeout=auth_timeout,
        )
        self.state.recorder.resolve = self.state.directory.endpoint
        self._ids = 0

    def session(self, pid: int = CLIENT_PID, uid: int = UID) -> Session:
        self._ids += 1
        return Session(self.state, self._ids, Endpoint(pid=pid, uid=uid, comm="client"), gid=uid)

    def records(self) -> list[dict[str, Any]]:
        self.state.recorder.flush()
        return self.sink.records

    def messages(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["type"] != "event"]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["type"] == "event" and r["event"] == name]


def call(serial: int, member: str, destination: str = DRIVER, **kw: Any) -> Message:
    path = kw.pop("path", "/org/freedesktop/DBus")
    interface = kw.pop("interface", DRIVER)
    return wire.build(
        MessageType.METHOD_CALL,
        serial=serial,
        path=path,
        interface=interface,
        member=member,
        destination=destination,
        **kw,
    )


def reply(serial: int, to: Message, destination: str, sender: str = DRIVER, **kw: Any) -> Message:
    return wire.build(
        MessageType.METHOD_RETURN, serial=serial, reply_serial=to.serial, destination=destination, sender=sender, **kw
    )


HELLO = call(1, "Hello")


def authenticate(session: Session, unique: str = ":1.7") -> list[Command]:
    """Play a libdbus-style handshake and Hello; returns the commands of the Hello's reply."""
    assert session.start() == []
    # the client's identity is accepted: only now is the bus connection opened
    assert session.client_data(b"\0AUTH EXTERNAL " + HEX_UID + b"\r\n", []) == [ConnectBus()]
    assert session.bus_connected(UID, True) == [SendToBus([OUR_AUTH])]
    assert session.bus_data(f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode(), []) == [
        CarryFds(from_bus=True),
        SendToClient([f"OK {GUID}\r\n".encode()]),
    ]
    assert session.client_data(b"NEGOTIATE_UNIX_FD\r\nBEGIN\r\n" + HELLO.raw, []) == [
        SendToClient([b"AGREE_UNIX_FD\r\n"]),
        Authenticated(),
        CarryFds(from_bus=False),
        SendToBus([HELLO.raw]),
    ]
    answer = reply(1, HELLO, unique, signature="s", body=[unique])
    return session.bus_data(answer.raw, [])


def test_authentication_then_hello_passes_and_names_the_client() -> None:
    book = Playbook()
    session = book.session()
    answer = reply(1, HELLO, ":1.7", signature="s", body=[":1.7"])
    assert authenticate(session) == [SendToClient([answer.raw])]
    assert session.unique_name == ":1.7"
    assert book.state.by_name[":1.7"] is session
    hello, answered = book.messages()
    assert (hello["member"], hello["direction"], hello["verdict"]) == ("Hello", "to_bus", "forwarded")
    assert (answered["type"], answered["args"], answered["destination"]["bus_name"]) == (
        "method_return",
        [":1.7"],
        ":1.7",
    )
    assert answered["latency_ns"] >= 0
    (connect,) = book.events("connect")
    assert connect["client"]["pid"] == CLIENT_PID and connect["client"]["uid"] == UID


def test_sd_bus_pipelining_everything_before_the_bus_answered() -> None:
    """AUTH, NEGOTIATE_UNIX_FD, BEGIN and Hello in one write: all of it waits for the bus's GUID."""
    session = Playbook().session()
    assert session.start() == []
    assert session.client_data(OUR_AUTH + HELLO.raw, []) == [ConnectBus()]
    assert session.bus_connected(UID, True) == [SendToBus([OUR_AUTH])]
    assert session.bus_data(f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode(), []) == [
        CarryFds(from_bus=True),
        SendToClient([f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode()]),
        Authenticated(),
        CarryFds(from_bus=False),
        SendToBus([HELLO.raw]),
    ]


def test_a_call_is_forwarded_byte_for_byte_and_recorded() -> None:
    """Header fields in an unusual order are not re-serialised: the bus gets the client's bytes."""
    book = Playbook()
    session = book.session()
    authenticate(session)
    raw = frame(
        "B",
        1,
        2,
        [
            (MEMBER, "s", "Ping"),
            (DESTINATION, "s", "org.example.Service"),
            (INTERFACE, "s", "org.example.Iface"),
            (PATH, "o", "/org/example"),
            (SIGNATURE, "g", "su"),
        ],
        "su",
        ["hello", 7],
    )
    assert session.client_data(raw, []) == [SendToBus([raw])]
    answer = reply(40, wire.parse_message(raw), ":1.7", sender=":1.3")
    assert session.bus_data(answer.raw, []) == [SendToClient([answer.raw])]
    ping, pong = book.messages()[2:]
    assert (ping["member"], ping["serial"], ping["args"], ping["verdict"]) == ("Ping", 2, ["hello", 7], "forwarded")
    assert ping["sender"]["bus_name"] == ":1.7" and ping["sender"]["pid"] == CLIENT_PID
    assert (pong["type"], pong["reply_serial"], pong["verdict"]) == ("method_return", 2, "forwarded")
    assert "latency_ns" in pong


def test_a_denied_call_is_answered_with_access_denied_and_never_reaches_the_bus() -> None:
    book = Playbook(Rule("SetHostname", Verdict(Action.DENY, reason="not in policy")))
    session = book.session()
    authenticate(session)
    denied = call(2, "SetHostname", "org.freedesktop.hostname1", path="/org/freedesktop/hostname1")
    (answer,) = session.client_data(denied.raw, [])
    assert isinstance(answer, SendToClient) and not answer.fds
    error = wire.parse_message(answer.frames[0])
    assert error.type is MessageType.ERROR
    assert (error.error_name, error.reply_serial, error.destination, error.sender) == (
        "org.freedesktop.DBus.Error.AccessDenied",
        2,
        ":1.7",
        DRIVER,
    )
    assert error.args == ["Rejected by ipcproxy: not in policy"]
    asked, answered = book.messages()[2:]
    assert asked["member"] == "SetHostname" and asked["verdict"]["action"] == "denied"
    assert answered["type"] == "error" and answered["verdict"]["action"] == "injected"


def test_an_interceptor_answers_a_call_with_its_own_error_in_the_service_s_name() -> None:
    book = Playbook(
        Rule("Get", Verdict(Action.ERROR_REPLY, error_name="org.example.Error.Busy", error_message="try later"))
    )
    session = book.session()
    authenticate(session)
    owner = wire.build(
        MessageType.SIGNAL,
        serial=2,
        path="/org/freedesktop/DBus",
        interface=DRIVER,
        member="NameOwnerChanged",
        sender=DRIVER,
        signature="sss",
        body=["org.example.Service", "", ":1.3"],
    )
    assert session.bus_data(owner.raw, []) == [SendToClient([owner.raw])]
    get = call(2, "Get", "org.example.Service", path="/org/example", interface="org.freedesktop.DBus.Properties")
    (answer,) = session.client_data(get.raw, [])
    assert isinstance(answer, SendToClient)
    error = wire.parse_message(answer.frames[0])
    assert (error.error_name, error.args, error.reply_serial) == ("org.example.Error.Busy", ["try later"], 2)
    assert (error.sender, error.destination) == (":1.3", ":1.7")  # as if the service had answered


def test_a_malformed_frame_closes_only_the_session_that_sent_it() -> None:
    book = Playbook()
    bad, good = book.session(), book.session(pid=4343)
    authenticate(bad, ":1.7")
    authenticate(good, ":1.8")
    assert bad.client_data(b"X" * 16, []) == [Close("malformed message from the client: bad endianness byte 0x58")]
    ping = call(2, "GetId")
    assert good.client_data(ping.raw, []) == [SendToBus([ping.raw])]
    (malformed,) = book.events("malformed")
    assert (malformed["connection"], malformed["side"]) == (bad.id, "client")
    bad.close("malformed")
    assert ":1.7" not in book.state.by_name and book.state.by_name[":1.8"] is good
    (gone,) = book.events("disconnect")
    assert gone["connection"] == bad.id


def test_a_bad_handshake_is_answered_and_closed() -> None:
    session = Playbook().session()
    session.start()
    session.bus_connected(UID, True)
    assert session.client_data(b"AUTH EXTERNAL\r\n", []) == [
        Close("authentication failed: client did not start with a NUL byte")
    ]


def test_credential_look_ups_answer_with_the_client_s_pid_not_the_proxy_s() -> None:
    """The bus knows our (or our helper's) pid for a proxied client; the answer must carry the client's."""
    book = Playbook()
    target, asker = book.session(pid=CLIENT_PID), book.session(pid=5000)
    authenticate(target, ":1.7")
    authenticate(asker, ":1.8")
    ask = call(2, "GetConnectionUnixProcessID", signature="s", body=[":1.7"])
    assert asker.client_data(ask.raw, []) == [SendToBus([ask.raw])]
    bus_says = reply(9, ask, ":1.8", signature="u", body=[PROXY_PID])
    (answer,) = asker.bus_data(bus_says.raw, [])
    assert isinstance(answer, SendToClient)
    assert wire.parse_message(answer.frames[0]).args == [CLIENT_PID]
    ask = call(3, "GetConnectionCredentials", signature="s", body=[":1.7"])
    asker.client_data(ask.raw, [])
    from dbus_fast import Variant

    creds = {"ProcessID": Variant("u", PROXY_PID), "UnixUserID": Variant("u", UID)}
    bus_says = reply(10, ask, ":1.8", signature="a{sv}", body=[creds])
    (answer,) = asker.bus_data(bus_says.raw, [])
    assert isinstance(answer, SendToClient)
    (got,) = wire.parse_message(answer.frames[0]).args
    assert {k: v.value for k, v in got.items()} == {"ProcessID": CLIENT_PID, "UnixUserID": UID}
    rewritten = [r for r in book.messages() if r["type"] == "method_return" and r["reply_serial"] in (2, 3)]
    assert [r["verdict"] for r in rewritten] == ["modified", "modified"]


def test_file_descriptors_travel_with_their_own_message() -> None:
    session = Playbook().session()
    authenticate(session)
    read_end, write_end = os.pipe()
    try:
        raw = frame(
            "l",
            1,
            2,
            [
                (PATH, "o", "/org/example"),
                (MEMBER, "s", "Take"),
                (DESTINATION, "s", "org.example.Service"),
                (SIGNATURE, "g", "h"),
                (UNIX_FDS, "u", 1),
            ],
            "h",
            [0],
        )
        before = call(3, "GetId")
        assert session.client_data(before.raw + raw + before.raw, [write_end]) == [
            SendToBus([before.raw]),
            SendToBus([raw], [write_end]),
            SendToBus([before.raw]),
        ]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_file_descriptors_during_authentication_close_the_connection() -> None:
    session = Playbook().session()
    session.start()
    read_end, write_end = os.pipe()
    try:
        assert session.client_data(b"\0", [write_end]) == [Close("file descriptors sent during authentication")]
        with pytest.raises(OSError):
            os.fstat(write_end)  # closed: nobody else will
    finally:
        os.close(read_end)


def test_with_the_compiled_plane_both_sockets_are_handed_over_after_authentication() -> None:
    session = Playbook(hand_over=True).session()
    session.start()
    session.client_data(OUR_AUTH + HELLO.raw, [])
    session.bus_connected(UID, True)
    assert session.bus_data(f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode(), [])[-1] == HandOver(HELLO.raw, b"")


def test_a_delayed_call_is_sent_when_its_timer_fires() -> None:
    session = Playbook(Rule("Slow", Verdict(Action.DELAY, delay_s=0.2))).session()
    authenticate(session)
    slow = call(2, "Slow")
    (later,) = session.client_data(slow.raw, [])
    assert isinstance(later, Later) and later.delay_s == 0.2
    assert later.then() == [SendToBus([slow.raw])]


def test_a_fault_disconnecting_the_receiver_closes_the_other_session() -> None:
    book = Playbook(Rule("Ping", Verdict(Action.DISCONNECT, disconnect_side="receiver")))
    caller, service = book.session(), book.session(pid=4343)
    authenticate(caller, ":1.7")
    authenticate(service, ":1.8")
    assert caller.client_data(call(2, "Ping", ":1.8").raw, []) == [
        CloseOther(service.id, "disconnected by fault (receiver)")
    ]


def test_a_client_that_does_not_prove_who_it_is_never_gets_a_bus_connection() -> None:
    book = Playbook(auth_timeout=30.0)
    session = book.session()
    assert session.start() == [Later(30.0, session.auth_expired, cancel_on_close=True)]
    assert session.client_data(b"\0AUTH EXTERNAL 31", []) == []  # half a line
    assert session.client_data(b"\r\n", []) == [SendToClient([b"REJECTED EXTERNAL\r\n"])]  # uid 1, not 1000
    assert session.client_data(b"AUTH ANONYMOUS\r\n", []) == [SendToClient([b"REJECTED EXTERNAL\r\n"])]
    assert session.auth_expired() == [Close("not authenticated within 30 s")]
    (connect,) = book.events("connect")
    assert connect["connection"] == session.id


def test_the_deadline_passes_harmlessly_once_the_client_has_authenticated() -> None:
    session = Playbook(auth_timeout=0.5).session()
    assert len(session.start()) == 1
    authenticate_from_handshake(session)
    assert session.auth_expired() == []


def authenticate_from_handshake(session: Session) -> None:
    assert session.client_data(OUR_AUTH, []) == [ConnectBus()]
    session.bus_connected(UID, True)
    assert session.bus_data(f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode(), [])[-2:] == [
        Authenticated(),
        CarryFds(from_bus=False),
    ]


# --- who owns a name: the service's own traffic says so before the resolver's NameOwnerChanged does

ACTIVATED = "ca.desrt.dconf"


def request_name(session: Session, serial: int, name: str = ACTIVATED) -> Message:
    asked = call(serial, "RequestName", signature="su", body=[name, 4])
    assert session.client_data(asked.raw, []) == [SendToBus([asked.raw])]
    return asked


def delivered_call(serial: int, sender: str = ":1.3", destination: str = ACTIVATED) -> Message:
    return wire.build(
        MessageType.METHOD_CALL,
        serial=serial,
        path="/ca/desrt/dconf/Writer/user",
        interface="ca.desrt.dconf.Writer",
        member="Change",
        destination=destination,
        sender=sender,
        signature="ay",
        body=[b"x"],
    )


def test_an_activated_service_is_named_on_the_call_that_started_it_before_its_request_is_answered() -> None:
    """dbus-daemon hands the service the calls that waited for it before its RequestName reply;
    the resolver's NameOwnerChanged, on another socket, may come later still (here: never)."""
    book = Playbook()
    service = book.session()
    authenticate(service, ":1.9")
    asked = request_name(service, 2)
    waited = delivered_call(5)
    granted = reply(6, asked, ":1.9", signature="u", body=[1])
    assert service.bus_data(waited.raw + granted.raw, []) == [SendToClient([waited.raw, granted.raw])]
    change = [r for r in book.messages() if r["member"] == "Change"]
    assert len(change) == 1
    assert change[0]["destination"]["bus_name"] == ":1.9"
    assert change[0]["destination"]["pid"] == CLIENT_PID and ACTIVATED in change[0]["destination"]["names"]


def test_a_granted_name_names_its_new_owner_also_for_calls_that_take_the_fast_path() -> None:
    """A restarted service: the first owner's record stays as it was; the same call (a known
    header, forwarded without parsing) to the new owner names the new owner."""
    book = Playbook()
    first, second = book.session(pid=100), book.session(pid=200)
    authenticate(first, ":1.8")
    granted = reply(7, request_name(first, 2), ":1.8", signature="u", body=[1])
    assert first.bus_data(granted.raw, []) == [SendToClient([granted.raw])]
    before = delivered_call(10)
    assert first.bus_data(before.raw, []) == [SendToClient([before.raw])]
    authenticate(second, ":1.12")
    granted = reply(8, request_name(second, 2), ":1.12", signature="u", body=[1])
    assert second.bus_data(granted.raw, []) == [SendToClient([granted.raw])]
    after = delivered_call(11)
    assert book.state.headers.lookup(after.raw) is not None  # not parsed: no record of the call's own
    assert second.bus_data(after.raw, []) == [SendToClient([after.raw])]
    calls = [r for r in book.messages() if r.get("member") == "Change"]
    assert [(r["destination"]["bus_name"], r["destination"]["pid"]) for r in calls] == [(":1.8", 100), (":1.12", 200)]
    assert book.state.directory.endpoint(":1.8").names == []


def test_a_call_to_a_name_the_client_never_asked_for_does_not_make_it_the_owner() -> None:
    """An eavesdropper (or a monitor) gets calls addressed to others."""
    book = Playbook()
    listener = book.session()
    authenticate(listener, ":1.9")
    overheard = delivered_call(5)
    assert listener.bus_data(overheard.raw, []) == [SendToClient([overheard.raw])]
    refused = reply(6, request_name(listener, 2), ":1.9", signature="u", body=[3])  # EXISTS
    assert listener.bus_data(refused.raw, []) == [SendToClient([refused.raw])]
    overheard = delivered_call(7, sender=":1.4")
    assert listener.bus_data(overheard.raw, []) == [SendToClient([overheard.raw])]
    assert book.state.directory.owner_of(ACTIVATED) is None
    changes = [r for r in book.messages() if r["member"] == "Change"]
    assert len(changes) == 2 and all(r["destination"].get("bus_name") is None for r in changes)

"""Actions, triggers, selectors and the injector's bookkeeping, on real D-Bus frames and no sockets."""

from __future__ import annotations

import random

from dbus_fast import Variant

from ipcproxy.chain import Context
from ipcproxy.dbus import wire
from ipcproxy.faults import actions, mutate
from ipcproxy.faults.injector import FaultInjector
from ipcproxy.faults.plan import (
    ArgPredicate,
    Corrupt,
    Duplicate,
    Error,
    Reorder,
    Selector,
    SetArg,
    Trigger,
    Truncate,
    parse_plan,
)
from ipcproxy.faults.selectors import OwnedNames, endpoint_matches, matches, predicate_holds
from ipcproxy.faults.triggers import TriggerState
from ipcproxy.model import Action, Direction, Endpoint, Message, MessageType


def call(body: list[object], signature: str, serial: int = 5, member: str = "Set") -> Message:
    return wire.build(
        MessageType.METHOD_CALL,
        serial=serial,
        path="/org/example/Obj",
        interface="org.example.Iface",
        member=member,
        destination="org.example.Service",
        signature=signature,
        body=body,
    )


BODY = ["hello", 42, [1, 2, 3], {"k": Variant("s", "v")}, 2.5, True, "/org/x", b"\x01\x02"]
SIG = "siaia{sv}dboay"


def header_fields(m: Message) -> tuple[object, ...]:
    return (m.type, m.serial, m.path, m.interface, m.member, m.destination, m.signature)


def test_corrupt_keeping_the_frame_valid_changes_exactly_what_it_reports() -> None:
    msg = call(BODY, SIG)
    verdict = actions.apply(Corrupt(bits=3), msg, random.Random(1))
    assert verdict.action is Action.MODIFY and verdict.replacement is not None
    new = verdict.replacement
    assert header_fields(new) == header_fields(msg)
    assert wire.parse_message(new.raw).args == new.args  # still a valid frame
    changed = [i for i, (a, b) in enumerate(zip(msg.args, new.args, strict=True)) if a != b]
    assert 1 <= len(changed) <= 3
    assert verdict.notes["done"].count("->") == 3 and verdict.notes["frame_valid"] is True
    assert verdict.notes["original_args"][0] == "hello"
    again = actions.apply(Corrupt(bits=3), msg, random.Random(1))
    assert again.replacement is not None and again.replacement.raw == new.raw  # same seed, same bits


def test_corrupt_one_argument_only() -> None:
    msg = call(BODY, SIG)
    for seed in range(20):
        verdict = actions.apply(Corrupt(bits=1, arg=1), msg, random.Random(seed))
        assert verdict.replacement is not None
        new = verdict.replacement.args
        assert new[0] == msg.args[0] and new[2:] == msg.args[2:]
        assert bin(new[1] ^ 42).count("1") == 1 or new[1] < 0  # one bit of a signed int


def test_corrupt_without_keeping_validity_flips_body_bytes_only() -> None:
    msg = call(BODY, SIG)
    start = actions.body_offset(msg.raw)
    verdict = actions.apply(Corrupt(bits=8, valid=False), msg, random.Random(3))
    new = verdict.replacement
    assert new is not None and len(new.raw) == len(msg.raw)
    assert new.raw[:start] == msg.raw[:start]
    assert sum(bin(a ^ b).count("1") for a, b in zip(msg.raw, new.raw, strict=True)) <= 8
    assert isinstance(verdict.notes["frame_valid"], bool)
    # within one argument: the bytes of "hello" (length word + text + nul) only
    verdict = actions.apply(Corrupt(bits=4, arg=0, valid=False), msg, random.Random(4))
    assert verdict.replacement is not None
    diff = [i - start for i, (a, b) in enumerate(zip(msg.raw, verdict.replacement.raw, strict=True)) if a != b]
    assert diff and all(0 <= d < 10 for d in diff)


def test_set_arg_value_boundary_and_random_keep_the_type() -> None:
    msg = call(BODY, SIG)
    v = actions.apply(SetArg(index=1, value=7, has_value=True), msg, random.Random(0))
    assert v.replacement is not None and v.replacement.args[1] == 7
    assert v.replacement.args[0] == "hello" and header_fields(v.replacement) == header_fields(msg)
    v = actions.apply(SetArg(index=1, boundary="max"), msg, random.Random(0))
    assert v.replacement is not None and v.replacement.args[1] == 2**31 - 1
    v = actions.apply(SetArg(index=2, boundary="empty"), msg, random.Random(0))
    assert v.replacement is not None and v.replacement.args[2] == []
    v = actions.apply(SetArg(index=0, boundary="long"), msg, random.Random(0))
    assert v.replacement is not None and len(v.replacement.args[0]) == 65536
    v = actions.apply(SetArg(index=3, value={"k": "other"}, has_value=True), msg, random.Random(0))
    assert v.replacement is not None and v.replacement.args[3]["k"] == Variant("s", "other")
    for i in range(len(BODY)):
        a = actions.apply(SetArg(index=i, random=True), msg, random.Random(i))
        b = actions.apply(SetArg(index=i, random=True), msg, random.Random(i))
        assert a.replacement is not None and b.replacement is not None
        assert a.replacement.raw == b.replacement.raw  # seeded
        assert type(a.replacement.args[i]) is type(msg.args[i])
        assert a.replacement.signature == SIG


def test_set_arg_with_a_value_of_the_wrong_type_is_skipped() -> None:
    msg = call(BODY, SIG)
    try:
        actions.apply(SetArg(index=1, value="not an int", has_value=True), msg, random.Random(0))
    except actions.ActionSkipped as exc:
        assert "argument 1" in str(exc)
    else:
        raise AssertionError("a string in an int32 argument must not be sent")


def test_truncate_fixes_the_length_and_breaks_the_body() -> None:
    msg = call(BODY, SIG)
    v = actions.apply(Truncate(bytes=6), msg, random.Random(0))
    new = v.replacement
    assert new is not None and len(new.raw) == len(msg.raw) - 6
    assert wire.frame_size(new.raw[:16]) == len(new.raw)  # the stream stays in sync
    assert v.notes["frame_valid"] is False
    raw = actions.apply(Truncate(bytes=6, keep_length=True), msg, random.Random(0)).replacement
    assert raw is not None and wire.frame_size(raw.raw[:16]) == len(msg.raw) != len(raw.raw)


def test_error_on_a_signal_drops_it_and_delivery_side_actions() -> None:
    sig = wire.build(MessageType.SIGNAL, serial=3, path="/a", interface="org.a", member="Changed")
    v = actions.apply(Error(), sig, random.Random(0))
    assert v.action is Action.DROP and "signal" in v.notes["done"]
    assert (
        actions.needs_delivery_side(Reorder())
        and actions.needs_delivery_side(Duplicate())
        and actions.needs_delivery_side(Corrupt(valid=False))
    )
    assert not actions.needs_delivery_side(Corrupt()) and not actions.needs_delivery_side(Error())


def test_bit_flips_keep_strings_and_paths_valid() -> None:
    rng = random.Random(9)
    for _ in range(500):
        s, _how = mutate.flip_bit("ab/cd é", "s", rng)
        assert "\0" not in s and s != "ab/cd é"
        s.encode("utf-8")
        p, _how = mutate.flip_bit("/org/example_1", "o", rng)
        wire.build(MessageType.SIGNAL, serial=1, path=p, interface="a.b", member="C")


def test_triggers() -> None:
    def fires(t: Trigger, n: int, seed: int = 0) -> list[int]:
        state = TriggerState(t, random.Random(seed))
        return [i for i in range(1, n + 1) if state.consider(0.0) is not None]

    assert fires(Trigger(nth=3), 10) == [3]
    assert fires(Trigger(first=2, last=4), 10) == [2, 3, 4]
    assert fires(Trigger(every=3), 10) == [3, 6, 9]
    assert fires(Trigger(first=2, every=3), 10) == [2, 5, 8]
    p = fires(Trigger(probability=0.3), 200, seed=5)
    assert p == fires(Trigger(probability=0.3), 200, seed=5) and 20 < len(p) < 100
    assert p != fires(Trigger(probability=0.3), 200, seed=6)
    state = TriggerState(Trigger(window_ms=(100, 200)), random.Random(0))
    assert [state.consider(ms) is not None for ms in (50, 150, 250)] == [False, True, False]
    gated = TriggerState(Trigger(nth=1, after=Selector(member="Hello")), random.Random(0))
    assert gated.consider(0) is None and gated.count == 0  # not counted before the gate opens
    gated.open_gate()
    assert gated.consider(0) is not None


def test_argument_predicates_and_component_names() -> None:
    assert predicate_holds(ArgPredicate("eq", "x"), "x")
    assert predicate_holds(ArgPredicate("in", [1, 2]), 2) and not predicate_holds(ArgPredicate("in", [1]), 2)
    assert predicate_holds(ArgPredicate("re", "^org\\."), "org.a") and predicate_holds(ArgPredicate("gt", 3), 4)
    assert not predicate_holds(ArgPredicate("lt", 3), "text")
    ep = Endpoint(bus_name=":1.4", names=["org.a"], exe="/usr/bin/busctl", comm="busctl")
    for name in (":1.4", "org.a", "/usr/bin/busctl", "/bin/busctl", "busctl", "org.b"):
        assert endpoint_matches(name, ep, None, ["org.b"])
    assert not endpoint_matches("org.c", ep, None)


def ctx_for(msg: Message, direction: Direction, client: Endpoint, resolve: dict[str, Endpoint]) -> Context:
    return Context(
        message=msg,
        direction=direction,
        client=client,
        connection_id=1,
        resolve=lambda n: resolve.get(n or "", Endpoint(bus_name=n)),
    )


def test_injector_decides_once_per_message_however_often_the_proxy_sees_it() -> None:
    plan = parse_plan(
        "version: 1\nfaults:\n  - match: {member: Set, destination: org.example.Service}\n"
        "    when: {nth: 2}\n    action: {drop: {}}\n"
    )
    inj = FaultInjector(plan, seed=1)
    caller = Endpoint(bus_name=":1.1", exe="/usr/bin/busctl")
    service = Endpoint(bus_name=":1.2", names=["org.example.Service"])
    names = {":1.1": caller, ":1.2": service, "org.example.Service": service}
    verdicts = []
    for serial in (10, 11, 12):
        msg = call(["x", 1, [], {}, 0.0, False, "/", b""], SIG, serial=serial)
        out = inj.intercept(ctx_for(msg, Direction.TO_BUS, caller, names))  # leaving the caller
        delivered = wire.parse_message(wire.marshal(wire.to_fast(msg)))
        delivered.sender = ":1.1"
        back = inj.intercept(ctx_for(delivered, Direction.FROM_BUS, service, names))  # reaching the service
        verdicts.append((out, back))
    assert verdicts[0] == (None, None) and verdicts[2] == (None, None)
    dropped, seen_again = verdicts[1]
    assert dropped is not None and dropped.action is Action.DROP and seen_again is None
    assert dropped.notes["fault"] == "0" and dropped.notes["trigger"] == "match #2, nth=2"


def test_owned_names_come_from_request_name_replies() -> None:
    owned = OwnedNames()
    req = wire.build(
        MessageType.METHOD_CALL,
        serial=2,
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="RequestName",
        destination="org.freedesktop.DBus",
        signature="su",
        body=["org.example.Late", 4],
    )
    reply = wire.build(MessageType.METHOD_RETURN, serial=9, reply_serial=2, signature="u", body=[1])
    me = Endpoint(bus_name=":1.9")
    ctx = Context(message=reply, direction=Direction.FROM_BUS, client=me, call_message=req)
    owned.observe(ctx)
    assert owned.of(":1.9") == {"org.example.Late"}
    sel = parse_plan("version: 1\nfaults:\n  - match: {sender: org.example.Late}\n    action: {drop: {}}\n").faults[0]
    sig = wire.build(MessageType.SIGNAL, serial=3, path="/a", interface="org.a", member="Changed")
    assert matches(sel.match, Context(message=sig, direction=Direction.TO_BUS, client=me), owned)


def test_a_delayed_message_holds_back_later_ones_on_its_connection() -> None:
    now = [100.0]
    plan = parse_plan(
        "version: 1\nfaults:\n  - match: {member: Set}\n    when: {nth: 1}\n    action: {delay: {ms: 200}}\n"
    )
    inj = FaultInjector(plan, seed=1, clock=lambda: now[0])
    caller = Endpoint(bus_name=":1.1")
    first = inj.intercept(ctx_for(call(BODY, SIG, serial=20), Direction.TO_BUS, caller, {}))
    assert first is not None and first.action is Action.DELAY and first.delay_s == 0.2
    now[0] += 0.05
    second = inj.intercept(ctx_for(call(BODY, SIG, serial=21, member="Other"), Direction.TO_BUS, caller, {}))
    assert second is not None and second.action is Action.DELAY and second.notes == {"held_behind": "0"}
    assert 0.15 < second.delay_s < 0.16  # released just after the first one, never before it
    now[0] += 0.2
    assert inj.intercept(ctx_for(call(BODY, SIG, serial=22, member="Other"), Direction.TO_BUS, caller, {})) is None
    overtaking = parse_plan(
        "version: 1\nfaults:\n  - match: {member: Set}\n    action: {delay: {ms: 200, overtake: true}}\n"
    )
    inj = FaultInjector(overtaking, seed=1, clock=lambda: now[0])
    assert inj.intercept(ctx_for(call(BODY, SIG, serial=30), Direction.TO_BUS, caller, {})) is not None
    assert inj.intercept(ctx_for(call(BODY, SIG, serial=31, member="Other"), Direction.TO_BUS, caller, {})) is None

"""Decisions and the enforcer interceptor, on hand-built Contexts (no bus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipcproxy.chain import Chain
from ipcproxy.model import BUS_DRIVER_NAME, Action, Endpoint, Message, MessageType
from ipcproxy.policy.decide import OrderTracker, decide
from ipcproxy.policy.enforcer import Enforcer
from ipcproxy.policy.loader import parse_policy
from policy_helpers import BUSCTL, DRIVER, HOST, HOSTNAMED, PROPS, call, hello, received, sent

POLICY = f"""\
version: 1
order: 2
components:
- component: /usr/bin/busctl
  uid: 5
  exe: /usr/bin/busctl
  rules:
  - send: method_call
    to: org.freedesktop.DBus
    interface: org.freedesktop.DBus
    member: Hello
  - send: method_call
    to: {HOST}
    path: /org/freedesktop/hostname1
    interface: {PROPS}
    member: Get
    signature: ss
    args:
      0: {{values: [{HOST}]}}
      1: {{values: [Hostname, KernelName]}}
  - send: method_call
    to: {HOST}
    interface: {PROPS}
    member: GetAll
  order:
  - [^, {HOST} {PROPS}.Get]
  - [{HOST} {PROPS}.Get, {HOST} {PROPS}.Get]
  - [{HOST} {PROPS}.Get, {HOST} {PROPS}.GetAll]
- component: {HOST}
  uid: 1
  exe: /usr/lib/systemd/systemd-hostnamed
  own: [{HOST}]
  rules:
  - send: method_call
    to: org.freedesktop.DBus
    member: Hello
    interface: org.freedesktop.DBus
  - receive: method_call
    from: /usr/bin/busctl
    peer_uid: 5
    interface: {PROPS}
    member: Get
  - send: signal
    to: broadcast
    interface: {PROPS}
    member: PropertiesChanged
"""


@pytest.fixture
def policy():
    return parse_policy(POLICY, "p.yaml")


def get(name: str, serial: int = 2) -> Message:
    return call("Get", [HOST, name], "ss", serial=serial)


def test_learned_calls_pass_and_others_name_the_missing_rule(policy):
    order = OrderTracker(2)
    assert decide(policy, hello(), order).allowed
    assert decide(policy, sent(get("Hostname")), order).allowed
    d = decide(policy, sent(call("SetStaticHostname", ["x", False], "sb", interface=HOST)), order)
    assert not d.allowed and d.kind == "no-rule"
    assert "member: SetStaticHostname" in d.reason and "to: org.freedesktop.hostname1" in d.reason
    assert "/usr/bin/busctl (uid 5)" in d.reason


def test_out_of_profile_argument_is_denied_with_the_widened_rule(policy):
    d = decide(policy, sent(get("ProductUUID")))
    assert not d.allowed and d.kind == "args"
    assert '"ProductUUID" is not one of ["Hostname", "KernelName"]' in d.reason
    assert "(rule at line 12)" in d.reason
    assert d.needed is not None and 'values: ["Hostname", "KernelName", "ProductUUID"]' in d.needed


def test_unique_names_in_arguments_compare_as_placeholders():
    policy = parse_policy(
        """\
version: 1
components:
- component: /usr/bin/busctl
  uid: 5
  rules:
  - send: method_call
    to: org.freedesktop.DBus
    member: AddMatch
    interface: org.freedesktop.DBus
    args:
      0: {values: ["type='signal',sender=':*'"]}
"""
    )
    ctx = sent(
        call(
            "AddMatch",
            ["type='signal',sender=':1.99'"],
            "s",
            interface=BUS_DRIVER_NAME,
            path="/org/freedesktop/DBus",
            destination=BUS_DRIVER_NAME,
        ),
        to=DRIVER,
    )
    assert decide(policy, ctx).allowed


def test_call_out_of_order_is_an_order_anomaly(policy):
    order = OrderTracker(2)
    get_all = call("GetAll", [HOST], "s")
    # a fresh connection calling GetAll without its usual Get first
    assert decide(policy, hello(connection=9), order).allowed  # bus-driver calls are not part of the order
    d = decide(policy, sent(get_all, connection=9), order)
    assert not d.allowed and d.kind == "order"
    assert d.ngram == ("^", f"{HOST} {PROPS}.GetAll")
    assert "GetAll out of order, never seen after ^" in d.reason
    # after a Get, the same call is in order; repeated Gets too
    assert decide(policy, hello(connection=10), order).allowed
    assert decide(policy, sent(get("Hostname"), connection=10), order).allowed
    assert decide(policy, sent(get("KernelName"), connection=10), order).allowed
    assert decide(policy, sent(get_all, connection=10), order).allowed


def test_owning_names_and_replies(policy):
    request = call(
        "RequestName",
        [HOST, 4],
        "su",
        interface=BUS_DRIVER_NAME,
        path="/org/freedesktop/DBus",
        destination=BUS_DRIVER_NAME,
    )
    unnamed_service = Endpoint(bus_name=":1.2", uid=1, exe="/usr/lib/systemd/systemd-hostnamed")
    assert decide(policy, sent(request, client=unnamed_service, to=DRIVER)).allowed
    d = decide(policy, sent(request, client=BUSCTL, to=DRIVER))
    assert not d.allowed and d.kind == "own" and "may not own org.freedesktop.hostname1" in d.reason
    reply = Message(type=MessageType.METHOD_RETURN, serial=3, reply_serial=2, destination=":1.5")
    assert decide(policy, sent(reply, client=HOSTNAMED, to=BUSCTL, reply_ok=True)).allowed
    forged = decide(policy, sent(reply, client=HOSTNAMED, to=BUSCTL, reply_ok=False))
    assert not forged.allowed and forged.kind == "reply"


def test_receive_side_checks_the_caller(policy):
    assert decide(policy, received(get("Hostname"), HOSTNAMED, BUSCTL)).allowed
    other_uid = Endpoint(bus_name=":1.8", uid=6, exe="/usr/bin/busctl")
    d = decide(policy, received(get("Hostname"), HOSTNAMED, other_uid))
    assert not d.allowed and "from: /usr/bin/busctl" in d.reason and "peer_uid: 6" in d.reason


def test_broadcast_signals_and_unknown_components(policy):
    changed = call("PropertiesChanged", [], "", type=MessageType.SIGNAL, destination=None)
    assert decide(policy, sent(changed, client=HOSTNAMED, to=None)).allowed
    stranger = Endpoint(bus_name=":1.9", uid=5, exe="/usr/bin/gdbus")
    d = decide(policy, hello(client=stranger))
    assert not d.allowed and d.kind == "no-profile" and "/usr/bin/gdbus (uid 5) has no profile" in d.reason


def test_enforce_denies_and_complain_marks(policy):
    chain = Chain([Enforcer(policy, "enforce")])
    verdict = chain.run(sent(call("Reboot", [], "", interface=HOST)))
    assert verdict.action is Action.DENY and verdict.by == "policy"
    assert verdict.notes["policy"] == "no-rule"
    assert chain.run(hello()).action is Action.FORWARD
    complain = Chain([Enforcer(policy, "complain")])
    verdict = complain.run(sent(call("Reboot", [], "", interface=HOST)))
    assert verdict.action is Action.VIOLATION and verdict.passes
    assert "member: Reboot" in (verdict.reason or "")


def test_undecodable_body_fails_closed(policy):
    message = Message(
        type=MessageType.METHOD_CALL,
        serial=2,
        path="/org/freedesktop/hostname1",
        interface=PROPS,
        member="Get",
        destination=HOST,
        signature="ss",
    )

    def broken(_m: Message) -> list[object]:
        raise ValueError("body does not match signature 'ss'")

    message.body_decoder = broken
    verdict = Enforcer(policy, "enforce").intercept(sent(message))
    assert verdict is not None and verdict.action is Action.DENY
    assert "could not decide" in (verdict.reason or "") and "does not match signature" in (verdict.reason or "")


def test_reload_keeps_the_old_policy_when_the_new_one_is_broken(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    enforcer = Enforcer(parse_policy(POLICY, str(path)), "enforce", str(path))
    assert enforcer.intercept(hello()) is None
    assert enforcer.intercept(sent(get("KernelName"))) is None
    path.write_text(POLICY.replace("version: 1", "version: 2"))
    with pytest.raises(ValueError, match="p.yaml:1: unknown policy version 2"):
        enforcer.reload()
    assert enforcer.intercept(sent(get("KernelName"))) is None  # old rules still in force
    path.write_text(POLICY.replace("[Hostname, KernelName]", "[Hostname]"))
    enforcer.reload()
    verdict = enforcer.intercept(sent(get("KernelName")))
    assert verdict is not None and verdict.action is Action.DENY

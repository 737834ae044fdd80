"""The injector live: `ipcproxy proxy --faults PLAN` in front of a real bus, systemd-hostnamed and busctl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import HOSTNAMED, busctl, have, messages

pytestmark = pytest.mark.skipif(not have(HOSTNAMED), reason="needs systemd-hostnamed")

HOST = ("org.freedesktop.hostname1", "/org/freedesktop/hostname1", "org.freedesktop.hostname1")

PLAN = """\
version: 1
seed: 11
faults:
  - name: fail-hostname
    match: {type: method_call, sender: /usr/bin/busctl, destination: org.freedesktop.hostname1, member: Get, args: {1: Hostname}}
    when: {nth: 1}
    action: {error: {name: org.freedesktop.DBus.Error.NoReply, message: injected by the test}}
  - name: patch-kernel
    match: {type: method_return, sender: org.freedesktop.hostname1, reply_to: {member: Get, args: {1: KernelName}}}
    action: {set-arg: {index: 0, value: Plan9}}
  - name: flip-static
    match: {type: method_return, reply_to: {member: Get, args: {1: DefaultHostname}}}
    action: {corrupt: {bits: 2}}
  - name: lose-chassis
    match: {member: Get, args: {1: Chassis}}
    action: {drop: {}}
  - name: slow-icon
    match: {type: method_return, reply_to: {member: Get, args: {1: IconName}}}
    action: {delay: {ms: 100, jitter_ms: 20}}
  - name: twice-deployment
    match: {member: Get, args: {1: Deployment}}
    action: {duplicate: {}}
  - name: cut-location
    match: {type: method_return, reply_to: {member: Get, args: {1: Location}}}
    action: {truncate: {bytes: 3}}
  - name: late-source
    match: {type: method_return, reply_to: {member: Get, args: {1: HostnameSource}}}
    action: {reorder: {after: 1, max_ms: 300}}
  - name: cut-caller
    match: {member: Get, args: {1: KernelRelease}}
    action: {disconnect: {side: sender}}
"""


def faulted(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if isinstance(r.get("verdict"), dict) and r["verdict"].get("fault") == name]


def test_every_action_on_real_traffic_is_carried_out_and_explained_in_the_trace(
    bus: Any, proxy_factory: Any, services: Any, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    proxy = proxy_factory(bus.address, "--faults", str(plan))
    services.start([HOSTNAMED], proxy.address, wait_name="org.freedesktop.hostname1")

    def get(prop: str) -> Any:
        return busctl(proxy.address, "get-property", *HOST, prop, check=False)

    r = get("Hostname")
    assert r.returncode != 0 and "injected by the test" in r.stderr
    assert get("Hostname").returncode == 0  # nth: 1, the second one passes
    assert get("KernelName").stdout.strip() == 's "Plan9"'
    real_static = busctl(proxy.address, "get-property", *HOST, "PrettyHostname").stdout
    flipped = get("DefaultHostname")
    assert flipped.returncode == 0 and flipped.stdout.startswith("s ")
    r = busctl(
        proxy.address,
        "--timeout=2",
        "call",
        HOST[0],
        HOST[1],
        "org.freedesktop.DBus.Properties",
        "Get",
        "ss",
        HOST[2],
        "Chassis",
        check=False,
    )
    assert r.returncode != 0 and "timed out" in r.stderr.lower()
    assert get("IconName").returncode == 0
    assert get("Deployment").returncode == 0
    r = get("Location")
    assert r.returncode != 0
    assert get("HostnameSource").returncode == 0
    r = get("KernelRelease")
    assert r.returncode != 0
    proxy.stop()
    recs = messages(proxy.records())

    (err,) = faulted(recs, "fail-hostname")
    assert err["verdict"]["action"] == "error_reply" and err["verdict"]["trigger"] == "match #1, nth=1"
    injected = [r for r in recs if isinstance(r["verdict"], dict) and r["verdict"].get("action") == "injected"]
    assert any(
        r["error_name"] == "org.freedesktop.DBus.Error.NoReply" and r["args"] == ["injected by the test"]
        for r in injected
    )

    (patched,) = faulted(recs, "patch-kernel")
    assert patched["args"] == ["Plan9"] and patched["verdict"]["original_args"] == ["Linux"]

    (flip,) = faulted(recs, "flip-static")
    assert flip["verdict"]["done"].count("->") == 2 and flip["args"] != flip["verdict"]["original_args"]
    assert real_static is not None

    (lost,) = faulted(recs, "lose-chassis")
    assert lost["verdict"]["action"] == "dropped"
    assert not [
        r for r in recs if r["type"] == "method_call" and r["args"][1:] == ["Chassis"] and r["direction"] == "from_bus"
    ]

    (slow,) = faulted(recs, "slow-icon")
    assert slow["verdict"]["action"] == "delayed" and 80 <= slow["verdict"]["delay_ms"] <= 120

    (dup,) = faulted(recs, "twice-deployment")
    assert dup["verdict"]["copies"] == 2
    assert dup["direction"] == "from_bus" and dup["verdict"]["where"] == "at delivery"
    answers = [
        r
        for r in recs
        if r["type"] == "method_return"
        and r["direction"] == "to_bus"
        and r["reply_serial"] == dup["serial"]
        and r["destination"]["bus_name"] == dup["sender"]["bus_name"]
    ]
    assert len(answers) == 2  # hostnamed got the call twice and answered twice

    (cut,) = faulted(recs, "cut-location")
    assert cut["verdict"]["where"] == "at delivery" and cut["verdict"]["frame_valid"] is False
    assert cut["direction"] == "from_bus" and "args_error" in cut

    (late,) = faulted(recs, "late-source")
    assert late["verdict"]["action"] == "reordered" and late["verdict"]["hold_for"] == 1

    (gone,) = faulted(recs, "cut-caller")
    assert gone["verdict"]["action"] == "disconnected" and gone["verdict"]["side"] == "sender"
    events = [r for r in proxy.records() if r.get("event") == "disconnect"]
    assert any("disconnected by fault (sender)" in e["reason"] for e in events)


def test_same_plan_and_seed_give_the_same_faults(bus: Any, proxy_factory: Any, services: Any, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\nseed: 3\nfaults:\n"
        "  - match: {type: method_return, reply_to: {member: Get}}\n"
        "    when: {probability: 0.5}\n"
        "    action: {corrupt: {bits: 1}}\n"
    )
    outcomes = []
    for round_ in range(2):
        proxy = proxy_factory(bus.address, "--faults", str(plan), "--seed", "99")
        svc = services.start([HOSTNAMED], proxy.address, wait_name="org.freedesktop.hostname1")
        for prop in ("Hostname", "KernelName", "Chassis", "IconName", "StaticHostname", "Deployment"):
            busctl(proxy.address, "get-property", *HOST, prop, check=False)
        proxy.stop()
        svc.terminate()
        svc.wait()
        recs = messages(proxy.records())
        outcomes.append(
            [
                (r["verdict"]["trigger"], r["verdict"]["done"])
                for r in recs
                if isinstance(r["verdict"], dict) and "fault" in r["verdict"]
            ]
        )
        assert round_ == 0 or outcomes[0] == outcomes[1]
    assert outcomes[0], "with p=0.5 over 6 replies and this seed, some fault fires"

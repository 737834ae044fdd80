"""Fault plans and campaigns: what loads, and errors that point at the right line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import IPCPROXY, ROOT
from ipcproxy.faults.plan import (
    CommandProbe,
    Corrupt,
    Delay,
    Disconnect,
    Error,
    PlanError,
    Reorder,
    ServiceProbe,
    SetArg,
    Truncate,
    parse_campaign,
    parse_plan,
)
from ipcproxy.model import MessageType

PLAN = """\
version: 1
seed: 7
faults:
  - name: fail-first-get
    match:
      type: method_call
      sender: /usr/bin/busctl
      destination: org.freedesktop.hostname1
      path: /org/freedesktop/hostname1
      interface: org.freedesktop.DBus.Properties
      member: Get
      args: {1: Hostname}
    when: {nth: 1}
    action: {error: {name: org.freedesktop.DBus.Error.Failed, message: injected}}
  - match: {member: Set, args: {0: {re: "^org\\\\."}, 2: {in: [1, 2]}}}
    when: {from: 2, to: 5}
    action: {corrupt: {bits: 3, arg: 1, valid: false}}
  - match: {reply_to: {member: Get}}
    when: {every: 3, after: {member: Hello}}
    action: {set-arg: {index: 0, boundary: max}}
  - when: {probability: 0.25, window_ms: [0, 500]}
    action: {delay: {ms: 200, jitter_ms: 50}}
  - action: {truncate: {bytes: 16}}
  - action: {reorder: {after: 2}}
  - action: {disconnect: {side: receiver}}
  - action: {duplicate: {}}
  - action: {drop: {}}
"""


def test_plan_loads_every_action_selector_and_trigger() -> None:
    plan = parse_plan(PLAN, "p.yaml")
    assert plan.seed == 7 and len(plan.faults) == 9
    first = plan.faults[0]
    assert first.name == "fail-first-get" and first.when.nth == 1
    assert first.match.type is MessageType.METHOD_CALL and first.match.args[0][0] == 1
    assert first.action == Error("org.freedesktop.DBus.Error.Failed", "injected")
    second = plan.faults[1]
    assert second.name == "1" and (second.when.first, second.when.last) == (2, 5)
    assert [(i, p.op) for i, p in second.match.args] == [(0, "re"), (2, "in")]
    assert second.action == Corrupt(bits=3, arg=1, valid=False)
    third = plan.faults[2]
    assert third.match.reply_to is not None and third.match.reply_to.member == "Get"
    assert third.when.every == 3 and third.when.after is not None and third.when.after.member == "Hello"
    assert isinstance(third.action, SetArg) and third.action.boundary == "max"
    assert plan.faults[3].when.probability == 0.25 and plan.faults[3].when.window_ms == (0.0, 500.0)
    assert plan.faults[3].action == Delay(200.0, 50.0)
    assert plan.faults[4].action == Truncate(16)
    assert plan.faults[5].action == Reorder(2)
    assert plan.faults[6].action == Disconnect("receiver")
    assert first.source["match"]["args"] == {1: "Hostname"}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("version: 2\nfaults: []\n", 1, "version must be 1"),
        ("version: 1\nfaults:\n  - action: {explode: {}}\n", 3, "unknown action 'explode'"),
        ("version: 1\nfaults:\n  - match: {type: call}\n    action: {drop: {}}\n", 3, "type must be one of"),
        ("version: 1\nfaults:\n  - action: {drop: {}}\n    when: {nth: 0}\n", 4, "nth must be an integer >= 1"),
        (
            "version: 1\nfaults:\n  - action: {drop: {}}\n    when:\n      nth: 1\n      every: 2\n",
            5,
            "cannot be combined",
        ),
        ("version: 1\nfaults:\n  - action:\n      delay: {jitter_ms: 5}\n", 4, "delay needs ms"),
        ("version: 1\nfaults:\n  - action: {set-arg: {index: 1}}\n", 3, "exactly one of value, boundary, random"),
        ("version: 1\nfaults:\n  - action: {disconnect: {side: both}}\n", 3, "side must be sender or receiver"),
        ("version: 1\nfaults:\n  - match: {args: {x: 1}}\n    action: {drop: {}}\n", 3, "not an integer"),
        ("version: 1\nfaults:\n  - mach: {}\n    action: {drop: {}}\n", 3, "unknown key 'mach'"),
        ("version: 1\nfaults:\n  - when: {probability: 2}\n    action: {drop: {}}\n", 3, "between 0 and 1"),
        (
            "version: 1\nfaults:\n  - name: a\n    action: {drop: {}}\n  - name: a\n    action: {drop: {}}\n",
            5,
            "used twice",
        ),
        ("version: 1\nfaults: [\n", 3, "not valid YAML"),
    ],
)
def test_plan_errors_name_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(PlanError) as exc:
        parse_plan(text, "plan.yaml")
    assert str(exc.value).startswith(f"plan.yaml:{line}:"), str(exc.value)
    assert words in str(exc.value)


CAMPAIGN = """\
version: 1
seed: 3
setup: ["/lib/systemd/systemd-hostnamed"]
wait_for: [org.freedesktop.hostname1]
workload: "busctl get-property org.freedesktop.hostname1 /org/freedesktop/hostname1 org.freedesktop.hostname1 Hostname"
golden_runs: 2
timeout_s: 5
env: {LANG: C}
state:
  - {service: org.freedesktop.hostname1, path: /org/freedesktop/hostname1}
  - {command: "cat /etc/hostname", at: {message: 12}}
enumerate:
  match: {type: method_call, destination: org.freedesktop.hostname1}
  actions: [{drop: {}}, {error: {name: org.freedesktop.DBus.Error.Failed}}]
  sample: 4
"""


def test_campaign_loads() -> None:
    c = parse_campaign(CAMPAIGN, "/x/c.yaml")
    assert c.seed == 3 and c.golden_runs == 2 and c.timeout_s == 5.0 and c.env == {"LANG": "C"}
    assert c.state[0] == ServiceProbe("org.freedesktop.hostname1", "/org/freedesktop/hostname1")
    assert c.state[1] == CommandProbe("cat /etc/hostname", at=12)
    assert c.enumerate is not None and c.enumerate.sample == 4 and len(c.enumerate.actions) == 2
    assert c.base_dir == "/x" and c.digest


def test_campaign_errors() -> None:
    with pytest.raises(PlanError, match=r"c.yaml:1: campaign has no workload"):
        parse_campaign("version: 1\nfaults: [{action: {drop: {}}}]\n", "c.yaml")
    with pytest.raises(PlanError, match=r"c.yaml:\d+: campaign lists no faults and no enumerate"):
        parse_campaign("version: 1\nworkload: 'true'\n", "c.yaml")
    with pytest.raises(PlanError, match=r"c.yaml:4: a service probe needs service and path"):
        parse_campaign(
            "version: 1\nworkload: 'true'\nstate:\n  - {service: a.b}\nfaults: [{action: {drop: {}}}]\n", "c.yaml"
        )
    with pytest.raises(PlanError, match=r"c.yaml:5: unknown action 'boom'"):
        parse_campaign("version: 1\nworkload: 'true'\nenumerate:\n  actions:\n    - {boom: {}}\n", "c.yaml")


def test_bad_plan_on_the_command_line_is_one_line_and_status_2(tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text("version: 1\nfaults:\n  - action: {drop: {}}\n    when: {nth: -1}\n")
    r = subprocess.run(
        [*IPCPROXY, "run", "-q", "--faults", str(plan), "--", "true"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and f"{plan}:4:" in r.stderr
    camp = tmp_path / "c.yaml"
    camp.write_text("version: 1\nworkload: 'true'\n")
    r = subprocess.run([*IPCPROXY, "campaign", str(camp), "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "no faults and no enumerate" in r.stderr

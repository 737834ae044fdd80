"""Learning from traces (replayed without a bus), generalisation, check and diff-policy."""

from __future__ import annotations

import re
from pathlib import Path

from ipcproxy.cli import main
from ipcproxy.model import Endpoint
from ipcproxy.policy.check import check
from ipcproxy.policy.diff import granted_only_by
from ipcproxy.policy.generalise import constraint, path_generalisation
from ipcproxy.policy.learn import learn
from ipcproxy.policy.loader import load_policy
from ipcproxy.trace.replay import replay
from policy_helpers import BUSCTL, DRIVER, HOST, HOSTNAMED, record, write_trace

UNNAMED = Endpoint(pid=50, uid=1, exe="/usr/lib/systemd/systemd-hostnamed", comm="systemd-hostnamed")
DRIVER_PATH = "/org/freedesktop/DBus"


def driver_call(conn: int, client: Endpoint, member: str, serial: int, args=None, signature=""):
    return record(
        "to_bus",
        conn,
        client,
        DRIVER,
        member,
        serial=serial,
        args=args,
        signature=signature,
        path=DRIVER_PATH,
        interface="org.freedesktop.DBus",
        destination_name="org.freedesktop.DBus",
    )


def session(names: list[str], serial_base: int = 2) -> list[dict]:
    """hostnamed and busctl both behind the proxy; busctl reads the given property names."""
    busctl = Endpoint(**{**BUSCTL.to_json(), "bus_name": ":1.5"})
    out = [
        {"type": "event", "event": "connect", "connection": 2, "client": UNNAMED.to_json()},
        driver_call(2, UNNAMED, "Hello", 1),
        driver_call(2, UNNAMED, "RequestName", 2, [HOST, 4], "su"),
        record(
            "from_bus",
            2,
            DRIVER,
            HOSTNAMED,
            None,
            type="method_return",
            reply_serial=1,
            path=None,
            interface=None,
            destination_name=":1.2",
            args=[":1.2"],
            signature="s",
        ),
        record(
            "from_bus",
            2,
            DRIVER,
            HOSTNAMED,
            None,
            type="method_return",
            reply_serial=2,
            path=None,
            interface=None,
            destination_name=":1.2",
            args=[1],
            signature="u",
        ),
        driver_call(1, busctl, "Hello", 1),
    ]
    for i, name in enumerate(names):
        serial = serial_base + i
        get = dict(args=[HOST, name], signature="ss", serial=serial)
        out += [
            record("to_bus", 1, busctl, HOSTNAMED, "Get", **get),
            record("from_bus", 2, busctl, HOSTNAMED, "Get", **get),
            record(
                "to_bus",
                2,
                HOSTNAMED,
                busctl,
                None,
                type="method_return",
                serial=100 + i,
                reply_serial=serial,
                path=None,
                interface=None,
                destination_name=":1.5",
                args=["x"],
                signature="v",
            ),
            record(
                "from_bus",
                1,
                HOSTNAMED,
                busctl,
                None,
                type="method_return",
                serial=100 + i,
                reply_serial=serial,
                path=None,
                interface=None,
                destination_name=":1.5",
                args=["x"],
                signature="v",
            ),
        ]
    return out


def test_messages_between_two_proxied_clients_are_not_counted_twice(tmp_path: Path):
    trace = write_trace(tmp_path / "t.jsonl", session(["Hostname", "KernelName"]))
    learner = learn(replay([str(trace)]), threshold=5, ngram=2)
    policy = learner.policy()
    busctl = policy.subject("/usr/bin/busctl", 5)
    host = policy.subject(HOST, 1)
    assert busctl is not None and host is not None
    assert {s.component for s in policy.subjects} == {"/usr/bin/busctl", HOST}
    (get,) = [r for r in busctl.rules if r.member == "Get"]
    assert get.count == 2 and get.direction == "send" and get.peer == HOST
    assert get.args[1].values == ["Hostname", "KernelName"]
    (got,) = [r for r in host.rules if r.member == "Get"]
    assert got.count == 2 and got.direction == "receive" and got.peer == "/usr/bin/busctl" and got.peer_uid == 5
    # hostnamed said Hello and asked for its name before it owned it: still its own profile
    assert host.own == [HOST] and host.exe == "/usr/lib/systemd/systemd-hostnamed"
    assert not any(r.type == "method_return" for s in policy.subjects for r in s.rules)
    get_symbol = f"{HOST} org.freedesktop.DBus.Properties.Get"
    assert busctl.order == {("^", get_symbol), (get_symbol, get_symbol)}  # bus-driver calls are left out
    assert learner.messages == 5 + 2 * 4  # every record once, from its own connection


def test_learned_policy_checks_clean_and_flags_new_behaviour(tmp_path: Path, capsys):
    train = write_trace(tmp_path / "train.jsonl", session(["Hostname", "KernelName"]))
    assert main(["learn", str(train), "-o", str(tmp_path / "p.yaml")]) == 0
    out = capsys.readouterr().out
    assert "2 components" in out and re.search(
        r"\b2\s+\d+\.\d%\s+\{send: method_call, to: org.freedesktop.hostname1", out
    )
    assert main(["check", str(tmp_path / "p.yaml"), str(train)]) == 0
    new = write_trace(tmp_path / "new.jsonl", session(["Hostname", "ProductUUID"]))
    assert main(["check", str(tmp_path / "p.yaml"), str(new)]) == 1
    out = capsys.readouterr().out
    assert out.count("VIOLATION") == 2  # busctl sending it, hostnamed receiving it
    assert '"ProductUUID" is not one of ["Hostname", "KernelName"]' in out
    assert "0 order anomalies" in out


def test_truncated_trace_is_read_up_to_the_last_record(tmp_path: Path, capsys):
    trace = write_trace(tmp_path / "t.jsonl", session(["Hostname"]), truncated_tail='{"seq": 99, "type": "meth')
    items = list(replay([str(trace)]))
    assert len(items) == 9
    assert "truncated" in capsys.readouterr().err


def test_denied_and_injected_records_are_not_learned(tmp_path: Path):
    recs = session(["Hostname"])
    busctl = Endpoint(**{**BUSCTL.to_json(), "bus_name": ":1.5"})
    recs.append(
        record(
            "to_bus",
            1,
            busctl,
            HOSTNAMED,
            "Set",
            serial=9,
            args=[HOST, "Hostname", "x"],
            signature="ssv",
            verdict={"action": "denied", "reason": "no rule"},
        )
    )
    trace = write_trace(tmp_path / "t.jsonl", recs)
    policy = learn(replay([str(trace)])).policy()
    assert not any(r.member == "Set" for s in policy.subjects for r in s.rules)


def test_coarse_baseline_names_peers_only(tmp_path: Path):
    trace = write_trace(tmp_path / "t.jsonl", session(["Hostname", "KernelName"]))
    coarse = learn(replay([str(trace)]), coarse=True).policy()
    busctl = coarse.subject("/usr/bin/busctl", 5)
    assert busctl is not None and busctl.order is None
    assert sorted((r.direction, r.type, r.peer) for r in busctl.rules) == [
        ("send", "any", "org.freedesktop.DBus"),
        ("send", "any", HOST),
    ]
    fine = learn(replay([str(trace)])).policy()
    assert granted_only_by(fine, coarse) == []  # the learned policy grants nothing the baseline does not
    extra = granted_only_by(coarse, fine)
    assert any(g.kind == "rule" and "to: org.freedesktop.hostname1" in g.text for g in extra)
    report = check(coarse, replay([str(trace)]))
    assert report.clean


def test_generalisation_past_the_threshold():
    assert constraint(["a", "b"], 2).values == ["a", "b"]
    temps = constraint([18, 19, 21, 22], 3)
    # widened by the average gap between the values seen, (22 - 18) / 3, rounded outwards
    assert temps is not None and temps.range == (16, 24)
    assert temps.violation(24) is None and temps.violation(30) is not None
    zones = constraint(["Europe/Paris", "Europe/Berlin", "Europe/Oslo"], 2)
    assert zones is not None and zones.pattern == "Europe/[a-zA-Z]+" and zones.max_len == 16
    assert zones.violation("Europe/Rome") is None
    assert zones.violation("America/New_York") is not None
    assert zones.violation("Europe/" + "x" * 20) is not None
    assert constraint([[1], [1, 2], [3, 4, 5]], 2).max_len == 4
    assert constraint([True, "x", 3], 2) is None
    assert constraint([0.5, 1.5, 2.5], 2).range == (0, 3.5)
    assert path_generalisation(["/a/1", "/a/2", "/a/3"], 2) == (None, "/a/")
    assert path_generalisation(["/a/1", "/a/2"], 2) == (("/a/1", "/a/2"), None)


def test_diff_policy_command(tmp_path: Path, capsys):
    trace = write_trace(tmp_path / "t.jsonl", session(["Hostname", "KernelName"]))
    assert main(["learn", str(trace), "-o", str(tmp_path / "fine.yaml")]) == 0
    assert main(["learn", "--coarse", str(trace), "-o", str(tmp_path / "coarse.yaml")]) == 0
    capsys.readouterr()
    assert main(["diff-policy", str(tmp_path / "fine.yaml"), str(tmp_path / "fine.yaml")]) == 0
    assert main(["diff-policy", str(tmp_path / "fine.yaml"), str(tmp_path / "coarse.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"granted by {tmp_path / 'fine.yaml'} only: nothing" in out
    assert "{send: any, to: org.freedesktop.hostname1}" in out
    assert load_policy(str(tmp_path / "coarse.yaml")).order_n == 0


def test_passive_captures_are_learnt_from_both_sides(tmp_path: Path):
    busctl = Endpoint(**{**BUSCTL.to_json(), "bus_name": ":1.5"})
    get = dict(args=[HOST, "Hostname"], signature="ss", serial=2)
    recs = [
        {**record("observed", 0, busctl, HOSTNAMED, "Get", **get), "connection": None},
        {
            **record("observed", 0, HOSTNAMED, busctl, None, type="method_return", serial=7, reply_serial=2,
                     path=None, interface=None, destination_name=":1.5", args=["x"], signature="v"),
            "connection": None,
        },
    ]  # fmt: skip
    trace = write_trace(tmp_path / "m.jsonl", recs)
    items = list(replay([str(trace)]))
    assert [(i.ctx.direction.value, i.ctx.client.component) for i in items] == [
        ("to_bus", "/usr/bin/busctl"),
        ("from_bus", HOST),
        ("to_bus", HOST),
        ("from_bus", "/usr/bin/busctl"),
    ]
    assert items[2].ctx.reply_to_allowed_call and items[3].ctx.reply_to_allowed_call
    policy = learn(items).policy()
    (sent_get,) = policy.subject("/usr/bin/busctl", 5).rules
    (got,) = policy.subject(HOST, 1).rules
    assert (sent_get.direction, sent_get.peer, got.direction, got.peer) == ("send", HOST, "receive", "/usr/bin/busctl")
    assert check(policy, replay([str(trace)])).clean

"""The golden envelope, classification and diff on small hand-written traces (no bus)."""

from __future__ import annotations

from typing import Any

from ipcproxy.faults.canon import canonical
from ipcproxy.faults.diff import diff_records, levenshtein, render
from ipcproxy.faults.envelope import deviations, learn
from ipcproxy.faults.outcome import classify

CLIENT = {"bus_name": ":1.5", "names": [], "pid": 50, "exe": "/usr/bin/client"}
SERVICE = {"bus_name": ":1.3", "names": ["org.example.S"], "pid": 30, "exe": "/usr/bin/service"}
OTHER = {"bus_name": ":1.4", "names": ["org.example.O"], "pid": 40, "exe": "/usr/bin/other"}
CONN = {":1.5": 2, ":1.3": 1, ":1.4": 3}


class Trace:
    """Builds records the way the proxy writes them: to_bus at the sender, from_bus at the receiver."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = [
            {"seq": 1, "type": "event", "event": "campaign", "phase": "workload_start"}
        ]
        self.serials: dict[str, int] = {}

    def send(
        self, src: dict[str, Any], dst: dict[str, Any], kind: str, member: str | None, args: list[Any], **extra: Any
    ) -> int:
        serial = self.serials[src["bus_name"]] = self.serials.get(src["bus_name"], 0) + 1
        base = {
            "type": kind,
            "serial": serial,
            "sender": src,
            "destination": dst,
            "destination_name": dst["bus_name"],
            "path": "/o" if member else None,
            "interface": "org.example.I" if member else None,
            "member": member,
            "error_name": extra.pop("error_name", None),
            "signature": "s" * len(args),
            "args": args,
            "reply_serial": extra.pop("reply_serial", None),
            "verdict": extra.pop("verdict", "forwarded"),
        }
        for direction, conn in (("to_bus", CONN[src["bus_name"]]), ("from_bus", CONN[dst["bus_name"]])):
            if (
                direction == "from_bus"
                and isinstance(base["verdict"], dict)
                and base["verdict"].get("action") == "dropped"
            ):
                break
            rec = dict(base, seq=len(self.records) + 1, direction=direction, connection=conn)
            if direction == "from_bus":
                rec["verdict"] = "forwarded"
            self.records.append(rec)
        return serial

    def call(
        self, src: dict[str, Any], dst: dict[str, Any], member: str, args: list[Any], reply: list[Any], **extra: Any
    ) -> None:
        serial = self.send(src, dst, "method_call", member, args)
        self.send(dst, src, "method_return", None, reply, reply_serial=serial, **extra)


def golden(stamp: str, order: tuple[str, str] = ("A", "B")) -> list[dict[str, Any]]:
    t = Trace()
    t.call(CLIENT, SERVICE, "Get", ["k"], ["v"])
    for name in order:  # two independent signals whose order varies between golden runs
        t.send(SERVICE, OTHER, "signal", name, [])
    t.call(CLIENT, SERVICE, "Stamp", [], [stamp])  # an argument that varies naturally
    return t.records


def test_envelope_masks_varying_arguments_and_allows_independent_order() -> None:
    env = learn([canonical(golden("t1")), canonical(golden("t2", ("B", "A")))], [{"exit_status": 0}] * 2)
    assert deviations(env, canonical(golden("t3"))) == []
    assert deviations(env, canonical(golden("t4", ("B", "A")))) == []


def test_missing_added_and_reordered_messages_are_deviations_of_their_sender() -> None:
    env = learn([canonical(golden("t1")), canonical(golden("t2"))], [{"exit_status": 0}] * 2)
    t = Trace()
    t.send(SERVICE, OTHER, "signal", "B", [])  # too early: B always came after A and the Get reply
    t.call(CLIENT, SERVICE, "Get", ["k"], ["v"])
    t.send(SERVICE, OTHER, "signal", "A", [])
    t.send(SERVICE, OTHER, "signal", "C", [])  # never sent in golden runs
    found = {(d.component, d.kind) for d in deviations(env, canonical(t.records))}
    assert ("org.example.S", "added") in found and ("org.example.S", "reordered") in found
    assert ("/usr/bin/client", "missing") in found  # its Stamp call is gone


def test_answering_an_extra_call_is_not_a_deviation_of_the_callee() -> None:
    env = learn([canonical(golden("t1")), canonical(golden("t2"))], [{"exit_status": 0}] * 2)
    t = Trace()
    t.call(CLIENT, SERVICE, "Get", ["k"], ["v"])
    t.call(CLIENT, SERVICE, "Get", ["k"], ["v"])  # a retry: the client deviates, the service only answers it
    for name in ("A", "B"):
        t.send(SERVICE, OTHER, "signal", name, [])
    t.call(CLIENT, SERVICE, "Stamp", [], ["t9"])
    devs = deviations(env, canonical(t.records))
    assert {d.component for d in devs} == {"/usr/bin/client"}


def test_classification_of_a_fault_that_changed_a_reply() -> None:
    goldens = [canonical(golden("t1")), canonical(golden("t2"))]
    results = [{"exit_status": 0, "stdout": "v\n", "state": {"0: s": {"I": {"P": 1}}}, "services": []}] * 2
    env = learn(goldens, results)
    t = Trace()
    fault = {"action": "modified", "fault": "f", "done": "arg 0 set", "original_args": ["v"], "fault_action": "set-arg"}
    serial = t.send(CLIENT, SERVICE, "method_call", "Get", ["k"])
    t.send(SERVICE, CLIENT, "method_return", None, ["w"], reply_serial=serial, verdict=fault)
    for name in ("A", "B"):
        t.send(SERVICE, OTHER, "signal", name, [])
    t.call(CLIENT, SERVICE, "Stamp", [], ["t3"])
    canon = canonical(t.records)
    same = classify(env, canon, {"exit_status": 0, "stdout": "v\n", "state": {"0: s": {"I": {"P": 1}}}, "services": []})
    assert same.outcome == "no-effect" and same.injected[0]["done"] == "arg 0 set"
    printed = classify(
        env, canonical(t.records), {"exit_status": 0, "stdout": "w\n", "state": results[0]["state"], "services": []}
    )
    assert printed.outcome == "behaviour-shift" and printed.propagation == []
    state = classify(
        env,
        canonical(t.records),
        {"exit_status": 0, "stdout": "w\n", "state": {"0: s": {"I": {"P": 2}}}, "services": []},
    )
    assert state.outcome == "state-corruption" and state.state_diff == {"0: s/I/P": {"golden": 1, "run": 2}}
    failed = classify(
        env, canonical(t.records), {"exit_status": 4, "stdout": "", "state": results[0]["state"], "services": []}
    )
    assert failed.outcome == "handled"
    hung = classify(
        env,
        canonical(t.records),
        {"exit_status": None, "timed_out": True, "state": results[0]["state"], "services": []},
    )
    assert hung.outcome == "hang"
    killed = classify(env, canonical(t.records), {"exit_status": -11, "state": results[0]["state"], "services": []})
    assert killed.outcome == "crash"
    quiet = classify(env, canonical(golden("t5")), {"exit_status": 0, "stdout": "v\n", "services": []})
    assert quiet.outcome == "not-activated"


def test_diff_of_two_traces() -> None:
    a = golden("t1")
    t = Trace()
    t.call(CLIENT, SERVICE, "Get", ["k"], ["v"])
    t.send(SERVICE, OTHER, "signal", "A", [])
    t.call(CLIENT, SERVICE, "Stamp", [], ["t1"])
    d = diff_records(a, t.records)
    assert not d.same and d.first is not None and d.first.component == "org.example.S"
    assert d.missing == {"org.example.S": ["signal org.example.S -> org.example.O org.example.I B"]}
    assert d.edit_distance == 1
    assert diff_records(a, golden("t1")).same
    assert levenshtein(list("kitten"), list("sitting")) == 3


def test_diff_of_unrelated_traces_says_so_and_never_prints_none() -> None:
    a, b = Trace(), Trace()
    a.send(CLIENT, SERVICE, "signal", "Hello", [])
    b.send(OTHER, SERVICE, "signal", "Bye", [])
    b.send(OTHER, SERVICE, "signal", "Bye", [])
    d = diff_records(a.records, b.records)
    assert d.unrelated and d.components_a != d.components_b
    text = render(d, "a.jsonl", "b.jsonl")
    assert "None" not in text
    assert "A and B have no sender in common" in text
    assert "A has no message from it" in text or "B has no message from it" in text
    assert d.to_json()["unrelated"] is True


def test_diff_where_one_side_stops_early_names_the_side() -> None:
    a, b = Trace(), Trace()
    a.send(CLIENT, SERVICE, "signal", "One", [])
    b.send(CLIENT, SERVICE, "signal", "One", [])
    b.send(CLIENT, SERVICE, "signal", "Two", [])
    text = render(diff_records(a.records, b.records), "a", "b")
    assert "None" not in text and "A has no more messages from it" in text
    assert not diff_records(a.records, b.records).unrelated

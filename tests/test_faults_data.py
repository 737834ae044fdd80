"""Fault plans on data messages (syscall level), offline: loading, selection, verdicts, enumeration, diff.

The records are real traces of programs nobody here wrote, read back as every
offline tool reads them: ``tests/fixtures/syscall-pipeline-{1,2}.jsonl`` are
two runs of ``ipcproxy trace -- sh -c 'seq 1000 | sort -n | head -3'``,
``syscall-pipeline-999.jsonl`` one of ``seq 999 | ...``, and
``syscall-data.jsonl`` (``--max-payload 16``) a pipe into ``tr``, socat over a
Unix stream socket and a Python datagram socketpair. What the tracer does with
a verdict is tested live in tests/test_faults_trace.py.
"""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import IPCPROXY, ROOT
from ipcproxy.faults.canon import canonical
from ipcproxy.faults.diff import diff_records, render
from ipcproxy.faults.enumerate import enumerate_faults
from ipcproxy.faults.envelope import learn
from ipcproxy.faults.injector import FaultInjector
from ipcproxy.faults.outcome import classify
from ipcproxy.faults.plan import Close, Errno, PlanError, Truncate, parse_campaign, parse_plan
from ipcproxy.model import Action, MessageType
from ipcproxy.syscall.intercept import data_context, syscall_action
from ipcproxy.trace.reader import iter_trace

FIXTURES = Path(__file__).parent / "fixtures"


def trace(name: str) -> list[dict[str, Any]]:
    return list(iter_trace(str(FIXTURES / name)))


def data(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "data"]


def plan(text: str, seed: int | None = None) -> FaultInjector:
    return FaultInjector(parse_plan("version: 1\nseed: 5\n" + text, "plan.yaml"), seed)


def fired(injector: FaultInjector, records: list[dict[str, Any]]) -> dict[int, Any]:
    """seq -> verdict of every data record the plan faults."""
    out = {}
    for r in data(records):
        verdict = injector.intercept(data_context(r))
        if verdict is not None:
            out[r["seq"]] = verdict
    return out


def one(records: list[dict[str, Any]], **want: Any) -> dict[str, Any]:
    found = [r for r in data(records) if all(r.get(k) == v for k, v in want.items() if k != "comm")]
    found = [
        r
        for r in found
        if "comm" not in want
        or (r["sender"] if r["direction"] == "send" else r["destination"]).get("comm") == want["comm"]
    ]
    assert len(found) == 1, (want, [r["seq"] for r in found])
    return found[0]


# ---------------------------------------------------------------- plans


def test_a_plan_for_data_messages_loads() -> None:
    p = parse_plan(
        """\
version: 1
faults:
  - match: {transport: unix, direction: send, syscall: "send*", process: socat, fd: 5,
            channel: {path: "/tmp/*.sock", socktype: stream}, payload: {re: "^pi"}, size: {ge: 2, lt: 100}}
    action: {errno: {name: ECONNRESET}}
  - match: {type: data, sender: 4242}
    action: {truncate: {fraction: 0.25}}
  - match: {destination: /usr/bin/sort}
    action: {close: {}}
""",
        "p.yaml",
    )
    first, second, third = p.faults
    assert first.match.is_data and not first.match.is_dbus
    assert first.match.channel is not None and first.match.channel.socktype == "stream"
    assert first.action == Errno("ECONNRESET")
    assert second.match.type is MessageType.DATA and second.match.sender == "4242"
    assert second.action == Truncate(fraction=0.25)
    assert second.action.kept(100) == 25
    assert Truncate(to=10).kept(100) == 10 and Truncate(bytes=30).kept(100) == 70
    assert third.action == Close()
    assert parse_plan("version: 1\nfaults: [{match: {type: data}, action: {errno: {}}}]").faults[0].action == Errno(
        "EIO"
    )


@pytest.mark.parametrize(
    ("faults", "line", "reason"),
    [
        ("  - match: {transport: pipe}\n    action: {errno: {name: EBOGUS}}\n", 4, "'EBOGUS' is not an errno name"),
        ("  - match: {transport: pipe, member: Get}\n    action: {drop: {}}\n", 3, "member is about D-Bus messages"),
        (
            "  - match: {type: method_call, syscall: write}\n    action: {drop: {}}\n",
            3,
            "syscall is about data messages",
        ),
        ("  - match: {direction: send}\n    action: {error: {name: a.b}}\n", 4, "use errno on data messages"),
        ("  - match: {type: signal}\n    action: {errno: {}}\n", 4, "use error on D-Bus"),
        ("  - match: {type: data}\n    action: {truncate: {to: 3, fraction: 0.5}}\n", 4, "not both to and fraction"),
        ("  - match: {type: data}\n    action: {truncate: {fraction: 1}}\n", 4, "between 0 and 1"),
        ("  - match: {type: data}\n    action: {corrupt: {bits: 2, arg: 0}}\n", 4, "takes bits only"),
        ("  - match: {transport: pigeon}\n    action: {drop: {}}\n", 3, "transport must be one of"),
        ("  - match: {direction: sideways}\n    action: {drop: {}}\n", 3, "direction must be send or recv"),
        ("  - match: {payload: {re: '('}}\n    action: {drop: {}}\n", 3, "bad regular expression"),
        ("  - match: {payload: {hex: zz}}\n    action: {drop: {}}\n", 3, "not hexadecimal"),
        ("  - match: {channel: {port: 80}}\n    action: {drop: {}}\n", 3, "unknown key 'port' in channel"),
        ("  - match: {size: big}\n    action: {drop: {}}\n", 3, "size must be a number of bytes"),
    ],
)
def test_a_bad_data_plan_names_file_and_line(faults: str, line: int, reason: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan("version: 1\nfaults:\n" + faults, "plan.yaml")
    assert str(err.value).startswith(f"plan.yaml:{line}: "), str(err.value)
    assert reason in str(err.value)


TRACE_CAMPAIGN = """\
version: 1
seed: 3
trace: "seq 1000 | sort -n | head -3"
golden_runs: 2
timeout_s: 5
max_payload: 8192
state: [{command: "echo ok"}]
enumerate:
  match: {transport: pipe}
  actions: [{errno: {}}, {duplicate: {}}]
"""


def test_a_trace_campaign_loads() -> None:
    c = parse_campaign(TRACE_CAMPAIGN, "c.yaml")
    assert c.traced and c.workload == "seq 1000 | sort -n | head -3" and c.max_payload == 8192
    assert c.enumerate is not None and c.enumerate.match.is_data


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        (("golden_runs: 2\n", "golden_runs: 2\nsetup: [foo]\n"), 5, "setup is about the campaign's private bus"),
        (("golden_runs: 2\n", "golden_runs: 2\nworkload: ls\n"), 5, "either workload"),
        (('[{command: "echo ok"}]', "[{service: a.b, path: /a}]"), 7, "use {command: CMD}"),
        (("{transport: pipe}", "{member: Get}"), 9, "enumerates data messages"),
        (("{errno: {}}", "{set-arg: {index: 0, value: 1}}"), 10, "set-arg is about D-Bus messages"),
    ],
)
def test_a_bad_trace_campaign_names_file_and_line(change: tuple[str, str], line: int, reason: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_campaign(TRACE_CAMPAIGN.replace(*change), "c.yaml")
    assert str(err.value).startswith(f"c.yaml:{line}: "), str(err.value)
    assert reason in str(err.value)


def test_the_campaign_command_refuses_a_bad_trace_campaign_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(TRACE_CAMPAIGN.replace("{errno: {}}", "{errno: {name: ENOPE}}"))
    proc = subprocess.run(
        [*IPCPROXY, "campaign", str(bad), "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ipcproxy: {bad}:10: errno 'ENOPE' is not an errno name (EIO, EPIPE, ECONNRESET, EAGAIN, ...)"
    ]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- selection on recorded data records


def test_selectors_pick_data_messages_by_process_channel_and_payload() -> None:
    records = trace("syscall-data.jsonl")
    socat_send = one(records, transport="unix", direction="send", syscall="write")
    dgram_recv = one(records, transport="unix", syscall="recvfrom")
    tr_read = one(records, comm="tr")
    cases = {
        "{process: socat, channel: {path: '/tmp/*/s.sock', socktype: stream}, direction: send}": {socat_send["seq"]},
        "{channel: {socktype: dgram}, direction: recv}": {dgram_recv["seq"]},
        "{syscall: 'recv*'}": {dgram_recv["seq"]},
        "{process: /usr/bin/tr}": {tr_read["seq"]},
        f"{{process: {tr_read['pid']}}}": {tr_read["seq"]},
        "{payload: {prefix: hello}, direction: recv}": {tr_read["seq"]},
        "{payload: {hex: '70696e67'}, transport: unix}": {
            r["seq"] for r in data(records) if r["transport"] == "unix" and r["payload"].startswith("70696e67")
        },
        "{payload: {re: '^d..am$'}}": {r["seq"] for r in data(records) if r["payload"] == b"dgram".hex()},
        "{size: {gt: 20}}": {r["seq"] for r in data(records) if r["size"] > 20},
        "{transport: tcp}": set(),
        "{type: method_call}": set(),
    }
    for match, seqs in cases.items():
        got = fired(plan(f"faults:\n  - match: {match}\n    action: {{drop: {{}}}}\n"), records)
        assert set(got) == seqs, match
        assert seqs or match in ("{transport: tcp}", "{type: method_call}")


def test_triggers_count_data_messages_as_before() -> None:
    records = trace("syscall-data.jsonl")
    sends = [r["seq"] for r in data(records) if r["direction"] == "send"]
    assert len(sends) == 4
    assert set(
        fired(plan("faults:\n  - {match: {direction: send}, when: {nth: 2}, action: {drop: {}}}\n"), records)
    ) == {sends[1]}
    every = fired(plan("faults:\n  - {match: {direction: send}, when: {every: 2}, action: {drop: {}}}\n"), records)
    assert set(every) == {sends[1], sends[3]}
    gated = plan("faults:\n  - {match: {direction: send}, when: {after: {transport: unix}}, action: {drop: {}}}\n")
    assert set(fired(gated, records)) == {
        s for s in sends if s > min(r["seq"] for r in data(records) if r["transport"] == "unix")
    }
    seeded = "faults:\n  - {match: {type: data}, when: {probability: 0.5}, action: {drop: {}}}\n"
    draws = [sorted(fired(plan(seeded, seed=s), records)) for s in (1, 1, 2, 3, 4)]
    assert draws[0] == draws[1]
    assert len({tuple(d) for d in draws}) > 1


# ---------------------------------------------------------------- verdicts as syscall actions


def verdict_for(action: str, record: dict[str, Any]) -> Any:
    injector = plan(f"faults:\n  - match: {{type: data}}\n    action: {action}\n")
    return injector.intercept(data_context(record))


def test_each_action_becomes_its_syscall_action() -> None:
    records = trace("syscall-pipeline-1.jsonl")
    write = one(records, comm="seq")  # seq's one write of 3893 bytes
    read = one(records, comm="sort", direction="recv")
    payload = bytes.fromhex(write["payload"])

    v = verdict_for("{errno: {}}", write)
    assert v.action is Action.ERROR_REPLY and syscall_action(v, write).errno == errno.EIO
    assert v.notes["fault_action"] == "errno" and v.notes["done"] == "failed with EIO"
    assert syscall_action(verdict_for("{errno: {name: EPIPE}}", write), write).errno == errno.EPIPE

    assert syscall_action(verdict_for("{drop: {}}", write), write).skip
    assert syscall_action(verdict_for("{close: {}}", read), read).close
    assert syscall_action(verdict_for("{delay: {ms: 30}}", write), write).delay_s == pytest.approx(0.03)
    assert syscall_action(verdict_for("{duplicate: {copies: 3}}", write), write).copies == 3
    assert verdict_for("{duplicate: {}}", read) is None  # a receive is not repeated

    cut = verdict_for("{truncate: {fraction: 0.5}}", read)
    assert syscall_action(cut, read).length == 3893 // 2
    assert cut.notes["done"] == f"short read: {3893 // 2} of 3893 bytes"
    assert cut.notes["original_args"] == [3893, read["payload"]]
    assert syscall_action(verdict_for("{truncate: {to: 10}}", write), write).length == 10
    assert syscall_action(verdict_for("{truncate: {bytes: 93}}", write), write).length == 3800
    assert verdict_for("{truncate: {to: 5000}}", write) is None  # nothing to cut

    flipped = syscall_action(verdict_for("{corrupt: {bits: 3}}", write), write)
    assert flipped.payload is not None and len(flipped.payload) == len(payload) and flipped.length is None
    bits = sum(bin(a ^ b).count("1") for a, b in zip(payload, flipped.payload, strict=True))
    assert 1 <= bits <= 3 and bits % 2 == 1  # three flips; two on the same bit cancel out
    again = syscall_action(verdict_for("{corrupt: {bits: 3}}", write), write)
    assert again.payload == flipped.payload  # seeded


def test_truncating_past_the_recorded_payload_is_left_alone() -> None:
    records = trace("syscall-data.jsonl")  # --max-payload 16
    long = one(records, comm="sh", direction="send", size=28)
    assert verdict_for("{truncate: {to: 20}}", long) is None
    assert syscall_action(verdict_for("{truncate: {to: 8}}", long), long).length == 8


# ---------------------------------------------------------------- enumeration, envelope, diff


def goldens() -> list[list[dict[str, Any]]]:
    return [trace("syscall-pipeline-1.jsonl"), trace("syscall-pipeline-2.jsonl")]


def test_enumeration_names_each_golden_data_message_by_what_is_stable() -> None:
    c = parse_campaign(TRACE_CAMPAIGN, "c.yaml")
    assert c.enumerate is not None
    faults = enumerate_faults(goldens(), c.enumerate, 3, 0)
    names = [f.name for f in faults]
    # four messages (seq's write, sort's read and write, head's read) x errno; duplicate on the two writes only
    assert sorted(names) == sorted(
        [
            "errno write seq fd 1 #1",
            "duplicate write seq fd 1 #1",
            "errno read sort fd 0 #1",
            "errno write sort fd 1 #1",
            "duplicate write sort fd 1 #1",
            "errno read head fd 0 #1",
        ]
    )
    by_name = {f.name: f for f in faults}
    read = by_name["errno read sort fd 0 #1"].source["match"]
    assert read == {
        "type": "data",
        "transport": "pipe",
        "direction": "recv",
        "syscall": "read",
        "fd": 0,
        "process": "/usr/bin/sort",
    }
    # each enumerated fault fires exactly once on a golden run, on the message it names
    for f in faults:
        injector = FaultInjector(parse_plan(json.dumps({"version": 1, "faults": [f.source]})))
        assert len(fired(injector, goldens()[1])) == 1, f.name


def test_a_pipelines_processes_are_named_by_the_program_they_became() -> None:
    canon = canonical(goldens()[0])
    sends = [(m.sender, m.destination, sorted(m.receivers)) for m in canon.messages]
    # sort's write went to the shell that then became head: named head, which read it
    assert sends == [
        ("/usr/bin/seq", "/usr/bin/sort", ["/usr/bin/sort"]),
        ("/usr/bin/sort", "/usr/bin/head", ["/usr/bin/head"]),
    ]
    assert {(c, s) for _seq, c, s in canon.exits} >= {("/usr/bin/seq", "0"), ("/usr/bin/head", "0")}


def test_golden_runs_of_a_pipeline_are_within_their_envelope() -> None:
    g = goldens()
    results = [{"exit_status": 0, "stdout": "1\n2\n3\n", "state": {}, "services": []}] * 2
    env = learn([canonical(r) for r in g], results)
    v = classify(env, canonical(g[1]), results[0])
    assert v.outcome == "not-activated" and not v.deviations


def test_diff_of_two_syscall_traces_says_where_they_diverge() -> None:
    a, b = trace("syscall-pipeline-1.jsonl"), trace("syscall-pipeline-999.jsonl")
    d = diff_records(a, b)
    assert not d.same and d.first is not None
    seq_write = one(b, comm="seq")
    assert (d.first.component, d.first.b_seq) == ("/usr/bin/seq", seq_write["seq"])
    text = render(d, "A", "B")
    assert "first divergence: /usr/bin/seq at A #2 / B #2" in text
    assert "pipe write fd 1: /usr/bin/seq -> /usr/bin/sort 3888 B" in text
    assert set(d.missing) == {"/usr/bin/seq", "/usr/bin/sort"}
    assert diff_records(a, trace("syscall-pipeline-2.jsonl")).same


def test_the_diff_command_on_syscall_traces(tmp_path: Path) -> None:
    a, b = FIXTURES / "syscall-pipeline-1.jsonl", FIXTURES / "syscall-pipeline-999.jsonl"
    proc = subprocess.run([*IPCPROXY, "diff", str(a), str(b)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "first divergence: /usr/bin/seq" in proc.stdout
    same = subprocess.run(
        [*IPCPROXY, "diff", str(a), str(FIXTURES / "syscall-pipeline-2.jsonl")], capture_output=True, text=True
    )
    assert same.returncode == 0, same.stdout


# ---------------------------------------------------------------- classification of recorded faulty runs

CAMPAIGN_DIR = FIXTURES / "trace-campaign"  # a real trace campaign (campaign.yaml) on the pipeline, as written


def recorded_run(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = json.loads((CAMPAIGN_DIR / f"{name}.result.json").read_text())
    return list(iter_trace(str(CAMPAIGN_DIR / f"{name}.jsonl"))), result


def test_recorded_faulty_runs_of_a_pipeline_are_classified() -> None:
    golden = [recorded_run(f"golden-{k}") for k in (1, 2, 3)]
    env = learn([canonical(records) for records, _ in golden], [result for _, result in golden])
    verdicts = {
        k: classify(env, canonical(recorded_run(f"run-{k}")[0]), recorded_run(f"run-{k}")[1]) for k in range(1, 5)
    }
    # 1: seq's write failed with EIO: seq exited 1, sort and head got nothing
    assert verdicts[1].outcome == "handled" and "/usr/bin/seq 1 (golden: 0)" in verdicts[1].detail
    assert verdicts[1].propagation[0] == "/usr/bin/sort"
    # 2: seq's write duplicated: head printed 1 1 2 and left, sort then died of SIGPIPE: no crash
    assert "SIGPIPE" in {status for _seq, _comp, status in canonical(recorded_run("run-2")[0]).exits}
    assert verdicts[2].outcome == "behaviour-shift"
    assert verdicts[2].propagation == ["/usr/bin/sort", "/usr/bin/head"]
    # 3: sort read half: the same three lines out, but sort sent other bytes
    assert verdicts[3].outcome == "behaviour-shift" and verdicts[3].propagation == ["/usr/bin/sort"]
    # 4: head's read held past the time limit: the tracer killed the programs; a hang, not a crash
    assert verdicts[4].outcome == "hang"
    assert all(v.injected for v in verdicts.values())

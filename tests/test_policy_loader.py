"""Policy files: written readable, read back identical, refused with file:line: reason when broken."""

from __future__ import annotations

import pytest

from ipcproxy.policy.dump import dump_policy
from ipcproxy.policy.loader import PolicyError, load_policy, parse_policy
from ipcproxy.policy.model import ArgConstraint, Policy, Rule, Subject

GOOD = """\
format: ipcproxy-policy
version: 1
order: 2
components:
- component: /usr/bin/busctl
  uid: 5
  exe: /usr/bin/busctl
  own: []
  rules:
  - send: method_call
    to: org.freedesktop.hostname1
    path: /org/freedesktop/hostname1
    interface: org.freedesktop.DBus.Properties
    member: Get
    signature: ss
    args:
      1: {values: [Hostname, KernelName]}
  order:
  - [^, org.freedesktop.DBus org.freedesktop.DBus.Hello]
"""


def error_of(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return info.value


def test_good_file_reads_with_lines():
    policy = parse_policy(GOOD, "p.yaml")
    (subject,) = policy.subjects
    assert (subject.component, subject.uid, subject.exe) == ("/usr/bin/busctl", 5, "/usr/bin/busctl")
    (rule,) = subject.rules
    assert rule.line == 10
    assert rule.args[1].values == ["Hostname", "KernelName"]
    assert subject.order == {("^", "org.freedesktop.DBus org.freedesktop.DBus.Hello")}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace("version: 1", "version: 7"), 2, "unknown policy version 7"),
        (GOOD.replace("version: 1", "version: one"), 2, "version must be an integer"),
        (GOOD.replace("    member: Get", "    membr: Get"), 14, "unknown key 'membr'"),
        (GOOD.replace("  uid: 5", "  uid: five"), 6, "uid must be an integer"),
        (GOOD.replace("send: method_call", "send: method_cal"), 10, "'method_cal' is not one of"),
        (GOOD.replace("to: org.freedesktop.hostname1", "from: org.freedesktop.hostname1"), 11, "'to:'"),
        (GOOD.replace("{values: [Hostname, KernelName]}", "{pattern: '[a-'}"), 17, "not a regular expression"),
        (GOOD.replace("{values: [Hostname, KernelName]}", "{range: [5, 1]}"), 17, "low is above high"),
        (GOOD.replace("{values: [Hostname, KernelName]}", "{}"), 17, "empty argument constraint"),
        (GOOD.replace("  - [^, org", "  - [^, org, extra"), 19, "order n-gram has 3 entries"),
        (GOOD.replace("    signature: ss", "    signature: ss\n    signature: s"), 16, "given twice"),
        (GOOD.replace("    path: /org", "    path: org"), 12, "is not well formed"),
        (GOOD + "  - [unclosed\n", 21, "not valid YAML"),
        (GOOD.replace("version: 1\n", ""), 1, "missing 'version'"),
    ],
)
def test_broken_files_name_file_line_and_reason(text: str, line: int, words: str):
    err = error_of(text)
    assert err.line == line, str(err)
    assert str(err).startswith(f"p.yaml:{line}: ")
    assert words in str(err)


def test_unreadable_and_empty(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(str(tmp_path / "missing.yaml"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(PolicyError, match="empty file"):
        load_policy(str(empty))


def test_dump_reads_back_the_same_policy_with_comments():
    policy = Policy(
        order_n=2,
        threshold=3,
        subjects=[
            Subject(
                component="org.example.Svc",
                uid=7,
                exe="/usr/bin/python3",
                own=["org.example.Svc"],
                messages=10,
                rules=[
                    Rule(
                        "receive",
                        "method_call",
                        "/usr/bin/busctl",
                        peer_uid=5,
                        paths=("/a", "/b"),
                        interface="org.example.Svc",
                        member="Set",
                        signature="sdas",
                        args={
                            0: ArgConstraint(values=["yes", "no", ":*", "1.0"]),
                            1: ArgConstraint(range=(0.5, 99.0)),
                            2: ArgConstraint(max_len=8),
                        },
                        count=4,
                    ),
                    Rule("send", "signal", "broadcast", path_prefix="/org/", signature="", count=1),
                    Rule("send", "any", "*"),
                ],
                order={("^", "org.freedesktop.DBus org.freedesktop.DBus.Hello")},
            )
        ],
    )
    text = dump_policy(policy, ["learnt for a test"])
    assert "# seen 4 times, 40.0% of its messages" in text
    assert text.startswith("# learnt for a test\nformat: ipcproxy-policy\nversion: 1\n")
    again = parse_policy(text)
    assert again.subjects == policy.subjects
    assert again.order_n == 2 and again.threshold == 3
    assert again.subjects[0].rules[0].args[0].values == ["yes", "no", ":*", "1.0"]

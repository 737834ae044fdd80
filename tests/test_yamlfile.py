"""The one YAML reader of policies, plans and campaigns: lines kept, values named in the user's words."""

from __future__ import annotations

import pytest

from ipcproxy import yamlfile
from ipcproxy.faults.plan import PlanError, parse_campaign, parse_plan
from ipcproxy.policy.loader import PolicyError, parse_policy


def test_load_keeps_the_line_of_each_key_and_item() -> None:
    doc = yamlfile.load("a: 1\nb:\n  - x\n  - {c: 2}\n")
    assert isinstance(doc, yamlfile.LineDict)
    assert (yamlfile.line_of(doc, "a"), yamlfile.line_of(doc, "b")) == (1, 2)
    assert [yamlfile.line_of(doc["b"], i) for i in range(2)] == [3, 4]
    assert doc == {"a": 1, "b": ["x", {"c": 2}]}


def test_compose_and_load_read_the_same_tree() -> None:
    text = "version: 1\nfaults: []\n"
    node = yamlfile.compose(text)
    assert node is not None and node.start_mark.line == 0
    assert yamlfile.construct(node) == yamlfile.load(text)
    assert yamlfile.load("") is None


@pytest.mark.parametrize(
    ("value", "words"),
    [([1], "a list"), ({"a": 1}, "a mapping"), ("x", "'x'"), (3, "3"), (None, "nothing"), (True, "True")],
)
def test_said_names_what_the_user_wrote(value: object, words: str) -> None:
    assert yamlfile.said(value) == words


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: 1\nfaults:\n  - match: [member, Get]\n    action: {drop: {}}\n",
            "p:3: match must be a mapping, not a list",
        ),
        ("version: 1\nfaults:\n  - match: {type: [a]}\n    action: {drop: {}}\n", "not a list"),
        (
            "version: 1\nfaults:\n  - action: {disconnect: {side: {a: 1}}}\n",
            "side must be sender or receiver, not a mapping",
        ),
        ("version: 1\nseed: [1]\n", "p:2: seed must be an integer >= 0, not a list"),
        ("version: [1]\n", "p:1: version must be 1, not a list"),
        ("- 1\n", "p:1: expected a mapping with version: 1, not a list"),
        ("version: 1\nfaults:\n  ? [a]\n  : 1\n", "p:3: not valid YAML: a key must be a name or a number, not a list"),
    ],
)
def test_plan_errors_name_yaml_kinds_not_python_classes(text: str, message: str) -> None:
    with pytest.raises(PlanError) as info:
        parse_plan(text, "p")
    assert message in str(info.value)
    for internal in ("LineList", "LineDict", "dict", "list'", "NoneType"):
        assert internal not in str(info.value)


def test_campaign_errors_keep_their_lines() -> None:
    with pytest.raises(PlanError, match=r"^c:2: workload must be a non-empty string, not a list$"):
        parse_campaign("version: 1\nworkload: [a]\nfaults: [{action: {drop: {}}}]\n", "c")


def test_policy_and_plan_errors_share_one_shape() -> None:
    with pytest.raises(PolicyError) as policy:
        parse_policy("version: 1\ncomponents: [\n", "p.yaml")
    with pytest.raises(PlanError) as plan:
        parse_plan("version: 1\nfaults: [\n", "f.yaml")
    for err in (policy.value, plan.value):
        assert isinstance(err, yamlfile.YamlFileError)
        assert err.line == 3 and "not valid YAML" in err.reason
    with pytest.raises(PolicyError, match=r"^p.yaml:2: uid must be an integer, not a number$"):
        parse_policy("version: 1\ncomponents: [{component: a, uid: 1.5}]\n", "p.yaml")

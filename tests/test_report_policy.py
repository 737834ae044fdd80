"""`ipcproxy report TRACE --policy POLICY`: the policy matrix with hits and the violations `check` finds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from browser import chromium, need_chromium, screenshot, wait_js
from report_helpers import MOCK, ipcproxy, make_trace


def model_of(page: Path) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="model">(.*?)</script>', page.read_text(), re.S)
    assert match
    return dict(json.loads(match.group(1)))


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A policy learnt from busctl introspecting the mock, and a trace that does more than that."""
    folder = tmp_path_factory.mktemp("policy")
    learnt = folder / "learn.jsonl"
    ipcproxy(
        "run", "-q", "-w", str(learnt), "--service", MOCK, "--wait-for", "org.example.Mock", "--",
        "busctl", "--user", "call", "org.example.Mock", "/org/example/Mock",
        "org.freedesktop.DBus.Introspectable", "Introspect",
    )  # fmt: skip
    policy = folder / "policy.yaml"
    ipcproxy("learn", str(learnt), "-o", str(policy))
    return policy, make_trace(folder), learnt


def test_hits_and_violations_are_checks_own(checked: Any, tmp_path: Path) -> None:
    policy, trace, learnt = checked
    page = tmp_path / "p.html"
    ipcproxy("report", str(trace), "--policy", str(policy), "-o", str(page))
    model = model_of(page)["policy"]
    r = ipcproxy("check", "--json", str(policy), str(trace), check=False)
    found = [json.loads(line) for line in r.stdout.splitlines()]
    violations = [f for f in found if f["finding"] == "violation"]
    assert len(model["violations"]) == len(violations) > 0
    assert [(v["seq"], v["kind"]) for v in model["violations"]] == [(v["seq"], v["kind"]) for v in violations]
    assert f"checked {model['checked']} messages" in r.stderr
    busctl = next(s for s in model["subjects"] if s["component"].startswith("/usr/bin/busctl"))
    introspect = next(r for r in busctl["rules"] if r["member"] == "Introspect")
    assert introspect["hits"] == 1  # busctl introspected once in the checked trace
    # the trace it was learnt from: every rule used, nothing violated
    clean = tmp_path / "clean.html"
    ipcproxy("report", str(learnt), "--policy", str(policy), "-o", str(clean))
    clean_model = model_of(clean)["policy"]
    assert clean_model["violations"] == []
    assert all(r["hits"] > 0 for s in clean_model["subjects"] for r in s["rules"])


def test_a_policy_alone_is_its_matrix(checked: Any, tmp_path: Path) -> None:
    policy, _, _ = checked
    page = tmp_path / "alone.html"
    ipcproxy("report", "--policy", str(policy), "-o", str(page))
    model = model_of(page)
    assert model["kind"] == "policy" and model["policy"]["checked"] is None
    assert sum(len(s["rules"]) for s in model["policy"]["subjects"]) > 0


def test_a_broken_policy_is_one_line_naming_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsubjects: [\n")
    r = ipcproxy("report", "--policy", str(bad), "-o", str(tmp_path / "x.html"), check=False)
    assert r.returncode == 2 and "bad.yaml" in r.stderr and r.stderr.count("\n") == 1


def test_nothing_to_report_is_a_usage_error(tmp_path: Path) -> None:
    r = ipcproxy("report", "-o", str(tmp_path / "x.html"), check=False)
    assert r.returncode == 2 and "TRACE" in r.stderr and "Traceback" not in r.stderr


def test_the_matrix_in_chromium(checked: Any, tmp_path: Path) -> None:
    need_chromium()
    policy, trace, _ = checked
    page = tmp_path / "p.html"
    ipcproxy("report", str(trace), "--policy", str(policy), "-o", str(page))
    violations = model_of(page)["policy"]["violations"]
    with chromium() as driver:
        driver.get(page.as_uri())
        wait_js(driver, "window.ipcReport")
        driver.find_element("css selector", "#tabs button[data-tab=policy]").click()
        cells = wait_js(driver, "document.querySelectorAll('#policy-matrix td[data-violations]').length && "
                        "[...document.querySelectorAll('#policy-matrix td[data-violations]')]"
                        ".map((td) => +td.dataset.violations)")  # fmt: skip
        assert sum(cells) == len(violations)
        driver.find_element("css selector", "#policy-matrix td.viol").click()
        rows = driver.find_elements("css selector", "#policy-violations tbody tr")
        assert rows
        seq = rows[0].find_elements("css selector", "td")[0].text.lstrip("#")
        screenshot(driver, "report-policy")
        rows[0].click()
        wait_js(driver, "document.getElementById('detail').dataset.seq")
        assert driver.find_element("id", "detail").get_attribute("data-seq") == seq
        assert driver.execute_script("return ipcReport.app.tab") == "sequence"

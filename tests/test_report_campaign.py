"""`ipcproxy report CAMPAIGN_DIR`: a real campaign's outcomes, runs beside the golden run, propagation, in Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from browser import chromium, need_chromium, screenshot, wait_js
from conftest import ROOT
from report_helpers import ipcproxy

CHAIN = ROOT / "tests" / "groundtruth" / "chain.yaml"  # A -> B -> C, faults at C's reply


def model_of(page: Path) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="model">(.*?)</script>', page.read_text(), re.S)
    assert match
    return dict(json.loads(match.group(1)))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("campaign")
    out = folder / "results"
    ipcproxy("campaign", str(CHAIN), "-o", str(out), "-q", timeout=300)
    page = folder / "campaign.html"
    ipcproxy("report", str(out), "-o", str(page))
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return out, page, results


def test_the_model_holds_every_run_with_its_outcome_and_traces(campaign: Any) -> None:
    _, page, results = campaign
    model = model_of(page)
    runs = model["campaign"]["runs"]
    assert [(r["run"], r["outcome"], r["propagation"]) for r in runs] == [
        (r["run"], r["outcome"], r["propagation"]) for r in sorted(results, key=lambda r: r["run"])
    ]
    assert sum(model["campaign"]["outcomes"].values()) == len(results)
    assert model["traces"][0]["title"] == "golden-1.jsonl"
    assert [model["traces"][r["trace"]]["title"] for r in runs] == [
        r["trace"] for r in sorted(results, key=lambda r: r["run"])
    ]
    wrong = next(r for r in runs if r["fault"] == "wrong-value-at-c")
    assert wrong["action"] == "set-arg 0=1000"
    assert wrong["target"] == "method_return from org.example.C reply to Compute"


def test_a_run_beside_the_golden_run_in_chromium(campaign: Any) -> None:
    need_chromium()
    _, page, results = campaign
    with chromium() as driver:
        driver.get(page.as_uri())
        wait_js(driver, "window.ipcReport && document.querySelector('#outcome-table tbody tr')")
        rows = driver.find_elements("css selector", "#outcome-table tbody tr")
        assert len(rows) == len(results)
        error_run = next(r for r in results if r["fault"]["name"] == "error-at-c")
        driver.find_element("css selector", f"#outcome-table tr[data-run='{error_run['run']}']").click()
        wait_js(driver, f"document.getElementById('view-campaign').dataset.run === '{error_run['run']}'")
        view = driver.find_element("id", "view-campaign")
        # the faulty side is marked where the campaign found the first divergence
        faulty_mark = view.get_attribute("data-faulty-mark")
        assert faulty_mark and int(faulty_mark) >= error_run["first_divergence"]
        assert view.get_attribute("data-golden-mark")
        # the propagation path is on the faulty run's graph, in order
        labels = driver.execute_script("return ipcCampaignView().graph().nodes().map((n) => n.data('label'))")
        for k, name in enumerate(error_run["propagation"], 1):
            assert f"{k}. {name}" in labels
        # the sequence tab now shows that run
        assert driver.execute_script("return ipcReport.app.trace.model.title") == error_run["trace"]
        driver.execute_script("document.getElementById('compare-title').scrollIntoView()")
        screenshot(driver, "report-campaign")
        driver.execute_script("document.getElementById('propagation-graph').scrollIntoView()")
        screenshot(driver, "report-propagation")


@pytest.mark.parametrize("option", [["--policy", "p.yaml"], ["--max-messages", "5"]])
def test_options_of_a_trace_are_refused_with_a_campaign(campaign: Any, tmp_path: Path, option: list[str]) -> None:
    out, _, _ = campaign
    r = ipcproxy("report", str(out), *option, "-o", str(tmp_path / "x.html"), check=False)
    assert r.returncode == 2 and option[0] in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x.html").exists()

"""The HTML report in real headless Chromium: a trace of real services and clients, drawn, filtered, clicked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from browser import chromium, click_row, need_chromium, screenshot, wait_js
from conftest import read_trace
from report_helpers import ipcproxy, make_trace, stats_names, trace_stats


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    need_chromium()
    folder = tmp_path_factory.mktemp("report")
    trace = make_trace(folder)
    page = folder / "report.html"
    ipcproxy("report", str(trace), "-o", str(page))
    return page, trace_stats(trace)


@pytest.fixture
def browser() -> Any:
    with chromium() as driver:
        yield driver


def open_report(driver: Any, page: Path) -> None:
    driver.get(page.as_uri())
    wait_js(driver, "window.ipcReport && ipcReport.drawn()")


def test_arrows_and_lifelines_are_the_traces_messages_and_components(browser: Any, report: Any) -> None:
    page, stats = report
    open_report(browser, page)
    counts = browser.execute_script("return ipcReport.counts()")
    assert counts["messages"] == stats["messages"]
    assert counts["shown"] == stats["messages"]
    assert set(browser.execute_script("return ipcReport.lanes()")) == stats_names(stats)
    assert counts["shownLifelines"] == len(stats_names(stats))
    shown = browser.find_element("id", "shown")
    assert shown.get_attribute("data-messages") == str(stats["messages"])
    screenshot(browser, "report-sequence")


def test_a_filter_narrows_every_view(browser: Any, report: Any) -> None:
    page, stats = report
    open_report(browser, page)
    errors = sum(c["errors"] for c in stats["components"])
    assert errors >= 2  # UnknownMethod from the mock, and the injected one
    for box in browser.find_elements("css selector", "input[data-filter=type]"):
        if box.get_attribute("value") != "2":  # 2: error
            box.click()
    assert browser.execute_script("return ipcReport.counts().shown") == errors
    # the graph and the stats follow the filter
    browser.find_element("css selector", "#tabs button[data-tab=graph]").click()
    graph = wait_js(browser, "ipcReport.graph()")
    error_pairs = {(p["sender"], p["destination"]) for p in stats["pairs"] if p["errors"]}
    assert graph["edges"] == len(error_pairs)
    browser.find_element("css selector", "#tabs button[data-tab=stats]").click()
    rows = browser.find_elements("css selector", "#stats-pairs tbody tr")
    assert len(rows) == len(error_pairs)
    screenshot(browser, "report-stats-errors")


def test_component_filter_keeps_its_messages(browser: Any, report: Any) -> None:
    page, stats = report
    open_report(browser, page)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "f-component")).select_by_visible_text("/usr/bin/gdbus")
    involved = sum(p["messages"] for p in stats["pairs"] if "/usr/bin/gdbus" in (p["sender"], p["destination"]))
    assert browser.execute_script("return ipcReport.counts().shown") == involved
    assert "/usr/bin/gdbus" in browser.execute_script("return ipcReport.lanes()")


def test_clicking_a_message_shows_its_record(browser: Any, report: Any) -> None:
    page, _ = report
    trace = page.with_name("trace.jsonl")
    open_report(browser, page)
    member = browser.find_element("id", "f-member")
    member.send_keys("Introspect")
    for box in browser.find_elements("css selector", "input[data-filter=type]"):
        if box.get_attribute("value") != "0":  # calls only
            box.click()
    # busctl's, and gdbus's (which introspects before each call); each recorded as it left its client
    calls = [r for r in read_trace(trace) if r.get("member") == "Introspect" and r.get("direction") == "to_bus"]
    assert len(calls) >= 3
    assert browser.execute_script("return ipcReport.counts().shown") == len(calls)
    click_row(browser, 0)
    wait_js(browser, "document.getElementById('detail').dataset.seq")
    detail = browser.find_element("id", "detail")
    assert detail.find_element("css selector", "dd[data-field=member]").text == "Introspect"
    assert detail.find_element("css selector", "dd[data-field=interface]").text == "org.freedesktop.DBus.Introspectable"
    assert detail.find_element("css selector", "dd[data-field=to]").text == "org.example.Mock"
    screenshot(browser, "report-detail")


def test_the_injected_fault_is_marked_and_its_arguments_decoded(browser: Any, report: Any) -> None:
    page, _ = report
    open_report(browser, page)
    for box in browser.find_elements("css selector", "input[data-filter=verdict]"):
        if box.get_attribute("value") != "3":  # 3: fault injected
            box.click()
    assert browser.execute_script("return ipcReport.counts().shown") == 1
    click_row(browser, 0)
    wait_js(browser, "document.getElementById('detail').dataset.seq")
    detail = browser.find_element("id", "detail")
    assert detail.find_element("css selector", "dd[data-field=member]").text == "GetAll"
    assert "error_reply" in detail.find_element("css selector", "dd[data-field=verdict]").text
    assert detail.find_element("id", "detail-args").text == 'string "org.example.Mock"'
    screenshot(browser, "report-fault")

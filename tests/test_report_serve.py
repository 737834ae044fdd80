"""`ipcproxy serve TRACE`: the page on localhost, following a trace that `ipcproxy run` is writing, in Chromium."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

from browser import chromium, need_chromium, screenshot, wait_js
from conftest import IPCPROXY, ROOT
from report_helpers import MOCK, ipcproxy, trace_stats

# calls spread over a few seconds, so the page sees the trace grow
SLOW = (
    "for i in 1 2 3 4 5 6; do busctl --user call org.example.Mock /org/example/Mock"
    " org.freedesktop.DBus.Peer Ping; sleep 0.7; done"
)


def start_serve(trace: Path, stderr: Path) -> tuple[subprocess.Popen[bytes], str]:
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([*IPCPROXY, "serve", str(trace)], stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:"), stderr.read_text()
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_the_page_grows_with_the_trace(tmp_path: Path) -> None:
    need_chromium()
    trace = tmp_path / "live.jsonl"  # not there yet: serve waits for it
    proc, url = start_serve(trace, tmp_path / "serve.err")
    run: subprocess.Popen[bytes] | None = None
    try:
        with chromium() as driver:
            driver.get(url)
            wait_js(driver, "window.ipcReport")
            assert driver.execute_script("return ipcReport.counts().messages") == 0
            run = subprocess.Popen(
                [*IPCPROXY, "run", "-q", "-w", str(trace), "--service", MOCK, "--wait-for", "org.example.Mock",
                 "--", "sh", "-c", SLOW],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            # messages arrive while the workload still runs
            wait_js(driver, "ipcReport.counts().messages > 0", timeout=60)
            assert run.poll() is None
            early = driver.execute_script("return ipcReport.counts().messages")
            assert run.wait(60) == 0
            total = trace_stats(trace)["messages"]
            assert total > early
            wait_js(driver, f"ipcReport.counts().messages === {total}", timeout=30)
            assert driver.find_element("id", "live-state").text == "live"
            assert int(driver.find_element("id", "live-state").get_attribute("data-updates")) >= 2
            # the streamed page shows what the file's report shows
            assert set(driver.execute_script("return ipcReport.lanes()")) == set(
                driver.execute_script("return ipcReport.app.trace.lifelines")
            )
            screenshot(driver, "report-live")
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        if run is not None and run.stderr:
            run.stderr.close()
        status = stop(proc)
    assert status == 0


def test_serve_answers_only_the_page_and_its_stream(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    proc, url = start_serve(trace, tmp_path / "serve.err")
    try:
        with urllib.request.urlopen(url, timeout=10) as page:
            body = page.read().decode()
        assert body.startswith("<!DOCTYPE html>") and "ipcLiveMode = true" in body
        try:
            urllib.request.urlopen(url + "etc/passwd", timeout=10)
            raise AssertionError("served a path it does not have")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    finally:
        assert stop(proc) == 0


def test_serve_of_something_not_a_trace_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not a trace\n")
    r = subprocess.run([*IPCPROXY, "serve", str(bad)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "bad.jsonl" in r.stderr and "Traceback" not in r.stderr
    r2 = ipcproxy("serve", str(tmp_path), check=False)
    assert r2.returncode == 2 and "directory" in r2.stderr

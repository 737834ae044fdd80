"""Real headless Chromium for the report's tests, driven through Debian's chromedriver with selenium."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("IPCPROXY_TEST_ARTIFACTS", ROOT / "out" / "browser"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)


def need_chromium() -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("needs selenium (pyproject.toml's dev extra)")


@contextmanager
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium with its own profile, closed (and its profile removed) afterwards."""
    need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ipcproxy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_js(driver: Any, script: str, timeout: float = 30) -> Any:
    """Poll a JS expression until it is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script("return " + script))


def screenshot(driver: Any, name: str) -> Path:
    """Keep a picture of the page as a test artifact (out/browser/ unless IPCPROXY_TEST_ARTIFACTS says where)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot at {path}"
    return path


def click_row(driver: Any, pos: int) -> None:
    """Click the arrow drawn in row ``pos`` of the sequence diagram (rows as shown, after filtering)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    y = driver.execute_script(f"return ipcReport.scrollTo({pos})")
    canvas = driver.find_element(By.ID, "seq-canvas")
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", canvas)
    # offsets are from the element's centre
    ActionChains(driver).move_to_element_with_offset(canvas, 0, int(y - rect[1] / 2)).click().perform()

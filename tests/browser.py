"""Headless Chromium driven by Selenium, for tests that look at a web page the way a person would.

    with chromium(tmp_path) as driver:
        driver.get(url)
        wait_for_text(driver, "micro1")
        shot(driver, tmp_path / "page.png")

Needs the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver).
When they are missing, the first test that needs them installs them with apt-get (as root, or through
passwordless sudo), so README's install and test commands are all a fresh machine needs. Where that
cannot work, the test fails with the command to run: an error, not a skip, so CI cannot pass without
looking.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("SWEEP4D_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SWEEP4D_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = "install chromium chromium-driver: apt-get install -y chromium chromium-driver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
]


class BrowserMissing(RuntimeError):
    pass


PACKAGES = ["chromium", "chromium-driver"]


def _located(path: str, name: str) -> str | None:
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else shutil.which(name)


def _install_with_apt() -> str | None:
    """Install the browser packages; None on success, else why it could not be done."""
    if shutil.which("apt-get") is None:
        return "this machine has no apt-get"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]  # -n: fail at once rather than ask for a password
    if prefix and shutil.which("sudo") is None:
        return "not root and no sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(
        f"\nbrowser tests: installing {' '.join(PACKAGES)} with apt-get (once per machine, about a minute)",
        file=sys.__stderr__,
        flush=True,
    )
    wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"]  # another apt run (or test session) may hold it
    for cmd in (
        ["apt-get", *wait_for_lock, "update", "-qq"],
        ["apt-get", *wait_for_lock, "install", "-y", "-qq", *PACKAGES],
    ):
        done = subprocess.run(prefix + cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"`{' '.join(prefix + cmd)}` failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def _find(path: str, name: str) -> str:
    found = _located(path, name)
    if not found:
        why = _install_with_apt()
        found = _located(path, name)
        if not found:
            raise BrowserMissing(
                f"{name} not found at {path} or on PATH and could not be installed "
                f"({why or 'installed, yet still missing'}); {INSTALL_HINT}"
            )
    return found


@contextmanager
def chromium(tmp_path: Path, page_load_timeout: float = 60) -> Iterator:
    """A headless Chromium WebDriver with a fresh profile under tmp_path; quit on exit."""
    binary, driver_path = _find(CHROMIUM, "chromium"), _find(CHROMEDRIVER, "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def wait_for_text(driver, *needles: str, timeout: float = 60, what: str | None = None) -> str:
    """Wait until every needle is in the rendered page text; return that text. On timeout, say what was missing."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(
            lambda d: all(n in page_text(d) for n in needles)
        )
    except TimeoutException:
        text = page_text(driver)
        missing = [n for n in needles if n not in text]
        raise AssertionError(
            f"{what or driver.current_url}: {missing} not shown after {timeout:.0f} s; "
            f"the page says:\n{text[:3000]}"
        ) from None
    return page_text(driver)


def shot(driver, path: Path) -> Path:
    """Screenshot of the visible window, for a person to look at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"could not save a screenshot to {path}"
    return path

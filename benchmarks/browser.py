"""A real headless Chromium for the report page's browser tests and measurements: Debian's `chromium` +
`chromium-driver`, driven by Selenium through that chromedriver (so Selenium Manager downloads nothing).

Selenium rather than Playwright: Playwright drives only the Chromium builds it ships and pins, while
Debian's chromium and chromedriver come from one source package, always the same version, and
Selenium speaks WebDriver to exactly that pair; it also hands back the browser console
(`goog:loggingPrefs`), which the tests read for errors.

`REALFAKE_CHROMIUM` and `REALFAKE_CHROMEDRIVER` point at other binaries. Without the browser, the
driver or Selenium, `browser_missing()` says what is missing and how to install it (the tests skip with
that reason). Selenium is imported inside `launch`: it is a test dependency, not a runtime one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM_ENV, CHROMEDRIVER_ENV = "REALFAKE_CHROMIUM", "REALFAKE_CHROMEDRIVER"
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
# The machine may have no network: without these Chromium stalls on lookups and updates at start.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _binary(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if os.access(os.environ[env], os.X_OK) else None
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def chromium_path() -> str | None:
    return _binary(CHROMIUM_ENV, ("chromium", "chromium-browser"))


def chromedriver_path() -> str | None:
    return _binary(CHROMEDRIVER_ENV, ("chromedriver",))


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (with the install command), or None."""
    missing = []
    if chromium_path() is None:
        missing.append(f"chromium (or set {CHROMIUM_ENV})")
    if chromedriver_path() is None:
        missing.append(f"chromedriver (or set {CHROMEDRIVER_ENV})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        return f"no {', '.join(missing)}: install with `{INSTALL}`"
    return None


def launch(user_data_dir: str | os.PathLike | None = None, window: tuple[int, int] = (1280, 1000)):
    """A headless Chromium with a fresh profile (a temporary folder unless `user_data_dir` is given)
    whose console messages of every level `driver.get_log("browser")` returns."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir or tempfile.mkdtemp(prefix='chromium-profile-')}")
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver_path()), options=options)


def severe_logs(driver) -> list[dict]:
    """The console entries of level SEVERE since the last call (errors, failed loads)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def file_url(path: str | os.PathLike) -> str:
    return Path(path).absolute().as_uri()

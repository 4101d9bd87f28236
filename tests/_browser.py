"""The `browser` fixture: one headless Chromium per test module (see realfake.benchmarks.browser)."""
from __future__ import annotations

import pytest
from realfake.benchmarks.browser import browser_missing, launch


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for a test module; skips, with the install command, where it cannot run."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    driver = launch(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()

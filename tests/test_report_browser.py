"""The report page in a real headless Chromium (see _browser.py; skipped, with the install command,
where Chromium, chromedriver or Selenium is missing): loaded from a file:// URL with no console error,
the right rows on the first page, sorting, filtering by decision and by text, paging, the heat-map
overlay, placeholders, the errors table, and linked thumbnails that load."""
import os

import pytest
from _browser import browser  # noqa: F401  (the fixture)
from _report_helpers import expected_order, make_scores, write_heatmaps
from realfake.benchmarks.browser import file_url, severe_logs
from realfake.jobs.tasks.report import run_report

pytestmark = pytest.mark.browser

N_ROWS = 250  # three pages of 100
WAIT_S = 10


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A 250-row output with a decision column, heat maps for two files, one image gone, 3 errors."""
    root = tmp_path_factory.mktemp("report")
    out, rows = make_scores(root, n=N_ROWS, decision=True, errors=3)
    write_heatmaps(root / "scores.csv.heatmaps", [rows[4]["path"], rows[7]["path"]])
    os.remove(rows[10]["path"])
    return root, out, rows


@pytest.fixture(scope="module")
def page(scored):
    root, out, rows = scored
    return run_report(out, progress=False, workers=1)["report"]


def wait_for(driver, condition, message):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message)


def shown_paths(driver):
    """The full paths of the rows of the files table's current page."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#files-table tbody tr')).map(tr => tr.dataset.path)")


def info(driver, table="files"):
    return driver.find_element("id", f"{table}-info").text


def load(driver, page):
    driver.get(file_url(page))
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "true",
             "the page never rendered its first table page")


def set_text(driver, element_id, text):
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(text)


def select(driver, element_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def test_first_page_and_no_console_errors(browser, page, scored):  # noqa: F811
    _, _, rows = scored
    severe_logs(browser)  # drop anything from an earlier test
    load(browser, page)
    assert severe_logs(browser) == []
    assert shown_paths(browser) == expected_order(rows)[:100]
    assert info(browser) == "rows 1\u2013100 of 250"
    assert browser.find_element("id", "files-pages").text == "3"
    assert browser.find_element("css selector", "#summary").text.count("errors 3") == 1
    # Every row of the page has a thumbnail or a placeholder; the gone file has the placeholder.
    gone = rows[10]["path"]
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('#files-table tbody tr')).map(tr => "
        "[tr.dataset.path, !!tr.querySelector('td.thumb img'), !!tr.querySelector('td.thumb .placeholder')])")
    assert all(has_img != has_placeholder for _, has_img, has_placeholder in cells)
    set_text(browser, "files-text", os.path.basename(gone))
    wait_for(browser, lambda d: shown_paths(d) == [gone], "the text filter did not find the gone file")
    placeholder = browser.find_element("css selector", "#files-table tbody td.thumb .placeholder")
    assert placeholder.get_attribute("title").startswith("no thumbnail: unreadable")


def test_sorting_changes_the_order(browser, page, scored):  # noqa: F811
    _, _, rows = scored
    load(browser, page)
    by_path = sorted(r["path"] for r in rows)
    browser.find_element("css selector", "#files-table th[data-sort=path]").click()
    assert shown_paths(browser) == by_path[:100]
    assert browser.find_element("css selector", "th[data-sort=path]").get_attribute("aria-sort") == "ascending"
    browser.find_element("css selector", "#files-table th[data-sort=path]").click()
    assert shown_paths(browser) == by_path[::-1][:100]
    browser.find_element("css selector", "#files-table th[data-sort=p_fake]").click()
    assert shown_paths(browser) == expected_order(rows)[:100]  # a new column starts highest p_fake first
    browser.find_element("css selector", "#files-table th[data-sort=p_fake]").click()
    lowest_first = [r["path"] for r in sorted(rows, key=lambda r: (r["p_fake"], r["path"]))]
    assert shown_paths(browser) == lowest_first[:100]
    assert severe_logs(browser) == []


def test_filter_by_decision_and_text(browser, page, scored):  # noqa: F811
    _, _, rows = scored
    load(browser, page)
    unknown = [r for r in expected_order(rows) if next(x for x in rows if x["path"] == r)["decision"] == "unknown"]
    assert 0 < len(unknown) < 100
    select(browser, "files-decision", "unknown")
    assert shown_paths(browser) == unknown
    assert info(browser) == f"rows 1\u2013{len(unknown)} of {len(unknown)} (filtered from 250)"
    decisions = browser.execute_script(
        "return Array.from(document.querySelectorAll('#files-table tbody .badge')).map(b => b.textContent)")
    assert set(decisions) == {"unknown"}
    # Text and decision together; the text is a substring of the path, any letter case.
    fake_in_a = [p for p in expected_order(rows) if "/A/img_1" in p
                 and next(x for x in rows if x["path"] == p)["decision"] == "fake"]
    select(browser, "files-decision", "fake")
    set_text(browser, "files-text", "a/IMG_1")
    wait_for(browser, lambda d: shown_paths(d) == fake_in_a, "text + decision filter did not apply")
    set_text(browser, "files-text", "no such file")
    wait_for(browser, lambda d: shown_paths(d) == [], "a filter matching nothing still shows rows")
    assert browser.find_element("id", "files-empty").is_displayed()
    assert severe_logs(browser) == []


def test_paging(browser, page, scored):  # noqa: F811
    _, _, rows = scored
    order = expected_order(rows)
    load(browser, page)
    assert not browser.find_element("id", "files-prev").is_enabled()
    browser.find_element("id", "files-next").click()
    assert shown_paths(browser) == order[100:200]
    assert info(browser) == "rows 101\u2013200 of 250"
    browser.find_element("id", "files-last").click()
    assert shown_paths(browser) == order[200:]
    assert not browser.find_element("id", "files-next").is_enabled()
    browser.find_element("id", "files-prev").click()
    assert shown_paths(browser) == order[100:200]
    select(browser, "files-page-size", "50")
    assert shown_paths(browser) == order[:50] and browser.find_element("id", "files-pages").text == "5"
    box = browser.find_element("id", "files-page")
    box.clear()
    box.send_keys("4\n")
    wait_for(browser, lambda d: shown_paths(d) == order[150:200], "typing a page number did not go there")
    assert severe_logs(browser) == []


def test_heatmap_opens_in_an_overlay(browser, page, scored):  # noqa: F811
    _, _, rows = scored
    load(browser, page)
    assert not browser.find_element("id", "overlay").is_displayed()
    browser.find_element("id", "files-heatmap-only").click()
    with_maps = [p for p in expected_order(rows) if p in (rows[4]["path"], rows[7]["path"])]
    assert shown_paths(browser) == with_maps
    browser.find_element("css selector", "#files-table tbody tr button.heat").click()
    wait_for(browser, lambda d: d.find_element("id", "overlay").is_displayed(), "the overlay did not open")
    wait_for(browser, lambda d: d.execute_script(
        "const img = document.getElementById('overlay-img'); return img.complete && img.naturalWidth"),
        "the heat map did not load")
    assert browser.execute_script("return document.getElementById('overlay-img').naturalWidth") == 48
    assert with_maps[0] in browser.find_element("id", "overlay-caption").text
    from selenium.webdriver.common.keys import Keys

    browser.find_element("tag name", "body").send_keys(Keys.ESCAPE)
    wait_for(browser, lambda d: not d.find_element("id", "overlay").is_displayed(), "Escape did not close it")
    assert severe_logs(browser) == []


def test_errors_table(browser, page, scored):  # noqa: F811
    root, _, _ = scored
    load(browser, page)
    paths = browser.execute_script(
        "return Array.from(document.querySelectorAll('#errors-table tbody tr')).map(tr => tr.dataset.path)")
    assert paths == [str((root / "images" / f"bad_{k}.jpg").absolute()) for k in range(3)]
    reasons = browser.execute_script(
        "return Array.from(document.querySelectorAll('#errors-table tbody td.reason-cell')).map(td => td.textContent)")
    assert reasons == ["corrupt"] * 3
    assert browser.find_element("id", "errors-count").text == "(3)"


def test_linked_thumbnails_load(browser, tmp_path):  # noqa: F811
    out, rows = make_scores(tmp_path, n=12, errors=0)
    result = run_report(out, thumbnails="link", progress=False, workers=1)
    assert result["thumbnails"] == "link"
    severe_logs(browser)
    load(browser, result["report"])
    wait_for(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#files-table td.thumb img'))"
        ".every(img => img.complete && img.naturalWidth > 0)"), "linked thumbnails did not load")
    assert len(shown_paths(browser)) == 12
    assert browser.find_element("id", "errors-empty").text == "No errors: every file was scored."
    assert severe_logs(browser) == []

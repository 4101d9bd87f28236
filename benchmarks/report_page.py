"""The report page (`realfake report`): its size and build time, and its load and interaction times in
headless Chromium, one table out. Also makes the screenshot of docs/img/.

    python benchmarks/report_page.py [--images DIR | --unique 1000] [--rows 10000] [--big-rows 100000]
                                     [--loads 5] [--workers 0] [--work DIR] [--json results.json]
    python benchmarks/report_page.py --screenshot docs/img/report.png [--work DIR]
    python benchmarks/report_page.py --screenshot docs/img/x.png --page SCORES.report.html [--open-heatmap]

Measure: ROWS score rows over generated faces (`--unique` synthetic 256 px faces, or the JPEGs under
--images, each behind ROWS/unique symbolic links so that every row is its own file, as gpu_score.py
does), p_fake from a seeded generator, 1% error rows. Rows of the table:
  embed / link     the page of ROWS rows with thumbnails embedded (data URIs) or linked (files in
                   <report>_files/thumbs/): build seconds (thumbnails included) and the CPU seconds of
                   the build (all threads: what a loaded machine cannot hide), page MB, linked files MB
  big / none       BIG_ROWS rows without thumbnails (the paths need not exist): the size of a page of
                   that many rows and how the table behaves with them
and for each page, in headless Chromium (benchmarks/browser.py launches it): load_ms, the time from
navigation start to the first table page rendered (the performance mark "report-table-rendered"; the
median of --loads loads, with the lowest and highest), and the time of one click (the median of 5): sort
by path, filter by decision, next page (each the page's own handler, timed inside the page).

Screenshot: a small synthetic scoring run made the way a user would (synthetic faces prepared, a tiny
simple_cnn trained 3 epochs at 32 px, an eager engine at the valid split's threshold, `score
--report` over other synthetic faces plus one file of each kind scoring rejects), its page captured
at 1280x1000.

Needs Chromium + chromedriver + selenium (see benchmarks/browser.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from realfake.benchmarks.browser import browser_missing, file_url, launch, severe_logs
from realfake.engines.build import build_engine
from realfake.jobs.tasks.outputs.common import ERROR_COLUMNS, RESULT_COLUMNS, errors_path
from realfake.jobs.tasks.outputs.writers import open_writer
from realfake.jobs.tasks.report import run_report
from realfake.jobs.tasks.report.page import histogram_svg
from realfake.jobs.tasks.score import run_score
from realfake.jobs.tasks.train import run_train
from realfake.pipelines.prepare import prepare
from realfake.pipelines.synth import synth

THRESHOLD = 0.5
ERROR_SHARE = 0.01
WAIT_S = 120

# One click each, timed inside the page (the handler runs synchronously: filter, sort, render); the
# argument is the repeat's number. Sorting alternates path ascending / descending, filtering alternates
# the decisions, "next" walks the pages.
CLICK_SCRIPTS = {
    "sort_ms": "const t = performance.now(); document.querySelector('#files-table th[data-sort=path]').click();"
               " return performance.now() - t;",
    "filter_ms": "const s = document.getElementById('files-decision'); s.value = ['fake', 'real', ''][arguments[0] % 3];"
                 " const t = performance.now(); s.dispatchEvent(new Event('change')); return performance.now() - t;",
    "next_ms": "const t = performance.now(); document.getElementById('files-next').click(); return performance.now() - t;",
}
CLICK_REPEATS = 5


def source_images(args, work: Path) -> list[Path]:
    if args.images:
        images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise SystemExit(f"error: no JPEG or PNG under {args.images}: pass a folder of images")
        return images[:args.unique] if args.unique else images

    root = synth(work / "synth", n=args.unique or 1000, size=256, seed=0, progress=True)
    return sorted(root.rglob("*.jpg"))


def write_scores(out: Path, paths: list[str], seed: int = 0) -> None:
    """A score output of `paths` (p_fake seeded, label by THRESHOLD) and an errors file of ERROR_SHARE."""

    rng = np.random.default_rng(seed)
    p_fake = rng.random(len(paths))
    n_errors = int(len(paths) * ERROR_SHARE)
    with open_writer(out, RESULT_COLUMNS, resume=False) as writer:
        batch = []
        for k, (path, p) in enumerate(zip(paths[n_errors:], p_fake[n_errors:], strict=True)):
            batch.append({"path": path, "size": 1000 + k, "mtime": "2026-01-01T00:00:00.000000+00:00",
                          "p_fake": float(p), "label": "fake" if p >= THRESHOLD else "real",
                          "threshold": THRESHOLD, "engine_id": "bench-engine"})
        writer.write(batch)
    with open_writer(errors_path(out), ERROR_COLUMNS, resume=False) as writer:
        writer.write([{"path": p, "reason": "corrupt", "engine_id": "bench-engine"} for p in paths[:n_errors]])


def linked_rows(images: list[Path], rows: int, folder: Path) -> list[str]:
    """`rows` distinct paths: symbolic links to the images, in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(rows):
        link = folder / f"{k // 1000:03d}" / f"img_{k:06d}{images[k % len(images)].suffix.lower()}"
        link.parent.mkdir(exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(images[k % len(images)].resolve())
        paths.append(str(link))
    return paths


def folder_bytes(folder: str | None) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if folder else 0


def browser_times(driver, page: str, loads: int) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    url = file_url(page)
    times = []
    for _ in range(loads):
        driver.get("about:blank")
        driver.get(url)
        WebDriverWait(driver, WAIT_S).until(
            lambda d: d.execute_script("return document.body.dataset.ready") == "true")
        times.append(driver.execute_script(
            "return performance.getEntriesByName('report-table-rendered')[0].startTime"))
    result = {"load_ms": statistics.median(times), "load_ms_min": min(times), "load_ms_max": max(times)}
    for name, script in CLICK_SCRIPTS.items():
        result[name] = statistics.median(driver.execute_script(script, k) for k in range(CLICK_REPEATS))
    result["console_errors"] = len(severe_logs(driver))
    return result


def measure(args) -> list[dict]:

    reason = browser_missing()
    if reason:
        raise SystemExit(f"error: {reason}")
    work = Path(args.work or tempfile.mkdtemp(prefix="report-bench-"))
    images = source_images(args, work)
    print(f"{len(images)} source images; work folder {work}", file=sys.stderr)
    paths = linked_rows(images, args.rows, work / "links")
    scores = work / "scores.csv"
    write_scores(scores, paths)
    cases = [("embed", scores, "embed"), ("link", scores, "link")]
    if args.big_rows:
        big = work / "big" / "scores.csv"
        big.parent.mkdir(exist_ok=True)
        write_scores(big, [str(work / "big" / f"{k // 1000:03d}" / f"img_{k:06d}.jpg") for k in range(args.big_rows)])
        cases.append(("big", big, "none"))
    histogram_svg([0.5], ["real"], [THRESHOLD])  # matplotlib's first import is not the first case's build time
    results = []
    driver = launch(Path(work) / "chromium-profile")
    try:
        for name, source, mode in cases:
            page = work / f"{name}.html"
            shutil.rmtree(work / f"{name}_files", ignore_errors=True)  # a first build: no thumbnail to reuse
            cpu = time.process_time()
            summary = run_report(source, out=page, thumbnails=mode, workers=args.workers, progress=True)
            cpu = time.process_time() - cpu
            row = {"case": name, "rows": summary["files"], "thumbnails": mode, "build_s": summary["seconds"],
                   "build_cpu_s": cpu,
                   "page_mb": summary["bytes"] / 1e6, "files_mb": folder_bytes(summary["files_dir"]) / 1e6,
                   "kb_per_row": (summary["bytes"] + folder_bytes(summary["files_dir"])) / 1e3 / summary["files"]}
            row.update(browser_times(driver, str(page), args.loads))
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    finally:
        driver.quit()
    return results


def print_table(results: list[dict]) -> None:
    header = (f"{'case':6} {'rows':>8} {'thumbs':>6} {'build_s':>8} {'cpu_s':>7} {'page_MB':>8} {'files_MB':>8} {'KB/row':>7} "
              f"{'load_ms':>8} {'(min-max)':>13} {'sort_ms':>8} {'filter_ms':>9} {'next_ms':>8} {'errors':>6}")
    print(header)
    for r in results:
        spread = f"({r['load_ms_min']:.0f}-{r['load_ms_max']:.0f})"
        print(f"{r['case']:6} {r['rows']:>8,} {r['thumbnails']:>6} {r['build_s']:>8.1f} {r['build_cpu_s']:>7.1f} "
              f"{r['page_mb']:>8.1f} "
              f"{r['files_mb']:>8.1f} {r['kb_per_row']:>7.2f} {r['load_ms']:>8.0f} "
              f"{spread:>13} {r['sort_ms']:>8.1f} "
              f"{r['filter_ms']:>9.1f} {r['next_ms']:>8.1f} {r['console_errors']:>6}")


def screenshot(args) -> None:
    """A report page captured to args.screenshot: args.page, or else the page of a small synthetic scoring
    run made here. With args.open_heatmap, the first file's heat map is opened over it first."""

    reason = browser_missing()
    if reason:
        raise SystemExit(f"error: {reason}")
    page = Path(args.page) if args.page else synthetic_report(args)
    if not page.is_file():
        raise SystemExit(f"error: {page} is not a report page: give the .html that `realfake report` wrote")
    capture(page, Path(args.screenshot), Path(args.work or tempfile.mkdtemp(prefix="report-shot-")),
            open_heatmap=args.open_heatmap)
    print(f"screenshot: {args.screenshot}", file=sys.stderr)


def synthetic_report(args) -> Path:
    """Score synthetic faces with a tiny engine, with --report; the page's path."""
    work = Path(args.work or tempfile.mkdtemp(prefix="report-shot-"))
    # A tiny engine: simple_cnn at 32 px, 3 epochs on 160 synthetic faces, its threshold the valid
    # split's operating point (engine build --threshold auto).
    prepare(synth(work / "train_src", n=160, size=128, seed=0, progress=False), work / "data", seed=0,
            progress=False)
    run = run_train(work / "data", model="simple_cnn", image_size=32, batch_size=16, epochs=3, num_workers=0,
                    loader="torch", progress=False, out=work / "runs", name="tiny")
    engine = build_engine(run["run_dir"], work / "engine", backend="eager", threshold="auto", batch=(1, 8, 64))
    # Files to score: other synthetic faces and one file of each kind scoring rejects.
    incoming = synth(work / "incoming", n=60, size=256, seed=1, progress=False)
    (incoming / "uploads").mkdir()
    (incoming / "uploads" / "notes.jpg").write_text("not a photo\n")  # one file scoring rejects, with the reason
    summary = run_score([str(incoming)], work / "scores.csv", engine=engine, loader="torch", num_workers=0,
                        progress=False, report=True)
    print(f"scored {summary['scored']}, errors {summary['errors']}: {summary['report']}", file=sys.stderr)
    return Path(summary["report"])


def capture(page: Path, out: Path, work: Path, *, open_heatmap: bool) -> None:
    """Load `page` in headless Chromium, check that it logs no errors, and save a screenshot to `out`."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver = launch(work / "chromium-profile", window=(1280, 1000))
    try:
        driver.get(file_url(page))
        WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
        if open_heatmap:
            driver.find_element("id", "files-heatmap-only").click()
            driver.find_element("css selector", "#files-table tbody tr button.heat").click()
            WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
                "const img = document.getElementById('overlay-img'); return img.complete && img.naturalWidth > 0"))
        problems = severe_logs(driver)
        if problems:
            raise SystemExit(f"error: the page logged errors: {problems}")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="a folder of JPEG/PNG images to use instead of synthetic faces")
    parser.add_argument("--unique", type=int, default=0, help="distinct images (default: 1000 synthetic faces; "
                                                              "with --images, all of them)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the embed and link pages")
    parser.add_argument("--big-rows", type=int, default=100_000, help="rows of the page without thumbnails (0: none)")
    parser.add_argument("--loads", type=int, default=5, help="page loads per page (the median is reported)")
    parser.add_argument("--workers", type=int, default=0, help="thumbnail threads (0: the usable cores)")
    parser.add_argument("--work", help="work folder (default: a new temporary folder)")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--screenshot", type=Path, help="make the docs screenshot here instead of measuring")
    parser.add_argument("--page", help="with --screenshot: capture this report page (default: a synthetic run's)")
    parser.add_argument("--open-heatmap", action="store_true",
                        help="with --screenshot: open the first file's heat map before the capture")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args)
        return
    results = measure(args)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

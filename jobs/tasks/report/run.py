"""`run_report`: the job behind `realfake report` and `realfake score --report`."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Literal

from realfake.jobs.service.options import Bounds, check_arguments
from realfake.jobs.service.params import InputPath, OutputPath
from realfake.jobs.tasks.report.heatmaps import (
    HEATMAP_EMBED_MAX_BYTES,
    default_heatmaps,
    heatmap_urls,
    read_heatmap_index,
)
from realfake.jobs.tasks.report.page import (
    PAGE_SIZE,
    build_page_data,
    files_dir,
    files_text,
    histogram_svg,
    render_html,
    resolve_report_out,
    summary_html,
)
from realfake.jobs.tasks.report.scores import decision_of, finite_or_none, read_scores, summarize
from realfake.jobs.tasks.report.thumbnails import EMBED_MAX_ROWS, THUMB_SIZE, THUMBNAIL_MODES, make_thumbnails

log = logging.getLogger(__name__)


def run_report(
    scores: InputPath,
    out: OutputPath | None = None,
    thumbnails: Literal[THUMBNAIL_MODES] = "auto",
    heatmaps: InputPath | None = None,
    thumb_size: Annotated[int, Bounds(min=16, max=512)] = THUMB_SIZE,
    page_size: Annotated[int, Bounds(min=1)] = PAGE_SIZE,
    embed_max_rows: Annotated[int, Bounds(min=0)] = EMBED_MAX_ROWS,
    workers: Annotated[int, Bounds(min=0)] = 0,
    title: str | None = None,
    progress: bool = True,
) -> dict:
    """Write one self-contained HTML page of a scoring run (works offline: no CDN, no network).

    Args:
        scores: A `realfake score` output (.csv, .parquet or .jsonl), or a job's output folder holding
            scores.csv; its errors file OUT.errors.csv is read too when present.
        out: The page (.html); a folder gets report.html. Default: SCORES.report.html beside SCORES.
        thumbnails: auto: embedded in the page up to --embed-max-rows rows (10,000 by default), above that JPEG files in <report>_files/thumbs/ beside the page, linked (move the page and that folder together); embed, link or none to choose.
        heatmaps: Heat maps: a CSV with columns path,heatmap (heat-map PNG/JPEG, relative to the CSV's folder), or a folder holding index.csv. Default: SCORES.heatmaps/ when it exists, else none.
        thumb_size: Longer side of a thumbnail in pixels.
        page_size: Table rows a page shows at first (the page lets you change it).
        embed_max_rows: With thumbnails = auto, the most rows whose thumbnails are embedded.
        workers: Threads making thumbnails; 0: the usable cores.
        title: Page title. Default: the scores file's name.
        progress: Show a progress bar on stderr while thumbnails are made.

    Returns a summary: report (the page), files_dir (linked files, or None), bytes (the page's size),
    files, scored, errors, decisions, thresholds, engine_ids, thumbnails (the mode used), thumbnails_made,
    placeholders, heatmaps, problems, seconds.
    """
    started = time.perf_counter()
    check_arguments(run_report, locals())
    run = read_scores(scores)
    report = resolve_report_out(out, run.scores_file).absolute()
    extra_dir = files_dir(report)
    mode = thumbnails
    if mode == "auto":
        mode = "embed" if len(run.rows) <= embed_max_rows else "link"
    link_prefix = f"{extra_dir.name}/"

    heat_index = Path(heatmaps) if heatmaps is not None else default_heatmaps(run.scores_file)
    heat_urls: dict[str, str] = {}
    problems: list[str] = []
    heat_embedded = True
    if heatmaps is not None or heat_index.exists():
        mapping = read_heatmap_index(heat_index)
        heat_urls, problems, heat_embedded = heatmap_urls(
            mapping, [str(r["path"]) for r in run.rows], extra_dir / "heatmaps", link_prefix + "heatmaps/",
            max_embed_bytes=HEATMAP_EMBED_MAX_BYTES)
        for problem in problems:
            log.warning("heat maps: %s", problem)

    report.parent.mkdir(parents=True, exist_ok=True)
    if mode != "link" and (extra_dir / "thumbs").is_dir():
        shutil.rmtree(extra_dir / "thumbs")  # a folder of an earlier linked report of this page
    thumbs = make_thumbnails(run.rows, mode, extra_dir / "thumbs", size=thumb_size, workers=workers,
                             progress=progress, link_prefix=link_prefix + "thumbs/")
    placeholders = sum(1 for url, reason in thumbs if url is None and reason is not None)

    summary = summarize(run)
    decisions = [decision_of(row) for row in run.rows]
    histogram = histogram_svg([finite_or_none(r.get("p_fake")) for r in run.rows], decisions,
                              summary["thresholds"])
    thumb_note = {"embed": "embedded in the page", "none": "none",
                  "link": f"linked from {link_prefix}thumbs/ beside the page"}[mode]
    if placeholders:
        thumb_note += f"; {files_text(placeholders)} could not be thumbnailed (placeholder with the reason)"
    heat_note = "none"
    if heat_urls:
        heat_note = f"{files_text(len(heat_urls))} " + ("(embedded)" if heat_embedded else
                                                  f"(linked from {link_prefix}heatmaps/)")
    data = build_page_data(run, thumbs, heat_urls, page_size=page_size, thumb_size=thumb_size,
                           thumb_mode=mode, summary=summary)
    page = render_html(data, summary_html(summary, thumb_note, heat_note, problems), histogram,
                       title or f"realfake report: {run.scores_file.name}")
    tmp = report.with_name(report.name + ".tmp")
    tmp.write_text(page, encoding="utf-8", errors="surrogateescape")  # a file name that is not UTF-8: its bytes
    os.replace(tmp, report)
    if heat_embedded and (extra_dir / "heatmaps").is_dir():
        shutil.rmtree(extra_dir / "heatmaps")  # copies of an earlier report of this page
    if extra_dir.is_dir() and not any(extra_dir.iterdir()):
        extra_dir.rmdir()
    result = {
        "report": str(report),
        "files_dir": str(extra_dir) if extra_dir.is_dir() else None,
        "bytes": report.stat().st_size,
        **{k: summary[k] for k in ("scores", "errors_file", "files", "scored", "errors", "decisions",
                                   "thresholds", "engine_ids")},
        "thumbnails": mode,
        "thumbnails_made": sum(1 for url, _ in thumbs if url is not None),
        "placeholders": placeholders,
        "heatmaps": len(heat_urls),
        "problems": problems,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("report of %d files (%d errors) -> %s (%.1f MB)", result["files"], result["errors"], report,
             result["bytes"] / 1e6)
    return result

"""`realfake report`: one self-contained HTML page of a scoring run, readable offline.

The page (see docs/report.md) holds
- a summary: files, scored, errors, threshold, engine id, when OUT was written, files per decision;
- a histogram of p_fake by decision with the threshold marked (matplotlib, inline SVG);
- a table of every scored file (thumbnail, path, p_fake, decision), sortable by p_fake and path,
  filterable by decision and by a substring of the path, shown a page at a time: the rows are one
  JSON array in the page and a small vanilla-JS script (report_assets/report.js) renders the page
  asked for, so 100,000 rows stay usable;
- a heat map in an overlay for the files that have one (see `read_heatmap_index`);
- the files that could not be scored, with the reason (OUT.errors.csv), in a second table.

Decisions: the `label` column of a score output ("real"/"fake"), or a `decision` column
("real"/"fake"/"unknown", with a `reason`) where the output has one; "unknown" is counted on its own,
never as fake.

Thumbnails (THUMB_SIZE px JPEG at THUMB_QUALITY) are embedded in the page as data URIs up to
EMBED_MAX_ROWS rows; above that they are files in `<report>_files/thumbs/` beside the page, linked
(the page and that folder travel together). A file that cannot be thumbnailed (gone, corrupt) gets a
placeholder with the reason, never a failed report.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from realfake.jobs.params import InputPath, OutputPath

log = logging.getLogger(__name__)

# Thumbnails are embedded in the page up to this many rows, linked from <report>_files/thumbs/ above it:
# at about 2.3 KB a thumbnail as base64 (CIPLAB photos, 80 px, quality 70) the page stays near 25 MB.
EMBED_MAX_ROWS = 10_000
THUMB_SIZE = 80
THUMB_QUALITY = 70
PAGE_SIZE = 100
# Heat maps are embedded while their files add up to at most this many bytes, copied beside the page above.
HEATMAP_EMBED_MAX_BYTES = 20 * 2**20
THUMBNAIL_MODES = ("auto", "embed", "link", "none")
REPORT_SUFFIX = ".report.html"  # `score --report` writes OUT + this
FILES_SUFFIX = "_files"  # <report stem>_files/: linked thumbnails and heat maps
HEATMAPS_SUFFIX = ".heatmaps"  # OUT + this: the folder of heat maps found without --heatmaps
HEATMAP_INDEX = "index.csv"
HEATMAP_INDEX_COLUMNS = ("path", "heatmap")
HEATMAP_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
DECISIONS = ("real", "fake", "unknown")  # listed first, in this order; any other value after them
# The columns of one row of the page's JSON array (report.js reads the names from the page).
ROW_FIELDS = ("path", "p_fake", "decision", "reason", "thumb", "thumb_error", "heatmap")
ERROR_FIELDS = ("path", "reason")
HISTOGRAM_BINS = 50
_DATA_ID = "report-data"
_ASSETS = Path(__file__).with_name("report_assets")


# ------------------------------------------------------------------------------------------ reading

@dataclass
class ScoreRun:
    """What the page is built from: the rows of a score output and of its errors file."""

    scores_file: Path
    rows: list[dict]
    errors: list[dict]
    errors_file: Path | None  # None: OUT has no errors file
    has_decision: bool  # the output has a `decision` column (else `label` is the decision)
    written: dt.datetime | None  # last change of OUT or its errors file (local time)
    columns: tuple[str, ...] = field(default=())


def output_columns(path: Path) -> tuple[str, ...]:
    """The columns a score output holds, read from its header (CSV), first row (JSONL) or schema
    (Parquet); an empty JSONL or a missing output has the standard result columns."""
    from realfake.jobs.score_writers import RESULT_COLUMNS, output_format, parts_dir

    fmt = output_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        sources = [path] if path.exists() else sorted(parts_dir(path).glob("part-*.parquet"))
        if not sources:
            return RESULT_COLUMNS
        try:
            return tuple(pq.read_schema(sources[0]).names)
        except Exception as exc:  # pyarrow raises ArrowInvalid for a file that is not Parquet
            raise ValueError(f"{sources[0]} is not a readable Parquet file ({exc}): pass the --out of a "
                             "`realfake score` run") from exc
    if not path.exists():
        return RESULT_COLUMNS
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        first = f.readline()
    if fmt == "csv":
        if not first.strip():
            raise ValueError(f"{path} is empty: pass the --out of a `realfake score` run")
        return tuple(next(csv.reader([first])))
    if not first.strip():
        return RESULT_COLUMNS
    try:
        row = json.loads(first)
    except ValueError as exc:
        raise ValueError(f"{path}: the first line is not JSON ({exc}): pass the --out of a `realfake score` run") from exc
    if not isinstance(row, dict):
        raise ValueError(f"{path}: the first line is not a JSON object: pass the --out of a `realfake score` run")
    return tuple(row)


def read_scores(scores: str | os.PathLike) -> ScoreRun:
    """The rows of a score output (a file, or a job's output folder holding scores.csv) and of its
    errors file. Extra columns (`decision`, `reason`) are kept; `path` and `p_fake` and one of
    `label` / `decision` are required."""
    from realfake.jobs.score_writers import ERROR_COLUMNS, errors_path, parts_dir, read_rows, resolve_output

    scores_file = resolve_output(Path(scores)).absolute()
    if not scores_file.exists() and not parts_dir(scores_file).is_dir():
        raise FileNotFoundError(f"{scores_file} does not exist: pass the --out of a `realfake score` run "
                                "(a results file, or a job's output folder)")
    columns = output_columns(scores_file)
    missing = [c for c in ("path", "p_fake") if c not in columns]
    if missing or not ({"label", "decision"} & set(columns)):
        raise ValueError(f"{scores_file} has columns {','.join(columns)}, not those of a score output (it needs "
                         "path, p_fake and label or decision): pass the --out of a `realfake score` run")
    rows = list(read_rows(scores_file, columns))
    err_file = errors_path(scores_file)
    errors = list(read_rows(err_file, ERROR_COLUMNS)) if err_file.exists() else []
    stamps = [p.stat().st_mtime for p in (scores_file, err_file) if p.exists()]
    written = dt.datetime.fromtimestamp(max(stamps)).astimezone() if stamps else None
    return ScoreRun(scores_file=scores_file, rows=rows, errors=errors,
                    errors_file=err_file if err_file.exists() else None,
                    has_decision="decision" in columns, written=written, columns=columns)


def decision_of(row: dict) -> str:
    """The row's decision: its `decision` column where the output has one, else its `label`."""
    value = row.get("decision")
    if value is None or value == "":
        value = row.get("label")
    return str(value) if value not in (None, "") else "unknown"


def finite_or_none(value) -> float | None:
    """p_fake as a number the page can hold (JSON has no NaN): None when missing or not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def ordered_decisions(found) -> list[str]:
    """The decisions to show: real, fake, unknown first (those present), then any other value."""
    found = set(found)
    return [d for d in DECISIONS if d in found] + sorted(found - set(DECISIONS))


def summarize(run: ScoreRun) -> dict:
    """The figures of the page's summary (also returned by run_report)."""
    decisions = Counter(decision_of(row) for row in run.rows)
    p_fake = sorted(p for p in (finite_or_none(row.get("p_fake")) for row in run.rows) if p is not None)
    thresholds = sorted({finite_or_none(row.get("threshold")) for row in run.rows} - {None})
    engine_ids = sorted({str(r["engine_id"]) for r in run.rows + run.errors if r.get("engine_id")})
    return {
        "scores": str(run.scores_file),
        "errors_file": str(run.errors_file) if run.errors_file else None,
        "written": run.written.isoformat(timespec="seconds") if run.written else None,
        "files": len(run.rows) + len(run.errors),
        "scored": len(run.rows),
        "errors": len(run.errors),
        "decisions": {d: decisions[d] for d in ordered_decisions(decisions)},
        "thresholds": thresholds,
        "engine_ids": engine_ids,
        "p_fake_median": statistics.median(p_fake) if p_fake else None,
        "no_p_fake": len(run.rows) - len(p_fake),
    }


# ------------------------------------------------------------------------------------------ thumbnails

def make_thumbnail(path: str | os.PathLike, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY) -> bytes:
    """A JPEG of the image at `path` whose longer side is `size` px (EXIF orientation applied; JPEGs
    decoded at a reduced DCT scale, see images.load_rgb). Raises InvalidImageError (a ValueError)
    for a file that cannot be decoded, with the reason."""
    from PIL import Image
    from realfake.pipelines.images import load_rgb

    img = load_rgb(path, draft_size=(size, size))
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _thumbnail_or_reason(path: str, size: int, quality: int) -> tuple[bytes | None, str | None]:
    from realfake.pipelines.images import InvalidImageError

    try:
        return make_thumbnail(path, size, quality), None
    except InvalidImageError as exc:
        return None, exc.reason
    except Exception as exc:  # one bad file must not fail the report: it gets a placeholder with the reason
        return None, f"{type(exc).__name__}: {exc}"


def thumbnail_name(row: dict) -> str:
    """File name of a row's linked thumbnail: a hash of path, size and mtime, so that a report made
    again over a grown output reuses the thumbnails of files that did not change."""
    key = "\0".join(str(row.get(k, "")) for k in ("path", "size", "mtime"))
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".jpg"


def make_thumbnails(rows: Sequence[dict], mode: str, thumbs_dir: Path | None, *, size: int = THUMB_SIZE,
                    quality: int = THUMB_QUALITY, workers: int = 0, progress: bool = False,
                    link_prefix: str = "") -> list[tuple[str | None, str | None]]:
    """(URL, None) or (None, reason it could not be made) per row, in order.

    mode "embed": the URL is a data: URI. "link": the thumbnail is written to `thumbs_dir` (kept when
    already there) and the URL is `link_prefix` + its name; files of `thumbs_dir` no row uses are
    removed. "none": (None, None) for every row. PIL decodes and encodes with the GIL released, so
    `workers` threads (0: the usable cores) make them side by side.
    """
    from tqdm import tqdm

    if mode == "none":
        return [(None, None)] * len(rows)
    if mode not in ("embed", "link"):
        raise ValueError(f"unknown thumbnail mode {mode!r}: choose one of {', '.join(THUMBNAIL_MODES)}")
    if mode == "link":
        if thumbs_dir is None:
            raise ValueError("linked thumbnails need a folder to go to")
        thumbs_dir.mkdir(parents=True, exist_ok=True)
        names = [thumbnail_name(row) for row in rows]
        wanted = set(names)
        for old in thumbs_dir.glob("*.jpg"):
            if old.name not in wanted:
                old.unlink()

    def one(index: int) -> tuple[str | None, str | None]:
        path = str(rows[index]["path"])
        if mode == "link":
            target = thumbs_dir / names[index]
            if target.exists():
                return link_prefix + names[index], None
        data, reason = _thumbnail_or_reason(path, size, quality)
        if data is None:
            return None, reason
        if mode == "embed":
            return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"), None
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return link_prefix + names[index], None

    workers = workers or _usable_cores()
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(rows), desc="thumbnails", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        results = []
        for result in pool.map(one, range(len(rows))):
            results.append(result)
            bar.update(1)
    return results


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ heat maps

def default_heatmaps(scores_file: Path) -> Path:
    """Where heat maps are looked for when none are named: OUT.heatmaps/ beside OUT."""
    return Path(str(scores_file) + HEATMAPS_SUFFIX)


def read_heatmap_index(index: str | os.PathLike) -> dict[str, Path]:
    """The heat-map mapping: scored file -> heat-map image.

    `index` is a CSV file, or a folder holding `index.csv`, with a header and (at least) the columns
    `path` (the scored file, as in the score output) and `heatmap` (a PNG or JPEG; a relative path is
    relative to the index file's folder). Other columns are ignored. Relative `path` values are
    relative to the index file's folder too.
    """
    index = Path(index)
    if index.is_dir():
        index = index / HEATMAP_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"heat-map index {index} does not exist: pass a CSV with columns path,heatmap "
                                f"(or a folder holding {HEATMAP_INDEX})")
    base = index.parent
    mapping: dict[str, Path] = {}
    with open(index, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(HEATMAP_INDEX_COLUMNS) <= set(reader.fieldnames):
            raise ValueError(f"{index} has columns {','.join(reader.fieldnames or [])}: a heat-map index needs "
                             f"a header with {','.join(HEATMAP_INDEX_COLUMNS)}")
        for line, entry in enumerate(reader, start=2):
            if not entry.get("path") or not entry.get("heatmap"):
                raise ValueError(f"{index} line {line}: empty path or heatmap: every row names a scored file "
                                 "and its heat-map image")
            mapping[os.path.normpath(base / entry["path"])] = Path(os.path.normpath(base / entry["heatmap"]))
    return mapping


def heatmap_type(path: Path) -> str | None:
    """The MIME type of a heat-map file from its first bytes (PNG or JPEG), or None."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((mime for magic, mime in HEATMAP_TYPES.items() if head.startswith(magic)), None)


def heatmap_urls(mapping: dict[str, Path], paths: Sequence[str], heat_dir: Path, link_prefix: str,
                 max_embed_bytes: int = HEATMAP_EMBED_MAX_BYTES) -> tuple[dict[str, str], list[str], bool]:
    """(scored path -> URL of its heat map, problems, embedded?) for the `paths` that have one.

    The heat maps are embedded as data: URIs while they add up to at most `max_embed_bytes`, else
    copied into `heat_dir` and linked as `link_prefix` + name. A listed heat map that is missing or
    not a PNG/JPEG is left out and named in the problems, as are index entries for files the scores
    do not hold.
    """
    problems: list[str] = []
    wanted = {os.path.normpath(p): p for p in paths}
    found: dict[str, tuple[Path, str]] = {}
    for key, image in mapping.items():
        if key not in wanted:
            continue
        try:
            mime = heatmap_type(image)
        except OSError as exc:
            problems.append(f"{image}: {exc.strerror or exc}")
            continue
        if mime is None:
            problems.append(f"{image}: not a PNG or JPEG")
            continue
        found[wanted[key]] = (image, mime)
    unmatched = [key for key in mapping if key not in wanted]
    if unmatched:
        problems.append(f"{len(unmatched)} heat maps are for files not in the scores, e.g. {unmatched[0]}")
    embed = sum(image.stat().st_size for image, _ in found.values()) <= max_embed_bytes
    urls: dict[str, str] = {}
    if not embed:
        shutil.rmtree(heat_dir, ignore_errors=True)  # heat maps of an earlier report of this page
        heat_dir.mkdir(parents=True)
    for path, (image, mime) in found.items():
        if embed:
            urls[path] = f"data:{mime};base64," + base64.b64encode(image.read_bytes()).decode("ascii")
        else:
            name = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:20] + image.suffix.lower()
            shutil.copyfile(image, heat_dir / name)
            urls[path] = link_prefix + name
    return urls, problems, embed


# ------------------------------------------------------------------------------------------ the page

DECISION_COLOURS = {"real": "#2e7d32", "fake": "#c62828", "unknown": "#9e9e9e"}


def histogram_svg(p_fake: Sequence[float | None], decisions: Sequence[str], thresholds: Sequence[float],
                  bins: int = HISTOGRAM_BINS) -> str:
    """An inline SVG (matplotlib) of the p_fake histogram, stacked by decision, thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_decision: dict[str, list[float]] = {}
    for p, decision in zip(p_fake, decisions, strict=True):
        if p is not None:
            by_decision.setdefault(decision, []).append(p)
    names = ordered_decisions(by_decision)
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(7.5, 2.6))
        if names:
            palette = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
            ax.hist([by_decision[n] for n in names], bins=bins, range=(0.0, 1.0), stacked=True,
                    label=[f"{n} ({len(by_decision[n])})" for n in names],
                    color=[DECISION_COLOURS.get(n) or next(palette) for n in names])
        else:
            ax.text(0.5, 0.5, "no p_fake to show", ha="center", va="center", transform=ax.transAxes)
        for threshold in thresholds:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
            ax.annotate(f"threshold {threshold:.3g}", (threshold, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(4, -12), textcoords="offset points", fontsize=8)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("p_fake")
        ax.set_ylabel("files")
        if names:
            ax.legend(loc="upper center", frameon=False, ncols=len(names), bbox_to_anchor=(0.5, 1.2))
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def build_page_data(run: ScoreRun, thumbs: Sequence[tuple[str | None, str | None]],
                    heatmaps: dict[str, str], *, page_size: int = PAGE_SIZE, thumb_size: int = THUMB_SIZE,
                    thumb_mode: str = "none", summary: dict | None = None) -> dict:
    """The JSON the page's script reads: rows as arrays of ROW_FIELDS (in the scores' order; the
    script sorts), errors as arrays of ERROR_FIELDS, and what the controls need."""
    rows = []
    for row, (thumb, thumb_error) in zip(run.rows, thumbs, strict=True):
        path = str(row["path"])
        rows.append([path, finite_or_none(row.get("p_fake")), decision_of(row),
                     str(row.get("reason") or "") or None, thumb, thumb_error, heatmaps.get(path)])
    paths = [str(r["path"]) for r in run.rows + run.errors]
    return {
        "row_fields": list(ROW_FIELDS),
        "error_fields": list(ERROR_FIELDS),
        "rows": rows,
        "errors": [[str(e["path"]), str(e.get("reason") or "")] for e in run.errors],
        "decisions": ordered_decisions(row[2] for row in rows),
        "has_decision_column": run.has_decision,
        "root": common_folder(paths),
        "page_size": page_size,
        "thumb_size": thumb_size,
        "thumb_mode": thumb_mode,
        "summary": summary or {},
    }


def common_folder(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (the table shows paths below it); "" when none is shared."""
    if not paths:
        return ""
    try:
        folder = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # relative and absolute paths mixed
        return ""
    return "" if folder in ("", os.sep) else folder


def _files(n: int) -> str:
    return f"{n:,} file" + ("" if n == 1 else "s")


def _summary_html(summary: dict, thumb_note: str, heat_note: str, problems: Sequence[str]) -> str:
    e = html.escape
    decisions = summary["decisions"]
    scored = summary["scored"] or 1
    decision_items = "".join(
        f'<li><span class="badge badge-{e(name)}">{e(name)}</span> {count:,} '
        f'<span class="muted">({100 * count / scored:.1f}%)</span></li>'
        for name, count in decisions.items()) or "<li>none</li>"
    thresholds = ", ".join(f"{t:.4g}" for t in summary["thresholds"]) or "-"
    if len(summary["thresholds"]) > 1:
        thresholds += " (several)"
    median = summary["p_fake_median"]
    items = [
        ("scores", f'<code>{e(summary["scores"])}</code>'),
        ("written", e(summary["written"] or "-")),
        ("files", f'{summary["files"]:,} &mdash; scored {summary["scored"]:,}, errors {summary["errors"]:,}'),
        ("decisions", f'<ul class="decisions">{decision_items}</ul>'),
        ("threshold", e(thresholds)),
        ("engine", e(", ".join(summary["engine_ids"]) or "-")),
        ("median p_fake", "-" if median is None else f"{median:.4f}"
         + (f' <span class="muted">({summary["no_p_fake"]:,} rows without p_fake)</span>'
            if summary["no_p_fake"] else "")),
        ("thumbnails", e(thumb_note)),
        ("heat maps", e(heat_note)),
    ]
    rows = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in items)
    notes = "".join(f"<li>{e(p)}</li>" for p in problems)
    notes_html = f'<ul class="problems" id="report-problems">{notes}</ul>' if problems else ""
    return f'<table class="summary" id="summary">{rows}</table>{notes_html}'


def render_html(data: dict, summary_html: str, histogram: str, title: str) -> str:
    """The page: the template of report_assets/ with its CSS, script, summary, histogram and data inlined."""
    # In a <script> element only "</script" or "<!--" could end or confuse it: with every "<" escaped,
    # no file name can. ensure_ascii keeps file names that are not valid UTF-8 (surrogate escapes) writable.
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    parts = {
        "TITLE": html.escape(title),
        "CSS": (_ASSETS / "report.css").read_text(encoding="utf-8"),
        "JS": (_ASSETS / "report.js").read_text(encoding="utf-8"),
        "SUMMARY": summary_html,
        "HISTOGRAM": histogram,
        "DATA_ID": _DATA_ID,
        "DATA": payload,
    }
    template = (_ASSETS / "report.html").read_text(encoding="utf-8")
    # One pass over the template: inserted text (file names in DATA) is never searched for placeholders.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], template)


def page_data(report: str | os.PathLike) -> dict:
    """The JSON a written report page holds (what its script renders): for tests and tools."""
    text = Path(report).read_text(encoding="utf-8")
    match = re.search(rf'<script type="application/json" id="{_DATA_ID}">(.*?)</script>', text, re.S)
    if match is None:
        raise ValueError(f"{report} is not a realfake report page: it holds no {_DATA_ID} script")
    return json.loads(match.group(1))


def report_path(scores_file: str | os.PathLike) -> Path:
    """Where `score --report` writes the page of OUT: OUT.report.html."""
    return Path(str(scores_file) + REPORT_SUFFIX)


def resolve_report_out(out: str | os.PathLike | None, scores_file: Path) -> Path:
    """The page to write: OUT when it ends in .html/.htm, OUT/report.html for a folder or a path without
    suffix (a job's own output folder), SCORES.report.html when OUT is None."""
    if out is None:
        return report_path(scores_file)
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm") and not out.is_dir():
        return out
    if out.is_dir() or out.suffix == "":
        return out / "report.html"
    raise ValueError(f"--out {out} must end in .html (or be a folder, which gets report.html)")


def files_dir(report: Path) -> Path:
    """The folder beside a page for its linked files: report.html -> report_files/."""
    return report.with_name(report.stem + FILES_SUFFIX)


# ------------------------------------------------------------------------------------------ the job

def run_report(
    scores: InputPath,
    out: OutputPath | None = None,
    thumbnails: Literal["auto", "embed", "link", "none"] = "auto",
    heatmaps: InputPath | None = None,
    thumb_size: int = THUMB_SIZE,
    page_size: int = PAGE_SIZE,
    embed_max_rows: int = EMBED_MAX_ROWS,
    workers: int = 0,
    title: str | None = None,
    progress: bool = True,
) -> dict:
    """Write one self-contained HTML page of a scoring run (works offline: no CDN, no network).

    Args:
        scores: A `realfake score` output (.csv, .parquet or .jsonl), or a job's output folder holding
            scores.csv; its errors file OUT.errors.csv is read too when present.
        out: The page (.html); a folder gets report.html. Default: SCORES.report.html beside SCORES.
        thumbnails: auto (embedded up to embed_max_rows rows, else linked), embed (data URIs in the
            page), link (JPEG files in <report>_files/thumbs/ beside the page) or none.
        heatmaps: Heat-map index: a CSV with columns path,heatmap, or a folder holding index.csv.
            Default: SCORES.heatmaps/ when it exists, else no heat maps.
        thumb_size: Longer side of a thumbnail in pixels.
        page_size: Table rows a page shows at first.
        embed_max_rows: With thumbnails = auto, the most rows whose thumbnails are embedded.
        workers: Threads making thumbnails; 0: the usable cores.
        title: Page title. Default: the scores file's name.
        progress: Show a progress bar while thumbnails are made.

    Returns a summary: report (the page), files_dir (linked files, or None), bytes (the page's size),
    files, scored, errors, decisions, thresholds, engine_ids, thumbnails (the mode used), thumbnails_made,
    placeholders, heatmaps, problems, seconds.
    """
    started = time.perf_counter()
    if thumbnails not in THUMBNAIL_MODES:
        raise ValueError(f"unknown --thumbnails {thumbnails!r}: choose one of {', '.join(THUMBNAIL_MODES)}")
    if not 16 <= thumb_size <= 512:
        raise ValueError(f"--thumb-size {thumb_size} must be between 16 and 512 pixels")
    if page_size < 1:
        raise ValueError(f"--page-size {page_size} must be at least 1")
    if embed_max_rows < 0:
        raise ValueError(f"--embed-max-rows {embed_max_rows} must be 0 or more")
    if workers < 0:
        raise ValueError(f"--workers {workers} must be 0 (the usable cores) or more")
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
        thumb_note += f"; {_files(placeholders)} could not be thumbnailed (placeholder with the reason)"
    heat_note = "none"
    if heat_urls:
        heat_note = f"{_files(len(heat_urls))} " + ("(embedded)" if heat_embedded else
                                                  f"(linked from {link_prefix}heatmaps/)")
    data = build_page_data(run, thumbs, heat_urls, page_size=page_size, thumb_size=thumb_size,
                           thumb_mode=mode, summary=summary)
    page = render_html(data, _summary_html(summary, thumb_note, heat_note, problems), histogram,
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

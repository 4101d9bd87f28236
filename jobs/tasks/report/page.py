"""The HTML page: the template of assets/ with its CSS, script, summary, histogram and data inlined."""
from __future__ import annotations

import html
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from realfake.jobs.tasks.report.scores import ScoreRun, decision_of, finite_or_none, ordered_decisions
from realfake.jobs.tasks.report.thumbnails import THUMB_SIZE
from realfake.pipelines.plotting import pyplot

PAGE_SIZE = 100
REPORT_SUFFIX = ".report.html"  # `score --report` writes OUT + this
FILES_SUFFIX = "_files"  # <report stem>_files/: linked thumbnails and heat maps
# The columns of one row of the page's JSON array (report.js reads the names from the page).
ROW_FIELDS = ("path", "p_fake", "decision", "reason", "thumb", "thumb_error", "heatmap")
ERROR_FIELDS = ("path", "reason")
HISTOGRAM_BINS = 50
_DATA_ID = "report-data"
_ASSETS = Path(__file__).with_name("assets")


DECISION_COLOURS = {"real": "#2e7d32", "fake": "#c62828", "unknown": "#9e9e9e"}


def histogram_svg(p_fake: Sequence[float | None], decisions: Sequence[str], thresholds: Sequence[float],
                  bins: int = HISTOGRAM_BINS) -> str:
    """An inline SVG (matplotlib) of the p_fake histogram, stacked by decision, thresholds marked."""
    plt = pyplot()

    by_decision: dict[str, list[float]] = {}
    for p, decision in zip(p_fake, decisions, strict=True):
        if p is not None:
            by_decision.setdefault(decision, []).append(p)
    names = ordered_decisions(by_decision)
    with plt.rc_context({"svg.fonttype": "none", "font.size": 9}):
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


def files_text(n: int) -> str:
    return f"{n:,} file" + ("" if n == 1 else "s")


def summary_html(summary: dict, thumb_note: str, heat_note: str, problems: Sequence[str]) -> str:
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

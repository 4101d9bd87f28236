"""`realfake report`: one self-contained HTML page of a scoring run, readable offline.

The page (see docs/report.md) holds
- a summary: files, scored, errors, threshold, engine id, when OUT was written, files per decision;
- a histogram of p_fake by decision with the threshold marked (matplotlib, inline SVG);
- a table of every scored file (thumbnail, path, p_fake, decision), sortable by p_fake and path,
  filterable by decision and by a substring of the path, shown a page at a time: the rows are one
  JSON array in the page and a small vanilla-JS script (assets/report.js) renders the page
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
from realfake.jobs.tasks.report.run import run_report

__all__ = ["run_report"]

"""`realfake report`: the data the page is built from (rows, decisions, counts, thumbnails embedded or
linked, placeholders, heat maps, errors), every output format, bad input, the CLI, `score --report`
and the job kind. The page itself is tested in a real browser in test_report_browser.py."""
import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from _report_helpers import ENGINE_ID, UNKNOWN_REASON, make_scores, write_heatmaps
from click.testing import CliRunner
from PIL import Image
from realfake.jobs.cli import main
from realfake.jobs.tasks.report import run as report_module
from realfake.jobs.tasks.report import run_report
from realfake.jobs.tasks.report.heatmaps import read_heatmap_index
from realfake.jobs.tasks.report.page import ROW_FIELDS, histogram_svg, page_data
from realfake.jobs.tasks.report.scores import read_scores

QUIET = dict(progress=False, workers=1)
F = {name: i for i, name in enumerate(ROW_FIELDS)}


def rows_by_path(data):
    return {row[F["path"]]: row for row in data["rows"]}


def decode_data_uri(url):
    header, payload = url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_every_row_and_error_of_each_format(tmp_path, fmt):
    out, rows = make_scores(tmp_path, n=12, fmt=fmt, errors=3)
    result = run_report(out, **QUIET)
    data = page_data(result["report"])
    assert result["report"] == str(out) + ".report.html"
    assert [r[F["path"]] for r in data["rows"]] == [r["path"] for r in rows]
    assert [r[F["p_fake"]] for r in data["rows"]] == [r["p_fake"] for r in rows]
    assert [r[F["decision"]] for r in data["rows"]] == [r["label"] for r in rows]
    assert [e[0] for e in data["errors"]] == [str((tmp_path / "images" / f"bad_{k}.jpg").absolute()) for k in range(3)]
    assert {e[1] for e in data["errors"]} == {"corrupt"}
    n_fake = sum(r["label"] == "fake" for r in rows)
    assert result["decisions"] == {"real": 12 - n_fake, "fake": n_fake}
    assert (result["files"], result["scored"], result["errors"]) == (15, 12, 3)
    assert result["thresholds"] == [0.5] and result["engine_ids"] == [ENGINE_ID]
    assert data["root"] == str((tmp_path / "images").absolute())


def test_decision_column_counts_unknown_apart(tmp_path):
    out, rows = make_scores(tmp_path, n=40, decision=True)
    result = run_report(out, **QUIET)
    data = page_data(result["report"])
    expected = {d: sum(r["decision"] == d for r in rows) for d in ("real", "fake", "unknown")}
    assert expected["unknown"] > 0 and expected["fake"] > 0
    assert result["decisions"] == expected  # unknown never counted as fake, though its label may be fake
    assert data["decisions"] == ["real", "fake", "unknown"]
    for row, source in zip(data["rows"], rows, strict=True):
        assert row[F["decision"]] == source["decision"]
        assert row[F["reason"]] == (UNKNOWN_REASON if source["decision"] == "unknown" else None)
    html = open(result["report"], encoding="utf-8").read()
    assert f'badge-unknown">unknown</span> {expected["unknown"]}' in html  # the summary's count


def test_decision_column_in_parquet(tmp_path):
    out, rows = make_scores(tmp_path, n=10, fmt="parquet", decision=True)
    data = page_data(run_report(out, **QUIET)["report"])
    assert [r[F["decision"]] for r in data["rows"]] == [r["decision"] for r in rows]


def test_thumbnails_embedded_up_to_the_row_limit(tmp_path):
    out, rows = make_scores(tmp_path, n=6, image_size=120)
    result = run_report(out, embed_max_rows=6, thumb_size=64, **QUIET)
    data = page_data(result["report"])
    assert result["thumbnails"] == "embed" and result["files_dir"] is None
    assert result["thumbnails_made"] == 6
    for row in data["rows"]:
        thumb = decode_data_uri(row[F["thumb"]])
        assert thumb.format == "JPEG" and max(thumb.size) == 64
    assert not (tmp_path / "scores.csv.report_files").exists()


def test_thumbnails_linked_above_the_row_limit_and_reused(tmp_path):
    out, rows = make_scores(tmp_path, n=7)
    result = run_report(out, embed_max_rows=6, **QUIET)
    data = page_data(result["report"])
    files_dir = tmp_path / "scores.csv.report_files"
    assert result["thumbnails"] == "link" and result["files_dir"] == str(files_dir)
    urls = [row[F["thumb"]] for row in data["rows"]]
    assert all(url.startswith("scores.csv.report_files/thumbs/") for url in urls)
    assert len(set(urls)) == 7
    for url in urls:
        assert Image.open(tmp_path / url).format == "JPEG"  # relative to the page's folder
    # Made again: the thumbnails of unchanged files are kept, those no row uses are removed.
    stale = files_dir / "thumbs" / "0123456789abcdef0123.jpg"
    stale.write_bytes(b"old")
    kept = tmp_path / urls[0]
    before = kept.stat().st_mtime_ns
    run_report(out, embed_max_rows=6, **QUIET)
    assert not stale.exists() and kept.stat().st_mtime_ns == before
    # Embedded again: the linked folder goes.
    run_report(out, thumbnails="embed", **QUIET)
    assert not files_dir.exists()


def test_no_thumbnails(tmp_path):
    out, _ = make_scores(tmp_path, n=4)
    result = run_report(out, thumbnails="none", **QUIET)
    data = page_data(result["report"])
    assert result["thumbnails"] == "none" and result["thumbnails_made"] == 0 and result["placeholders"] == 0
    assert {row[F["thumb"]] for row in data["rows"]} == {None} and data["thumb_mode"] == "none"


def test_gone_and_corrupt_files_get_a_placeholder(tmp_path):
    out, rows = make_scores(tmp_path, n=5)
    os.remove(rows[1]["path"])
    with open(rows[3]["path"], "r+b") as f:
        f.truncate(200)
    result = run_report(out, **QUIET)
    data = rows_by_path(page_data(result["report"]))
    assert result["placeholders"] == 2 and result["thumbnails_made"] == 3
    assert data[rows[1]["path"]][F["thumb"]] is None
    assert data[rows[1]["path"]][F["thumb_error"]].startswith("unreadable")
    assert data[rows[3]["path"]][F["thumb_error"]] == "truncated"
    assert data[rows[0]["path"]][F["thumb_error"]] is None
    # The rows themselves are all there, with their scores.
    assert data[rows[1]["path"]][F["p_fake"]] == rows[1]["p_fake"]


def test_heatmaps_found_beside_the_scores(tmp_path):
    out, rows = make_scores(tmp_path, n=8)
    with_maps = [rows[2]["path"], rows[5]["path"]]
    write_heatmaps(tmp_path / "scores.csv.heatmaps", with_maps)
    result = run_report(out, **QUIET)
    data = rows_by_path(page_data(result["report"]))
    assert result["heatmaps"] == 2 and result["problems"] == []
    for path, row in data.items():
        if path in with_maps:
            assert row[F["heatmap"]].startswith("data:image/png;base64,")
        else:
            assert row[F["heatmap"]] is None


def test_heatmaps_linked_above_the_size_limit(tmp_path, monkeypatch):
    out, rows = make_scores(tmp_path, n=4)
    index = write_heatmaps(tmp_path / "explain", [rows[0]["path"]]) / "index.csv"
    monkeypatch.setattr(report_module, "HEATMAP_EMBED_MAX_BYTES", 10)
    result = run_report(out, out=tmp_path / "page.html", heatmaps=index, thumbnails="none", **QUIET)
    url = rows_by_path(page_data(result["report"]))[rows[0]["path"]][F["heatmap"]]
    assert url.startswith("page_files/heatmaps/") and url.endswith(".png")
    assert (tmp_path / url).read_bytes() == (tmp_path / "explain" / "heat_0.png").read_bytes()
    # Under the limit again: embedded, and the copies are gone.
    monkeypatch.setattr(report_module, "HEATMAP_EMBED_MAX_BYTES", 10**9)
    run_report(out, out=tmp_path / "page.html", heatmaps=index, thumbnails="none", **QUIET)
    assert not (tmp_path / "page_files").exists()


def test_heatmap_problems_are_reported_not_fatal(tmp_path):
    out, rows = make_scores(tmp_path, n=4)
    folder = write_heatmaps(tmp_path / "maps", [rows[0]["path"], rows[1]["path"], "/nowhere/else.jpg"])
    os.remove(folder / "heat_1.png")
    (folder / "index.csv").write_text((folder / "index.csv").read_text() + f"{rows[2]['path']},index.csv\n")
    result = run_report(out, heatmaps=folder, **QUIET)
    assert result["heatmaps"] == 1
    problems = " | ".join(result["problems"])
    assert "heat_1.png" in problems and "not a PNG or JPEG" in problems
    assert "1 heat maps are for files not in the scores, e.g. /nowhere/else.jpg" in problems
    assert "heat_1.png" in open(result["report"], encoding="utf-8").read()  # listed on the page


def test_heatmap_index_format(tmp_path):
    (tmp_path / "index.csv").write_text("path,heatmap,method\n/data/x.jpg,maps/x.png,gradcam\nrel.jpg,/abs/y.png,\n")
    assert read_heatmap_index(tmp_path) == {"/data/x.jpg": tmp_path / "maps" / "x.png",
                                            str(tmp_path / "rel.jpg"): Path("/abs/y.png")}
    (tmp_path / "bad.csv").write_text("file,map\na,b\n")
    with pytest.raises(ValueError, match="needs a header with path,heatmap"):
        read_heatmap_index(tmp_path / "bad.csv")
    (tmp_path / "empty_cell.csv").write_text("path,heatmap\na,\n")
    with pytest.raises(ValueError, match="line 2: empty path or heatmap"):
        read_heatmap_index(tmp_path / "empty_cell.csv")
    with pytest.raises(FileNotFoundError, match="columns path,heatmap"):
        read_heatmap_index(tmp_path / "missing.csv")


def test_no_errors_file_and_no_rows(tmp_path):
    out, _ = make_scores(tmp_path, n=0, errors=0)
    os.remove(str(out) + ".errors.csv")
    result = run_report(out, **QUIET)
    data = page_data(result["report"])
    assert data["rows"] == [] and data["errors"] == [] and result["errors_file"] is None
    assert (result["files"], result["decisions"]) == (0, {})


def test_job_output_folder_and_out_folder(tmp_path):
    job_out = tmp_path / "job" / "out"
    job_out.mkdir(parents=True)
    out, rows = make_scores(job_out, n=3)
    assert out.name == "scores.csv"
    result = run_report(job_out, out=tmp_path / "reports", **QUIET)
    assert result["report"] == str(tmp_path / "reports" / "report.html")
    assert len(page_data(result["report"])["rows"]) == 3


def test_file_names_cannot_break_the_page(tmp_path):
    out, rows = make_scores(tmp_path, n=2)
    # Folders "x<" and "script><!--{{DATA}}": the path holds "</script>", "<!--" and a placeholder.
    odd = tmp_path / "images" / "x<" / "script><!--{{DATA}}" / "y.jpg"
    odd.parent.mkdir(parents=True)
    os.rename(rows[0]["path"], odd)
    text = out.read_text().replace(rows[0]["path"], f'"{odd}"')
    out.write_text(text)
    result = run_report(out, **QUIET)
    html = open(result["report"], encoding="utf-8").read()
    assert "</script>" in str(odd) and html.count("</script>") == 2  # the data and code scripts' ends only
    assert page_data(result["report"])["rows"][0][F["path"]] == str(odd)


def test_file_name_that_is_not_utf8(tmp_path):
    from _score_helpers import save_image
    from realfake.jobs.tasks.outputs.common import RESULT_COLUMNS
    from realfake.jobs.tasks.outputs.writers import open_writer

    folder = tmp_path / "images"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: a surrogate escape in the str
    path = save_image(folder / name, np.random.default_rng(0))
    out = tmp_path / "scores.csv"
    with open_writer(out, RESULT_COLUMNS, resume=False) as writer:
        writer.write([{"path": str(path), "size": 1, "mtime": "m", "p_fake": 0.9, "label": "fake",
                       "threshold": 0.5, "engine_id": ENGINE_ID}])
    result = run_report(out, **QUIET)
    row = page_data(result["report"])["rows"][0]
    assert row[F["path"]] == str(path) and row[F["thumb"]] is not None  # the file was found and thumbnailed


def test_page_loads_nothing_from_the_network(tmp_path):
    out, _ = make_scores(tmp_path, n=3)
    html = open(run_report(out, **QUIET)["report"], encoding="utf-8").read()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "<script src" not in html and 'rel="stylesheet"' not in html
    assert "@import" not in html


def test_histogram_marks_the_threshold():
    svg = histogram_svg([0.1, 0.2, 0.9, None], ["real", "real", "fake", "unknown"], [0.42])
    assert svg.startswith("<svg") and "threshold 0.42" in svg
    assert "real (2)" in svg and "fake (1)" in svg
    assert "no p_fake to show" in histogram_svg([], [], [])


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass the --out of a `realfake score` run"):
        run_report(tmp_path / "nothing.csv", **QUIET)
    (tmp_path / "other.csv").write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match="not those of a score output .*: pass the --out of a `realfake score` run$"):
        run_report(tmp_path / "other.csv", **QUIET)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        run_report(tmp_path / "empty.csv", **QUIET)
    out, _ = make_scores(tmp_path / "run", n=2)
    with pytest.raises(ValueError, match="must end in .html"):
        run_report(out, out=tmp_path / "page.pdf", **QUIET)
    with pytest.raises(ValueError, match="unknown --thumbnails"):
        run_report(out, thumbnails="inline", **QUIET)


def test_cli(tmp_path):
    out, rows = make_scores(tmp_path, n=5, errors=1)
    result = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "r.html"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "files 6  scored 5  errors 1" in result.output and f"report: {tmp_path / 'r.html'}" in result.output
    assert len(page_data(tmp_path / "r.html")["rows"]) == 5
    result = CliRunner().invoke(main, ["report", str(out), "--json", "--no-progress", "--thumbnails", "none"])
    assert json.loads(result.output)["report"] == str(out) + ".report.html"
    (tmp_path / "other.csv").write_text("name\n")
    result = CliRunner().invoke(main, ["report", str(tmp_path / "other.csv")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "other.csv" in result.output
    help_text = CliRunner().invoke(main, ["report", "--help"]).output
    assert "10,000" in help_text and "_files/thumbs/" in help_text


def test_report_job_kind(tmp_path):
    from realfake.jobs.service.spec import call_kwargs, load_kind, validate_spec

    out, _ = make_scores(tmp_path, n=3)
    spec = validate_spec("report", {"scores": str(out), "thumbnails": "none"})
    assert spec.default_out == "out"  # a job's own folder when the spec names none
    kwargs = call_kwargs("report", {**spec.args, "out": str(tmp_path / "job_out"), "progress": False})
    result = load_kind("report")(**kwargs)
    assert result["report"] == str(tmp_path / "job_out" / "report.html")
    with pytest.raises(ValueError, match="must be one of"):
        validate_spec("report", {"scores": str(out), "thumbnails": "inline"})
    assert validate_spec("score", {"folders": [str(tmp_path)], "report": True}).args["report"] is True


def test_read_scores_keeps_the_reason_of_a_decision(tmp_path):
    out, rows = make_scores(tmp_path, n=3, fmt="jsonl", decision=True)
    run = read_scores(out)
    assert run.rows[0]["reason"] == rows[0]["reason"]
    assert run.scores_file == out.absolute() and run.written is not None


@pytest.mark.slow
def test_score_report_option(tmp_path):
    from _score_helpers import build_engines, make_good_folder, write_bad_files

    engine, _ = build_engines(tmp_path / "engines")
    folder = tmp_path / "incoming"
    make_good_folder(folder, n=6)
    write_bad_files(folder / "bad")
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["score", str(folder), "--engine", str(engine), "--out", str(out),
                                       "--loader", "torch", "--num-workers", "0", "--no-progress", "--report"])
    assert result.exit_code == 1, result.output  # 1: some files are in the errors file
    page = tmp_path / "scores.csv.report.html"
    assert f"report:  {page}" in result.output
    data = page_data(page)
    assert len(data["rows"]) == 6 and len(data["errors"]) == len(write_bad_files(tmp_path / "scratch"))
    assert all(row[F["thumb"]] for row in data["rows"])

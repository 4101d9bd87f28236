"""Do the heat maps point at the edit? Face-region boxes on a map, the evidence inside them, and the
pointing game against CIPLAB's edit codes, with a chance baseline, per difficulty group."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from realfake.engines.explain.methods import Evidence
from realfake.pipelines.prepare import EDIT_REGIONS, edited_regions
from realfake.pipelines.pseudo_fakes import REGIONS

TOP_SHARE = 0.10  # spread: share of the map's mass in this fraction of its hottest cells
GROUPS = ("easy", "mid", "hard")


def region_boxes(content_box: Sequence[float]) -> dict[str, tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) on the canvas of each EDIT_REGIONS prior, inside the image's content box."""

    x0, y0, x1, y1 = (float(v) for v in content_box)
    w, h = x1 - x0, y1 - y0
    boxes = {}
    for name in EDIT_REGIONS:
        cx, cy, rx, ry = REGIONS[name]
        boxes[name] = (x0 + (cx - rx) * w, y0 + (cy - ry) * h, x0 + (cx + rx) * w, y0 + (cy + ry) * h)
    return boxes


def _overlap(cells: int, cell_px: float, low: float, high: float) -> np.ndarray:
    edges = np.arange(cells + 1, dtype=np.float64) * cell_px
    return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0.0, None)


def region_evidence(values: np.ndarray, cell_px: float, box: Sequence[float]) -> tuple[float, float]:
    """(highest, area-weighted mean) evidence of the cells a box overlaps (NaN cells left out; NaN when
    the box covers none)."""
    x0, y0, x1, y1 = box
    weights = np.outer(_overlap(values.shape[0], cell_px, y0, y1), _overlap(values.shape[1], cell_px, x0, x1))
    inside = (weights > 0) & ~np.isnan(values)
    if not inside.any():
        return math.nan, math.nan
    return float(values[inside].max()), float((values[inside] * weights[inside]).sum() / weights[inside].sum())


def normalized(values: np.ndarray) -> np.ndarray:
    """The map min-max scaled to [0, 1] over its cells (NaN kept; a flat map is all 0)."""
    low, high = np.nanmin(values), np.nanmax(values)
    if not np.isfinite(low) or high <= low:
        return np.where(np.isnan(values), np.nan, 0.0)
    return (values - low) / (high - low)


def spread(values: np.ndarray, top: float = TOP_SHARE) -> tuple[float, float]:
    """(normalized entropy in [0, 1], share of the mass in the hottest `top` of the cells) of the
    min-max-normalized map as a distribution over its cells. 1 and ~`top`: spread evenly; 0 and 1: one cell."""
    mass = normalized(values)
    mass = mass[~np.isnan(mass)].ravel()
    total = mass.sum()
    if mass.size < 2 or total <= 0:
        return math.nan, math.nan
    p = mass / total
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / math.log(mass.size))
    k = max(1, math.ceil(top * mass.size))
    return entropy, float(np.sort(mass)[::-1][:k].sum() / total)


def hottest(scores: Sequence[float]) -> list[int]:
    """Indices of the highest scores (all of them on a tie); NaN counts as lowest."""
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).all():
        return list(range(len(s)))
    s = np.where(np.isnan(s), -np.inf, s)
    return [int(i) for i in np.flatnonzero(s == s.max())]


def hit_credit(scores: Sequence[float], code: Sequence[int]) -> float:
    """Share of the hottest regions (a tie shares the credit, as a random pick among them would) that
    the code says were edited."""
    top = hottest(scores)
    return sum(int(code[i]) for i in top) / len(top)


def image_record(evidence: Evidence, content_box: Sequence[float], *, path: str, label: int | None,
                 group: str | None, threshold: float) -> dict:
    """What the pointing game needs of one image (and what the evidence file lists per region)."""
    boxes = region_boxes(content_box)
    scaled = normalized(evidence.values)
    regions = {}
    for name in EDIT_REGIONS:
        top, mean = region_evidence(evidence.values, evidence.cell_px, boxes[name])
        regions[name] = {"box_px": [round(v, 2) for v in boxes[name]], "max": top, "mean": mean,
                         "mean_normalized": region_evidence(scaled, evidence.cell_px, boxes[name])[1]}
    code = edited_regions(path, 1 if label is None else label)  # unlabelled: the name's code, if any
    entropy, top_share = spread(evidence.values)
    return {"path": path, "label": label, "group": group, "code": None if code is None else list(code),
            "p_fake": evidence.p_fake, "called_fake": evidence.p_fake >= threshold, "regions": regions,
            "hottest_by_max": [EDIT_REGIONS[i] for i in hottest([regions[n]["max"] for n in EDIT_REGIONS])],
            "hottest_by_mean": [EDIT_REGIONS[i] for i in hottest([regions[n]["mean"] for n in EDIT_REGIONS])],
            "region_head": evidence.region_head, "entropy": entropy, "top_share": top_share}


def _mean_ci(values: Sequence[float]) -> dict:
    """Mean with a normal-approximation 95% interval (NaN where fewer than two values)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": int(x.size)}
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(x.size)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(x.size)}


def _mean(values: Iterable[float]) -> float | None:
    x = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(x)) if x else None


def pointing_game(records: Sequence[Mapping[str, Any]]) -> dict:
    """The pointing-game table of image records (`image_record`) of one engine.

    Returns {"fakes": {subset: {group: row}}, "reals": row, "fakes_spread": row} for subsets "coded"
    (every fake whose name carries a code with at least one edited region) and "informative" (1 to 3 of
    the 4 regions edited: a fake with all four coded is a hit whatever the map); groups easy, mid,
    hard and all. A row holds n, the hit rates by the highest and by the mean evidence of a region,
    chance (coded / 4), hit - chance with a 95% interval, the hit rate of the region head (where there
    is one), the hit rate among the fakes the engine called fake, the best single region always named
    (in hindsight, on these images), and the mean normalized evidence inside coded and uncoded regions.
    """
    fakes = [r for r in records if r["label"] == 1 and r["code"] is not None and sum(r["code"]) > 0]
    uncoded_fakes = sum(1 for r in records if r["label"] == 1 and (r["code"] is None or sum(r["code"]) == 0))
    reals = [r for r in records if r["label"] == 0]

    def row(items: Sequence[Mapping[str, Any]]) -> dict:
        if not items:
            return {"n": 0}
        by_max = [hit_credit([r["regions"][n]["max"] for n in EDIT_REGIONS], r["code"]) for r in items]
        by_mean = [hit_credit([r["regions"][n]["mean"] for n in EDIT_REGIONS], r["code"]) for r in items]
        chance = [sum(r["code"]) / len(EDIT_REGIONS) for r in items]
        called = [h for h, r in zip(by_max, items, strict=True) if r["called_fake"]]
        out = {"n": len(items), "hit_max": float(np.mean(by_max)), "hit_mean": float(np.mean(by_mean)),
               "chance": float(np.mean(chance)),
               "hit_max_minus_chance": _mean_ci([h - c for h, c in zip(by_max, chance, strict=True)]),
               "n_called_fake": len(called), "hit_max_called_fake": _mean(called),
               "best_fixed_region": max(((name, float(np.mean([r["code"][i] for r in items])))
                                         for i, name in enumerate(EDIT_REGIONS)), key=lambda t: t[1])}
        with_head = [r for r in items if r.get("region_head")]
        if with_head:
            out["hit_region_head"] = float(np.mean([hit_credit([r["region_head"][n] for n in EDIT_REGIONS], r["code"])
                                                    for r in with_head]))
            out["n_region_head"] = len(with_head)
        inside, outside = [], []
        for r in items:
            coded = [r["regions"][n]["mean_normalized"] for i, n in enumerate(EDIT_REGIONS) if r["code"][i]]
            other = [r["regions"][n]["mean_normalized"] for i, n in enumerate(EDIT_REGIONS) if not r["code"][i]]
            if other:
                inside.append(_mean(coded))
                outside.append(_mean(other))
        pairs = [(a, b) for a, b in zip(inside, outside, strict=True) if a is not None and b is not None]
        out["evidence_coded"] = _mean(a for a, _ in pairs)
        out["evidence_uncoded"] = _mean(b for _, b in pairs)
        out["evidence_coded_minus_uncoded"] = _mean_ci([a - b for a, b in pairs])
        return out

    table: dict[str, Any] = {"fakes": {}, "fakes_without_code": uncoded_fakes}
    for subset, keep in (("coded", lambda r: True), ("informative", lambda r: sum(r["code"]) < len(EDIT_REGIONS))):
        chosen = [r for r in fakes if keep(r)]
        table["fakes"][subset] = {group: row([r for r in chosen if r["group"] == group]) for group in GROUPS}
        table["fakes"][subset]["all"] = row(chosen)

    def spread_row(items):
        return {"n": len(items), "entropy": _mean(r["entropy"] for r in items),
                "top_share": _mean(r["top_share"] for r in items)}

    table["reals"] = spread_row(reals)
    table["fakes_spread"] = spread_row([r for r in records if r["label"] == 1])
    return table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _interval(ci: Mapping[str, Any], scale: float = 100.0, unit: str = " pp", digits: int = 1) -> str:
    if ci.get("mean") is None:
        return "–"
    if ci.get("low") is None:
        return f"{scale * ci['mean']:+.{digits}f}{unit}"
    return (f"{scale * ci['mean']:+.{digits}f}{unit} [{scale * ci['low']:+.{digits}f}, "
            f"{scale * ci['high']:+.{digits}f}]")


def format_pointing_md(results: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """Markdown of `pointing_game` tables, one block of rows per engine (results: {"name", "method",
    "table"}) plus the chance and best-fixed-region rows."""
    lines = [f"# {title}", ""]
    for subset, what in (("coded", "every fake whose name codes at least one edited region"),
                         ("informative", "fakes with 1-3 of the 4 regions coded (all four coded is a hit whatever "
                                         "the map)")):
        lines += [f"## Pointing game: {what}", "",
                  "Hit: the hottest of the four region boxes (by its highest / mean evidence) is an edited one. "
                  "Chance: a region drawn at random (coded / 4 per image).", "",
                  "| evidence | group | n | hit (max) | hit (mean) | hit - chance (max), 95% CI | region head | "
                  "called fake: n, hit (max) |",
                  "|---|---|---:|---:|---:|---|---:|---|"]
        first = next(iter(results), None)
        for result in results:
            for group, r in result["table"]["fakes"][subset].items():
                if not r.get("n"):
                    continue
                head = _pct(r.get("hit_region_head")) if "hit_region_head" in r else "–"
                lines.append(f"| {result['name']} ({result['method']}) | {group} | {r['n']} | {_pct(r['hit_max'])} | "
                             f"{_pct(r['hit_mean'])} | {_interval(r['hit_max_minus_chance'])} | {head} | "
                             f"{r['n_called_fake']}, {_pct(r['hit_max_called_fake'])} |")
        if first is not None:
            for group, r in first["table"]["fakes"][subset].items():
                if r.get("n"):
                    lines.append(f"| chance (random region) | {group} | {r['n']} | {_pct(r['chance'])} | "
                                 f"{_pct(r['chance'])} | – | – | – |")
            for group, r in first["table"]["fakes"][subset].items():
                if r.get("n"):
                    name, rate = r["best_fixed_region"]
                    lines.append(f"| always {name} (best single region, in hindsight) | {group} | {r['n']} | "
                                 f"{_pct(rate)} | {_pct(rate)} | – | – | – |")
        lines.append("")
    lines += ["## Evidence inside the edited regions against the others",
              "", "Per image, the map min-max scaled to [0, 1]; mean over a region's box; fakes with 1-3 regions coded.",
              "", "| evidence | group | n | coded regions | uncoded regions | difference, 95% CI |", "|---|---|---:|---:|---:|---|"]
    for result in results:
        for group, r in result["table"]["fakes"]["informative"].items():
            if r.get("n"):
                coded, other = r["evidence_coded"], r["evidence_uncoded"]
                lines.append(f"| {result['name']} ({result['method']}) | {group} | {r['evidence_coded_minus_uncoded']['n']} "
                             f"| {'–' if coded is None else f'{coded:.3f}'} | {'–' if other is None else f'{other:.3f}'} "
                             f"| {_interval(r['evidence_coded_minus_uncoded'], 1.0, '', 3)} |")
    lines += ["", "## Spread of the heat maps",
              "", f"Normalized entropy of the min-max-scaled map as a distribution over its cells (1 = even) and the "
              f"share of its mass in the hottest {int(TOP_SHARE * 100)}% of the cells.", "",
              "| evidence | images | n | entropy | top-10% share |", "|---|---|---:|---:|---:|"]
    for result in results:
        for key, what in (("reals", "reals"), ("fakes_spread", "fakes")):
            r = result["table"][key]
            if r["n"]:
                lines.append(f"| {result['name']} ({result['method']}) | {what} | {r['n']} | {r['entropy']:.3f} | "
                             f"{_pct(r['top_share'])} |")
    return "\n".join(lines) + "\n"

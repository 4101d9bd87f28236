"""`realfake data prepare`: turn an image folder (or a .zip of one) into a validated, split manifest.

SRC can be
- the public archive's layout, `real_and_fake_face/training_real` + `training_fake`, wrapped in any
  number of folders (`archive/real_and_fake_face/...`, `real_and_fake_face_detection/real_and_fake_face/...`);
- any folder with one sub-folder per class, named `real` and `fake` (case-insensitive);
- a `.zip` of either, extracted into `OUT/images/` (DALI reads files from disk).
The data set root is the shallowest folder holding both class folders. The public Kaggle archive
holds the data twice (`real_and_fake_face/` and `real_and_fake_face_detection/real_and_fake_face/`):
the shallowest copy is used and the other is named in prepare.json (`skipped_copies`) and printed.
Hidden folders and `__MACOSX` are not searched.

Every file under a class folder (at any depth, whatever its extension, hidden files included) is
fully decoded; what cannot be used goes to `rejected.csv` with a reason -- nothing is skipped
silently. Identical files (sha256) are kept, reported as duplicate groups, and always land in the
same split, because the split is drawn over unique contents; identical content under both labels is
a label conflict and every copy is rejected.

The split is stratified and seeded: per class, by difficulty group where file names carry one
(CIPLAB's easy_/mid_/hard_ prefixes), with sklearn's `train_test_split` (test first, then valid out
of the rest). Units are ordered by content hash before splitting, so the split does not depend on
where the folder lives or what the files are called. `train` must be > 0; `valid` and `test` may be
0 (e.g. a final model trained on everything), but a non-zero fraction gets at least one unique image
of each class.

Outputs (see manifest.py): manifest.csv (rows sorted by path), prepare.json, rejected.csv. Nothing
in them depends on the time or on thread scheduling: the same inputs and seed give identical files.

One module, though long: finding, validating, de-duplicating and splitting share the manifest
row and the rejection reasons, and each part is a plain function of the one before.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from realfake.pipelines.images import InvalidImageError, check_image
from realfake.pipelines.manifest import (
    MANIFEST_NAME,
    REJECTED_NAME,
    SPLITS,
    SUMMARY_NAME,
    ManifestRow,
    manifest_sha256,
    write_manifest,
)
from realfake.pipelines.provenance import sha256_file, versions
from realfake.pipelines.spec import CLASS_NAMES
from realfake.pipelines.walk import IMAGE_EXTENSIONS
from tqdm import tqdm

# scikit-learn is imported where the split is drawn: the loaders read this module's EDIT_REGIONS, and every
# scoring process would otherwise pay for its import.

DEFAULT_SPLIT = (0.8, 0.1, 0.1)  # the report's train / valid / test
EXTRACT_DIR = "images"  # OUT/images: where a zip is extracted
_EXTRACT_MARKER = ".realfake-extracted.json"  # says OUT/images is ours to replace on a rerun
# Folder names that say which class a folder holds (lower case) -> label.
CLASS_DIR_NAMES = {"real": 0, "training_real": 0, "fake": 1, "training_fake": 1}
_GROUP_RE = re.compile(r"^(easy|mid|hard)_\d+_\d+", re.IGNORECASE)
# CIPLAB fake names end in a code of four bits: which of these regions the editor changed, in this
# order (left and right as the image shows them: easy_104_1000.jpg has its image-left eye replaced).
EDIT_REGIONS = ("left_eye", "right_eye", "nose", "mouth")
_EDIT_CODE_RE = re.compile(r"_([01]{4})\.[^.]+$")
_SKIP_DIRS = ("__MACOSX",)


@dataclass
class PrepareSummary:
    """What `prepare` did; `to_dict()` is the content of prepare.json."""

    source: str
    source_kind: str  # folder | zip
    data_root: str  # the folder holding the class folders (after extraction for a zip)
    class_dirs: dict[str, str]
    seed: int
    split: dict[str, float]
    stratified_by: dict[str, str]  # class -> "class+group" (easy/mid/hard kept in proportion) | "class"
    files: dict[str, int]  # files found per class folder
    accepted: dict[str, int]  # accepted files per class
    counts: dict[str, dict[str, int]]  # split -> class -> files (and "total")
    # images.encoding_of -> class -> accepted files; and per class, the files whose encoding no file of
    # the other class has (a compression cue that gives the label away without looking at the edit)
    encodings: dict[str, dict[str, int]]
    class_only_encodings: dict[str, int]
    unique_counts: dict[str, dict[str, int]]  # split -> class -> unique contents
    rejected: list[dict[str, str]]  # {"path", "reason"}
    duplicate_groups: list[list[str]]  # paths with identical content (same label), each group sorted
    skipped_copies: list[str]  # other copies of the data set found in SRC and not used
    ignored_dirs: list[str]  # sub-folders next to the class folders that are not a class
    created_with: dict[str, str]
    manifest_sha256: str
    data_dir: str
    manifest_path: str = field(default="")
    rejected_path: str = field(default="")
    summary_path: str = field(default="")

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    @property
    def duplicate_files(self) -> int:
        """Files beyond the first of each duplicate group."""
        return sum(len(g) - 1 for g in self.duplicate_groups)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("data_dir", "manifest_path", "rejected_path", "summary_path"):
            d.pop(key)  # prepare.json must not depend on where OUT is (only the data it describes)
        d["rejected_count"] = self.rejected_count
        d["duplicate_files"] = self.duplicate_files
        return d

    def __str__(self) -> str:
        sizes = ", ".join(f"{s} {self.counts[s]['total']}" for s in SPLITS)
        return (f"{sum(self.accepted.values())} images ({', '.join(f'{c} {n}' for c, n in self.accepted.items())}); "
                f"{self.rejected_count} rejected; {len(self.duplicate_groups)} duplicate groups; "
                f"split {sizes}; manifest {self.manifest_path}")


# --------------------------------------------------------------------------------------------------
# Arguments


def parse_split(text: str | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' (or a sequence) -> validated (train, valid, test) fractions."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(f"--split {text!r} is not 3 numbers: write it like 0.8,0.1,0.1") from None
    else:
        values = tuple(float(v) for v in text)
    if len(values) != 3:
        raise ValueError(f"--split needs 3 fractions (train,valid,test), got {len(values)}: e.g. 0.8,0.1,0.1")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--split fractions must be >= 0, got {values}: e.g. 0.8,0.1,0.1")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"--split fractions must sum to 1, got {values} (sum {sum(values):g}): e.g. 0.8,0.1,0.1")
    if values[0] == 0:
        raise ValueError("--split gives train 0: training needs images; e.g. 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Finding the data


def _visible_subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in _SKIP_DIRS)


def _class_subdirs(folder: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = defaultdict(list)
    for sub in _visible_subdirs(folder):
        label = CLASS_DIR_NAMES.get(sub.name.lower())
        if label is not None:
            found[label].append(sub)
    return found


def find_class_dirs(root: Path) -> tuple[Path, dict[int, Path], list[Path]]:
    """The data set root under `root`, its class folders {label: folder}, and other copies found.

    Raises ValueError naming the problem and the fix when there is no usable layout.
    """
    label_name = dict(enumerate(CLASS_NAMES))
    if root.name.lower() in CLASS_DIR_NAMES:
        raise ValueError(
            f"{root} is a single class folder: pass the folder that holds both "
            f"{label_name[0]}/ and {label_name[1]}/ (or training_real/ and training_fake/)"
        )
    # Breadth-first, so the shallowest data set wins; sorted, so ties are reported the same way.
    candidates: list[tuple[int, Path]] = []
    one_class: list[Path] = []
    queue = [(0, root)]
    while queue:
        depth, folder = queue.pop(0)
        classes = _class_subdirs(folder)
        if len(classes) == 2:
            candidates.append((depth, folder))
            continue  # do not look for data sets inside a data set's class folders
        for dirs in classes.values():
            one_class.extend(dirs)
        queue.extend((depth + 1, sub) for sub in _visible_subdirs(folder))

    if not candidates:
        if one_class:
            only = one_class[0]
            other = label_name[1 - CLASS_DIR_NAMES[only.name.lower()]]
            raise ValueError(
                f"only one class found: {only} has no {other}/ (or training_{other}/) folder next to it; "
                f"add it -- a data set needs both real and fake images"
            )
        top = root
        while True:  # unwrap single-folder wrappers to say something useful about the layout
            subs = _visible_subdirs(top)
            if len(subs) == 1 and not any(p.is_file() for p in top.iterdir()):
                top = subs[0]
                continue
            break
        subs = _visible_subdirs(top)
        if len(subs) == 2:
            names = ", ".join(f"{s.name}/" for s in subs)
            raise ValueError(
                f"{top} has two sub-folders ({names}) whose names do not say which class they hold: "
                f"rename them real/ and fake/"
            )
        raise ValueError(
            f"no class folders found in {root}: expected real_and_fake_face/training_real + training_fake "
            f"(the public archive) or one sub-folder per class named real/ and fake/"
        )
    best_depth = candidates[0][0]
    shallowest = [p for d, p in candidates if d == best_depth]
    if len(shallowest) > 1:
        names = ", ".join(str(p) for p in shallowest)
        raise ValueError(f"{len(shallowest)} data sets found at the same depth in {root} ({names}): pass one of them")
    data_root = shallowest[0]
    class_dirs: dict[int, Path] = {}
    for label, dirs in sorted(_class_subdirs(data_root).items()):
        if len(dirs) > 1:
            names = ", ".join(f"{d.name}/" for d in dirs)
            raise ValueError(f"{data_root} has {len(dirs)} folders for class {label_name[label]} ({names}): keep one")
        class_dirs[label] = dirs[0]
    skipped = [p for _, p in candidates if p != data_root]
    return data_root, class_dirs, skipped


def _safe_member_path(dest: Path, name: str) -> Path:
    """Where zip member `name` goes under `dest`; refuses names that would escape it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ValueError(f"zip member {name!r} points outside the extraction folder: refusing to extract this zip")
    target = (dest / Path(*pure.parts)).resolve()
    if not target.is_relative_to(dest.resolve()):  # e.g. through a symlink already on disk
        raise ValueError(f"zip member {name!r} points outside the extraction folder: refusing to extract this zip")
    return target


def extract_zip(zip_path: Path, out: Path) -> Path:
    """Extract `zip_path` into OUT/images (replacing an earlier extraction by prepare); return that folder."""
    dest = out / EXTRACT_DIR
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{zip_path} is not a readable zip archive ({exc}): re-download it") from None
    with zf:
        members = [m for m in zf.infolist()
                   if not m.is_dir() and PurePosixPath(m.filename).parts[0] not in _SKIP_DIRS]
        if not any(m.filename.lower().endswith(IMAGE_EXTENSIONS) for m in members):
            raise ValueError(
                f"{zip_path} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                f"zip the folder with real/ and fake/ image folders (or pass the folder itself)"
            )
        if dest.exists():
            if not (dest / _EXTRACT_MARKER).is_file():
                raise ValueError(f"{dest} exists and was not made by `data prepare`: choose another --out or move it")
            shutil.rmtree(dest)  # an earlier extraction: start clean so no stale file is picked up
        dest.mkdir(parents=True)
        targets = [(m, _safe_member_path(dest, m.filename)) for m in members]  # check all before writing
        try:
            for member, target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{zip_path} is damaged ({exc}): re-download it") from None
    (dest / _EXTRACT_MARKER).write_text(json.dumps({"zip": str(zip_path)}) + "\n", encoding="utf-8")
    return dest


def group_of(path: Path, label: int) -> str:
    """CIPLAB difficulty group from a fake's file name (easy_116_111.jpg -> easy); "real" for reals."""
    if label == 0:
        return "real"
    m = _GROUP_RE.match(path.name)
    return m.group(1).lower() if m else ""


def edited_regions(path: str | Path, label: int) -> tuple[int, ...] | None:
    """Which EDIT_REGIONS a file's editor changed, from CIPLAB's file names (mid_103_0011.jpg -> nose
    and mouth): all 0 for a real image, None for a fake whose name carries no four-bit code."""
    if label == 0:
        return (0,) * len(EDIT_REGIONS)
    m = _EDIT_CODE_RE.search(Path(path).name)
    return tuple(int(bit) for bit in m.group(1)) if m else None


# --------------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class _Checked:
    path: Path
    label: int
    sha256: str | None
    width: int = 0
    height: int = 0
    encoding: str = ""
    reason: str = ""


def _check(item: tuple[Path, int]) -> _Checked:
    path, label = item
    try:
        info = check_image(path)  # first: an unreadable file gets its reason from here
        digest = sha256_file(path)
    except InvalidImageError as exc:
        return _Checked(path, label, None, reason=exc.reason)
    except OSError as exc:
        return _Checked(path, label, None, reason=f"unreadable: {exc.strerror or exc}")
    return _Checked(path, label, digest, info.width, info.height, info.encoding)


def _list_files(class_dir: Path) -> list[Path]:
    # Every file, hidden ones included: junk such as .DS_Store is rejected (and so listed), not
    # ignored. Symlinked files are recorded by their target (a broken link is rejected as unreadable).
    return sorted(p.resolve() for p in class_dir.rglob("*") if p.is_file() or (p.is_symlink() and not p.is_dir()))


def _validate(items: list[tuple[Path, int]], *, progress: bool, workers: int | None) -> list[_Checked]:
    # PIL decodes and hashlib hashes with the GIL released, so a few threads overlap decoding;
    # map() keeps the input order, so nothing downstream depends on scheduling. The bar shows on
    # a terminal only (disable=None), so logs and captured output stay clean.
    n_workers = workers or min(8, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(tqdm(pool.map(_check, items), total=len(items), desc="validating", unit="img",
                         disable=None if progress else True))


def _resolve_duplicates(checked: list[_Checked]) -> tuple[list[_Checked], list[dict[str, str]], list[list[str]]]:
    """(accepted files, rejected {path, reason}, duplicate groups): identical content under one label
    is kept and grouped; under both labels it is a conflict, and every copy is rejected."""
    rejected = [{"path": str(c.path), "reason": c.reason} for c in checked if c.sha256 is None]
    by_sha: dict[str, list[_Checked]] = defaultdict(list)
    for c in checked:
        if c.sha256 is not None:
            by_sha[c.sha256].append(c)
    accepted: list[_Checked] = []
    duplicate_groups: list[list[str]] = []
    for copies in by_sha.values():
        if len({c.label for c in copies}) > 1:
            for c in copies:
                other = next(o for o in copies if o.label != c.label)
                rejected.append({"path": str(c.path),
                                 "reason": f"label conflict: same content as {other.path} ({CLASS_NAMES[other.label]})"})
            continue
        accepted.extend(copies)
        if len(copies) > 1:
            duplicate_groups.append(sorted(str(c.path) for c in copies))
    rejected.sort(key=lambda r: r["path"])
    duplicate_groups.sort()
    return accepted, rejected, duplicate_groups


# --------------------------------------------------------------------------------------------------
# Split


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(n_valid, n_test) for one class: rounded half up, >= 1 wherever the fraction is > 0, and
    leaving at least one for train (the caller checks that n is big enough for all three)."""
    _, f_valid, f_test = fractions
    n_test = max(1, int(n * f_test + 0.5)) if f_test > 0 else 0
    n_valid = max(1, int(n * f_valid + 0.5)) if f_valid > 0 else 0
    while n_valid + n_test > n - 1:  # tiny classes with a large valid+test share
        if n_valid >= n_test and n_valid > (1 if f_valid > 0 else 0):
            n_valid -= 1
        elif n_test > (1 if f_test > 0 else 0):
            n_test -= 1
        else:
            break
    return n_valid, n_test


def _can_stratify(strata: list[str], n_out: int) -> bool:
    """sklearn's conditions for a stratified split taking n_out items out of len(strata)."""
    counts = defaultdict(int)
    for s in strata:
        counts[s] += 1
    n_classes = len(counts)
    return (n_classes > 1 and min(counts.values()) >= 2
            and n_out >= n_classes and len(strata) - n_out >= n_classes)


def _take(units: list[str], strata: list[str], n_out: int, seed: int, stratify: bool):
    from sklearn.model_selection import train_test_split

    if n_out == 0:
        return units, strata, [], False
    use = stratify and _can_stratify(strata, n_out)
    keep, out, keep_strata, _ = train_test_split(
        units, strata, test_size=n_out, random_state=seed, shuffle=True, stratify=strata if use else None,
    )
    return keep, keep_strata, out, use


def split_units(
    units_by_label: dict[int, list[tuple[str, str]]], fractions: tuple[float, float, float], seed: int,
) -> tuple[dict[str, str], dict[str, str]]:
    """{sha: split} for unique contents given per label as (sha, group); and how each class was stratified."""
    assignment: dict[str, str] = {}
    stratified: dict[str, str] = {}
    for label, units in sorted(units_by_label.items()):
        units = sorted(units)  # by content hash: independent of paths and of the walk order
        shas = [u[0] for u in units]
        groups = [u[1] for u in units]
        n_valid, n_test = _split_sizes(len(units), fractions)
        by_group = len(set(groups)) > 1
        rest, rest_groups, test, used_test = _take(shas, groups, n_test, seed, by_group)
        train, _, valid, used_valid = _take(rest, rest_groups, n_valid, seed, by_group)
        used = [u for n, u in ((n_test, used_test), (n_valid, used_valid)) if n]
        stratified[CLASS_NAMES[label]] = "class+group" if used and all(used) else "class"
        for name, part in (("train", train), ("valid", valid), ("test", test)):
            for sha in part:
                assignment[sha] = name
    return assignment, stratified


def _min_unique_per_class(fractions: tuple[float, float, float]) -> int:
    # Enough unique images that each split with a non-zero fraction gets one and train keeps one.
    return 1 + sum(1 for f in fractions[1:] if f > 0)


# --------------------------------------------------------------------------------------------------
# Writing


def encoding_audit(accepted: list[_Checked]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """(encoding -> class -> files, class -> files whose encoding appears in that class only)."""
    by_encoding: dict[str, dict[str, int]] = defaultdict(lambda: {name: 0 for name in CLASS_NAMES})
    for c in accepted:
        by_encoding[c.encoding][CLASS_NAMES[c.label]] += 1
    class_only = {name: 0 for name in CLASS_NAMES}
    for per_class in by_encoding.values():
        present = [name for name, n in per_class.items() if n]
        if len(present) == 1:
            class_only[present[0]] += per_class[present[0]]
    return dict(sorted(by_encoding.items())), class_only


def _write_rejected(data_dir: Path, rejected: list[dict[str, str]]) -> Path:
    path = data_dir / REJECTED_NAME
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "reason"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rejected)
    return path


# --------------------------------------------------------------------------------------------------


def prepare(
    src: str | os.PathLike,
    out: str | os.PathLike,
    split: tuple[float, float, float] | str = DEFAULT_SPLIT,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> PrepareSummary:
    """Validate, de-duplicate and split the images of SRC into OUT/manifest.csv (+ prepare.json, rejected.csv)."""
    fractions = parse_split(split)
    src_path = Path(src).expanduser()
    if not src_path.exists():
        raise ValueError(f"{src_path} not found: give the data folder or its .zip "
                         f"(e.g. real_and_fake_face/ with training_real/ and training_fake/)")
    src_path = src_path.resolve()
    out_path = Path(out).expanduser().resolve()
    if src_path.is_file():
        if not zipfile.is_zipfile(src_path):
            raise ValueError(f"{src_path} is a file but not a zip archive: give the data folder or its .zip")
        out_path.mkdir(parents=True, exist_ok=True)
        search_root, source_kind = extract_zip(src_path, out_path), "zip"
    else:
        search_root, source_kind = src_path, "folder"
    data_root, class_dirs, skipped = find_class_dirs(search_root)
    ignored = [str(p) for p in _visible_subdirs(data_root) if p not in class_dirs.values()]

    items: list[tuple[Path, int]] = []
    files_per_class: dict[str, int] = {}
    for label, class_dir in sorted(class_dirs.items()):
        files = _list_files(class_dir)
        if not files:
            raise ValueError(f"class folder {class_dir} is empty: put the {CLASS_NAMES[label]} images there")
        files_per_class[CLASS_NAMES[label]] = len(files)
        items.extend((p, label) for p in files)

    checked = _validate(items, progress=progress, workers=workers)
    accepted, rejected, duplicate_groups = _resolve_duplicates(checked)

    out_path.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST_NAME, SUMMARY_NAME):  # never leave an old manifest next to a new rejected.csv
        (out_path / stale).unlink(missing_ok=True)
    rejected_path = _write_rejected(out_path, rejected)

    # Enough usable images per class?
    units_by_label: dict[int, list[tuple[str, str]]] = defaultdict(list)
    seen: set[str] = set()
    for c in sorted(accepted, key=lambda c: str(c.path)):
        if c.sha256 not in seen:
            seen.add(c.sha256)
            # a duplicate group's stratum is that of its first path (copies share a label anyway)
            units_by_label[c.label].append((c.sha256, group_of(c.path, c.label)))
    need = _min_unique_per_class(fractions)
    for label, class_dir in sorted(class_dirs.items()):
        have = len(units_by_label.get(label, []))
        if have < need:
            n_rej = sum(1 for c in checked if c.label == label and c.sha256 is None)
            raise ValueError(
                f"class {CLASS_NAMES[label]} ({class_dir}) has {have} usable unique image(s), {n_rej} rejected "
                f"(see {rejected_path}); the split {','.join(f'{f:g}' for f in fractions)} needs at least {need}: "
                f"add images or change --split"
            )

    assignment, stratified = split_units(units_by_label, fractions, seed)
    rows = sorted(
        (ManifestRow(path=str(c.path), label=c.label, class_name=CLASS_NAMES[c.label], sha256=c.sha256,
                     split=assignment[c.sha256], group=group_of(c.path, c.label), width=c.width, height=c.height)
         for c in accepted),
        key=lambda r: r.path,
    )
    manifest_path = write_manifest(out_path, rows)

    counts = {s: {name: 0 for name in CLASS_NAMES} for s in SPLITS}
    unique = {s: {name: 0 for name in CLASS_NAMES} for s in SPLITS}
    for r in rows:
        counts[r.split][r.class_name] += 1
    for label, units in units_by_label.items():
        for sha, _ in units:
            unique[assignment[sha]][CLASS_NAMES[label]] += 1
    for table in (counts, unique):
        for s in SPLITS:
            table[s]["total"] = sum(table[s][name] for name in CLASS_NAMES)

    encodings, class_only = encoding_audit(accepted)
    summary = PrepareSummary(
        source=str(src_path), source_kind=source_kind, data_root=str(data_root),
        class_dirs={CLASS_NAMES[label]: str(d) for label, d in sorted(class_dirs.items())},
        seed=seed, split=dict(zip(SPLITS, fractions, strict=True)), stratified_by=stratified,
        files=files_per_class,
        accepted={name: sum(1 for r in rows if r.class_name == name) for name in CLASS_NAMES},
        counts=counts, unique_counts=unique, rejected=rejected, duplicate_groups=duplicate_groups,
        encodings=encodings, class_only_encodings=class_only,
        skipped_copies=[str(p) for p in skipped], ignored_dirs=ignored, created_with=versions("pillow", "scikit-learn"),
        manifest_sha256=manifest_sha256(out_path), data_dir=str(out_path),
        manifest_path=str(manifest_path), rejected_path=str(rejected_path),
        summary_path=str(out_path / SUMMARY_NAME),
    )
    tmp = out_path / (SUMMARY_NAME + ".tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_path / SUMMARY_NAME)
    return summary

"""DALI feeds ghost engines (`pipelines/dali_ghosts.py`) on DALI's CPU decoder: the dct maps from DALI's
decoded RGB against the torchvision path's (PIL's YCbCr planes), the pil maps from DALI's RGB against
the reference's, `score --loader dali` against `--loader torch`, bad files, files given the reference
maps, EXIF orientation."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from _score_helpers import write_bad_files
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'realfake[dali]')")

from realfake.pipelines import jpeg_ghosts  # noqa: E402
from realfake.pipelines.loaders import get_loader  # noqa: E402

pytestmark = pytest.mark.dali

SIZE = 96
# Scores of one engine on the same files through the two loaders: the 30 quality maps agree exactly
# (DALI's CPU decoder gives PIL's RGB bit for bit, and those maps are computed from that RGB); the 3 keep
# maps from RGB recover the decoder's planes by rounding, exact where no colour was clipped; where colours
# clip, the RGB has lost what the keep maps measure (docs/ghost-maps.md has the CIPLAB figures).
P_FAKE_TOLERANCE = {"unclipped": 1e-4, "clipped": 0.1}
KEEP_MIN_R = {"unclipped": 0.95, "clipped": 0.4}  # Pearson r of a file's 3 keep maps, DALI vs torchvision


def _files(folder: Path, n: int, subsampling: int, seed: int) -> list[str]:
    """Smooth JPEGs of a few sizes and qualities, saturated colours in every other one (where the colour
    conversion clips), a twice-compressed square in every third."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        noise = rng.normal(128, 70 if i % 2 else 35, size=(12, 14, 3)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(noise).resize((SIZE + 16 * (i % 3), SIZE + 8 * (i % 2)), Image.BICUBIC)
        if i % 3 == 0:
            square = image.crop((16, 16, 48, 48))
            buf = Path(folder / "tmp.jpg")
            square.save(buf, quality=40)
            image.paste(Image.open(buf).convert("RGB"), (16, 16))
            buf.unlink()
        path = folder / f"{i:02d}.jpg"
        image.save(path, quality=int(rng.integers(75, 96)), subsampling=subsampling)
        files.append(str(path))
    return files


def _batches(files, backend, kind="dct"):
    loader = get_loader(files, None, train=False, input="ghosts", ghost_maps=kind, backend=backend, image_size=SIZE,
                        batch_size=4, num_workers=1 if backend == "dali" else 0, device="cpu")
    batches = list(loader)
    images = torch.cat([b.images for b in batches if len(b.indices)])
    indices = torch.cat([b.indices for b in batches if len(b.indices)])
    errors = [e for b in batches for e in b.errors]
    fallbacks = [f for b in batches for f in b.fallbacks]
    return images[indices.argsort()], sorted(indices.tolist()), errors, fallbacks, loader


@pytest.mark.parametrize("subsampling", [0, 2], ids=["444", "420"])
def test_dali_maps_equal_the_torchvision_paths_in_quality_and_follow_them_in_keep(tmp_path, subsampling):
    files = _files(tmp_path, 8, subsampling, seed=subsampling)
    dali, dali_indices, _, _, loader = _batches(files, "dali")
    plain, plain_indices, _, _, _ = _batches(files, "torch")
    assert loader.backend == "dali-cpu-ghosts-dct" and dali_indices == plain_indices == list(range(8))
    assert torch.allclose(dali[:, 3:], plain[:, 3:], atol=1e-4)
    for i, (a, b) in enumerate(zip(dali[:, :3], plain[:, :3], strict=True)):
        if a.std() == 0 or b.std() == 0:  # nothing re-saves differently (smooth 4:4:4): the same flat maps
            assert torch.allclose(a, b, atol=1e-5)
            continue
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert r >= KEEP_MIN_R["clipped" if i % 2 else "unclipped"], (i, r)


def test_dali_pil_maps_are_the_references(tmp_path):
    files = _files(tmp_path / "444", 4, 0, seed=5) + _files(tmp_path / "420", 4, 2, seed=6)
    gray = tmp_path / "gray.jpg"
    Image.open(files[0]).convert("L").save(gray, quality=90)  # the exact maps leave grayscale to the reference
    image = Image.open(files[1])
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "turned.jpg", quality=88, exif=exif.tobytes())
    files += [str(gray), str(tmp_path / "turned.jpg")]
    maps, indices, errors, fallbacks, loader = _batches(files, "dali", kind="pil")
    assert loader.backend == "dali-cpu-ghosts-pil" and indices == list(range(len(files)))
    assert errors == [] and fallbacks == [] and loader.host == [8]
    reference = torch.stack([torch.from_numpy(jpeg_ghosts.ghost_maps(f, SIZE)) for f in files])
    torch.testing.assert_close(maps, reference, atol=1e-5, rtol=0)


def test_dali_maps_turn_with_the_exif_orientation(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.normal(128, 40, (8, 16, 3)).clip(0, 255).astype(np.uint8)).resize((128, 64))
    exif = image.getexif()
    exif[0x0112] = 6  # displayed 64 wide, 128 high
    path = tmp_path / "turned.jpg"
    image.save(path, quality=90, exif=exif.tobytes())
    dali, *_ = _batches([str(path)], "dali")
    plain, *_ = _batches([str(path)], "torch")
    assert torch.allclose(dali[:, 3:], plain[:, 3:], atol=1e-4)
    assert plain[0, 3, :, :2].abs().sum() == 0 and plain[0, 3, :, 4:8].abs().sum() > 0  # 8x12 cells of 12x12


def _sharp_engine(out: Path, kind: str) -> Path:
    """An eager ghost_cnn engine of `kind` maps whose p_fake spreads over (0, 1): a difference in the maps shows."""
    from realfake.engines.build import build_engine_from_model
    from realfake.models import build_model

    torch.manual_seed(0)
    model = build_model("ghost_cnn", image_size=SIZE).eval()
    with torch.no_grad():
        model.fc.weight.mul_(1000)
    return build_engine_from_model(model, out, architecture="ghost_cnn", image_size=SIZE, backend="eager",
                                   batch=(1, 8, 64), ghost_maps=kind)


def test_score_with_dali_equals_score_with_torch_and_lists_bad_files(tmp_path):
    from realfake.jobs.tasks.score import run_score

    folder = tmp_path / "folder"
    _files(folder / "444", 6, 0, seed=1)
    _files(folder / "420", 6, 2, seed=2)
    reasons = write_bad_files(folder / "bad")
    Image.new("RGB", (32, 32)).save(folder / "bad" / "drawing.png")
    reasons["drawing.png"] = "not a JPEG"
    Image.new("RGB", (6, 6)).save(folder / "bad" / "speck.jpg")
    reasons["speck.jpg"] = "too small (6x6: ghost maps need 8x8 pixels)"
    Image.new("CMYK", (64, 64), (10, 200, 30, 0)).save(folder / "cmyk.jpg")  # the reference's maps
    engine = _sharp_engine(tmp_path / "engine", "dct")
    out = {}
    for loader in ("dali", "torch"):
        summary = run_score([str(folder)], tmp_path / f"{loader}.csv", engine=engine, loader=loader, batch_size=4,
                            num_workers=1, progress=False)
        assert (summary["scored"], summary["reference_maps"]) == (13, 1), loader
        assert summary["loader"] == ("dali-cpu-ghosts-dct" if loader == "dali" else "jpeg-ghosts-dct")
        errors = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(open(summary["errors_file"]))}
        assert errors == reasons, loader
        out[loader] = {r["path"]: float(r["p_fake"]) for r in csv.DictReader(open(summary["out"]))}
    assert out["dali"].keys() == out["torch"].keys()
    p = np.array(list(out["torch"].values()))
    assert p.std() > 0.05  # the engine tells these files apart
    for path, q in out["torch"].items():  # every other file of _files has colours the conversion clips
        clipped = Path(path).parent.name in ("444", "420") and int(Path(path).stem) % 2 == 1
        assert abs(out["dali"][path] - q) <= P_FAKE_TOLERANCE["clipped" if clipped else "unclipped"], path


def test_a_pil_engine_scores_the_same_with_dali_and_lists_bad_files(tmp_path):
    from realfake.jobs.tasks.score import run_score

    folder = tmp_path / "folder"
    _files(folder / "444", 4, 0, seed=3)
    _files(folder / "420", 4, 2, seed=4)
    reasons = write_bad_files(folder / "bad")
    Image.new("CMYK", (64, 64), (10, 200, 30, 0)).save(folder / "cmyk.jpg")  # scored on the host, by PIL
    engine = _sharp_engine(tmp_path / "engine", "pil")
    out = {}
    for loader in ("dali", "torch"):
        summary = run_score([str(folder)], tmp_path / f"{loader}.csv", engine=engine, loader=loader, batch_size=4,
                            num_workers=1, progress=False)
        assert summary["scored"] == 9 and summary["loader"] == ("dali-cpu-ghosts-pil" if loader == "dali"
                                                                 else "jpeg-ghosts"), loader
        errors = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(open(summary["errors_file"]))}
        assert errors == reasons, loader
        out[loader] = {r["path"]: float(r["p_fake"]) for r in csv.DictReader(open(summary["out"]))}
    assert out["dali"].keys() == out["torch"].keys()
    assert np.array(list(out["torch"].values())).std() > 0.05
    assert max(abs(out["dali"][k] - q) for k, q in out["torch"].items()) < 1e-6

"""bench.photos: the JPEG kind read from the SOF marker (checked against PIL, an independent
parser) and the bytes-per-pixel row, recomputed here from file sizes and PIL's sizes."""
import io
import os

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from bench.photos import corpus_stats, jpeg_files, jpeg_kind, main
from flowers_tl.synth_render import encode_bgr


def pil_kind(data):
    image = Image.open(io.BytesIO(data))
    if image.mode == "L":
        return "grayscale"
    if image.info.get("progressive"):
        return "progressive"
    return {0: "444", 2: "420"}[JpegImagePlugin.get_sampling(image)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for index, kind in enumerate(("420", "444", "progressive", "grayscale", "420")):
        height, width = 40 + 8 * index, 64 - 4 * index
        bgr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        (root / f"{index}.jpg").write_bytes(encode_bgr(bgr, kind, 80 + index))
    (root / "notes.txt").write_text("not a JPEG")
    return str(root)


def test_kind_and_size_match_pil(corpus):
    for path in jpeg_files(corpus):
        data = open(path, "rb").read()
        kind, height, width = jpeg_kind(data)
        assert kind == pil_kind(data) and Image.open(path).size == (width, height), path
    with pytest.raises(ValueError):
        jpeg_kind(b"\xff\xd8\xff\xd9")


def test_bytes_per_pixel_row(corpus):
    files = jpeg_files(corpus)
    assert len(files) == 5  # notes.txt is not listed
    row = corpus_stats(files)
    bpp = [os.path.getsize(path) / np.prod(Image.open(path).size) for path in files]
    assert row["files"] == 5 and row["kinds"] == {"420": 2, "444": 1, "progressive": 1, "grayscale": 1}
    assert row["bpp"]["mean"] == pytest.approx(np.mean(bpp)) and row["bpp"]["median"] == pytest.approx(np.median(bpp))
    assert row["bpp_by_kind"]["420"] == pytest.approx((bpp[0] + bpp[4]) / 2)
    # Random pixels at quality 90 cost far more than a photo's ~0.3 bytes per pixel.
    assert row["content_bpp_q90"]["mean"] > 1.0


def test_cli_prints_the_table_and_writes_json(corpus, tmp_path, capsys):
    assert main(["--corpus", f"generated={corpus}", "--corpus", f"real={corpus}",
                 "--out", str(tmp_path / "photos.json")]) == 0
    printed = capsys.readouterr().out
    assert "| generated | 5 |" in printed and "generated / real: bpp_mean 1.00" in printed
    import json
    saved = json.load(open(tmp_path / "photos.json"))
    assert saved["generator_version"] >= 2 and saved["corpora"]["real"]["files"] == 5
    assert main(["--corpus", f"empty={tmp_path / 'nothing'}"]) == 2

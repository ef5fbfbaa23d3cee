"""bench.realdata: scikit-learn's digit scans as a class-per-folder JPEG set, checked against
the arrays they come from."""
import io

import numpy as np
import pytest
from PIL import Image

from flowers_tl.data import list_folder

sklearn = pytest.importorskip("sklearn")


def test_digits_become_ten_class_folders_of_their_scans(tmp_path):
    import cv2
    from sklearn.datasets import load_digits

    from bench.realdata import write_digits

    root = write_digits(str(tmp_path / "digits"), size=16)
    listing = list_folder(root)
    digits = load_digits()
    assert listing.class_names == tuple(str(d) for d in range(10))
    assert len(listing.files) == len(digits.images) == 1797
    assert np.bincount(listing.labels).tolist() == np.bincount(digits.target).tolist()
    for index in (0, 500, 1796):
        path = f"{root}/{digits.target[index]}/{index:04d}.jpg"
        decoded = np.asarray(Image.open(io.BytesIO(open(path, "rb").read())).convert("L"))
        scan = cv2.resize(np.clip(digits.images[index] * 255 / 16, 0, 255).astype(np.uint8),
                          (16, 16), interpolation=cv2.INTER_CUBIC)
        # JPEG at quality 95 on a 16 px scan: within a few grey levels on average
        assert np.abs(decoded.astype(int) - scan).mean() < 4, index
    with pytest.raises(FileExistsError, match="folder is not empty"):
        write_digits(root, size=16)


def test_digits_subset_keeps_only_the_named_classes(tmp_path):
    from sklearn.datasets import load_digits

    from bench.realdata import main, write_digits

    root = write_digits(str(tmp_path / "low"), size=8, digits=[0, 1, 2])
    listing = list_folder(root)
    target = load_digits().target
    assert listing.class_names == ("0", "1", "2")
    assert len(listing.files) == int(np.isin(target, [0, 1, 2]).sum())
    for bad in ("3,3", "x", "10", ""):
        assert main(["digits", "--out", str(tmp_path / f"bad{bad}"), "--size", "8",
                     "--digits", bad]) == 2


def test_photos_corpus_holds_the_stated_kinds_sizes_and_content(tmp_path):
    pytest.importorskip("skimage")
    from bench.photos import jpeg_kind
    from bench.realdata import package_photos, write_photos
    from flowers_tl.synth import KIND_SCHEDULE

    root = write_photos(str(tmp_path / "photos"), variants=10)
    photos = package_photos()
    listing = list_folder(root)
    assert listing.class_names == tuple(sorted(photos)) and len(listing.files) == 80
    for name, photo in photos.items():
        for variant in range(10):
            data = open(f"{root}/{name}/{name}_{variant:03d}.jpg", "rb").read()
            kind, height, width = jpeg_kind(data)
            assert kind == KIND_SCHEDULE[variant]
            decoded = Image.open(io.BytesIO(data))
            assert decoded.size == (width, height)  # PIL agrees with our SOF reading
            assert height <= photo.shape[0] and width <= photo.shape[1]  # never enlarged
            # tf_flowers-like sides, except portraits cut from the 300 px high chelsea (>= 168 px)
            assert min(height, width) >= 168 and max(height, width) >= 300
        # Variant 0 is the whole photo: quality >= 70 JPEG of it is within a few levels.
        whole = np.asarray(Image.open(f"{root}/{name}/{name}_000.jpg").convert("RGB"), np.float64)
        assert whole.shape == photo.shape and np.abs(whole - photo).mean() < 6, name
    again = write_photos(str(tmp_path / "again"), variants=10)
    for path in listing.relative_paths():
        assert open(f"{root}/{path}", "rb").read() == open(f"{again}/{path}", "rb").read()

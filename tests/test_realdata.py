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

"""The hostile-input corpus (hostile_data.hostile_cases: truncations, wrong formats, patched
headers, scan floods, huge metadata, and the supported oddities) through every public decode
entry point: each case is a clean DecodeError with libjpeg's or our message, or exactly the
image an independent decoder (PIL) gives.
"""
import os

import numpy as np
import pytest

from conftest import reference_decode
from flowers_tl import reader
from flowers_tl.reader import DecodeError
from hostile_data import CASES, FUZZ, GOOD, HEADER_INTACT

pytestmark = pytest.mark.fuzz


def expected_pixels(name: str, data: bytes) -> np.ndarray:
    if name == "huge_exif_icc_comment":
        return reader.decode_jpeg(GOOD)  # the same image without the metadata
    if name.startswith("arithmetic"):
        # jpegtran -arithmetic of this file: lossless transcoding, identical coefficients.
        with open(os.path.join(FUZZ, "seeds", "huffman_420_37x29.jpg"), "rb") as handle:
            return reference_decode(handle.read())
    return reference_decode(data)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_bytes_are_a_clean_error_or_an_exact_image(name):
    data, message = CASES[name]
    entry_points = {
        "jpeg_info": lambda: reader.jpeg_info(data),
        "decode_jpeg": lambda: reader.decode_jpeg(data),
        # The references are PIL's (ISLOW) decodes: the accurate IDCT, for exact comparisons.
        "augment_train": lambda: reader.augment(data, 24, training=True, seed=1, fast_idct=False),
        "augment_eval_no_dct": lambda: reader.augment(data, 24, training=False,
                                                      use_dct_scaling=False),
        "augment_merged_upsampler": lambda: reader.augment(data, 5, seed=2, fast_idct=False,
                                                           fancy_upsampling=False),
    }
    for entry, call in entry_points.items():
        if entry == "jpeg_info" and name in HEADER_INTACT:
            assert call()["width"] == 80  # the header alone is fine; decoding is not
            continue
        if message is not None:
            with pytest.raises(DecodeError, match=message):
                call()
            continue
        result = call()
        expected = expected_pixels(name, data).astype(int)
        if entry == "jpeg_info":  # the header's size is the reference image's
            assert (result["height"], result["width"]) == expected.shape[:2]
        elif entry == "decode_jpeg":
            # CMYK: our (255-C)(255-K)/255 and PIL's round differently by one level.
            tolerance = 1 if name == "cmyk_adobe" else 0
            assert result.shape == expected.shape
            assert np.abs(result.astype(int) - expected).max() <= tolerance
        else:
            size = 5 if entry == "augment_merged_upsampler" else 24
            assert result.dtype == np.uint8 and result.shape == (size, size, 3)
            if expected.shape[:2] == (1, 1):  # any crop of one pixel, resized, is that pixel
                assert (result.reshape(-1, 3) == expected.reshape(1, 3)).all(), entry


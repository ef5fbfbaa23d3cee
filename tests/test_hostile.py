"""Hostile input: a bad-data corpus made at test time, through every public entry point of the
reader, the threaded Reader (skip, count, report; or fail fast) and a training run; the fuzzer's
committed inputs replayed through Python; memory flat over thousands of batches.

Expected messages are libjpeg's own (libjpeg-turbo 2.1, see jerror.h) or ours (jpeg_decode.cc,
image_task.cc). A "valid" case must decode to exactly what an independent reference gives.
"""
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import encode_jpeg, reference_decode, smooth_rgb
from flowers_tl import _reader, reader
from flowers_tl.data import list_folder
from flowers_tl.reader import DecodeError, Reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
GOOD = encode_jpeg(smooth_rgb(60, 80, seed=3), quality=90, kind="420")


# ------------------------------------------------------------------------------ the corpus
def sof_offset(data: bytes) -> int:
    return data.index(b"\xff\xc0")


def patched_sof(data: bytes, marker: int | None = None, precision: int | None = None,
                height: int | None = None, width: int | None = None) -> bytes:
    """A baseline JPEG with its SOF0 marker, sample precision or size bytes replaced."""
    at = sof_offset(data)
    out = bytearray(data)
    if marker is not None:
        out[at + 1] = marker
    if precision is not None:
        out[at + 4] = precision
    if height is not None:
        out[at + 5:at + 7] = struct.pack(">H", height)
    if width is not None:
        out[at + 7:at + 9] = struct.pack(">H", width)
    return bytes(out)


def with_huge_segments(data: bytes, count: int = 4, length: int = 60000) -> bytes:
    """`count` 60 KB EXIF (APP1), ICC (APP2, chunked as the ICC spec says) and comment segments
    after SOI: 720 KB of metadata around a 2 KB image."""
    exif = [b"\xff\xe1" + struct.pack(">H", length) + b"Exif\0\0" + bytes(length - 8)
            for _ in range(count)]
    icc = [b"\xff\xe2" + struct.pack(">H", length) + b"ICC_PROFILE\0" + bytes([i + 1, count])
           + bytes(range(256)) * ((length - 16) // 256) + bytes((length - 16) % 256)
           for i in range(count)]
    comment = [b"\xff\xfe" + struct.pack(">H", length) + b"x" * (length - 2) for _ in range(count)]
    return data[:2] + b"".join(exif + icc + comment) + data[2:]


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def scan_start(data: bytes) -> int:
    """Offset of the first entropy-coded byte (just after the SOS header)."""
    at = data.index(b"\xff\xda")
    return at + 2 + struct.unpack(">H", data[at + 2:at + 4])[0]


PREMATURE = "^Premature end of JPEG file$"


def with_scans(count: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has `count` scans. libjpeg only
    warns about the repeated refinement ("bogus progression") and decodes them all."""
    data = encode_jpeg(smooth_rgb(60, 80, seed=3), quality=90, kind="progressive")
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xda"]
    last_scan = data[starts[-1]:-2]
    return data[:-2] + last_scan * (count - len(starts)) + data[-2:]


def hostile_cases() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, expected DecodeError message as a regex, or None: a valid image)."""
    rng = np.random.default_rng(6)
    start = scan_start(GOOD)
    cases = {
        # Truncations: in the SOI, the headers, at the scan's start, mid-scan, and only the
        # final EOI marker missing. libjpeg pads a short file with grey and only warns; we
        # refuse it. Its bit reader reads ahead, so a file missing only its EOI is refused too.
        "truncated_soi": (GOOD[:1], "^Not a JPEG file: starts with 0xff 0x00$|" + PREMATURE),
        "truncated_header": (GOOD[:20], PREMATURE),
        "truncated_at_scan": (GOOD[:start], PREMATURE),
        "truncated_mid_scan": (GOOD[:(start + len(GOOD)) // 2], PREMATURE),
        "truncated_no_eoi": (GOOD[:-2], PREMATURE),
        "zero_bytes": (b"", r"^file is empty \(0 bytes\)$"),
        "random_bytes": (rng.bytes(4096), "^Not a JPEG file: starts with 0x"),
        "soi_then_random": (b"\xff\xd8" + rng.bytes(4096), "^(Unsupported marker type|Bogus|"
                            "Invalid JPEG|Corrupt JPEG|Premature end)"),
        "png_named_jpg": (pil_bytes(Image.new("RGB", (9, 9), (200, 0, 0)), "PNG"),
                          "^Not a JPEG file: starts with 0x89 0x50$"),
        "gif_named_jpg": (pil_bytes(Image.new("P", (9, 9)), "GIF"),
                          "^Not a JPEG file: starts with 0x47 0x49$"),
        "text_named_jpg": (b"name,label\ndaisy.jpg,0\n", "^Not a JPEG file: starts with 0x6e 0x61$"),
        "precision_12_bit": (patched_sof(GOOD, precision=12),
                             "^Unsupported JPEG data precision 12$"),
        "lossless_sof3": (patched_sof(GOOD, marker=0xC3),
                          "^Unsupported JPEG process: SOF type 0xc3$"),
        "header_60000x60000": (patched_sof(GOOD, height=60000, width=60000),
                               r"^header claims 60000x60000 = 3600000000 pixels, over the limit "
                               r"of 100000000 \(raise max_pixels to accept it\)$"),
        "header_zero_size": (patched_sof(GOOD, height=0, width=0),
                             r"^Empty JPEG image \(DNL not supported\)$"),
        # Each scan is a pass over the whole image: a few KB of scan headers would cost minutes
        # on a 100 MP header. Over DecoderOptions::max_scans (500): refused; 400: decoded.
        "scans_600": (with_scans(600), r"^more than 500 scans \(each a pass over the whole "
                                       r"image; encoders write about 10\)$"),
        "scans_400": (with_scans(400), None),
        # Supported: decoded exactly.
        "cmyk_adobe": (encode_jpeg(smooth_rgb(41, 57, seed=4), kind="cmyk"), None),
        "one_by_one": (encode_jpeg(smooth_rgb(1, 1, seed=5), kind="420"), None),
        "one_by_one_gray": (encode_jpeg(smooth_rgb(1, 1, seed=6), kind="gray"), None),
        "huge_exif_icc_comment": (with_huge_segments(GOOD), None),
    }
    for name in ("arithmetic_420_37x29.jpg", "arithmetic_progressive_37x29.jpg"):
        with open(os.path.join(FUZZ, "seeds", name), "rb") as handle:
            cases[name[:-4]] = (handle.read(), None)
    return cases


CASES = hostile_cases()
HEADER_INTACT = ("truncated_at_scan", "truncated_mid_scan", "truncated_no_eoi", "scans_600")


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
        "augment_train": lambda: reader.augment(data, 24, training=True, seed=1),
        "augment_eval_no_dct": lambda: reader.augment(data, 24, training=False,
                                                      use_dct_scaling=False),
        "augment_merged_upsampler": lambda: reader.augment(data, 5, seed=2,
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
        if entry == "jpeg_info":
            assert result["width"] >= 1 and result["height"] >= 1
        elif entry == "decode_jpeg":
            # CMYK: our (255-C)(255-K)/255 and PIL's round differently by one level.
            tolerance = 1 if name == "cmyk_adobe" else 0
            expected = expected_pixels(name, data).astype(int)
            assert result.shape == expected.shape
            assert np.abs(result.astype(int) - expected).max() <= tolerance
        else:
            assert result.dtype == np.uint8 and result.shape[-1] == 3


# ---------------------------------------------------------------- the Reader over a salted set
SOLID = {"red": (220, 30, 30), "blue": (30, 30, 220)}


BAD_CASES = sorted(name for name, (_, message) in CASES.items() if message is not None)


# A truncated baseline file fails only for crops that reach the cut (the decoder stops at the
# crop's last row); every other bad file fails whatever the crop.
CROP_DEPENDENT = ("truncated_mid_scan", "truncated_no_eoi")


SALTED_BATCH = 7  # the salted folder holds a multiple of 7 files: no partial last batch


def salted_folder(root, good_per_class=22, deleted=True):
    """Two classes of flat colours (the colour names the class in any crop), salted with every
    bad case (alternately in each class), a FIFO and a symlink to a device named .jpg, and (if
    `deleted`) a file deleted after the listing; padded with good files to a multiple of
    SALTED_BATCH (44 good and 19 bad files). Returns (dataset, {bad path: expected reason
    regex})."""
    bad = {}
    folders = []
    bad_count = len(BAD_CASES) + 2 + deleted
    extra = -(2 * good_per_class + bad_count) % SALTED_BATCH
    for class_index, (name, colour) in enumerate(SOLID.items()):
        folder = root / name
        folder.mkdir(parents=True)
        folders.append(folder)
        for index in range(good_per_class + (extra if class_index == 0 else 0)):
            image = np.broadcast_to(np.array(colour, np.uint8), (40 + index, 48, 3)).copy()
            (folder / f"{2 * index:03d}_good.jpg").write_bytes(encode_jpeg(image, kind="444"))
    # Bad files interleave with good ones in the listing's order (the order of an unshuffled
    # evaluation): a batch made only of bad files is an error, not a skip.
    for index, case in enumerate(BAD_CASES):
        path = folders[index % 2] / f"{index + 1:03d}_bad_{case}.jpg"
        data = CASES[case][0]
        if case in CROP_DEPENDENT:  # a crop above the cut decodes: let it show the class colour
            colour = list(SOLID.values())[index % 2]
            whole = encode_jpeg(np.broadcast_to(np.array(colour, np.uint8), (60, 80, 3)).copy())
            data = whole[:len(whole) * len(data) // len(GOOD)]
        path.write_bytes(data)
        bad[str(path)] = CASES[case][1]
    os.mkfifo(root / "red" / "named_pipe.jpg")
    bad[str(root / "red" / "named_pipe.jpg")] = r"^not a regular file \(a FIFO\)$"
    os.symlink("/dev/zero", root / "blue" / "device.jpg")
    bad[str(root / "blue" / "device.jpg")] = r"^not a regular file \(a device\)$"
    if deleted:
        (root / "blue" / "deleted.jpg").write_bytes(GOOD)
    dataset = list_folder(root)
    if deleted:
        os.unlink(root / "blue" / "deleted.jpg")  # listed, then gone before the reader reads it
        bad[str(root / "blue" / "deleted.jpg")] = "^cannot open: No such file or directory$"
    assert set(bad) <= set(dataset.files) and len(bad) == bad_count
    assert len(dataset.files) % SALTED_BATCH == 0
    return dataset, bad


def colour_label(images: np.ndarray, class_names) -> list[int]:
    """The class of each image from its mean colour (red or blue)."""
    mean = images.reshape(len(images), -1, 3).mean(1)
    return [class_names.index("blue" if blue > red else "red") for red, _, blue in mean]


def watchdog_for_fifos(paths, seconds=10.0):
    """If a reader thread blocks opening a FIFO, opening its write end after `seconds` releases
    it, so a regression fails the test instead of hanging the suite. Returns the event set when
    it had to."""
    released = threading.Event()

    def release():
        for path in paths:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                released.set()  # someone had it open for reading: the reader was blocked
            except OSError:
                pass

    timer = threading.Timer(seconds, release)
    timer.daemon = True
    timer.start()
    return timer, released


def failing_epochs(path: str, index: int, epochs: int, seed: int, **options) -> list[int]:
    """The epochs in which the Reader's crop of file `index` fails, one image at a time through
    reader.augment with the Reader's per-image seed."""
    if not any(path.endswith(f"bad_{case}.jpg") for case in CROP_DEPENDENT):
        return list(range(epochs))
    data = open(path, "rb").read()
    failing = []
    for epoch in range(epochs):
        try:
            reader.augment(data, seed=reader_image_seed(seed, epoch, index), **options)
        except DecodeError:
            failing.append(epoch)
    return failing


def test_reader_skips_counts_and_reports_every_bad_file(tmp_path):
    dataset, bad = salted_folder(tmp_path / "salted")
    fifos = [path for path in bad if path.endswith("named_pipe.jpg")]
    timer, released = watchdog_for_fifos(fifos)
    # Full batches of 7, about 30% bad: for this seed no batch is all bad (that would be an
    # error, test_reader.py::test_all_bad_batch_is_an_error).
    with Reader(dataset.files, dataset.labels, batch_size=SALTED_BATCH, image_size=16,
                num_threads=2, num_epochs=3, seed=5) as stream:
        batches = [(images.copy(), labels.copy()) for images, labels in stream]
        summary = stream.summary()
    timer.cancel()
    assert not released.is_set(), "a reader thread blocked opening a FIFO"
    assert len(batches) == 3 * len(dataset.files) // SALTED_BATCH
    for images, labels in batches:  # every slot holds a good image with its own label
        assert colour_label(images, dataset.class_names) == labels.tolist()
    failures = {path: failing_epochs(path, dataset.files.index(path), 3, seed=5, image_size=16)
                for path in bad}
    failing = {path for path, epochs in failures.items() if epochs}
    assert len(failing) >= len(bad) - len(CROP_DEPENDENT)
    assert summary.bad_files == len(failing)
    assert summary.failed_reads == sum(len(epochs) for epochs in failures.values())
    assert summary.images_decoded == 3 * len(dataset.files) - summary.failed_reads
    reasons = dict(summary.first_bad_files)  # up to 20 (BatchReader::kMaxReportedBadFiles)
    assert set(reasons) == failing
    for path in failing:
        assert re.search(bad[path], reasons[path]), (path, reasons[path])


def test_a_file_failing_for_some_crops_gives_the_same_batches_whatever_the_thread_count(tmp_path):
    # A large truncated baseline JPEG whose epoch-0 crop reaches the cut and epoch-1 crop does
    # not, among small good files. Decoding it takes long enough that, with two threads, its
    # epoch-1 slot starts before its epoch-0 failure is recorded; the reader used to skip files
    # that had failed before, so one thread gave a copy in that slot and two threads the image.
    import cv2

    rng = np.random.default_rng(1)
    detail = cv2.resize(smooth_rgb(300, 300, seed=1), (2400, 2400)).astype(np.int16)
    detail += rng.integers(-12, 13, detail.shape, dtype=np.int16)  # entropy: a slow decode
    big = encode_jpeg(np.clip(detail, 0, 255).astype(np.uint8), quality=95, kind="444")
    truncated_big = big[:int(len(big) * 0.6)]
    options = dict(image_size=32, area_range=(0.08, 0.2), use_dct_scaling=False)
    seed = 2
    files = [str(tmp_path / "big.jpg")]
    (tmp_path / "big.jpg").write_bytes(truncated_big)
    for index in range(5):
        files.append(str(tmp_path / f"small_{index}.jpg"))
        (tmp_path / f"small_{index}.jpg").write_bytes(encode_jpeg(smooth_rgb(40, 40, seed=index)))
    outcomes = []
    for epoch in range(2):
        try:
            reader.augment(truncated_big, seed=reader_image_seed(seed, epoch, 0), **options)
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
    assert outcomes == ["error", "image"]  # the premise of the test

    def batches(num_threads):
        with Reader(files, list(range(6)), batch_size=6, num_threads=num_threads, seed=seed,
                    num_epochs=2, prefetch=2, **options) as stream:
            return [images.copy() for images, _ in stream], stream.summary()

    one, one_summary = batches(1)
    for _ in range(2):
        two, two_summary = batches(2)
        assert all(np.array_equal(a, b) for a, b in zip(one, two))
        assert two_summary.failed_reads == one_summary.failed_reads == 1


def test_fail_fast_names_the_first_bad_file_and_its_reason(tmp_path):
    dataset, bad = salted_folder(tmp_path / "salted")
    timer, released = watchdog_for_fifos([p for p in bad if p.endswith("named_pipe.jpg")])
    with Reader(dataset.files, dataset.labels, batch_size=SALTED_BATCH, image_size=16,
                num_threads=2, skip_bad_files=False) as stream:
        with pytest.raises(RuntimeError) as error:
            for _ in stream:
                pass
    timer.cancel()
    assert not released.is_set()
    message = str(error.value)
    assert message.startswith("Error in thread ")
    path, reason = message.split(": ", 1)[1].split(": ", 1)
    assert path in bad and re.search(bad[path], reason), message


def test_unreadable_file_is_skipped_with_its_reason(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root reading (the FIFO, device and "
                    "deleted-file cases cover the cannot-open/read paths)")
    files = []
    for index in range(3):
        path = tmp_path / f"{index}.jpg"
        path.write_bytes(GOOD)
        files.append(str(path))
    os.chmod(files[1], 0)
    with Reader(files, [0, 1, 2], batch_size=3, image_size=8, num_epochs=1) as stream:
        next(stream)
        summary = stream.summary()
    assert summary.first_bad_files == ((files[1], "cannot open: Permission denied"),)


def test_paths_that_are_not_readable_images_are_skipped_not_fatal(tmp_path):
    """Named by hand (a listing only yields files): a directory named .jpg (its size on ext4 is
    2^63 - 1, which used to make the buffer allocation throw and stop the reader), a device, and
    a sparse file over the 1 GiB limit for one image (refused before reading it)."""
    (tmp_path / "folder.jpg").mkdir()
    with open(tmp_path / "huge.jpg", "wb") as handle:
        handle.truncate((1 << 30) + 1)
    good = tmp_path / "good.jpg"
    good.write_bytes(GOOD)
    files = [str(tmp_path / "folder.jpg"), "/dev/null", str(tmp_path / "huge.jpg"), str(good)]
    with Reader(files, [0, 1, 2, 3], batch_size=4, image_size=8, num_epochs=1) as stream:
        images, labels = next(stream)
        summary = stream.summary()
    assert labels.tolist() == [3, 3, 3, 3]  # every slot a copy of the one good image
    assert dict(summary.first_bad_files) == {
        files[0]: "not a regular file (a directory)",
        files[1]: "not a regular file (a device)",
        files[2]: "file is 1073741825 bytes, over the 1024 MiB limit for one image"}


# ------------------------------------------------------------------------- fuzzer inputs
PARAM_BYTES = 12
FUZZ_MAX_PIXELS = 1 << 18  # fuzz_decode.cc's kMaxPixels


def fuzz_params(raw: bytes):
    """The parameters fuzz_decode.cc derives from an input's first 12 bytes, and the file."""
    p = raw[:PARAM_BYTES].ljust(PARAM_BYTES, b"\0")
    area_min = (p[3] + 1) / 256.0
    aspect_min = (p[5] + 1) / 64.0
    options = dict(
        training=bool(p[1] & 1), use_dct_scaling=bool(p[1] & 2), random_flip=bool(p[1] & 4),
        layout="NCHW" if p[1] & 8 else "NHWC", fast_idct=bool(p[1] & 16),
        fancy_upsampling=not p[1] & 32,
        dct_scales=tuple(m for m in range(1, 9) if (p[2] or 0xFF) & (1 << (m - 1))),
        area_range=(area_min, area_min + (1.0 - area_min) * p[4] / 255.0),
        aspect_range=(aspect_min, aspect_min * (1.0 + p[6] / 16.0)),
        eval_resize_ratio=1.0 + (p[7] % 16) / 8.0, max_pixels=FUZZ_MAX_PIXELS)
    return 1 + p[0] % 64, p[7], options, bytes(p[8:12]), raw[PARAM_BYTES:]


def fuzz_inputs():
    inputs = []
    for folder in ("regressions", "seeds"):
        path = os.path.join(FUZZ, folder)
        for name in sorted(os.listdir(path)):
            inputs.append(pytest.param(folder, name, id=f"{folder}/{name}"))
    return inputs


@pytest.mark.parametrize("folder, name", fuzz_inputs())
def test_fuzzer_inputs_replay_through_python(folder, name):
    """Regression inputs (12 parameter bytes + file, as the fuzzer wrote them) must give a
    DecodeError or an image of the right shape through the same three paths as fuzz_decode.cc;
    the committed seeds are plain JPEGs and must decode, with a few parameter sets."""
    with open(os.path.join(FUZZ, folder, name), "rb") as handle:
        raw = handle.read()
    headers = [raw[:PARAM_BYTES]] if folder == "regressions" else [
        bytes([31, 7, 0, 20, 255, 47, 10, 0, 0, 0, 255, 255]),
        bytes([15, 0b110010, 0b01000010, 0, 255, 255, 255, 3, 64, 200, 127, 30]),
        bytes([40, 0b101011, 0b11000010, 20, 255, 47, 10, 9, 10, 90, 200, 100])]
    for header in headers:
        data = raw[PARAM_BYTES:] if folder == "regressions" else raw
        size, seed, options, box_bytes, _ = fuzz_params(header)
        outcomes = []
        try:
            image = reader.augment(data, size, seed=seed, **options)
            assert image.shape == ((size, size, 3) if options["layout"] == "NHWC" else (3, size, size))
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
        try:
            info = reader.jpeg_info(data, max_pixels=FUZZ_MAX_PIXELS)
            w, h = info["width"], info["height"]
            x, y = w * (box_bytes[0] / 256.0), h * (box_bytes[1] / 256.0)
            box = (x, y, (w - x) * ((box_bytes[2] + 1) / 256.0), (h - y) * ((box_bytes[3] + 1) / 256.0))
            scales = sum(1 << (m - 1) for m in options["dct_scales"])
            crop, _ = _reader.decode_crop_resize(
                data, box, size, size, bool(header[1] & 64), options["use_dct_scaling"],
                options["layout"], scales, FUZZ_MAX_PIXELS, options["fast_idct"],
                options["fancy_upsampling"])
            assert crop.size == size * size * 3
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
        try:
            full = reader.decode_jpeg(data, max_pixels=FUZZ_MAX_PIXELS)
            assert full.shape[2] == 3 and full.shape[0] * full.shape[1] <= FUZZ_MAX_PIXELS
            outcomes.append("image")
        except DecodeError:
            outcomes.append("error")
        if folder == "seeds":
            assert outcomes == ["image"] * 3, (header.hex(), outcomes)


def test_reused_decoder_with_merged_upsampler_and_row_skips(tmp_path):
    """The production path of the fuzzer's first crash: one worker's decoder alternating between
    images that use libjpeg's merged upsampler (4:2:0 at full DCT scale, fancy upsampling off)
    and images that do not (4:4:4, or 4:2:0 at reduced scales), with crops that skip rows. Before
    the fix, jpeg_skip_scanlines() wrote through a freed colour converter; without ASan that may
    corrupt the heap silently, so this also checks every batch against a fresh decoder."""
    files = []
    for index in range(12):
        kind = ("420", "444")[index % 2]
        path = tmp_path / f"{index}.jpg"
        path.write_bytes(encode_jpeg(smooth_rgb(90 + 7 * index, 120, seed=index), kind=kind))
        files.append(str(path))
    options = dict(batch_size=4, image_size=24, num_threads=1, seed=3, num_epochs=3,
                   fancy_upsampling=False, dct_scales=(2, 7, 8), area_range=(0.3, 0.6))
    with Reader(files, list(range(12)), **options) as stream:
        batches = [(images.copy(), labels.copy(), stream.epoch) for images, labels in stream]
    assert len(batches) == 9
    for images, labels, epoch in batches:
        for image, label in zip(images, labels):
            data = open(files[label], "rb").read()
            seed = reader_image_seed(3, epoch, int(label))
            expected = reader.augment(data, 24, seed=seed, fancy_upsampling=False,
                                      dct_scales=(2, 7, 8), area_range=(0.3, 0.6))
            np.testing.assert_array_equal(image, expected)


def reader_image_seed(seed: int, epoch: int, file_index: int) -> int:
    """augment.cc's mix_seed(seed, epoch, file): the Reader's per-image crop seed."""
    mask = (1 << 64) - 1

    def splitmix(state):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    h = splitmix(seed)
    for word in (epoch, file_index, 0):
        h = splitmix(h ^ word)
    return h


# ------------------------------------------------------------------------------ memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


BATCHES = 4000


def test_memory_stays_flat_over_thousands_of_batches_and_bad_decodes(tmp_path):
    # A leak of one batch buffer (21 x 32 x 32 x 3 = 63 KB) per batch would add 250 MB over the
    # 4000 batches, of 1 KB per image 84 MB; allocator noise and numpy's caches stay under a
    # few MB once warm. Tolerance: 8 MB.
    dataset, bad = salted_folder(tmp_path / "salted")
    timer, _ = watchdog_for_fifos([p for p in bad if p.endswith("named_pipe.jpg")])
    # Batches of 21 with 19 bad files: never an all-bad batch.
    with Reader(dataset.files, dataset.labels, batch_size=3 * SALTED_BATCH, image_size=32,
                num_threads=2) as stream:
        for _ in range(200):  # warm-up: buffer pool, thread-local scratch, numpy
            next(stream)
        before = rss_bytes()
        for _ in range(BATCHES):
            images, labels = next(stream)
        after_batches = rss_bytes()
        summary = stream.summary()
    timer.cancel()
    assert summary.batches_delivered == 200 + BATCHES and summary.bad_files == len(bad)
    assert after_batches - before < 8 << 20, (before, after_batches)
    # The error paths (setjmp/longjmp out of libjpeg, exceptions through pybind11) leak nothing
    # either: every bad case, 200 times each.
    bad_bytes = [CASES[name][0] for name in BAD_CASES]

    def decode_all_bad():
        for data in bad_bytes:
            with pytest.raises(DecodeError):
                reader.decode_jpeg(data)
            try:
                reader.augment(data, 16)  # may succeed for a crop above a truncation
            except DecodeError:
                pass

    for _ in range(10):
        decode_all_bad()
    before = rss_bytes()
    for _ in range(200):
        decode_all_bad()
    assert rss_bytes() - before < 8 << 20


# ------------------------------------------------------------------------------ training
def test_training_over_a_salted_set_completes_and_reports_the_bad_files(tmp_path):
    # The run lists the folder itself, so the deleted-file case cannot be staged here (the
    # Reader tests above cover it).
    dataset, bad = salted_folder(tmp_path / "salted", deleted=False)
    url = tmp_path / "run"
    steps = len(dataset.files) // SALTED_BATCH  # one epoch: every file is read
    timer, released = watchdog_for_fifos([p for p in bad if p.endswith("named_pipe.jpg")], 60)
    result = subprocess.run(
        [sys.executable, "-m", "flowers_tl.train", "--data_url", str(tmp_path / "salted"),
         "--train_url", str(url), "--checkpoint_url", "none", "--image_size", "32",
         "--batch_size", str(SALTED_BATCH), "--epochs", "1", "--val_fraction", "0", "--export", "false",
         "--log_every", "1", "--warmup_steps", "1", "--lr_schedule", "1:0.001"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    timer.cancel()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not released.is_set()
    summary = json.load(open(url / "result.json"))
    assert summary["stop_reason"] == "finished" and summary["steps"] == steps
    report = summary["input"]
    assert report["bad_files"] == len(bad) and report["images_decoded"] >= steps * SALTED_BATCH - len(bad)
    listed = dict(map(tuple, report["first_bad_files"]))
    assert set(listed) == set(bad)
    for path, pattern in bad.items():
        assert re.search(pattern, listed[path]), (path, listed[path])
    assert f"{len(bad)} bad file(s)" in output
    for path in bad:
        assert path in output


def test_evaluation_reports_the_bad_validation_files(tmp_path):
    """The validation half of the training report, in process: evaluate() over a salted set
    gathers each skipped file with its reason, and input_report() merges them in."""
    import types

    import tensorflow as tf

    from flowers_tl.train import evaluate, input_report

    dataset, bad = salted_folder(tmp_path / "salted")
    config = types.SimpleNamespace(batch_size=SALTED_BATCH, image_size=32, reader_threads=2)
    predict_blue = lambda images: tf.fill([tf.shape(images)[0]],  # noqa: E731
                                          dataset.class_names.index("blue"))
    bad_files = {}
    accuracy = evaluate(predict_blue, dataset.files, dataset.labels, config, bad_files)
    # The eval crop is fixed: a file fails here iff its crop, decoded alone, fails.
    expected = set(bad)
    for path in bad:
        if any(path.endswith(f"bad_{case}.jpg") for case in CROP_DEPENDENT):
            try:
                reader.augment(open(path, "rb").read(), 32, training=False)
                expected.discard(path)
            except DecodeError:
                pass
    assert len(expected) >= len(bad) - len(CROP_DEPENDENT)
    assert set(bad_files) == expected
    for path in expected:
        assert re.search(bad[path], bad_files[path]), (path, bad_files[path])
    blue = dataset.labels.count(dataset.class_names.index("blue"))
    assert 0 < accuracy and accuracy != blue / len(dataset.files)  # bad slots hold copies
    report = input_report(None, bad_files)
    assert report["bad_files"] == len(expected)
    assert sorted(map(tuple, report["first_bad_files"])) == sorted(bad_files.items())

"""The hostile-input corpus and the salted folder, made at test time, shared by
test_bad_bytes.py (the corpus against every decode entry point), test_bad_files.py (the Reader
skipping, reporting or failing fast on a salted set), test_fuzz_inputs.py, test_memory.py and
test_train_bad_data.py.

Expected messages are libjpeg's own (libjpeg-turbo 2.1, see jerror.h) or ours (jpeg_decode.cc,
image_task.cc).
"""
import io
import os
import struct
import threading

import numpy as np
from PIL import Image

from conftest import encode_jpeg, smooth_rgb
from flowers_tl import reader
from flowers_tl.data import list_folder
from flowers_tl.reader import DecodeError

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


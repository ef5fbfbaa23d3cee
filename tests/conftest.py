"""Shared helpers: tiny JPEGs made at test time, of every kind the reader supports, and model
calibration for parity tests."""
import dataclasses
import io

import flowers_tl  # noqa: F401  (sets TensorFlow's kernel options before anything imports it)

import cv2
import numpy as np
import pytest
from PIL import Image


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Natural-ish content: blurred noise plus gradients. Smooth enough that resampling
    differences between two correct resizers stay small, detailed enough to catch an offset."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32) * 255
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(1.5, min(height, width) / 40))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack([xx / width * 120, yy / height * 120, (xx + yy) / (width + height) * 80], -1)
    image = 0.6 * (noise - noise.mean()) * 3 + gradient + 60
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 92, kind: str = "420") -> bytes:
    """kind: '420', '444', 'progressive', 'gray' (via OpenCV) or 'cmyk' (via PIL, Adobe marker)."""
    if kind == "cmyk":
        buffer = io.BytesIO()
        Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if kind == "gray":
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif kind == "444":
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    elif kind == "progressive":
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    elif kind != "420":
        raise ValueError(kind)
    ok, encoded = cv2.imencode(".jpg", image, params)
    assert ok
    return encoded.tobytes()


def reference_decode(data: bytes) -> np.ndarray:
    """Independent decoder (PIL) to RGB."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_dataset(root, sizes, kinds=("420",), seed=0):
    """Writes one JPEG per size into class folders c0, c1 (alternating); returns (files, labels)."""
    files, labels = [], []
    for index, (height, width) in enumerate(sizes):
        label = index % 2
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{index:04d}.jpg"
        path.write_bytes(encode_jpeg(smooth_rgb(height, width, seed + index),
                                     kind=kinds[index % len(kinds)]))
        files.append(str(path))
        labels.append(label)
    return files, labels


@pytest.fixture
def small_dataset(tmp_path):
    """40 small JPEGs of mixed kinds and sizes."""
    rng = np.random.default_rng(1)
    sizes = [(int(rng.integers(40, 120)), int(rng.integers(40, 120))) for _ in range(40)]
    return write_dataset(tmp_path / "data", sizes, kinds=("420", "444", "progressive", "gray"))


def calibrate_batch_norm(model, images):
    """Sets every BN moving mean/variance of `model` to the batch statistics of `images` in one
    training-mode pass (momentum 0), so random weights give O(1) activations through all 16
    units instead of exploding (with the default 0/1 statistics logits reach ~1e3). Also gives
    gamma/beta random values so parity tests notice a swapped or dropped BN parameter."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    for name, variable in model.variables_by_name.items():
        if name.endswith("/gamma"):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
        elif name.endswith("/beta"):
            variable.assign(rng.uniform(-0.2, 0.2, variable.shape).astype(np.float32))
    saved = model.config
    object.__setattr__(model, "config", dataclasses.replace(saved, batch_norm_momentum=0.0,
                                                            freeze_batch_norm=False))
    try:
        model(tf.constant(images), training=True)
    finally:
        object.__setattr__(model, "config", saved)


@pytest.fixture(autouse=True, scope="session")
def fp32_unless_asked():
    """Every run a test starts, in process or not, sees a CPU without bf16 units (AMX-BF16,
    AVX512-BF16), so a default run is fp32 on every CI machine (flowers_tl.adapt picks bf16 on
    CPUs with them; the tests of that rule patch cpu_features themselves). Session scope: before
    module-scoped runs too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWERS_TL_IGNORE_CPU_FLAGS", "amx_bf16,avx512_bf16")
        yield

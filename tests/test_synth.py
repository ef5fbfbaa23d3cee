"""Tests for flowers_tl.synth: tree layout, decodability, JPEG kinds, determinism, CLI, cache.

Sets are tiny (3 classes x 6 images, <= 96 px) so the whole file runs in seconds;
the JPEG kinds are checked with PIL, an independent decoder from the OpenCV
(libjpeg-turbo) encoder that wrote them.
"""

import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from flowers_tl import synth
from flowers_tl.data import list_folder

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(classes=3, per_class=6, seed=0, max_side=96)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("synth") / "flowers", **TINY)


def read_tree(root):
    """{relative path: bytes} of every file under root."""
    contents = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                contents[os.path.relpath(path, root)] = handle.read()
    return contents


def jpeg_kind(data):
    image = Image.open(io.BytesIO(data))
    if image.mode == "L":
        return "grayscale"
    if image.info.get("progressive"):
        return "progressive"
    # get_sampling: 0 = 4:4:4, 2 = 4:2:0 (PIL's encoding of the sampling factors).
    return {0: "444", 2: "420"}[JpegImagePlugin.get_sampling(image)]


def test_tree_is_class_per_folder_like_flower_photos(tiny_set):
    dataset = list_folder(tiny_set)
    assert dataset.class_names == ("daisy", "dandelion", "roses")
    assert dataset.class_counts() == {"daisy": 6, "dandelion": 6, "roses": 6}
    assert dataset.ignored_files == ()
    assert dataset.relative_paths()[:2] == ("daisy/daisy_00000.jpg", "daisy/daisy_00001.jpg")
    with open(os.path.join(tiny_set, "LICENSE.txt")) as handle:
        assert "synthetic" in handle.read()


def test_every_file_decodes_with_two_decoders_and_respects_max_side(tiny_set):
    for path in list_folder(tiny_set).files:
        decoded = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert decoded is not None, path
        with Image.open(path) as image:
            image.load()  # forces a full decode, not just the header
            assert image.size == (decoded.shape[1], decoded.shape[0])
        assert max(decoded.shape[:2]) <= 96
        assert decoded.std() > 5, f"{path} looks blank"


def test_every_class_holds_every_jpeg_kind(tiny_set):
    dataset = list_folder(tiny_set)
    kinds_by_class = {}
    for path, label in zip(dataset.files, dataset.labels):
        with open(path, "rb") as handle:
            kinds_by_class.setdefault(label, []).append(jpeg_kind(handle.read()))
    for kinds in kinds_by_class.values():
        assert set(kinds) == {"420", "444", "progressive", "grayscale"}
        assert kinds.count("420") == 3  # the schedule's first 6 slots


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, tiny_set):
    again = read_tree(synth.generate(tmp_path / "again", **TINY))
    assert again == read_tree(tiny_set)
    other = read_tree(synth.generate(tmp_path / "other", **{**TINY, "seed": 1}))
    assert other.keys() == again.keys()
    images = [name for name in again if name.endswith(".jpg")]
    assert all(other[name] != again[name] for name in images)


def test_class_offset_gives_another_family(tmp_path):
    root = synth.generate(tmp_path / "source", classes=2, per_class=1, max_side=48, class_offset=5)
    assert list_folder(root).class_names == ("flower_005", "flower_006")
    assert synth.flower_class(5) != synth.flower_class(6)
    assert synth.flower_class(5) == synth.flower_class(5)  # a class looks the same in every set


def test_default_sizes_look_like_tf_flowers():
    generators = (np.random.default_rng([0, 0, index]) for index in range(2000))
    sizes = np.array([synth.draw_image_size(rng, None, None) for rng in generators])
    typical = np.all((sizes >= 240) & (sizes <= 500), axis=1).mean()
    large = (sizes.max(axis=1) > 600).mean()
    assert typical > 0.9 and 0.01 < large < 0.06 and sizes.max() <= 1024
    assert (sizes[:, 0] > sizes[:, 1]).mean() > 0.15  # some portraits


def test_min_and_max_side_bound_the_sizes():
    for index in range(200):
        height, width = synth.draw_image_size(np.random.default_rng(index), 40, 64)
        assert 40 <= min(height, width) and max(height, width) <= 64


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "old.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        synth.generate(tmp_path, classes=1, per_class=1, max_side=32)


def test_cli_with_workers_matches_library(tmp_path):
    arguments = dict(classes=2, per_class=4, seed=3, max_side=64)
    command = [sys.executable, "-m", "flowers_tl.synth", "--out", str(tmp_path / "cli"), "--classes", "2",
               "--per-class", "4", "--seed", "3", "--max-side", "64", "--workers", "2"]
    environment = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote 8 images")
    assert "2 baseline 4:4:4, 2 progressive 4:2:0, 0 grayscale" in result.stdout
    # Rendering in two processes must not change a byte (each image owns its RNG).
    assert read_tree(tmp_path / "cli") == read_tree(synth.generate(tmp_path / "library", **arguments))


def test_default_dataset_is_generated_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWERS_TL_CACHE", str(tmp_path / "cache"))
    arguments = dict(classes=2, per_class=2, max_side=32, workers=1)
    first = synth.default_dataset(**arguments)
    assert os.path.dirname(first) == str(tmp_path / "cache")
    stamp = os.stat(os.path.join(first, "daisy", "daisy_00000.jpg")).st_mtime_ns
    assert synth.default_dataset(**arguments) == first
    assert os.stat(os.path.join(first, "daisy", "daisy_00000.jpg")).st_mtime_ns == stamp
    assert os.listdir(tmp_path / "cache") == [os.path.basename(first)]  # no temp folder left behind
    assert len(list_folder(first)) == 4


def test_detail_stream_changes_fine_detail_only():
    # The scene (what a class draws) comes from `rng`; texture, noise and quality from `detail`.
    # Two detail seeds must give the same picture once the fine detail is blurred away: after a
    # 5 px Gaussian they differ by ~1.6 grey levels on average (what is left of the texture's
    # longest periods, ~40 px), two different scenes by ~40.
    from flowers_tl import synth_render

    family = tuple(synth.flower_class(index) for index in range(5))
    renders = [synth_render.render(np.random.default_rng([0, 3, 1]), family[3], family, 120, 160,
                                   np.random.default_rng([0, 3, 1, detail])) for detail in (1, 2)]
    assert np.abs(renders[0] - renders[1]).mean() * 255 > 2  # the detail does differ
    smooth = [cv2.GaussianBlur(image, (0, 0), 5) for image in renders]
    assert np.abs(smooth[0] - smooth[1]).mean() * 255 < 3


def test_quality_mix_is_the_stated_one():
    from flowers_tl import synth_render

    rng = np.random.default_rng(0)
    qualities = np.array([synth_render.draw_quality(rng) for _ in range(4000)])
    assert qualities.min() == 70 and qualities.max() == 96
    assert abs((qualities >= 92).mean() - 0.4) < 0.03 and abs((qualities < 84).mean() - 0.2) < 0.03
    assert 87 < qualities.mean() < 89

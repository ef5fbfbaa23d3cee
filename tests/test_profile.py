"""_reader.profile_crop (csrc/profile.cc) and bench.profile: the per-stage profile of one crop.

Timings on a shared machine are noisy, so the consistency check compares floors (each figure is
the minimum of many repeats) and allows a few attempts; what it guards is that the timers
neither double-count nested libjpeg calls nor miss a stage: the stages' sum (timers' own cost
taken out) must land within 30% of the same crops through the reader's path without timers.
Double-counting the entropy decode inside the IDCT controller alone would add ~40%."""
import json

import numpy as np
import pytest

from bench.photos import jpeg_kind
from bench.profile import STAGES, main, reader_config
from flowers_tl import _reader, reader, synth
from flowers_tl.data import list_folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{kind: path}: one generated file per JPEG kind and, when scikit-image is there, real ones."""
    folder = tmp_path_factory.mktemp("profile")
    found = {}
    generated = synth.generate(folder / "generated", classes=1, per_class=6, max_side=200)
    for path in list_folder(generated).files:
        found.setdefault(("generated", jpeg_kind(open(path, "rb").read())[0]), path)
    try:
        from bench.realdata import write_photos
        real = write_photos(str(folder / "real"), variants=6, names=["astronaut"])
        for path in list_folder(real).files:  # variants 0-5 hold every kind
            found.setdefault(("real", jpeg_kind(open(path, "rb").read())[0]), path)
    except ImportError:
        pass
    return found


def profile(path, image_size=64, repeats=15, **decoder):
    options = reader_config(image_size, 0, decoder).to_options()
    return _reader.profile_crop(path, options.image, options.decoder, 0, 0, 3, repeats)


def test_stages_are_positive_and_sum_close_to_the_reader_path(files):
    for (corpus, kind), path in files.items():
        for attempt in range(3):
            row = profile(path)
            assert row["hooked_total"] == pytest.approx(sum(row[stage] for stage in STAGES))
            if 0.7 < row["hooked_total"] / row["reader_total"] < 1.3:
                break
        else:
            pytest.fail(f"{corpus} {kind}: stages sum to {row['hooked_total'] * 1e3:.3f} ms, the "
                        f"reader path takes {row['reader_total'] * 1e3:.3f} ms ({path})")
        for stage in ("read", "header", "start", "idct", "resize"):
            assert row[stage] > 0, (corpus, kind, stage)
        assert row["timer_overhead"] > 0 and row["timer_calls"] > 0
        assert row["multi_scan"] == (kind == "progressive")
        if kind == "progressive":
            # Every scan is entropy-decoded inside jpeg_start_decompress, for the whole image.
            assert row["entropy"] == 0 and row["entropy_fraction"] == 1 and row["start"] > row["idct"]
        else:
            assert row["entropy"] > 0 and 0 < row["entropy_fraction"] <= 1
        if kind != "grayscale":
            assert row["color_convert"] > 0
        # References: every row's entropy decode is part of decoding the whole image.
        assert 0 < row["full_entropy"] < row["full_decode_rgb"]
        assert row["width"] > 0 and row["height"] > 0 and row["scale_num"] in (1, 2, 4, 8)


def test_merged_upsampler_converts_colour_inline(files):
    # At 8/8 (a 224 px output from a 200 px file): at 4/8 or less libjpeg scales 4:2:0 chroma
    # in the IDCT instead and needs no upsampler at all.
    row = profile(files[("generated", "420")], image_size=224, repeats=1, fancy_upsampling=False)
    assert row["scale_num"] == 8
    assert row["merged_upsampler"] and row["color_convert"] == 0 and row["upsample"] > 0
    assert not profile(files[("generated", "420")], image_size=224, repeats=1)["merged_upsampler"]


def test_bad_file_is_a_decode_error(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(_reader.DecodeError):
        profile(str(path), repeats=1)


@pytest.mark.parametrize("variant, options, mean_limit, p99_limit", [
    # JDCT_IFAST's 8-bit fixed-point IDCT: ~0.7 levels off on average, a few at most.
    ("fast_idct", dict(fast_idct=True), 2.0, 8),
    # The merged upsampler replicates chroma instead of interpolating it: exact in flat colour,
    # up to tens of levels on sharp colour edges (petals on foliage), hence the loose p99.
    ("merged_upsampling", dict(fancy_upsampling=False), 2.0, 30),
])
def test_faster_decoder_variants_stay_close_to_the_default(files, variant, options, mean_limit, p99_limit):
    # Against the accurate IDCT with fancy upsampling (evaluation's decoder), one change at a time.
    accurate = dict(fast_idct=False)
    for (corpus, kind), path in files.items():
        data = open(path, "rb").read()
        for size, seed in ((224, 1), (64, 2)):
            default = reader.augment(data, size, seed=seed, **accurate).astype(int)
            faster = reader.augment(data, size, seed=seed, **{**accurate, **options}).astype(int)
            difference = np.abs(default - faster)
            assert difference.mean() < mean_limit, (variant, corpus, kind, difference.mean())
            assert np.percentile(difference, 99) <= p99_limit, (variant, corpus, kind)


def test_cli_prints_a_table_per_corpus_and_variant(files, tmp_path, capsys):
    root = files[("generated", "420")].rsplit("/", 2)[0]  # <root>/<class>/<file>
    out = tmp_path / "profile.json"
    assert main(["--corpus", f"generated={root}", "--files", "3", "--crops", "1", "--repeats", "1",
                 "--image_size", "32", "--variants", "default,fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "### generated, default, 32 px" in printed and "### generated, fast, 32 px" in printed
    assert "| entropy |" in printed and "Reader, 1 thread" in printed
    saved = json.load(open(out))
    summary = saved["corpora"]["generated"]["variants"]["fast"]["summary"]
    assert summary["crops"] == 3 and sum(summary["stages_share"].values()) == pytest.approx(1)
    assert summary["reader_ms_per_image"] > 0
    with pytest.raises(SystemExit):
        main(["--variants", "turbo"])

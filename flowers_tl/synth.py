"""Generated flowers-like JPEG set, laid out like tf_flowers' ``flower_photos/``.

    python -m flowers_tl.synth --out /tmp/flowers --classes 5 --per-class 100 --seed 0

writes ``<class>/<class>_<index:05d>.jpg`` plus a ``LICENSE.txt`` at the root, so
the set stands in for tf_flowers wherever no network or licence allows the real
one. What is imitated, and why:

* sizes: mostly 240-500 px per side in photo aspect ratios, ~3% up to ~1000 px,
  so resize cost and decode cost look like the real set's;
* JPEG kinds on a fixed schedule over the index (70% baseline 4:2:0, 10% each of
  4:4:4, progressive and grayscale, quality 75-95), so even a 6-per-class test
  set holds every kind a decoder has to handle;
* content: textured backgrounds, flower shapes whose hue, petal count, petal
  shape and centre depend on the class, with deliberate overlap (yellow
  dandelions vs sunflowers, red roses vs tulips, white daisies vs dandelion seed
  heads, 10% grayscale) and nuisance position, scale, tilt, lighting, blur and
  noise, so a classifier has to learn shapes over a few epochs, not one colour.

Class ``class_offset + i`` always draws the same kind of flower; ``class_offset``
therefore picks another family of classes (a different source task for transfer
learning) while ``seed`` only picks other samples of the same classes. The same
arguments give byte-identical files: each image has its own numpy Generator
seeded from (seed, class index, image index).
"""

from __future__ import annotations

import argparse
import colorsys
import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

GENERATOR_VERSION = 1  # bump whenever output bytes change, so cached sets are regenerated
DEFAULT_PER_CLASS = 100
# Kinds by index % 10: minority kinds early, so any class with >= 6 images holds all four.
KIND_SCHEDULE = ("420", "444", "420", "progressive", "420", "grayscale", "420", "420", "420", "420")
KIND_NAMES = {"420": "baseline 4:2:0", "444": "baseline 4:4:4", "progressive": "progressive 4:2:0",
              "grayscale": "grayscale"}
Range = tuple[float, float]


@dataclass(frozen=True)
class FlowerClass:
    """How one class draws its flowers; every range is sampled uniformly per flower."""

    name: str
    hues: tuple[Range, ...]  # degrees; a flower picks one range, then a hue inside it
    saturation: Range
    value: Range
    petal_count: tuple[int, int]  # inclusive
    petal_width: Range  # share of the angular period one petal covers; > 1 overlaps
    tip_roundness: Range  # 0.6 pointed ... 2.4 round
    layers: tuple[int, int]  # rings of petals, each smaller and darker
    centre_fraction: Range  # centre disc radius / flower radius; 0 = no disc
    centre_hsv: tuple[float, float, float]
    side_view: float  # probability of a cup seen from the side (tulip-like)
    flowers_per_image: tuple[int, int]
    radius_fraction: Range  # main flower radius / shorter image side
    seed_head: float = 0.0  # probability of a white dandelion clock instead
    # Side view: tulips are tall cups with 2-3 pointed tips; a rosebud is squat,
    # with 4-6 rounded scallops and a darker inner row, so the two stay tellable.
    cup_tips: tuple[int, int] = (2, 3)
    cup_tip_sharpness: float = 1.5  # exponent on the tip wave: > 1 pointed, < 1 rounded
    cup_aspect: Range = (1.15, 1.6)  # height / width
    cup_layers: int = 1


NAMED_CLASSES = (
    FlowerClass("daisy", ((0, 360), (290, 330)), (0.0, 0.18), (0.82, 1.0), (16, 28), (0.5, 0.7),
                (1.5, 2.2), (1, 1), (0.17, 0.3), (48, 0.85, 0.9), 0.0, (1, 4), (0.15, 0.4)),
    FlowerClass("dandelion", ((42, 56),), (0.8, 1.0), (0.85, 1.0), (28, 44), (0.45, 0.6),
                (1.2, 1.8), (2, 4), (0.05, 0.12), (38, 0.95, 0.85), 0.0, (1, 5), (0.1, 0.35),
                seed_head=0.15),
    # Yellow roses are listed once among four red/pink ranges: a minority that
    # overlaps sunflowers and dandelions on colour alone.
    FlowerClass("roses", ((340, 360), (340, 360), (0, 8), (320, 340), (45, 55)), (0.45, 0.95),
                (0.5, 0.95), (5, 7), (1.05, 1.25), (1.8, 2.4), (3, 5), (0.0, 0.0), (0, 0, 0),
                0.25, (1, 3), (0.18, 0.42), cup_tips=(4, 6), cup_tip_sharpness=0.4,
                cup_aspect=(0.8, 1.05), cup_layers=2),
    FlowerClass("sunflowers", ((38, 50),), (0.85, 1.0), (0.85, 1.0), (18, 32), (0.75, 1.0),
                (0.8, 1.2), (1, 2), (0.35, 0.5), (25, 0.8, 0.25), 0.0, (1, 3), (0.2, 0.45)),
    FlowerClass("tulips", ((350, 360), (0, 10), (320, 345), (45, 58), (270, 300), (20, 35)),
                (0.55, 0.95), (0.6, 0.95), (5, 6), (0.85, 1.0), (1.4, 2.0), (1, 2), (0.1, 0.16),
                (90, 0.4, 0.2), 0.8, (1, 4), (0.15, 0.35)),
)


def flower_class(index: int) -> FlowerClass:
    """Class number ``index`` of the endless family; 0-4 are the tf_flowers look-alikes."""
    if index < len(NAMED_CLASSES):
        return NAMED_CLASSES[index]
    # Fixed salt, not the dataset seed: a class must look the same in every set.
    rng = np.random.default_rng([7919, index])
    hue = rng.uniform(0, 360)
    spread = rng.uniform(12, 45)
    saturation_low = rng.uniform(0.05, 0.7)
    value_low = rng.uniform(0.45, 0.85)
    petals_low = int(rng.integers(4, 30))
    width_low = rng.uniform(0.35, 1.0)
    tip_low = rng.uniform(0.6, 2.0)
    layers_low = int(rng.integers(1, 4))
    centre_low = rng.choice([0.0, rng.uniform(0.08, 0.4)])
    return FlowerClass(
        name=f"flower_{index:03d}",
        hues=((hue - spread, hue + spread),),
        saturation=(saturation_low, min(1.0, saturation_low + 0.3)),
        value=(value_low, min(1.0, value_low + 0.2)),
        petal_count=(petals_low, petals_low + int(rng.integers(1, 8))),
        petal_width=(width_low, width_low + 0.2),
        tip_roundness=(tip_low, tip_low + 0.4),
        layers=(layers_low, layers_low + int(rng.integers(0, 2))),
        centre_fraction=(centre_low, centre_low * 1.3),
        centre_hsv=(rng.uniform(0, 360), rng.uniform(0.3, 1.0), rng.uniform(0.15, 0.9)),
        side_view=float(rng.choice([0.0, 0.0, 0.0, 0.6])),
        flowers_per_image=(1, int(rng.integers(1, 5))),
        radius_fraction=(rng.uniform(0.12, 0.25), rng.uniform(0.3, 0.45)),
    )


def _rgb(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_degrees / 360.0) % 1.0, saturation, value), np.float32)


def _image_size(rng: np.random.Generator, min_side: int | None, max_side: int | None) -> tuple[int, int]:
    """(height, width) in tf_flowers' mix: many 500-wide, some 320-500, ~3% large."""
    if rng.random() < 0.03:
        long_side = int(rng.integers(640, 1025))
    elif rng.random() < 0.6:
        long_side = 500
    else:
        long_side = int(rng.integers(320, 501))
    aspect = rng.choice([1.0, 1.25, 1.333, 1.333, 1.5, 1.5, 1.6, 1.78]) * rng.uniform(0.97, 1.03)
    short_side = min(long_side, max(240, round(long_side / aspect)))
    height, width = (long_side, short_side) if rng.random() < 0.25 else (short_side, long_side)
    scale = 1.0
    if max_side is not None:
        scale = min(scale, max_side / max(height, width))
    if min_side is not None:
        scale = max(scale, min_side / min(height, width))
    height, width = (max(1, round(side * scale)) for side in (height, width))
    if max_side is not None:  # min_side may have pushed the long side past the limit
        height, width = min(height, max_side), min(width, max_side)
    return height, width


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Values in ~[0, 1] varying over about ``cells`` blobs across the long side."""
    cells_y = max(2, round(cells * height / max(height, width)))
    cells_x = max(2, round(cells * width / max(height, width)))
    coarse = rng.random((cells_y, cells_x, channels), dtype=np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return smooth.reshape(height, width, channels)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float RGB in [0, 1]: foliage, soil or sky over foliage, with grass strokes."""
    kind = rng.choice(["foliage", "foliage", "soil", "sky"])
    if kind == "soil":
        dark, light = _rgb(rng.uniform(15, 40), rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.35)), \
            _rgb(rng.uniform(20, 45), rng.uniform(0.1, 0.4), rng.uniform(0.45, 0.65))
    else:
        dark, light = _rgb(rng.uniform(75, 135), rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.3)), \
            _rgb(rng.uniform(60, 110), rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.75))
    # Three octaves; the finest (~4 px blobs) gives JPEG photo-like detail to encode.
    mix = (0.6 * _smooth_noise(rng, height, width, 4, 1) + 0.3 * _smooth_noise(rng, height, width, 14, 1)
           + 0.25 * _smooth_noise(rng, height, width, max(height, width) // 4, 1) - 0.12)
    canvas = dark + (light - dark) * np.clip(mix, 0, 1)
    horizon = 0
    if kind == "sky":
        horizon = int(height * rng.uniform(0.25, 0.6))
        sky = _rgb(rng.uniform(195, 220), rng.uniform(0.15, 0.55), rng.uniform(0.7, 0.95))
        ramp = np.linspace(0.85, 1.1, horizon, dtype=np.float32)[:, None, None]
        clouds = _smooth_noise(rng, horizon, width, 6, 1) if horizon else 0
        canvas[:horizon] = np.clip(sky * ramp + 0.25 * clouds, 0, 1)
    canvas = (np.clip(canvas, 0, 1) * 255).astype(np.uint8)

    # Grass strokes are drawn on uint8 because OpenCV anti-aliases only 8-bit images.
    strokes = int(min(600, height * width / 600) * rng.uniform(0.3, 1.0)) if kind != "soil" else 0
    bases_x = rng.uniform(0, width, strokes)
    bases_y = rng.uniform(horizon, height + 0.1 * height, strokes)
    angles = rng.normal(-math.pi / 2, 0.35, strokes)
    lengths = rng.uniform(0.03, 0.15, strokes) * height
    shades = rng.uniform(0.4, 1.3, strokes)
    thickness = max(1, round(min(height, width) / 250))
    stroke_rgb = (dark + light) / 2 * 255
    for x, y, angle, length, shade in zip(bases_x, bases_y, angles, lengths, shades):
        tip = (int(x + length * math.cos(angle)), int(y + length * math.sin(angle)))
        colour = tuple(float(c) for c in np.clip(stroke_rgb * shade, 0, 255))
        cv2.line(canvas, (int(x), int(y)), tip, colour, thickness, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _local_grid(canvas: np.ndarray, cx: float, cy: float, reach: float):
    """Bounding-box view of ``canvas`` and pixel offsets from the centre, or None if off-image."""
    height, width = canvas.shape[:2]
    x0, x1 = max(0, int(cx - reach) - 1), min(width, int(cx + reach) + 2)
    y0, y1 = max(0, int(cy - reach) - 1), min(height, int(cy + reach) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    dy, dx = np.ogrid[y0:y1, x0:x1]
    return canvas[y0:y1, x0:x1], (dx - cx).astype(np.float32), (dy - cy).astype(np.float32)


def _blend(region: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    region += alpha[..., None] * (colour - region)


def _draw_radial(rng, region, dx, dy, cls: FlowerClass, radius: float, petal_rgb, seed_head: bool) -> None:
    """A flower seen from the front: rings of petals in polar coordinates, then a centre disc."""
    rotation, tilt = rng.uniform(0, 2 * math.pi), rng.uniform(0.55, 1.0)
    u = dx * math.cos(rotation) + dy * math.sin(rotation)
    v = (dy * math.cos(rotation) - dx * math.sin(rotation)) / tilt  # tilt: flower faces away
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    light_x, light_y = rng.normal(0, 0.12, 2) / radius
    lighting = 1 + light_x * u + light_y * v  # one side of the flower a little brighter
    if seed_head:
        petals, width, tip, layers, centre, opacity = int(rng.integers(60, 90)), 0.3, 1.0, 1, 0.06, 0.75
        petal_rgb = _rgb(0, 0, rng.uniform(0.8, 0.95))
    else:
        petals = int(rng.integers(cls.petal_count[0], cls.petal_count[1] + 1))
        width, tip = rng.uniform(*cls.petal_width), rng.uniform(*cls.tip_roundness)
        layers = int(rng.integers(cls.layers[0], cls.layers[1] + 1))
        centre, opacity = rng.uniform(*cls.centre_fraction), 1.0
    base = radius * max(centre * 1.15, 0.12)  # petals join at the base: no gap round the disc
    for layer in range(layers):
        layer_radius = radius * (1 - layer * 0.75 / layers)
        t = (theta + rng.uniform(0, 2 * math.pi)) * (petals / (2 * math.pi))
        nearest = np.floor(t + 0.5)
        across = np.abs(t - nearest) / (width / 2)  # 0 on a petal's axis, 1 on its edge
        index = nearest.astype(np.int64) % petals
        lengths = (1 + rng.normal(0, 0.07, petals)).astype(np.float32)
        shades = rng.uniform(0.85, 1.1, petals).astype(np.float32)
        edge = layer_radius * lengths[index] * np.clip(1 - across * across, 0, None) ** (1 / tip)
        alpha = np.clip(np.maximum(edge, base) - r + 0.5, 0, 1) * opacity
        shade = (0.7 + 0.3 * np.clip(r / layer_radius, 0, 1)) * shades[index]
        shade *= (1 - 0.2 * np.clip(across, 0, 1) ** 2) * (1 - 0.12 * layer) * lighting
        _blend(region, alpha, petal_rgb * shade[..., None])
    if centre > 0:
        centre_radius = radius * centre
        alpha = np.clip(centre_radius - r + 0.5, 0, 1)
        ring = r / centre_radius
        seeds = np.cos(theta * 21 + ring * 18) * np.cos(theta * 13 - ring * 18)  # florets in spirals
        shade = (0.85 + 0.15 * seeds + 0.2 * np.clip(1 - ring, 0, 1)) * lighting
        hue, saturation, value = cls.centre_hsv if not seed_head else (30, 0.3, 0.5)
        centre_rgb = _rgb(hue + rng.normal(0, 4), saturation, value * rng.uniform(0.85, 1.1))
        _blend(region, alpha, centre_rgb * shade[..., None])


def _draw_cup(rng, region, dx, dy, cls: FlowerClass, radius: float, petal_rgb) -> None:
    """A cup seen from the side: round bottom, a wave of petal tips on top."""
    rotation = rng.normal(0, 0.25)  # cups stand roughly upright
    half_height = radius * rng.uniform(0.85, 1.05)
    half_width = half_height / rng.uniform(*cls.cup_aspect)
    tips = int(rng.integers(cls.cup_tips[0], cls.cup_tips[1] + 1))
    for layer in range(cls.cup_layers):  # inner rows: narrower, lower, darker
        layer_scale, layer_tone = 1 - 0.3 * layer, 1 - 0.3 * layer
        u = (dx * math.cos(rotation) + dy * math.sin(rotation)) / (half_width * layer_scale)
        v = (dx * math.sin(rotation) - dy * math.cos(rotation)) / half_height  # v points up
        v = v + 0.25 * layer  # inner row's tips sit below the outer row's
        phase = math.pi * layer / 2  # inner scallops fall between the outer ones
        petal_wave = np.abs(np.cos(math.pi * tips * (u + 1) / 2 - math.pi / 2 + phase))
        top = 0.45 + 0.55 * petal_wave**cls.cup_tip_sharpness
        inside_side = (1 - np.sqrt(u * u + np.minimum(v, 0) ** 2)) * half_width * layer_scale
        inside_top = (top - v) * half_height
        alpha = np.clip(np.minimum(inside_side, inside_top) + 0.5, 0, 1)
        shade = (0.78 + 0.22 * petal_wave) * (1 - 0.3 * u * u) * (0.8 + 0.2 * np.clip((v + 1) / 2, 0, 1))
        shade += 0.12 * np.exp(-(((u + 0.35) / 0.15) ** 2))  # glossy highlight
        _blend(region, alpha, petal_rgb * (shade * layer_tone)[..., None])


def _draw_stem(rng, canvas: np.ndarray, cx: float, cy: float, radius: float) -> None:
    """A curved stem down to the bottom edge with up to two leaves, drawn in its bounding box only."""
    height, width = canvas.shape[:2]
    end_x = cx + rng.normal(0, radius)
    bend = rng.normal(0, radius * 0.4)
    points = np.array([[cx, cy], [(cx + end_x) / 2 + bend, (cy + height) / 2], [end_x, height + 5]])
    leaves = []
    for _ in range(int(rng.integers(0, 3))):
        along = rng.uniform(0.3, 0.9)  # leaves sit on the stem, away from the flower
        centre = points[0] + (points[2] - points[0]) * along
        axes = (max(1, int(radius * rng.uniform(0.3, 0.6))), max(1, int(radius * rng.uniform(0.08, 0.15))))
        angle = rng.uniform(-60, 60) + 180 * (rng.random() < 0.5)
        leaves.append((centre, axes, angle))
    stem_rgb = _rgb(rng.uniform(80, 130), rng.uniform(0.45, 0.8), rng.uniform(0.25, 0.55))
    reach = radius * 0.65 + 2
    x0, y0 = (max(0, int(value - reach)) for value in points.min(axis=0))
    x1, y1 = min(width, int(points[:, 0].max() + reach)), height
    if x0 >= x1 or y0 >= y1:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    offset = np.array([x0, y0])
    cv2.polylines(mask, [(points - offset).astype(np.int32)], False, 255, max(1, round(radius * 0.07)),
                  cv2.LINE_AA)
    for centre, axes, angle in leaves:
        leaf_x, leaf_y = (centre - offset).astype(int)
        cv2.ellipse(mask, (int(leaf_x), int(leaf_y)), axes, angle, 0, 360, 255, -1, cv2.LINE_AA)
    _blend(canvas[y0:y1, x0:x1], mask.astype(np.float32) / 255.0, stem_rgb)


def _draw_flower(rng, canvas: np.ndarray, cls: FlowerClass, cx: float, cy: float, radius: float) -> None:
    _draw_stem(rng, canvas, cx, cy, radius)
    hue_low, hue_high = cls.hues[int(rng.integers(len(cls.hues)))]
    petal_rgb = _rgb(rng.uniform(hue_low, hue_high), rng.uniform(*cls.saturation), rng.uniform(*cls.value))
    grid = _local_grid(canvas, cx, cy, radius * 1.35)  # a squat cup is up to 1.3 radii wide
    if grid is None:
        return
    region, dx, dy = grid
    if rng.random() < cls.side_view:
        _draw_cup(rng, region, dx, dy, cls, radius, petal_rgb)
    else:
        _draw_radial(rng, region, dx, dy, cls, radius, petal_rgb, seed_head=rng.random() < cls.seed_head)


def _render(rng, cls: FlowerClass, family: tuple[FlowerClass, ...], height: int, width: int) -> np.ndarray:
    """Float RGB image in [0, 1]: background, blurred far flowers, sharp near ones, camera effects."""
    canvas = _background(rng, height, width)
    short_side = min(height, width)
    main_radius = rng.uniform(*cls.radius_fraction) * short_side
    count = int(rng.integers(cls.flowers_per_image[0], cls.flowers_per_image[1] + 1))
    far, near = [], []
    for number in range(count):
        size = 1.0 if number == 0 else rng.uniform(0.35, 0.9)
        spread = 0.15 if number == 0 else 0.35
        position = (width * np.clip(rng.normal(0.5, spread), 0.05, 0.95),
                    height * np.clip(rng.normal(0.5, spread), 0.05, 0.95))
        (near if size > 0.6 else far).append((cls, *position, main_radius * size))
    if len(family) > 1 and rng.random() < 0.2:  # a small flower of another class, out of focus
        other = family[(family.index(cls) + int(rng.integers(1, len(family)))) % len(family)]
        position = (rng.uniform(0, width), rng.uniform(0, height))
        far.append((other, *position, main_radius * rng.uniform(0.3, 0.6)))
    for flower in far:
        _draw_flower(rng, canvas, *flower)
    depth_sigma = rng.uniform(0.8, 3.0) * short_side / 300
    canvas = cv2.GaussianBlur(canvas, (0, 0), depth_sigma)
    for flower in sorted(near, key=lambda flower: flower[3]):  # biggest last, on top
        _draw_flower(rng, canvas, *flower)

    # Camera: exposure, white balance, light falloff, focus, sensor noise.
    direction, strength = rng.uniform(0, 2 * math.pi), rng.uniform(-0.25, 0.25)
    xs = (np.arange(width, dtype=np.float32) / width - 0.5) * (strength * math.cos(direction))
    ys = (np.arange(height, dtype=np.float32) / height - 0.5) * (strength * math.sin(direction))
    gain = (rng.uniform(0.75, 1.2) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
    canvas *= (1 + ys[:, None, None] + xs[None, :, None]) * gain
    if rng.random() < 0.25:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.6, 2.0) * short_side / 300)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0.004, 0.03)
    return np.clip(canvas, 0, 1)


def _encode(rng, rgb: np.ndarray, kind: str) -> bytes:
    bgr = np.ascontiguousarray((rgb[..., ::-1] * 255 + 0.5).astype(np.uint8))
    params = [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))]
    if kind == "grayscale":
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)  # one channel => a grayscale JPEG
    elif kind == "444":
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    else:  # baseline and progressive both 4:2:0, like most camera files
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
        if kind == "progressive":
            params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, encoded = cv2.imencode(".jpg", bgr, params)
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for a {bgr.shape} {kind} image")
    return encoded.tobytes()


def _make_image(task: tuple[int, int, int, int, int, int | None, int | None]) -> tuple[bytes, str, int, int]:
    """(JPEG bytes, kind, height, width) of one image from (seed, class_offset, classes,
    position, index, min_side, max_side).
    Everything random comes from this image's own Generator, so results do not
    depend on which process makes which image, or in which order."""
    seed, class_offset, classes, position, index, min_side, max_side = task
    family = tuple(flower_class(class_offset + number) for number in range(classes))
    rng = np.random.default_rng([seed, class_offset + position, index])
    height, width = _image_size(rng, min_side, max_side)
    kind = KIND_SCHEDULE[index % len(KIND_SCHEDULE)]
    return _encode(rng, _render(rng, family[position], family, height, width), kind), kind, height, width


def _write_set(out_dir: str, classes: int, per_class: int, seed: int, min_side: int | None,
               max_side: int | None, class_offset: int, workers: int) -> list[tuple[str, int, int]]:
    """Writes the tree; returns (kind, height, width) per image for the summary."""
    if classes < 1 or per_class < 1 or class_offset < 0 or seed < 0 or workers < 1:
        raise ValueError(f"need classes, per_class, workers >= 1 and class_offset, seed >= 0; got "
                         f"classes={classes}, per_class={per_class}, workers={workers}, "
                         f"class_offset={class_offset}, seed={seed}")
    if (min_side is not None and min_side < 8) or (max_side is not None and max_side < (min_side or 8)):
        raise ValueError(f"need 8 <= min_side <= max_side; got min_side={min_side}, max_side={max_side}")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        # Writing over an old set would mix its leftover files into the new one.
        raise FileExistsError(f"{out_dir}: folder is not empty; remove it or pick another --out")
    names = [flower_class(class_offset + position).name for position in range(classes)]
    tasks = [(seed, class_offset, classes, position, index, min_side, max_side)
             for position in range(classes) for index in range(per_class)]
    records = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # spawn, not fork: callers may already run TensorFlow threads, which fork can deadlock.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(_make_image, tasks, chunksize=4)
        else:
            results = map(_make_image, tasks)
        for (_, _, _, position, index, _, _), (data, kind, height, width) in zip(tasks, results):
            folder = os.path.join(out_dir, names[position])
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{names[position]}_{index:05d}.jpg"), "wb") as handle:
                handle.write(data)
            records.append((kind, height, width))
    with open(os.path.join(out_dir, "LICENSE.txt"), "w", encoding="utf-8") as handle:
        handle.write(
            "All images in this folder are synthetic: drawn by flowers_tl.synth "
            f"(generator version {GENERATOR_VERSION}, seed {seed}, classes {classes}, "
            f"per class {per_class}, class offset {class_offset}).\n"
            "They contain no photographs and may be used without restriction (CC0).\n"
        )
    return records


def generate(out_dir: str | os.PathLike[str], classes: int = 5, per_class: int = DEFAULT_PER_CLASS,
             seed: int = 0, min_side: int | None = None, max_side: int | None = None,
             class_offset: int = 0, workers: int = 1) -> str:
    """Writes the set into ``out_dir`` (must be missing or empty); returns its absolute path.
    ``workers`` > 1 renders in that many processes; the bytes are the same either way."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    _write_set(out_dir, classes, per_class, seed, min_side, max_side, class_offset, workers)
    return out_dir


def default_cache_dir() -> str:
    return os.environ.get("FLOWERS_TL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flowers_tl")


def default_dataset(cache_dir: str | None = None, classes: int = 5, per_class: int = DEFAULT_PER_CLASS,
                    seed: int = 0, min_side: int | None = None, max_side: int | None = None,
                    class_offset: int = 0, workers: int | None = None) -> str:
    """The set for these arguments, generated on first use (in ``workers`` processes,
    default all cores) and cached under ``cache_dir``, else $FLOWERS_TL_CACHE, else
    ~/.cache/flowers_tl.

    The set is written into a hidden temp folder beside its final name and then
    renamed, which is atomic on one filesystem: a crash leaves only a ``.tmp-*``
    folder (never listed, safe to delete), not a half-written cached set. If two
    processes race, the loser's copy is discarded (same bytes anyway).
    """
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    name = (f"synth-v{GENERATOR_VERSION}-c{classes}-n{per_class}-s{seed}-o{class_offset}"
            f"-min{min_side or 'default'}-max{max_side or 'default'}")
    final = os.path.join(cache_dir, name)
    if os.path.isdir(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir)
    try:
        generate(temporary, classes, per_class, seed, min_side, max_side, class_offset,
                 workers or os.cpu_count() or 1)
        os.rename(temporary, final)
    except OSError:
        if not os.path.isdir(final):
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # no-op after a successful rename
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowers_tl.synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (must be missing or empty)")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, help="scale images up to at least this short side")
    parser.add_argument("--max-side", type=int, help="scale images down to at most this long side")
    parser.add_argument("--class-offset", type=int, default=0, help="start at another family of classes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes rendering images (default: all cores; output is identical)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out_dir = os.path.abspath(args.out)
    try:
        records = _write_set(out_dir, args.classes, args.per_class, args.seed, args.min_side,
                             args.max_side, args.class_offset, args.workers)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    kinds = Counter(kind for kind, _, _ in records)
    sides = [side for _, height, width in records for side in (height, width)]
    print(f"wrote {len(records)} images ({args.classes} classes x {args.per_class}; "
          + ", ".join(f"{kinds[kind]} {KIND_NAMES[kind]}" for kind in KIND_NAMES)
          + f"; sides {min(sides)}-{max(sides)} px) to {out_dir} in {time.perf_counter() - start:.1f} s"
          + f" with {args.workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Type stub of the private C++ module; use flowers_tl.reader.

The option classes are constructed by keyword only (an unknown name or a wrongly typed value is
a TypeError naming it); fields not given keep the C++ defaults, except the crop geometry and
eval_resize_ratio, which are unset (NaN / 0) until set from flowers_tl.geometry.
"""
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

class DecodeError(ValueError): ...

class DecoderOptions:
    _fields: ClassVar[tuple[str, ...]]
    max_pixels: int
    max_scans: int
    dct_scales: list[int]
    fast_idct: bool
    fancy_upsampling: bool
    skip_rows_below_crop: bool
    def __init__(self, *, max_pixels: int = ..., max_scans: int = ..., dct_scales: list[int] = ...,
                 fast_idct: bool = ..., fancy_upsampling: bool = ...,
                 skip_rows_below_crop: bool = ...) -> None: ...

class CropOptions:
    _fields: ClassVar[tuple[str, ...]]
    area_min: float
    area_max: float
    aspect_min: float
    aspect_max: float
    max_attempts: int
    def __init__(self, *, area_min: float = ..., area_max: float = ..., aspect_min: float = ...,
                 aspect_max: float = ..., max_attempts: int = ...) -> None: ...

class ImageOptions:
    _fields: ClassVar[tuple[str, ...]]
    image_size: int
    training: bool
    crop: CropOptions
    random_flip: bool
    eval_resize_ratio: float
    use_dct_scaling: bool
    layout: str
    def __init__(self, *, image_size: int = ..., training: bool = ..., crop: CropOptions = ...,
                 random_flip: bool = ..., eval_resize_ratio: float = ...,
                 use_dct_scaling: bool = ..., layout: str = ...) -> None: ...

class CacheOptions:
    _fields: ClassVar[tuple[str, ...]]
    location: str
    short_side: int
    max_bytes: int
    version: str
    def __init__(self, *, location: str = ..., short_side: int = ..., max_bytes: int = ...,
                 version: str = ...) -> None: ...

class ReaderOptions:
    _fields: ClassVar[tuple[str, ...]]
    batch_size: int
    num_threads: int
    shuffle: bool
    seed: int
    prefetch: int
    shard_index: int
    num_shards: int
    drop_remainder: bool
    num_epochs: int
    start_batch: int
    skip_bad_files: bool
    fill_bad_slots: bool
    decoder: DecoderOptions
    image: ImageOptions
    cache: CacheOptions
    def __init__(self, *, batch_size: int = ..., num_threads: int = ..., shuffle: bool = ...,
                 seed: int = ..., prefetch: int = ..., shard_index: int = ...,
                 num_shards: int = ..., drop_remainder: bool = ..., num_epochs: int = ...,
                 start_batch: int = ..., skip_bad_files: bool = ...,
                 fill_bad_slots: bool = ..., decoder: DecoderOptions = ..., image: ImageOptions = ...,
                 cache: CacheOptions = ...) -> None: ...

def build_info() -> dict[str, Any]: ...
def jpeg_info(data: Buffer, decoder_options: DecoderOptions = ...) -> dict[str, Any]: ...
def decode_jpeg(data: Buffer, decoder_options: DecoderOptions = ...) -> npt.NDArray[np.uint8]: ...
def decode_crop_resize(
    data: Buffer, box: tuple[float, float, float, float], out_width: int, out_height: int,
    flip: bool, image_options: ImageOptions, decoder_options: DecoderOptions,
    simd: bool = ...,
) -> tuple[npt.NDArray[np.uint8], int, int]: ...
def augment(data: Buffer, image_options: ImageOptions, decoder_options: DecoderOptions,
            seed: int) -> npt.NDArray[np.uint8]: ...
def augment_cached(data: Buffer, image_options: ImageOptions, decoder_options: DecoderOptions,
                   seed: int, short_side: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]: ...
def random_resized_crop(width: int, height: int, seed: int,
                        crop_options: CropOptions) -> tuple[float, float, float, float]: ...
def choose_dct_scale(box_width: float, box_height: float, min_width: int, min_height: int,
                     decoder_options: DecoderOptions = ...) -> int: ...

def profile_crop(path: str, image_options: ImageOptions, decoder_options: DecoderOptions,
                 seed: int, epoch: int, file_index: int, repeats: int) -> dict[str, Any]: ...

class BatchReader:
    def __init__(self, paths: list[str], labels: list[int], options: ReaderOptions) -> None: ...
    def next(self, slice_ms: int = ...) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32], int, int] | None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def steps_per_epoch(self) -> int: ...
    @property
    def images_per_epoch(self) -> int: ...

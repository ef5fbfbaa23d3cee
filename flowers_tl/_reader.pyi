"""Type stub of the private C++ module; use flowers_tl.reader."""
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

class DecodeError(ValueError): ...

def build_info() -> dict[str, Any]: ...
def jpeg_info(data: Buffer, max_pixels: int = ...) -> dict[str, Any]: ...
def decode_jpeg(data: Buffer, max_pixels: int = ..., fast_idct: bool = ...,
                fancy_upsampling: bool = ...) -> npt.NDArray[np.uint8]: ...
def decode_crop_resize(
    data: Buffer, box: tuple[float, float, float, float], out_width: int, out_height: int,
    flip: bool = ..., use_dct_scaling: bool = ..., layout: str = ..., allowed_scales: int = ...,
    max_pixels: int = ..., fast_idct: bool = ..., fancy_upsampling: bool = ...,
) -> tuple[npt.NDArray[np.uint8], int]: ...
def augment(
    data: Buffer, image_size: int, training: bool = ..., seed: int = ...,
    area_range: tuple[float, float] = ..., aspect_range: tuple[float, float] = ...,
    random_flip: bool = ..., eval_resize_ratio: float = ..., use_dct_scaling: bool = ...,
    layout: str = ..., allowed_scales: int = ..., max_pixels: int = ..., fast_idct: bool = ...,
    fancy_upsampling: bool = ...,
) -> npt.NDArray[np.uint8]: ...
def random_resized_crop(
    width: int, height: int, seed: int, area_range: tuple[float, float] = ...,
    aspect_range: tuple[float, float] = ...,
) -> tuple[float, float, float, float]: ...
def choose_dct_scale(box_width: float, box_height: float, min_width: int, min_height: int,
                     allowed_scales: int = ...) -> int: ...

class BatchReader:
    def __init__(
        self, paths: list[str], labels: list[int], batch_size: int, image_size: int,
        training: bool, shuffle: bool, num_threads: int, layout: str, seed: int, prefetch: int,
        shard_index: int, num_shards: int, drop_remainder: bool, num_epochs: int, start_batch: int,
        area_range: tuple[float, float], aspect_range: tuple[float, float], random_flip: bool,
        eval_resize_ratio: float, use_dct_scaling: bool, allowed_scales: int, max_pixels: int,
        fast_idct: bool, fancy_upsampling: bool, skip_bad_files: bool,
    ) -> None: ...
    def next(self, slice_ms: int = ...) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32], int, int] | None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def steps_per_epoch(self) -> int: ...
    @property
    def images_per_epoch(self) -> int: ...

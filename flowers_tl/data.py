"""Class-per-folder dataset listing and a stable train/val split.

The layout is the one of tf_flowers' ``flower_photos/`` (and of timm's
``reader_image_folder``)::

    root/
      LICENSE.txt          <- files at the root are not classes: ignored
      daisy/*.jpg          <- one folder per class
      roses/more/*.JPEG    <- images are found recursively inside a class folder
      ...

Classes are the sorted sub-folder names, or the names listed in ``labels.txt``
(one per line, in label order) when that file sits in ``root`` or is passed as
``labels_file``. Folders that exist but are not listed are left out and named in
``FolderDataset.unlisted_folders``. Entries whose name starts with '.' are
skipped everywhere (``.DS_Store``, ``.ipynb_checkpoints``, half-written temp
folders). Listing never opens an image: a broken JPEG is the reader's business.

Symlinked files are listed; symlinked folders *inside* a class folder are not
followed (``os.walk`` default), so a link loop cannot hang the listing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg")  # compared lower-cased: .JPG, .Jpeg ... count too
LABELS_FILE_NAME = "labels.txt"


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message names the folder or file."""


@dataclass(frozen=True)
class FolderDataset:
    """An ordered list of (image file, label) pairs and the class names.

    ``files`` are absolute paths ordered by (label, relative path), so the order
    is the same on every machine and does not depend on directory read order.
    ``ignored_files`` (relative paths) are the non-JPEG files found inside class
    folders; they are reported so a folder full of PNGs is noticed, not silently
    dropped. ``unlisted_folders`` are class-like folders left out because a
    labels file did not list them (always empty without a labels file).
    """

    root: str
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]
    ignored_files: tuple[str, ...]
    unlisted_folders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.files) != len(self.labels):
            raise DatasetError(
                f"{self.root}: {len(self.files)} files but {len(self.labels)} labels"
            )
        for label in self.labels:
            if not 0 <= label < len(self.class_names):
                raise DatasetError(
                    f"{self.root}: label {label} outside 0..{len(self.class_names) - 1}"
                )

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> dict[str, int]:
        """Images per class name; every class appears, with 0 if a split emptied it."""
        counts = dict.fromkeys(self.class_names, 0)
        for label in self.labels:
            counts[self.class_names[label]] += 1
        return counts

    def relative_paths(self) -> tuple[str, ...]:
        """Paths relative to ``root`` with '/' separators (stable across OSes)."""
        return tuple(_relative_path(path, self.root) for path in self.files)


def _relative_path(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _read_labels_file(path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read labels file ({error.strerror})") from error
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise DatasetError(f"{path}: labels file lists no class")
    seen: set[str] = set()
    for name in names:
        # A name with a separator would silently reach outside the root folder.
        if name in (".", "..") or "/" in name or os.sep in name:
            raise DatasetError(f"{path}: class name {name!r} is not a plain folder name")
        if name in seen:
            raise DatasetError(f"{path}: class {name!r} is listed twice")
        seen.add(name)
    return names


def _list_class_folder(
    root: str, class_name: str
) -> tuple[list[str], list[str]]:
    """Returns (image relative paths, ignored relative paths), both sorted."""
    class_folder = os.path.join(root, class_name)
    images: list[str] = []
    ignored: list[str] = []
    for folder, subfolders, file_names in os.walk(class_folder):
        # Pruning in place is how os.walk is told not to descend.
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in file_names:
            if name.startswith("."):
                continue
            relative = _relative_path(os.path.join(folder, name), root)
            (images if _is_image(name) else ignored).append(relative)
    return sorted(images), sorted(ignored)


def list_folder(root: str | os.PathLike[str], labels_file: str | None = None) -> FolderDataset:
    """Lists a class-per-folder JPEG tree; raises DatasetError naming the culprit."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root):
        raise DatasetError(f"{root}: no such folder")
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: not a directory")

    folders = sorted(
        entry.name
        for entry in os.scandir(root)
        if not entry.name.startswith(".") and entry.is_dir()
    )
    if labels_file is None and os.path.isfile(os.path.join(root, LABELS_FILE_NAME)):
        labels_file = os.path.join(root, LABELS_FILE_NAME)

    unlisted: tuple[str, ...] = ()
    if labels_file is not None:
        class_names = _read_labels_file(os.fspath(labels_file))
        for name in class_names:
            if name not in folders:
                raise DatasetError(
                    f"{os.path.join(root, name)}: class {name!r} from {labels_file} has no folder"
                )
        unlisted = tuple(name for name in folders if name not in class_names)
    else:
        class_names = tuple(folders)
        if not class_names:
            raise DatasetError(f"{root}: no class folders (expected one sub-folder per class)")

    files: list[str] = []
    labels: list[int] = []
    ignored: list[str] = []
    for label, class_name in enumerate(class_names):
        images, class_ignored = _list_class_folder(root, class_name)
        if not images:
            raise DatasetError(
                f"{os.path.join(root, class_name)}: class folder has no "
                f".jpg/.jpeg images ({len(class_ignored)} other files)"
            )
        files.extend(os.path.join(root, *relative.split("/")) for relative in images)
        labels.extend([label] * len(images))
        ignored.extend(class_ignored)

    return FolderDataset(
        root=root,
        class_names=class_names,
        files=tuple(files),
        labels=tuple(labels),
        ignored_files=tuple(ignored),
        unlisted_folders=unlisted,
    )


def _unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from text; the same on every machine and Python run
    (built-in hash() is salted per process, so it cannot be used here)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split(
    dataset: FolderDataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[FolderDataset, FolderDataset]:
    """Splits into (train, val), deciding each file alone from hash(seed, relative path).

    Because no file's side depends on any other file, adding or removing images
    never moves the others between train and val, and the split does not depend
    on where the dataset lives. The val share is ``val_fraction`` in expectation
    (per class too), not exactly. Both halves keep every class name, the ignored
    files and the unlisted folders of the listing.
    """
    if not 0.0 <= val_fraction < 1.0:  # also rejects NaN
        raise DatasetError(f"{dataset.root}: val_fraction must be in [0, 1), got {val_fraction}")
    in_val = [
        _unit_hash(f"{seed}:{relative}") < val_fraction
        for relative in dataset.relative_paths()
    ]

    def subset(keep_val: bool) -> FolderDataset:
        chosen = [index for index, is_val in enumerate(in_val) if is_val == keep_val]
        return dataclasses.replace(
            dataset,
            files=tuple(dataset.files[index] for index in chosen),
            labels=tuple(dataset.labels[index] for index in chosen),
        )

    return subset(keep_val=False), subset(keep_val=True)

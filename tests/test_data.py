"""Tests for flowers_tl.data: listing a class-per-folder tree and splitting it.

Listing never decodes, so the trees here are empty files with image names.
"""

import os

import pytest

from flowers_tl.data import DatasetError, FolderDataset, list_folder, split


def make_tree(root, relative_paths):
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


FLOWER_PHOTOS_LIKE = [
    "LICENSE.txt",
    "daisy/100.jpg",
    "daisy/2.JPG",
    "daisy/notes.txt",
    "dandelion/a.jpeg",
    "dandelion/b.Jpg",
    "dandelion/c.png",
    "dandelion/.hidden.jpg",
    "roses/nested/deeper/x.jpg",
    "roses/r.JPEG",
    ".thumbnails/t.jpg",
]


def test_lists_flower_photos_like_tree(tmp_path):
    root = make_tree(tmp_path / "flower_photos", FLOWER_PHOTOS_LIKE)
    dataset = list_folder(root)

    assert dataset.root == str(root)
    # LICENSE.txt (a root file) and .thumbnails (hidden) are not classes.
    assert dataset.class_names == ("daisy", "dandelion", "roses")
    # Ordered by (label, relative path): plain string order, so "100" before "2".
    assert dataset.relative_paths() == (
        "daisy/100.jpg", "daisy/2.JPG",
        "dandelion/a.jpeg", "dandelion/b.Jpg",
        "roses/nested/deeper/x.jpg", "roses/r.JPEG",
    )
    assert dataset.labels == (0, 0, 1, 1, 2, 2)
    assert all(os.path.isabs(path) and os.path.isfile(path) for path in dataset.files)
    assert dataset.ignored_files == ("daisy/notes.txt", "dandelion/c.png")
    assert dataset.unlisted_folders == ()
    assert len(dataset) == 6
    assert dataset.class_counts() == {"daisy": 2, "dandelion": 2, "roses": 2}


def test_accepts_pathlike_and_relative_root(tmp_path, monkeypatch):
    make_tree(tmp_path / "set", ["a/1.jpg", "b/2.jpg"])
    monkeypatch.chdir(tmp_path)
    assert list_folder("set").root == str(tmp_path / "set")
    assert list_folder(tmp_path / "set").class_names == ("a", "b")


def test_labels_txt_sets_class_order_and_leaves_out_unlisted_folders(tmp_path):
    root = make_tree(tmp_path, ["tulips/1.jpg", "daisy/1.jpg", "roses/1.jpg", "extra/1.jpg"])
    (root / "labels.txt").write_text("\ntulips\n  daisy \n\nroses\n")
    dataset = list_folder(root)

    assert dataset.class_names == ("tulips", "daisy", "roses")
    assert dataset.relative_paths() == ("tulips/1.jpg", "daisy/1.jpg", "roses/1.jpg")
    assert dataset.labels == (0, 1, 2)
    assert dataset.unlisted_folders == ("extra",)


def test_labels_file_argument_overrides_labels_txt(tmp_path):
    root = make_tree(tmp_path / "set", ["a/1.jpg", "b/1.jpg"])
    (root / "labels.txt").write_text("a\nb\n")
    other = tmp_path / "order.txt"
    other.write_text("b\na\n")
    assert list_folder(root, labels_file=str(other)).class_names == ("b", "a")


@pytest.mark.parametrize(
    "labels_text, culprit",
    [("daisy\nmissing\n", "missing"), ("daisy\ndaisy\n", "labels.txt"), ("\n\n", "labels.txt"),
     ("../daisy\n", "labels.txt")],
    ids=["missing-folder", "listed-twice", "empty", "not-a-plain-name"],
)
def test_bad_labels_file_is_an_error_naming_it(tmp_path, labels_text, culprit):
    root = make_tree(tmp_path, ["daisy/1.jpg"])
    (root / "labels.txt").write_text(labels_text)
    with pytest.raises(DatasetError, match=culprit):
        list_folder(root)


def test_missing_root_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="no such folder") as error:
        list_folder(missing)
    assert str(missing) in str(error.value)


def test_file_as_root_is_an_error_naming_it(tmp_path):
    file = tmp_path / "file.jpg"
    file.write_bytes(b"")
    with pytest.raises(DatasetError, match="not a directory") as error:
        list_folder(file)
    assert str(file) in str(error.value)


def test_root_without_class_folders_is_an_error_naming_it(tmp_path):
    root = make_tree(tmp_path / "flat", ["LICENSE.txt", "1.jpg", ".hidden/2.jpg"])
    with pytest.raises(DatasetError, match="no class folders") as error:
        list_folder(root)
    assert str(root) in str(error.value)


def test_class_folder_without_images_is_an_error_naming_it(tmp_path):
    root = make_tree(tmp_path, ["daisy/1.jpg", "roses/1.png", "roses/.2.jpg"])
    with pytest.raises(DatasetError, match="no .jpg/.jpeg images") as error:
        list_folder(root)
    assert str(tmp_path / "roses") in str(error.value)


def many_files(root, count, classes=("a", "b", "c")):
    return make_tree(root, [f"{classes[index % len(classes)]}/img_{index:05d}.jpg" for index in range(count)])


def test_split_is_deterministic_and_seeded(tmp_path):
    dataset = list_folder(many_files(tmp_path, 300))
    train, val = split(dataset, val_fraction=0.2, seed=1)
    train_again, val_again = split(dataset, val_fraction=0.2, seed=1)
    assert (train, val) == (train_again, val_again)
    assert sorted(train.files + val.files) == sorted(dataset.files)
    assert not set(train.files) & set(val.files)
    # Each half stays in (label, path) order, so it can be fed as is.
    order = list(zip(train.labels, train.relative_paths()))
    assert order == sorted(order)
    _, val_other_seed = split(dataset, val_fraction=0.2, seed=2)
    assert set(val_other_seed.files) != set(val.files)


def test_split_does_not_depend_on_where_the_dataset_lives(tmp_path):
    first = list_folder(many_files(tmp_path / "here", 200))
    second = list_folder(many_files(tmp_path / "elsewhere" / "deeper", 200))
    assert split(first, 0.3)[1].relative_paths() == split(second, 0.3)[1].relative_paths()


def test_adding_files_moves_no_other_file_between_halves(tmp_path):
    root = many_files(tmp_path, 400)
    train_before, val_before = split(list_folder(root), val_fraction=0.25, seed=7)
    make_tree(root, [f"b/new_{index}.jpg" for index in range(50)] + ["d/only.jpg"])
    train_after, val_after = split(list_folder(root), val_fraction=0.25, seed=7)
    assert set(train_before.relative_paths()) <= set(train_after.relative_paths())
    assert set(val_before.relative_paths()) <= set(val_after.relative_paths())


def test_val_fraction_is_respected_on_average(tmp_path):
    dataset = list_folder(many_files(tmp_path, 1000))
    for fraction in (0.1, 0.5):
        train, val = split(dataset, val_fraction=fraction)
        # Each file is an independent Bernoulli(fraction) draw: binomial standard
        # deviation is at most sqrt(1000 * 0.25) ~ 16 files, so 4 sigma = 64.
        assert abs(len(val) - fraction * 1000) < 64
        assert len(train) + len(val) == 1000


def test_zero_val_fraction_gives_empty_val_with_all_classes(tmp_path):
    dataset = list_folder(many_files(tmp_path, 30))
    train, val = split(dataset, val_fraction=0.0)
    assert train == dataset
    assert len(val) == 0 and val.files == () and val.labels == ()
    assert val.class_names == dataset.class_names
    assert val.class_counts() == {"a": 0, "b": 0, "c": 0}


def test_class_counts_of_split_halves_add_up(tmp_path):
    dataset = list_folder(many_files(tmp_path, 90))
    train, val = split(dataset, val_fraction=0.3, seed=3)
    total = {name: train.class_counts()[name] + val.class_counts()[name] for name in dataset.class_names}
    assert total == dataset.class_counts() == {"a": 30, "b": 30, "c": 30}


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_val_fraction_outside_zero_one_is_an_error(tmp_path, fraction):
    dataset = list_folder(many_files(tmp_path, 3))
    with pytest.raises(DatasetError, match="val_fraction") as error:
        split(dataset, val_fraction=fraction)
    assert dataset.root in str(error.value)


def test_inconsistent_dataset_is_rejected():
    with pytest.raises(DatasetError, match="2 files but 1 labels"):
        FolderDataset(root="/r", class_names=("a",), files=("/r/a/1.jpg", "/r/a/2.jpg"), labels=(0,),
                      ignored_files=())
    with pytest.raises(DatasetError, match="label 1 outside"):
        FolderDataset(root="/r", class_names=("a",), files=("/r/a/1.jpg",), labels=(1,), ignored_files=())

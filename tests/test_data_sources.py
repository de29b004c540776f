"""The ``imagefolder``, ``filelist`` and ``torchvision`` dataset sources and the class lists (offline)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_qrel.data import DATASET_SOURCES, OOD_LABEL, load_dataset
from pytest_qrel.data import classnames as CN
from pytest_qrel.errors import DataError, DataMissingError, UnknownNameError


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (16, 16), mode: str = "L", fmt: str | None = None) -> Path:
    """A small image whose pixels encode ``value`` (so tests can tell files apart after loading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = np.clip(rng.normal(value, 20, size=(size[1], size[0])), 0, 255).astype(np.uint8)
    if mode == "RGB":
        arr = np.stack([arr, arr[::-1], arr[:, ::-1]], axis=-1)
    Image.fromarray(arr, mode=mode).save(path, format=fmt)
    return path


def make_tree(root: Path, layout: dict[str, int], ext: str = ".png") -> Path:
    """``{"cat": 2, "dog": 3}`` -> root/cat/0.png, root/cat/1.png, root/dog/0.png ..."""
    for k, (cls, n) in enumerate(layout.items()):
        for i in range(n):
            write_image(root / cls / f"img{i}{ext}", value=20 * k + i)
    return root


def imagefolder(root, split="test", base_dir=None, **options):
    return load_dataset(f"imagefolder:{root}", split=split, options=options, base_dir=base_dir)


@pytest.fixture
def tree(tmp_path):
    # class names deliberately not in creation order: 'b' is created first
    return make_tree(tmp_path / "data", {"b_dog": 3, "a_cat": 2, "c_eel": 1})


# ------------------------------------------------------------------------------------ imagefolder


def test_sources_are_registered():
    load_dataset("embedded:digits", split="test")  # imports the built-in sources
    for name in ("imagefolder", "filelist", "torchvision", "shift"):
        assert name in DATASET_SOURCES


def test_imagefolder_classes_sorted_labels_and_order(tree):
    ds = imagefolder(tree)
    assert ds.class_names == ["a_cat", "b_dog", "c_eel"]
    assert len(ds) == 6
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert ds.relpaths == ["a_cat/img0.png", "a_cat/img1.png", "b_dog/img0.png", "b_dog/img1.png", "b_dog/img2.png", "c_eel/img0.png"]
    image, label = ds[3]
    assert label == 1
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (16, 16)
    # pixel content is the file's (b_dog/img1.png was written with value 20*0+1)
    expected = np.asarray(Image.open(tree / "b_dog" / "img1.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert ds[-1][1] == 2
    with pytest.raises(IndexError):
        ds[6]


def test_imagefolder_nested_files_and_hidden_entries(tree):
    write_image(tree / "a_cat" / "sub" / "deep.png")
    write_image(tree / "a_cat" / ".hidden.png")
    write_image(tree / ".cache" / "x.png")
    (tree / "a_cat" / "notes.txt").write_text("not an image")
    ds = imagefolder(tree)
    assert ds.class_names == ["a_cat", "b_dog", "c_eel"]
    assert ds.relpaths[:3] == ["a_cat/img0.png", "a_cat/img1.png", "a_cat/sub/deep.png"]
    assert len(ds) == 7


def test_imagefolder_loads_lazily(tree, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(Path(fp).name) or real_open(fp, *a, **k))
    ds = imagefolder(tree)
    assert opened == []  # listing and fingerprinting read no pixels
    ds[2]
    assert opened == ["img0.png"]
    # a file deleted after loading fails only when read, with a DataError naming it
    (tree / "c_eel" / "img0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"c_eel/img0\.png"):
        ds[5]


def test_imagefolder_fingerprint_stable_and_sensitive(tree, tmp_path):
    a, b = imagefolder(tree), imagefolder(tree)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    # mtimes are not part of it; the absolute location is not part of it
    os.utime(tree / "a_cat" / "img0.png", (1, 1))
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    assert imagefolder(tree).fingerprint == a.fingerprint == imagefolder(copy).fingerprint
    # a new file changes it
    write_image(tree / "c_eel" / "img9.png")
    added = imagefolder(tree).fingerprint
    assert added != a.fingerprint
    # so does a size change, a rename, a moved file (label change)
    (tree / "c_eel" / "img9.png").write_bytes((tree / "c_eel" / "img9.png").read_bytes() + b"\0")
    assert imagefolder(tree).fingerprint != added
    shutil.move(tree / "c_eel" / "img9.png", tree / "b_dog" / "img9.png")
    moved = imagefolder(tree).fingerprint
    assert moved not in (added, a.fingerprint)
    # and the options that change the content
    assert imagefolder(tree, mode="L").fingerprint != moved
    assert imagefolder(tree, labels="none").fingerprint != moved


def test_imagefolder_content_hash_sees_same_size_edits(tree):
    path = tree / "a_cat" / "img0.png"
    plain, hashed = imagefolder(tree).fingerprint, imagefolder(tree, content_hash=True).fingerprint
    assert plain != hashed
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    assert imagefolder(tree).fingerprint == plain  # documented blind spot of the cheap fingerprint
    assert imagefolder(tree, content_hash=True).fingerprint != hashed


def test_flat_folder_is_ood(tmp_path):
    for i in range(4):
        write_image(tmp_path / "ood" / f"n{i}.jpg", value=i, fmt="JPEG")
    ds = imagefolder(tmp_path / "ood")
    assert len(ds) == 4 and ds.labels.tolist() == [OOD_LABEL] * 4
    assert ds.class_names is None
    assert ds.relpaths == ["n0.jpg", "n1.jpg", "n2.jpg", "n3.jpg"]
    assert ds[0][0].size == (16, 16)


def test_labels_none_makes_a_class_tree_ood(tree):
    ds = imagefolder(tree, labels="none")
    assert len(ds) == 6 and set(ds.labels.tolist()) == {OOD_LABEL} and ds.class_names is None


def test_loose_images_next_to_class_folders_are_ambiguous(tree):
    write_image(tree / "stray.png")
    with pytest.raises(DataError, match=r"stray\.png.*labels: none"):
        imagefolder(tree)
    assert len(imagefolder(tree, labels="none")) == 7


def test_no_images_is_a_data_error(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "x.txt").write_text("")
    with pytest.raises(DataError, match="no images found"):
        imagefolder(tmp_path / "empty")


def test_an_empty_class_folder_is_a_data_error(tree):
    """A class folder with no file (a failed copy) is named once; one whose files 'extensions' filters
    out is not empty (test_extensions_option)."""
    (tree / "d_fox").mkdir()
    with pytest.raises(DataError, match=r"class folder .*d_fox is empty \(fix: put its images there, or remove the folder\)"):
        imagefolder(tree)
    (tree / "e_gnu" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"2 empty class folders: d_fox, e_gnu"):
        imagefolder(tree)


def test_extensions_option(tree):
    write_image(tree / "a_cat" / "extra.bmp", fmt="BMP")
    assert len(imagefolder(tree)) == 7
    assert len(imagefolder(tree, extensions=[".png"])) == 6
    assert len(imagefolder(tree, extensions=["BMP"])) == 1


def test_classes_file_sets_the_label_space(tree, tmp_path):
    (tmp_path / "classes.txt").write_text("# model order\nc_eel\nzebra\nb_dog\n\na_cat\n")
    ds = imagefolder(tree, base_dir=tmp_path, classes="classes.txt")
    assert ds.class_names == ["c_eel", "zebra", "b_dog", "a_cat"]
    assert ds.labels.tolist() == [3, 3, 2, 2, 2, 0]
    assert imagefolder(tree, classes=["c_eel", "zebra", "b_dog", "a_cat"]).labels.tolist() == ds.labels.tolist()


def test_folder_outside_the_class_list(tree):
    with pytest.raises(DataError, match=r"c_eel.*unknown_classes"):
        imagefolder(tree, classes=["a_cat", "b_dog"])
    skipped = imagefolder(tree, classes=["a_cat", "b_dog"], unknown_classes="ignore")
    assert skipped.labels.tolist() == [0, 0, 1, 1, 1]
    as_ood = imagefolder(tree, classes=["a_cat", "b_dog"], unknown_classes="ood")
    assert as_ood.labels.tolist() == [0, 0, 1, 1, 1, OOD_LABEL]


def test_class_index_mapping_and_files(tree, tmp_path):
    ds = imagefolder(tree, class_index={"a_cat": 5, "b_dog": 2, "c_eel": 2})
    assert ds.labels.tolist() == [5, 5, 2, 2, 2, 2]
    assert ds.class_names[2] == "b_dog|c_eel" and ds.class_names[5] == "a_cat" and len(ds.class_names) == 6
    (tmp_path / "idx.txt").write_text("a_cat 1\nb_dog, 0\nc_eel 2  # comment\n")
    assert imagefolder(tree, base_dir=tmp_path, class_index="idx.txt").labels.tolist() == [1, 1, 0, 0, 0, 2]
    (tmp_path / "keras.json").write_text('{"0": ["c_eel", "eel"], "1": ["a_cat", "cat"], "2": ["b_dog", "dog"]}')
    assert imagefolder(tree, base_dir=tmp_path, class_index="keras.json").labels.tolist() == [1, 1, 2, 2, 2, 0]
    with pytest.raises(DataError, match="either 'classes'"):
        imagefolder(tree, classes=["a_cat"], class_index={"a_cat": 0})
    with pytest.raises(DataError, match="integer >= 0"):
        imagefolder(tree, class_index={"a_cat": -1, "b_dog": 0, "c_eel": 1})


def test_imagenet_synset_folders_map_to_model_indices(tmp_path):
    root = make_tree(tmp_path / "val", {"n01443537": 1, "n01440764": 2, "n15075141": 1})
    ds = imagefolder(root, classes="imagenet1k")
    assert ds.labels.tolist() == [0, 0, 1, 999]
    assert len(ds.class_names) == 1000
    assert ds.class_names[1].lower().startswith("goldfish")


def test_builtin_class_lists():
    synsets = CN.imagenet_synsets()
    assert len(synsets) == 1000 and synsets[0] == "n01440764" and synsets == sorted(synsets)
    names = CN.imagenet_classnames()
    assert len(names) == 1000 and names[0] == "tench"
    with pytest.raises(UnknownNameError, match="imagenet1k"):
        CN.CLASS_LISTS.get("imagenet1")


def test_builtin_templates():
    pytest.importorskip("open_clip")
    templates = CN.imagenet_templates()
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)
    assert templates[0].format("dog") == "a bad photo of a dog."


def test_limit_and_seed_select_a_stable_subset(tmp_path):
    root = make_tree(tmp_path / "data", {"a": 10, "b": 10})
    full = imagefolder(root)
    sub = imagefolder(root, limit=7, seed=3)
    again = imagefolder(root, limit=7, seed=3)
    other = imagefolder(root, limit=7, seed=4)
    assert len(sub) == 7 and sub.relpaths == again.relpaths and sub.fingerprint == again.fingerprint
    assert sub.relpaths != other.relpaths and sub.fingerprint != other.fingerprint
    assert set(sub.relpaths) <= set(full.relpaths)
    assert sub.relpaths == [p for p in full.relpaths if p in sub.relpaths]  # kept in file order
    assert sub.labels.tolist() == [full.labels[full.relpaths.index(p)] for p in sub.relpaths]
    assert sub.fingerprint != full.fingerprint
    assert imagefolder(root, limit=100).fingerprint == full.fingerprint  # limit >= size keeps everything
    with pytest.raises(DataError, match="'limit' must be an integer >= 1"):
        imagefolder(root, limit=0)


def test_split_dirs_give_both_splits_one_label_space(tmp_path):
    root = tmp_path / "ds"
    make_tree(root / "train", {"a": 2, "b": 2, "only_train": 1})
    make_tree(root / "val", {"a": 1, "b": 1})
    test = imagefolder(root, split_dirs={"train": "train", "test": "val"})
    train = imagefolder(root, split="train", split_dirs={"train": "train", "test": "val"})
    assert test.class_names == train.class_names == ["a", "b", "only_train"]
    assert test.labels.tolist() == [0, 1] and train.labels.tolist() == [0, 0, 1, 1, 2]
    assert test.fingerprint != train.fingerprint
    # separate roots
    alt = imagefolder(root / "val", split="train", train=str(root / "train"))
    assert alt.labels.tolist() == train.labels.tolist()
    assert imagefolder(root / "val", train=str(root / "train")).labels.tolist() == [0, 1]


def test_val_split_and_unknown_split(tmp_path):
    root = tmp_path / "ds"
    make_tree(root / "train", {"a": 2, "b": 2})
    make_tree(root / "val", {"a": 1, "b": 1})
    make_tree(root / "test", {"a": 1, "b": 2})
    dirs = {"train": "train", "val": "val", "test": "test"}
    sizes = {s: len(imagefolder(root, split=s, split_dirs=dirs)) for s in ("train", "val", "test")}
    assert sizes == {"train": 4, "val": 2, "test": 3}
    with pytest.raises(DataError, match=r"no 'val' split.*'val: <folder>'"):
        imagefolder(root / "test", split="val")
    assert len(imagefolder(root / "test", split="val", val=str(root / "val"))) == 2
    with pytest.raises(DataError, match=r"unknown split 'dev' \(known: train, val, test\)"):
        imagefolder(root / "test", split="dev")


def test_train_split_must_be_configured(tree):
    with pytest.raises(DataError, match=r"no 'train' split.*split_dirs"):
        imagefolder(tree, split="train")
    with pytest.raises(DataError, match=r"no 'train' split"):
        imagefolder(tree, split="train", split_dirs={"test": "."})


def test_missing_literal_root_is_an_error_with_the_path(tmp_path):
    """A literal path that does not exist is a typo to fix, not data to skip (issue 18)."""
    with pytest.raises(DataError, match=str(tmp_path / "nope")) as info:
        imagefolder("nope", base_dir=tmp_path)
    assert not isinstance(info.value, DataMissingError)
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "ds" / "train")) as info:
        imagefolder(tmp_path / "ds", split="train", split_dirs={"train": "train", "test": "."})
    assert not isinstance(info.value, DataMissingError)


def test_env_vars_unset_and_set(tree, monkeypatch):
    monkeypatch.delenv("QREL_TEST_DATA_ROOT", raising=False)
    with pytest.raises(DataMissingError, match="QREL_TEST_DATA_ROOT.*not set"):
        imagefolder("${QREL_TEST_DATA_ROOT}/x")
    with pytest.raises(DataMissingError, match="QREL_TEST_DATA_ROOT"):
        imagefolder("$QREL_TEST_DATA_ROOT")
    monkeypatch.setenv("QREL_TEST_DATA_ROOT", str(tree.parent))
    ds = imagefolder("${QREL_TEST_DATA_ROOT}/" + tree.name)
    assert len(ds) == 6 and ds.fingerprint == imagefolder(tree).fingerprint


def test_relative_root_resolves_against_base_dir(tree, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path.parent)  # not the suite's folder
    assert len(imagefolder(tree.name, base_dir=tree.parent)) == 6


def test_unknown_option_names_it_and_lists_accepted(tree):
    with pytest.raises(DataError, match=r"unknown option 'limt'; did you mean 'limit'\? \(known: .*class_index.*split_dirs"):
        imagefolder(tree, limt=3)
    with pytest.raises(DataError, match="option 'labels' must be one of"):
        imagefolder(tree, labels="maybe")


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 0\n")
    with pytest.raises(DataError, match="filelist:"):
        imagefolder(tmp_path / "list.txt")


# ---------------------------------------------------------------------------------------- filelist


def filelist(path, split="test", base_dir=None, **options):
    return load_dataset(f"filelist:{path}", split=split, options=options, base_dir=base_dir)


@pytest.fixture
def listed(tmp_path):
    d = tmp_path / "fl"
    write_image(d / "imgs" / "x.png", 1)
    write_image(d / "imgs" / "with space.png", 2)
    write_image(d / "other" / "y.jpg", 3, fmt="JPEG")
    (d / "test.txt").write_text("# path label\nimgs/x.png 2\n\nother/y.jpg 0\nimgs/with space.png\t1\n")
    return d


def test_filelist_paths_labels_and_order(listed):
    ds = filelist(listed / "test.txt", classes=["zero", "one", "two"])
    assert ds.relpaths == ["imgs/x.png", "other/y.jpg", "imgs/with space.png"]  # the list's order
    assert ds.labels.tolist() == [2, 0, 1]
    assert ds.class_names == ["zero", "one", "two"]
    image, label = ds[2]
    assert label == 1 and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image.convert("L")), np.asarray(Image.open(listed / "imgs" / "with space.png")))
    assert filelist(listed / "test.txt").fingerprint == filelist(listed / "test.txt").fingerprint


def test_filelist_missing_file_names_the_line(listed):
    (listed / "bad.txt").write_text("imgs/x.png 0\n\nimgs/missing.png 1\n")
    with pytest.raises(DataError, match=r"bad\.txt line 3: image 'imgs/missing\.png' does not exist"):
        filelist(listed / "bad.txt")


def test_filelist_unlabelled_is_ood_and_mixed_is_an_error(listed):
    (listed / "ood.txt").write_text("imgs/x.png\nother/y.jpg\n")
    ds = filelist(listed / "ood.txt")
    assert ds.labels.tolist() == [OOD_LABEL, OOD_LABEL] and ds.class_names is None
    (listed / "mixed.txt").write_text("imgs/x.png 1\nother/y.jpg\n")
    with pytest.raises(DataError, match="line 2 has no label but line 1 has one"):
        filelist(listed / "mixed.txt")
    assert filelist(listed / "mixed.txt", labels="none").labels.tolist() == [OOD_LABEL, OOD_LABEL]


def test_filelist_root_option_and_splits(listed, tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("x.png 1\n")
    (tmp_path / "lists" / "test.txt").write_text("with space.png 0\n")
    test = filelist("lists/test.txt", base_dir=tmp_path, root=str(listed / "imgs"), train="lists/train.txt")
    train = filelist("lists/test.txt", split="train", base_dir=tmp_path, root=str(listed / "imgs"), train="lists/train.txt")
    assert test.relpaths == ["with space.png"] and train.relpaths == ["x.png"] and train.labels.tolist() == [1]
    with pytest.raises(DataError, match=r"no 'train' split.*'train: <list\.txt>'"):
        filelist(listed / "test.txt", split="train")


def test_filelist_val_split(listed):
    (listed / "val.txt").write_text("other/y.jpg 1\n")
    ds = filelist(listed / "test.txt", split="val", val=str(listed / "val.txt"))
    assert ds.relpaths == ["other/y.jpg"] and ds.labels.tolist() == [1]
    with pytest.raises(DataError, match=r"no 'val' split.*'val: <list\.txt>'"):
        filelist(listed / "test.txt", split="val")


def test_filelist_label_out_of_range_and_bad_labels(listed):
    with pytest.raises(DataError, match=r"line 2: label 2 is out of range for 2 classes"):
        filelist(listed / "test.txt", classes=["a", "b"])
    (listed / "neg.txt").write_text("imgs/x.png -3\n")
    with pytest.raises(DataError, match="line 1: label -3"):
        filelist(listed / "neg.txt")


def test_filelist_missing_list_and_unknown_option(listed, tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope.txt")) as info:
        filelist("nope.txt", base_dir=tmp_path)
    assert not isinstance(info.value, DataMissingError)
    with pytest.raises(DataError, match=r"unknown option 'extensions' \(known: "):
        filelist(listed / "test.txt", extensions=[".png"])


def test_filelist_limit(listed):
    ds = filelist(listed / "test.txt", limit=2, seed=0)
    assert len(ds) == 2 and set(ds.relpaths) <= {"imgs/x.png", "other/y.jpg", "imgs/with space.png"}


# ------------------------------------------------------------------------------------- torchvision


def tv(name, split="test", base_dir=None, **options):
    return load_dataset(f"torchvision:{name}", split=split, options=options, base_dir=base_dir)


def write_fake_mnist(root: Path, n_test: int = 5, n_train: int = 7) -> Path:
    """A minimal MNIST in the idx format torchvision reads (no checksums are verified for raw files)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("t10k", n_test), ("train", n_train)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def test_torchvision_missing_root_names_it(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "cifar")) as info:
        tv("CIFAR10", root="cifar", base_dir=tmp_path)
    assert not isinstance(info.value, DataMissingError)


def test_torchvision_dataset_not_found_under_root(tmp_path):
    (tmp_path / "cifar").mkdir()
    with pytest.raises(DataError, match=r"not found under .*cifar.*torchvision: Dataset not found") as info:
        tv("CIFAR10", root=str(tmp_path / "cifar"))
    assert not isinstance(info.value, DataMissingError)


def test_torchvision_unset_env_var(monkeypatch):
    monkeypatch.delenv("QREL_TEST_CIFAR", raising=False)
    with pytest.raises(DataMissingError, match="QREL_TEST_CIFAR"):
        tv("CIFAR10", root="${QREL_TEST_CIFAR}")


def test_torchvision_train_flag_and_in_memory_fingerprint(tmp_path):
    root = write_fake_mnist(tmp_path / "mnist")
    test = tv("MNIST", root=str(root))
    train = tv("MNIST", split="train", root=str(root))
    assert (len(test), len(train)) == (5, 7)
    assert test.labels.tolist() == [0, 1, 2, 3, 4]
    assert test.class_names[0] == "0 - zero"
    image, label = test[1]
    assert label == 1 and image.mode == "RGB" and image.size == (28, 28)
    assert tv("MNIST", root=str(root), mode="L")[1][0].mode == "L"
    assert test.fingerprint == tv("MNIST", root=str(root)).fingerprint != train.fingerprint
    # the pixels are part of the fingerprint (the data array is hashed)
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert tv("MNIST", root=str(root)).fingerprint != test.fingerprint
    sub = tv("MNIST", root=str(root), limit=3, seed=1)
    assert len(sub) == 3 and sub.fingerprint != test.fingerprint


def test_torchvision_val_split(tmp_path, tree):
    root = write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(DataError, match=r"MNIST has only train and test.*split_kwargs: \{val: "):
        tv("MNIST", split="val", root=str(root))
    # ImageNet's 'val' is what pytest-qrel calls its test split: no silent reuse as a held-out split
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(DataError, match=r"ImageNet has no 'val' split;.*split_names: \{val: <name>\}"):
        tv("ImageNet", split="val", root=str(tmp_path / "imagenet"))
    with pytest.raises(DataError, match=r"no 'val' split apart from its test split \(split='val'\)"):
        tv("ImageNet", split="val", root=str(tmp_path / "imagenet"), split_names={"val": "val"})
    val = tv("ImageFolder", split="val", root=str(tree), split_kwargs={"val": {"root": str(tree)}}, limit=2)
    assert len(val) == 2
    with pytest.raises(DataError, match="takes the keys train, val, test, not 'dev'"):
        tv("ImageFolder", root=str(tree), split_kwargs={"dev": {}})


def test_torchvision_imagefolder_with_root(tree):
    ds = tv("ImageFolder", root=str(tree))
    mine = imagefolder(tree)
    assert ds.class_names == mine.class_names and ds.labels.tolist() == mine.labels.tolist()
    np.testing.assert_array_equal(np.asarray(ds[4][0]), np.asarray(mine[4][0]))
    fp = ds.fingerprint
    assert tv("ImageFolder", root=str(tree)).fingerprint == fp
    write_image(tree / "a_cat" / "new.png")
    assert tv("ImageFolder", root=str(tree)).fingerprint != fp
    with pytest.raises(DataError, match=r"no train/split argument.*split_kwargs"):
        tv("ImageFolder", split="train", root=str(tree))
    train = tv("ImageFolder", split="train", root=str(tree), split_kwargs={"train": {"root": str(tree / "a_cat" / "..")}})
    assert len(train) == 7


def test_torchvision_fakedata_without_root():
    ds = tv("FakeData", kwargs={"size": 6, "image_size": [3, 8, 8], "num_classes": 3})
    assert len(ds) == 6 and set(ds.labels.tolist()) <= {0, 1, 2}
    assert ds[0][0].size == (8, 8)
    assert ds.fingerprint == tv("FakeData", kwargs={"size": 6, "image_size": [3, 8, 8], "num_classes": 3}).fingerprint
    assert ds.fingerprint != tv("FakeData", kwargs={"size": 6, "image_size": [3, 8, 8], "num_classes": 3, "random_offset": 1}).fingerprint
    with pytest.raises(DataError, match="takes no 'root'"):
        tv("FakeData", root=".")
    ood = tv("FakeData", labels="none", kwargs={"size": 4})
    assert ood.labels.tolist() == [OOD_LABEL] * 4 and ood.class_names is None


def test_torchvision_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'CIFAR10'"):
        tv("CIFAR1", root=str(tmp_path))
    with pytest.raises(DataError, match="option 'root' is required"):
        tv("CIFAR10")
    with pytest.raises(DataError, match="may not set 'download'"):
        tv("CIFAR10", root=str(tmp_path), kwargs={"download": True})
    with pytest.raises(DataError, match=r"unknown option 'roots'; did you mean 'root'\?"):
        tv("CIFAR10", roots=str(tmp_path))

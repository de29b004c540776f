"""Data a baseline is stored from (issue 18, items 1 and 5): folder walks that follow symbolic links
only inside their root and only once, and dataset paths that must exist unless they come from an
unset environment variable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_qrel.data import load_dataset
from pytest_qrel.errors import DataError, DataMissingError

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")


def write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8), mode="L").save(path)


@pytest.fixture
def root(tmp_path) -> Path:
    """data/cat/{0,1}.png, data/dog/{0,1,2}.png"""
    for cls, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            write_image(tmp_path / "data" / cls / f"{i}.png", 10 * i)
    return tmp_path / "data"


def imagefolder(root: Path, **options):
    return load_dataset(f"imagefolder:{root}", split="test", options=options)


def where(root: Path) -> str:
    return f"dataset 'imagefolder:{root}'"


def test_a_symlink_loop_in_a_class_folder_is_one_line_not_thousands_of_samples(root):
    os.symlink("..", root / "cat" / "again")  # cat/again -> data: every class again, forever
    with pytest.raises(DataError) as info:
        imagefolder(root)
    assert str(info.value) == (
        f"{where(root)}: {root}/cat/again is a symbolic link to {root}, a folder that contains it (a loop) (fix: remove the link)"
    )
    (root / "cat" / "again").unlink()
    os.symlink(".", root / "cat" / "self")
    with pytest.raises(DataError, match=r"cat/self is a symbolic link to .*/cat, a folder that contains it \(a loop\)"):
        imagefolder(root)
    with pytest.raises(DataError, match="a loop"):
        imagefolder(root, labels="none")  # the unlabelled walk of the whole root too


def test_a_link_out_of_the_root_is_refused_naming_it(root, tmp_path):
    for i in range(2):
        write_image(tmp_path / "elsewhere" / f"{i}.png", 99)
    os.symlink(tmp_path / "elsewhere", root / "cat" / "more")
    with pytest.raises(DataError) as info:
        imagefolder(root)
    assert str(info.value) == (
        f"{where(root)}: {root}/cat/more is a symbolic link to {tmp_path}/elsewhere, outside the dataset folder {root}; links out "
        f"of the folder are not followed (fix: move or copy the images into {root}, or list them in a 'filelist:' source, which "
        "reads files wherever they are)"
    )
    (root / "cat" / "more").unlink()
    os.symlink(tmp_path / "elsewhere" / "0.png", root / "cat" / "borrowed.png")  # a file link out
    with pytest.raises(DataError, match=r"cat/borrowed\.png is a symbolic link to .*/elsewhere/0\.png, outside the dataset folder"):
        imagefolder(root)
    (root / "cat" / "borrowed.png").unlink()
    os.symlink(tmp_path / "elsewhere", root / "fish")  # a whole class folder that is a link out
    with pytest.raises(DataError, match=r"data/fish is a symbolic link to .*/elsewhere, outside the dataset folder"):
        imagefolder(root)


def test_a_test_split_may_not_link_into_the_train_split(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / "ds" / split / "cat" / "0.png", 1)
    os.symlink("../../train/cat/0.png", tmp_path / "ds" / "val" / "cat" / "leak.png")
    with pytest.raises(DataError, match=r"val/cat/leak\.png is a symbolic link to .*/ds/train/cat/0\.png, outside the dataset folder .*/ds/val"):
        load_dataset(f"imagefolder:{tmp_path / 'ds'}", split="test", options={"split_dirs": {"train": "train", "test": "val"}})


def test_links_inside_the_root_are_followed_once(root):
    plain = imagefolder(root)
    os.symlink("../dog/2.png", root / "cat" / "2.png")  # an image of dog read again as a cat
    with pytest.raises(DataError) as info:
        imagefolder(root)
    assert str(info.value) == (
        f"{where(root)}: {root}/cat/2.png is a symbolic link to {root}/dog/2.png, which is also read as an image of {root}/dog; "
        "it would count twice (fix: remove the link)"
    )
    (root / "cat" / "2.png").unlink()
    os.symlink("dog", root / "puppy")  # a second class folder that is the same folder
    with pytest.raises(DataError, match=r"data/puppy leads to the folder .*/data/dog, which is also read as .*/data/dog; its images would count twice"):
        imagefolder(root)
    (root / "puppy").unlink()
    # a link inside the root to a folder read nowhere else is followed, once
    write_image(root / ".store" / "kitten" / "0.png", 5)  # hidden: not a class of its own
    os.symlink("../.store/kitten", root / "cat" / "kittens")
    linked = imagefolder(root)
    assert len(linked) == len(plain) + 1 and "cat/kittens/0.png" in linked.relpaths
    assert linked.fingerprint != plain.fingerprint
    # the same for a flat OOD folder of loose images
    flat = root.parent / "flat"
    write_image(flat / "a.png", 1)
    write_image(flat / ".hidden" / "b.png", 2)
    os.symlink(".hidden/b.png", flat / "b.png")
    assert sorted(imagefolder(flat).relpaths) == ["a.png", "b.png"]
    os.symlink(root / "cat" / "0.png", flat / "c.png")
    with pytest.raises(DataError, match=r"flat/c\.png is a symbolic link to .*/data/cat/0\.png, outside the dataset folder .*/flat"):
        imagefolder(flat)


def test_a_root_that_is_itself_a_link_is_fine(root, tmp_path):
    os.symlink(root, tmp_path / "alias")
    assert imagefolder(tmp_path / "alias").fingerprint == imagefolder(root).fingerprint


def test_a_broken_image_link_is_one_line(root):
    os.symlink("gone.png", root / "cat" / "ghost.png")
    with pytest.raises(DataError) as info:
        imagefolder(root)
    assert str(info.value) == f"{where(root)}: {root}/cat/ghost.png is a broken symbolic link (to gone.png) (fix: remove it or restore its target)"
    (root / "cat" / "ghost.png").unlink()
    os.symlink("nowhere", root / "cat" / "notes")  # a broken link that is not an image: ignored, as any other file
    assert len(imagefolder(root)) == 5


# ------------------------------------------------------------------ paths that do not exist


SUITE = """\
version: 1
name: paths
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
  ood: [{{name: far, source: "imagefolder:{far}", options: {{labels: none}}}}]
quantizers:
  W8A8: {{method: minmax}}
scores: [msp]
checks:
  - "W8A8 auroc(msp) on far delta <= 5pp"
"""


def test_a_literal_path_that_does_not_exist_is_an_error_not_a_skip(pytester):
    (pytester.path / "suite.yaml").write_text(SUITE.format(far="textrues"))  # a typo of 'textures'
    result = pytester.runpytest("--qrel-suite", "suite.yaml", "-p", "no:randomly", "--qrel-no-cache", "--qrel-allow-skip-all")
    assert result.ret == 1
    result.assert_outcomes(failed=1, skipped=0)
    result.stdout.fnmatch_lines(["suite.yaml:7: dataset 'far': dataset root textrues does not exist", "paths: 1 check: 1 error"])
    assert "Traceback" not in result.stdout.str() and "NOT VERIFIED" not in result.stdout.str()


def test_only_an_unset_variable_skips(pytester, monkeypatch):
    monkeypatch.delenv("QREL_TEST_FAR", raising=False)
    (pytester.path / "suite.yaml").write_text(SUITE.format(far="${QREL_TEST_FAR}/far"))
    args = ("--qrel-suite", "suite.yaml", "-p", "no:randomly", "--qrel-no-cache")
    pytester.runpytest(*args, "--qrel-update-baselines", "--qrel-allow-skip-all").assert_outcomes(skipped=1)
    monkeypatch.setenv("QREL_TEST_FAR", str(pytester.path / "missing"))  # set, but pointing nowhere: an error
    with pytest.raises(DataError) as info:
        load_dataset("imagefolder:${QREL_TEST_FAR}/far", split="test")
    assert not isinstance(info.value, DataMissingError)
    assert str(info.value) == f"dataset root {pytester.path}/missing/far does not exist (from '${{QREL_TEST_FAR}}/far')"

"""Calibration draws (pytest_qrel.calibration_draw): ``repq_vit`` against torch's own DataLoader and
torchvision's own ImageFolder (the reference code's loader), and the suite / engine plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_qrel import load_suite
from pytest_qrel.calibration_draw import CALIBRATION_DRAWS, draw_calibration, imagefolder_order, repq_vit_draw
from pytest_qrel.errors import SpecError


class _Positions(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def loader_batches(n: int, seed: int, batch_size: int, batches: int) -> list[int]:
    """What the reference does: seed torch, shuffle a DataLoader, take the first batch(es)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(_Positions(n), batch_size=batch_size, shuffle=True, drop_last=True)
        out: list[int] = []
        for k, batch in enumerate(loader):
            out += batch.tolist()
            if k + 1 == batches:
                break
        return out
    finally:
        torch.random.set_rng_state(state)


@pytest.mark.parametrize("seed", [0, 13, 37])
@pytest.mark.parametrize("n", [40, 1000, 12345])
def test_repq_vit_draw_is_the_first_batch_of_a_seeded_shuffled_loader(seed, n):
    before = torch.random.get_rng_state()
    assert repq_vit_draw(n, 32, seed).tolist() == loader_batches(n, seed, 32, 1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is not touched
    if n >= 96:  # more images: the first batches, in order
        assert repq_vit_draw(n, 96, seed).tolist() == loader_batches(n, seed, 32, 3)


def test_numpy_draw_is_the_default_and_differs():
    assert CALIBRATION_DRAWS.names() == ["numpy", "repq_vit"]
    numpy_pos = CALIBRATION_DRAWS.get("numpy")(1000, 32, 0)
    assert numpy_pos.tolist() == np.random.default_rng(0).permutation(1000)[:32].tolist()
    assert numpy_pos.tolist() != repq_vit_draw(1000, 32, 0).tolist()


def _image_tree(root, names):
    for rel in names:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (1 + len(rel)))  # never decoded: only listed


TREE = [
    "n02/b.JPEG", "n02/a.jpeg", "n02/sub/c.png", "n02/Z.jpg", "n02/sub2/a.png", "n02/sub/a.PNG",
    "n01/x1.JPEG", "n01/x10.JPEG", "n01/x2.JPEG", "n01/deep/er/y.jpg", "n01/deep/a.jpg", "n01/deep-b/q.jpg",
    "n10/only.webp", "n03/k.bmp", "n03/readme.txt",
]


def test_imagefolder_order_is_torchvisions(tmp_path):
    """The order of torchvision's ImageFolder (classes sorted, sorted(os.walk), sorted file names),
    on a tree with nested folders where it differs from plain path order."""
    from pathlib import Path

    from torchvision.datasets import ImageFolder

    from pytest_qrel.data.folders import imagefolder_source

    _image_tree(tmp_path, TREE)
    theirs = [Path(p).relative_to(tmp_path).as_posix() for p, _ in ImageFolder(str(tmp_path)).samples]
    ours = imagefolder_source(str(tmp_path), split="test")
    assert sorted(ours.relpaths) == sorted(theirs)
    order = imagefolder_order(ours.relpaths)
    assert [ours.relpaths[i] for i in order] == theirs
    assert [ours.relpaths[i] for i in order] != list(ours.relpaths)  # nested folders: the orders differ


def test_draw_calibration_gives_the_reference_loaders_files(tmp_path, monkeypatch):
    """draw_calibration(imagefolder set, 'repq_vit') returns the files ImageFolder + the seeded
    shuffled DataLoader of the reference put in its first batch."""
    from pathlib import Path

    from torchvision.datasets import ImageFolder

    from pytest_qrel.data.folders import imagefolder_source

    from pytest_qrel import calibration_draw

    names = [f"n{c:02d}/img_{i:03d}.JPEG" for c in (5, 1, 3) for i in range(30)] + ["n01/nested/extra.JPEG"]
    _image_tree(tmp_path, names)
    reference = ImageFolder(str(tmp_path))
    sorts = []
    real_order = calibration_draw.imagefolder_order
    monkeypatch.setattr(calibration_draw, "imagefolder_order", lambda rel: sorts.append(1) or real_order(rel))
    calibration_draw._imagefolder_positions.cache_clear()
    for seed in (0, 13):
        batch = loader_batches(len(reference), seed, 32, 1)
        expected = [Path(reference.samples[i][0]).relative_to(tmp_path).as_posix() for i in batch]
        ours = imagefolder_source(str(tmp_path), split="test")
        index = draw_calibration(ours, 32, seed, "repq_vit")
        assert [ours.relpaths[i] for i in index] == expected
        assert [int(ours.labels[i]) for i in index] == [reference.targets[i] for i in batch]
    assert len(sorts) == 1  # the split's ImageFolder order is computed once for both seeds
    # on a set without file paths the positions are the split's own
    assert draw_calibration(list(range(100)), 10, 0, "repq_vit").tolist() == repq_vit_draw(100, 10, 0).tolist()
    with pytest.raises(ValueError):
        draw_calibration(list(range(5)), 6, 0)


SUITE = """\
name: draw
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
quantizers:
  W8A8: {{method: minmax, calibration: {calibration}}}
checks: ["W8A8 top1 delta <= 5pp"]
"""


def _suite(tmp_path, calibration: str):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(calibration=calibration))
    return load_suite(path)


def test_suite_draw_option(tmp_path):
    default = _suite(tmp_path, "{samples: 32}").quantizers["W8A8"]
    assert default.calibration.draw == "numpy"
    assert "draw" not in default.config_dict()["calibration"]  # existing fingerprints are unchanged
    repq = _suite(tmp_path, "{samples: 32, draw: repq_vit}").quantizers["W8A8"]
    assert repq.calibration.draw == "repq_vit" and repq.config_dict()["calibration"]["draw"] == "repq_vit"
    with pytest.raises(SpecError) as info:
        _suite(tmp_path, "{samples: 32, draw: repq}")
    msg = str(info.value)
    assert "quantizers.W8A8.calibration.draw" in msg and "did you mean 'repq_vit'" in msg and "s.yaml:" in msg


def test_engine_calibrates_on_the_drawn_images(tmp_path):
    from pytest_qrel import Engine

    suite = _suite(tmp_path, "{samples: 16, draw: repq_vit}")
    engine = Engine(baseline_dir=tmp_path)
    images, labels = engine.loader.calibration_images(suite, "vit", 16, 0, "f", draw="repq_vit")
    train = engine.loader.dataset(suite, "digits", "train")
    expected = repq_vit_draw(len(train), 16, 0)
    preprocess = engine.loader.model(suite, "vit").preprocess
    assert torch.equal(images.cpu(), torch.stack([preprocess(train[int(i)][0]) for i in expected]))
    assert labels.tolist() == [int(train.labels[i]) for i in expected]
    other, _ = engine.loader.calibration_images(suite, "vit", 16, 0, "f")
    assert not torch.equal(other, images)

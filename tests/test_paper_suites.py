"""The shipped paper suites: they collect and skip cleanly without data, and run on stand-in folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pytest_qrel import Engine, load_suite, plan, run

ROOT = Path(__file__).resolve().parents[1]
DEIT_VARS = ["QREL_IMAGENET_VAL", "QREL_IMAGENET_TRAIN", "QREL_IMAGENET_O", "QREL_TEXTURES", "QREL_PLACES365",
             "QREL_SUN", "QREL_INATURALIST", "QREL_OPENIMAGE_O"]


@pytest.mark.parametrize("suite", ["deit.yaml", "clip.yaml"])
def test_paper_suite_without_data_skips_every_item_and_exits_0(pytester, monkeypatch, suite):
    for var in [*DEIT_VARS, "QREL_IMAGENET_HELDOUT"]:
        monkeypatch.delenv(var, raising=False)
    (pytester.path / "suites").mkdir()
    shutil.copy(ROOT / "suites" / suite, pytester.path / "suites" / suite)
    result = pytester.runpytest("--qrel-suite", f"suites/{suite}", "-rs")
    assert result.ret == 0
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == len(plan(load_suite(ROOT / "suites" / suite))) and "failed" not in outcomes
    result.stdout.fnmatch_lines([f"SKIPPED*suites/{suite}:*QREL_IMAGENET_VAL, which is not set*"])


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_deit_suite_runs_on_stand_in_folders(tmp_path, monkeypatch):
    synsets = ["n01440764", "n01443537"]  # the first two ImageNet-1k classes
    for split in ("val", "train"):
        for k, syn in enumerate(synsets):
            _images(tmp_path / split / syn, 4, seed=10 * k + (split == "train"))
    monkeypatch.setenv("QREL_IMAGENET_VAL", str(tmp_path / "val"))
    monkeypatch.setenv("QREL_IMAGENET_TRAIN", str(tmp_path / "train"))
    for i, var in enumerate(DEIT_VARS[2:]):
        _images(tmp_path / var.lower(), 3, seed=100 + i)
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    # The real weights are not here: keep the suite's data, quantizers and checks, but swap the five
    # models for one tiny random timm DeiT (pretrained: false) and calibrate on 4 images, 2 seeds.
    doc = yaml.safe_load((ROOT / "suites/deit.yaml").read_text())
    tiny = {"pretrained": False, "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}}
    doc["models"] = {"tiny_deit": {"source": "timm:deit_small_patch16_224", "options": tiny}}
    for q in doc["quantizers"].values():
        q["calibration"] = {"samples": 4, "seeds": [0, 13]}
        q["method"] = "minmax"
    path = tmp_path / "deit.yaml"
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path)
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    verdicts = run(suite, engine=engine)
    assert verdicts and all(v.outcome in ("passed", "failed") for v in verdicts), [v.message for v in verdicts if v.outcome not in ("passed", "failed")]
    five = ["textures", "places365", "sun", "inaturalist", "openimage_o"]
    v = next(v for v in verdicts if v.quantizer == "W4A4" and v.dataset.startswith("mean("))
    expected = np.mean([engine.ood_metrics(suite, "tiny_deit", "W4A4", "msp", d)["aupr_out"] for d in five])
    assert v.value == pytest.approx(expected)
    assert engine.forward_passes[("deit", "tiny_deit", "W4A4@13", "imagenet_o")] == 1, dict(engine.forward_passes)

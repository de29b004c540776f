"""The shipped paper suites: they collect and skip cleanly without data, and run on stand-in folders."""

from __future__ import annotations

import shutil
import time
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
def test_paper_suite_without_data_skips_every_item_and_fails_naming_the_variables(pytester, monkeypatch, suite):
    for var in [*DEIT_VARS, "QREL_IMAGENET_HELDOUT"]:
        monkeypatch.delenv(var, raising=False)
    (pytester.path / "suites").mkdir()
    shutil.copy(ROOT / "suites" / suite, pytester.path / "suites" / suite)
    result = pytester.runpytest("--qrel-suite", f"suites/{suite}", "-rs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # a run that verifies nothing is not green
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == len(plan(load_suite(ROOT / "suites" / suite))) and "failed" not in outcomes
    result.stdout.fnmatch_lines([f"SKIPPED*suites/{suite}:*QREL_IMAGENET_VAL, which is not set*"])
    result.stdout.fnmatch_lines(["NOT VERIFIED: * check(s) skipped: *QREL_IMAGENET_VAL, which is not set*"])
    result.stdout.fnmatch_lines(["ERROR: no check produced a verdict: all * were skipped because data is missing*"])
    assert pytester.runpytest("--qrel-suite", f"suites/{suite}", "--qrel-allow-skip-all").ret == 0


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
        _images(tmp_path / var.lower(), 10, seed=100 + i)  # OOD metrics need at least 10 images
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    # The real weights are not here: keep the suite's data, quantizers and checks, but swap the five
    # models for one tiny random timm DeiT (pretrained: false) and calibrate on 4 images, 2 seeds.
    doc = yaml.safe_load((ROOT / "suites/deit.yaml").read_text())
    tiny = {"pretrained": False, "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}}
    # tagged as the paper's DeiT-S row, so that the suite's references (Table 1) match it
    doc["models"] = {"tiny_deit": {"source": "timm:deit_small_patch16_224.fb_in1k", "options": tiny}}
    for name, q in doc["quantizers"].items():  # two seeds for W4A4 (mean +- std), one for the others (fewer passes)
        q["calibration"] = {"samples": 4, "seeds": [0, 13]} if name == "W4A4" else {"samples": 4}
        q["method"] = "minmax"
    path = tmp_path / "deit.yaml"
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path)
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    started = time.time()
    verdicts = run(suite, engine=engine)
    assert verdicts and all(v.outcome in ("passed", "failed") for v in verdicts), [v.message for v in verdicts if v.outcome not in ("passed", "failed")]
    five = ["textures", "places365", "sun", "inaturalist", "openimage_o"]
    v = next(v for v in verdicts if v.quantizer == "W4A4" and v.dataset.startswith("mean("))
    expected = np.mean([engine.ood_metrics(suite, "tiny_deit", "W4A4", "msp", d)["aupr_out"] for d in five])
    assert v.value == pytest.approx(expected)
    assert engine.forward_passes[("deit", "tiny_deit", "W4A4@13", "imagenet_o")] == 1, dict(engine.forward_passes)
    # All five bit configs ran: W4A8 and W8A4 have no check, only a report-only item each, which
    # computed them over every set (ImageNet-O too) exactly once per seed.
    reported = [v for v in verdicts if v.check.endswith("report-only")]
    assert sorted(v.quantizer for v in reported) == sorted(BITS) and all(v.outcome == "passed" for v in reported)
    for q in ("W4A8", "W8A4", "W8A8"):
        for d in ["imagenet", "imagenet_o", *five]:
            assert engine.forward_passes[("deit", "tiny_deit", q, d)] == 1, (q, d)
    _check_deit_report(suite, verdicts, engine, started, five)


BITS = ["W8A8", "W6A6", "W4A8", "W8A4", "W4A4"]


def _check_deit_report(suite, verdicts, engine, started, five):
    """The report of the deit.yaml-shaped run: Table 1's layout, Fig. 1a over exactly the five sets
    (every unit's mean over the same five), Fig. 1b on ImageNet-O, Fig. 2 with class names, and the
    published Table 1 values beside the measured ones (HTML and Markdown)."""
    from pytest_qrel.report import build_page, render_markdown
    from pytest_qrel.shards import run_results

    units = engine.report_units()
    results = run_results(verdicts, units, suites=[suite], planned={suite.name: len(plan(suite))}, started=started)
    by_q = {u.quantizer: u for u in results.units}
    assert sorted(by_q) == sorted(["FP32", *BITS])
    for u in by_q.values():  # Fig. 1a's numbers: the mean of exactly the five sets, for FP32 and every bit config
        per_set = [u.ood["msp"][d]["aupr_out"] for d in five]
        assert "imagenet_o" in u.ood["msp"] and u.ood_mean["msp"]["aupr_out"] == pytest.approx(np.mean(per_set))
    page = build_page(results)
    (sv,) = page.suites
    table1 = next(t for blk in sv.blocks for t in blk.tables if t.css == "table1")
    assert [g[0].split(" ")[0] for g in table1.groups] == ["Top-1", "NLL"]
    assert [c.label for c in table1.columns] == ["FP32", *BITS] * 2 and [r.label for r in table1.rows] == ["tiny_deit"]
    w4a4_top1 = table1.rows[0].cells[5]
    assert w4a4_top1.spread.startswith("\u00b1") and w4a4_top1.delta_text  # mean +- std over the two seeds, change against FP32
    fig_a, fig_b = [f for f in sv.figures if f.kind == "bits-ood"]
    assert fig_a.data["sets"] == five and fig_a.data["x"] == ["FP32", *BITS]
    (line,) = fig_a.data["lines"]
    assert line["values"]["aupr_out"] == pytest.approx([100 * by_q[q].ood_mean["msp"]["aupr_out"] for q in ["FP32", *BITS]])
    assert fig_b.data["sets"] == ["imagenet_o"]
    assert fig_b.data["lines"][0]["values"]["aupr_out"] == pytest.approx([100 * by_q[q].ood["msp"]["imagenet_o"]["aupr_out"] for q in ["FP32", *BITS]])
    (mv,) = sv.models
    rollout = next(f for f in mv.diagnostics if f.kind == "rollout")
    captions = [c for col in rollout.data["columns"] for c in col["captions"]]
    assert captions and not any(c.startswith("class ") for c in captions), captions[:3]  # names, not indices
    refs = next(t for blk in sv.blocks for t in blk.tables if t.css == "references")
    assert "Kuang & Wong, Table 1" in refs.caption
    row = next(r for r in refs.rows if r.sub == "W4A4")
    measured, published, difference = (c.text for c in row.cells[:3])
    assert published == "67.933"
    ours = 100 * by_q["W4A4"].id["top1"]
    assert float(difference.replace("\u2212", "-")) == pytest.approx(ours - 67.933, abs=0.006)
    md = render_markdown(results)
    assert "measured beside the published values" in md and "| tiny\\_deit |" not in md
    assert "| tiny_deit | W4A4 | Top-1 (%) |" in md and "| 67.933 |" in md and "Kuang &amp; Wong, Table 1" in md


TINY_CLIP = "qrel-paper-tiny-ViT"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_VARS = ["QREL_IMAGENET_VAL", "QREL_IMAGENET_TRAIN", "QREL_IMAGENET_HELDOUT", "QREL_INATURALIST", "QREL_SUN",
             "QREL_PLACES365", "QREL_TEXTURES"]


def test_clip_suite_runs_on_stand_in_folders(tmp_path, monkeypatch):
    """clip.yaml's data, scores, quantizers (PTQ, SmoothQuant, QAT-LSQ + temperature), shifted sets
    and checks, on generated folders and a tiny random OpenCLIP architecture (the real ViT-B/32
    weights are not here); the quantizers calibrate on 4 images and QAT takes 2 steps."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    (tmp_path / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(tmp_path / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tiny_clip.safetensors"))

    synsets = ["n01440764", "n01443537"]  # the first two ImageNet-1k classes
    for split, var in (("val", "QREL_IMAGENET_VAL"), ("train", "QREL_IMAGENET_TRAIN"), ("heldout", "QREL_IMAGENET_HELDOUT")):
        for k, syn in enumerate(synsets):
            _images(tmp_path / split / syn, 3, seed=10 * k + len(split))
        monkeypatch.setenv(var, str(tmp_path / split))
    for i, var in enumerate(CLIP_VARS[3:]):
        _images(tmp_path / var.lower(), 10, seed=200 + i)  # OOD metrics need at least 10 images
        monkeypatch.setenv(var, str(tmp_path / var.lower()))

    doc = yaml.safe_load((ROOT / "suites/clip.yaml").read_text())
    options = {
        "checkpoint": str(tmp_path / "tiny_clip.safetensors"),
        "templates": "simple",  # 1000 classes x 2 prompts through the tiny text tower
        "neg_labels": ["tree", "river", "cloud", "chair", "spoon", "mountain", "guitar", "bridge"],
        "n_neg": 4,
        "neglabel_groups": 2,
        "cache_dir": False,
    }
    doc["models"] = {"tiny_clip": {"source": f"open_clip:{TINY_CLIP}", "options": options}}
    for q in doc["quantizers"].values():
        q["calibration"] = {"samples": 4}
        if q["method"].startswith("qat"):
            q["options"] = {"steps": 2, "batch_size": 4}
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path)
    assert list(suite.shifted_datasets) == ["in_c_noise3", "in_c_blur3", "in_c_contrast3", "in_c_jpeg3"]
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    verdicts = run(suite, engine=engine)
    assert len(verdicts) == len(plan(suite))
    bad = [v.message for v in verdicts if v.outcome not in ("passed", "failed")]
    assert not bad, bad
    # every score of the paper reached an OOD verdict, and the shifted sets were evaluated
    scored = {v.score for v in verdicts if v.metric in ("auroc", "fpr_at_95_tpr")}
    assert scored >= {"msp", "energy", "mcm", "neglabel", "genneg"}
    shifted = {v.dataset for v in verdicts if v.quantizer == "W8A8-qat-lsq+temperature" and v.metric == "ece"}
    assert shifted >= {"in_c_noise3", "in_c_blur3", "in_c_contrast3", "in_c_jpeg3"}
    noisy = engine.samples(suite, "tiny_clip", "W8A8", "in_c_noise3")
    clean = engine.samples(suite, "tiny_clip", "W8A8", "imagenet")
    assert noisy["label"].shape == clean["label"].shape and not np.allclose(noisy["confidence"], clean["confidence"])

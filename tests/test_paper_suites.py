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
    import os

    for var in {*DEIT_VARS, "QREL_IMAGENET_HELDOUT", *(v for v in os.environ if v.startswith("QREL_"))}:
        monkeypatch.delenv(var, raising=False)
    (pytester.path / "suites").mkdir()
    shutil.copy(ROOT / "suites" / suite, pytester.path / "suites" / suite)
    shutil.copytree(ROOT / "suites" / "lists", pytester.path / "suites" / "lists")
    planned = plan(load_suite(ROOT / "suites" / suite))
    # clip.yaml plans 16,632 checks (30 model x scenario units of 42 quantizers): run one model of one
    # scenario (its node), not all of them
    node = f"suites/{suite}" + ("::vit_b32_openai@imagenet" if suite == "clip.yaml" else "")
    result = pytester.runpytest("--qrel-suite", f"suites/{suite}", node, "-rs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # a run that verifies nothing is not green
    outcomes = result.parseoutcomes()
    expected = [p for p in planned if suite != "clip.yaml" or p.model == "vit_b32_openai@imagenet"]
    assert outcomes.get("skipped", 0) == len(expected) and "failed" not in outcomes
    result.stdout.fnmatch_lines([f"SKIPPED*suites/{suite}:*QREL_IMAGENET_VAL, which is not set*"])
    n_report_only = sum(p.name == "report-only" for p in expected)  # counted apart from the checks (pytest_qrel.policy)
    counted = "* check(s)" + (" + * report-only item(s)" if n_report_only else "")
    result.stdout.fnmatch_lines([f"NOT VERIFIED: {counted} skipped: *QREL_IMAGENET_VAL, which is not set*"])
    result.stdout.fnmatch_lines([f"ERROR: no check produced a verdict: all {len(expected) - n_report_only} were skipped because data is missing*"])
    assert pytester.runpytest("--qrel-suite", f"suites/{suite}", node, "--qrel-allow-skip-all").ret == 0


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


IN_R_AND_A = ["n01498041", "n01531178"]  # two ImageNet-1k classes that ImageNet-R and ImageNet-A both hold
IN10, IN20 = ["n04552348", "n04285008"], ["n04147183", "n02951358"]  # two classes of MCM's ImageNet-10 / -20 each


def _cc3m(folder: Path, n: int) -> None:
    """A CC3M-layout stand-in: <key>.jpg + <key>.txt caption pairs (img2dataset's files layout)."""
    _images(folder / "00000", n, seed=300)
    for i in range(n):
        (folder / "00000" / f"img{i}.txt").write_text(f"a photo of the digit {['zero', 'one', 'two', 'three'][i % 4]}\n")


def _clip_doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """clip.yaml on generated folders with the shipped tiny CLIP: the imagenet scenario (2 classes;
    ImageNet-R / -A stand-ins and one ImageNet-C corruption; every W8A8 method plus a longer QAT-LoRA
    for the steps figure), MCM's ImageNet-10 / -20 pair both ways (two methods; CIFAR's scenarios read
    torchvision files and are left out), all calibrated on a CC3M-layout folder with captions, QAT for
    1 or 2 steps."""
    _cc3m(tmp_path / "cc3m", 6)
    monkeypatch.setenv("QREL_CC3M", str(tmp_path / "cc3m"))
    for split, var, n in (("val", "QREL_IMAGENET_VAL", 3), ("heldout", "QREL_IMAGENET_HELDOUT", 3), ("in_r", "QREL_IMAGENET_R", 2),
                          ("in_a", "QREL_IMAGENET_A", 2)):
        for k, syn in enumerate(IN_R_AND_A):
            _images(tmp_path / split / syn, n, seed=10 * k + len(split))
        monkeypatch.setenv(var, str(tmp_path / split))
    for var, classes in (("QREL_IMAGENET10", IN10), ("QREL_IMAGENET20", IN20)):
        for k, syn in enumerate(classes):
            _images(tmp_path / var.lower() / syn, 5, seed=400 + k + len(var))  # 10 per set: each is the other's OOD set
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    for i, var in enumerate(["QREL_INATURALIST", "QREL_SUN", "QREL_PLACES365", "QREL_TEXTURES"]):
        _images(tmp_path / var.lower(), 10, seed=200 + i)  # OOD metrics need at least 10 images
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    (tmp_path / "lists").mkdir()
    for name in ("imagenet10.txt", "imagenet20.txt"):
        shutil.copy(ROOT / "suites" / "lists" / name, tmp_path / "lists" / name)

    doc = yaml.safe_load((ROOT / "suites/clip.yaml").read_text())
    assert len(doc["models"]) == 6 and set(doc["scenarios"]) == {"imagenet", "cifar10", "cifar100", "imagenet10", "imagenet20"}
    # one prompt per class: the imagenet scenario's 1000 class names go through the text tower once
    doc["models"] = {"clip_digits": {"source": "open_clip:digits_clip", "options": {"templates": ["a photo of a {}."]}}}
    del doc["scenarios"]["cifar10"], doc["scenarios"]["cifar100"]
    shifted = doc["scenarios"]["imagenet"]["shifted"]
    doc["scenarios"]["imagenet"]["shifted"] = [d for d in shifted if d["name"] in ("imagenet_r", "imagenet_a", "in_c_gaussian_noise3")]
    kept = [q for q in doc["quantizers"] if q.startswith("W8A8-") and "-s" not in q.removeprefix("W8A8-qat-lora")] + ["W8A8-qat-lora-s900"]
    doc["quantizers"] = {q: doc["quantizers"][q] for q in kept}
    for q, spec in doc["quantizers"].items():
        spec["calibration"] = {**spec["calibration"], "samples": 4}
        if spec["method"].startswith("qat"):
            spec["options"] = {**spec.get("options", {}), "steps": 2 if q.endswith("-s900") else 1, "batch_size": 4}
    # The suite's own bounds on every kept unit of the imagenet scenario (the 4-bit collapse check has
    # no unit here); the near-OOD pair reads two units per scenario, which keeps the run short.
    own = ["all " + c.split(" ", 1)[1] for c in doc.pop("checks") if isinstance(c, str)]
    doc["scenarios"]["imagenet"]["checks"] += own
    for name in ("imagenet10", "imagenet20"):
        doc["scenarios"][name]["checks"] = ["W8A8-ptq,W8A8-qat-lsq " + c.split(" ", 1)[1] for c in own]
    return doc


@pytest.mark.slow
def test_clip_suite_runs_on_stand_in_folders(tmp_path, monkeypatch):
    """clip.yaml's shape end to end: several scenarios, calibration and QAT on image-text pairs (captions
    as contrastive targets), every QAT variant for a few steps, the report's averages across scenarios
    and the CLIP figures."""
    import time

    from pytest_qrel.report import build_page
    from pytest_qrel.report.format import MISSING
    from pytest_qrel.shards import run_results

    from pytest_qrel.models import open_clip_source

    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(_clip_doc(tmp_path, monkeypatch), sort_keys=False))
    suite = load_suite(path)
    assert list(suite.scenarios) == ["imagenet", "imagenet10", "imagenet20"]
    # The shipped CLIP stands in for the suite's ImageNet heads, whose class names are not in its
    # vocabulary (a user's run refuses them): the pipeline's shape is checked here, not its numbers.
    monkeypatch.setattr(open_clip_source, "_check_vocabulary", lambda *args: None)
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    verdicts = run(suite, engine=engine)
    assert len(verdicts) == len(plan(suite))
    bad = [v.message for v in verdicts if v.outcome not in ("passed", "failed")]
    assert not bad, bad
    # every scenario's units exist, with every score and their own ID / OOD sets
    assert {v.model for v in verdicts} == {"clip_digits@imagenet", "clip_digits@imagenet10", "clip_digits@imagenet20"}
    assert sorted(p.name for p in (tmp_path / "baselines" / "clip").glob("*.json")) == [
        "clip_digits@imagenet.json", "clip_digits@imagenet10.json", "clip_digits@imagenet20.json"]
    scored = {(v.model, v.score) for v in verdicts if v.metric == "auroc"}
    assert {s for _, s in scored} == {"msp", "energy", "mcm", "neglabel", "genneg"} and len(scored) == 15
    near = engine.ood_metrics(suite.scenarios["imagenet10"], "clip_digits@imagenet10", "W8A8-ptq", "mcm", "imagenet20")
    assert 0 <= near["auroc"] <= 1
    shifted = {v.dataset for v in verdicts if v.model == "clip_digits@imagenet" and v.quantizer == "W8A8-qat" and v.metric == "top1"}
    assert shifted == {"imagenet", "imagenet_r", "imagenet_a", "in_c_gaussian_noise3"}
    # QAT trained on the captions (contrastive), every variant for its steps; LoRA stays unmerged
    imagenet = suite.scenarios["imagenet"]
    for q, spec in imagenet.quantizers.items():
        if spec.method.startswith("qat"):
            (info,) = engine.unit_info(imagenet, "clip_digits@imagenet", q)
            assert info["qat_task"] == "contrastive" and info["qat_steps"] == (2 if q.endswith("-s900") else 1), q
    # the near-OOD scenarios' W8A8-qat-lsq reuse the imagenet scenario's training (same captions, a loss
    # that reads no zero-shot head: engine/trainmemo.py)
    assert sum(engine.units.train_memo.reused.values()) == 2 and engine.units.quantizations["W8A8-qat-lsq"] == 3
    (lora,) = engine.unit_info(imagenet, "clip_digits@imagenet", "W8A8-qat-lora-distill")
    assert lora["qat_options"].lora_merge is False and lora["qat_options"].distill == "feature_mse"

    results = run_results(verdicts, engine.report_units(), suites=[suite], planned={suite.name: len(verdicts)}, started=time.time())
    page = build_page(results)
    (sv,) = page.suites
    # the averages across scenarios (other suite-level blocks, e.g. the paper's table, may sit beside it)
    (table,) = [t for b in sv.blocks for t in b.tables if "mean over 3 scenarios" in t.caption]
    assert "mean over 3 scenarios" in table.caption and [r.label for r in table.rows][0] == "FP32"
    ptq = next(r for r in table.rows if r.label == "W8A8-ptq")
    lora = next(r for r in table.rows if r.label == "W8A8-qat-lora")
    assert all(c.text != MISSING for c in ptq.cells) and ptq.cells[0].delta_text  # every scenario has it: averaged
    assert all(c.text == MISSING for c in lora.cells)  # the imagenet scenario only: never a mean of fewer scenarios
    heads = [c.label for c in table.columns]
    assert heads[:3] == ["Top-1 \u2191", "ECE \u2193", "NLL \u2193"] and "AUROC (MCM) \u2191" in heads
    means = {sm.model: sm for sm in __import__("pytest_qrel.summary", fromlist=["summarize"]).summarize(results).scenario_means}
    top1 = [engine.id_metrics(s, f"clip_digits@{n}", "W8A8-ptq")["top1"] for n, s in suite.scenarios.items()]
    assert means["clip_digits"].number("W8A8-ptq", "id", "top1").value == pytest.approx(np.mean(top1))
    kinds = {f.kind for f in sv.figures} | {f.kind for mv in sv.models for f in mv.figures}
    assert kinds >= {"clip-acc-by-source", "clip-ece-violins", "clip-qat-steps", "clip-acc-nll", "clip-reliability-shift"}

"""Reference values: the shipped sets load, are internally consistent, and a user's file is
validated with one-line errors. (That the numbers equal the papers' was checked by reading them;
these tests check what can be checked without the papers.)"""

from __future__ import annotations

import pytest

from pytest_qrel.errors import SpecError, UnknownNameError
from pytest_qrel.metrics import METRICS
from pytest_qrel.references import (
    KINDS,
    UNITS,
    load_references,
    lookup,
    names_in,
    shipped,
)

BITS = ["FP32", "W8A8", "W6A6", "W4A8", "W8A4", "W4A4"]
TABLE1_MODELS = ["DeiT3-S16 IN22k", "DeiT3-S16 IN1k", "ViT-S16 IN22k", "DeiT-S16 IN1k"]


@pytest.mark.parametrize("name", list(shipped()))
def test_shipped_sets_are_well_formed(name):
    refs = load_references(name)
    assert len(refs) > 0
    for v in refs.values:
        assert v.metric in METRICS and v.unit in UNITS and v.kind in KINDS
        assert v.source and v.model and v.quantizer and v.dataset
        if v.kind == "value" and METRICS.meta(v.metric).get("fraction"):
            assert 0.0 <= v.value <= 1.0, v
        if v.metric == "nll":
            assert v.unit == "nats" and v.value >= 0
        assert float(v.published) * UNITS[v.unit] == pytest.approx(v.value), v  # the printed number is the value
    assert len({(v.key, v.kind, v.score) for v in refs.values}) == len(refs)


def test_table1_is_four_models_by_six_configs_by_two_metrics():
    refs = load_references("kuang_wong_2025_table1")
    assert len(refs) == 4 * 6 * 2
    assert names_in(refs, "model") == TABLE1_MODELS and names_in(refs, "quantizer") == BITS
    assert {v.source for v in refs.values} == {"Kuang & Wong, Table 1"}
    for v in refs.values:
        assert v.dataset == "imagenet1k" and v.statistic == "mean" and v.seeds == (0, 13, 37)


def test_table1_agrees_with_the_papers_own_text():
    """The paper's text restates some of Table 1: top-1 drops FP32 -> W4A4 of 'over 17', 16.5, 14.4
    and 11.9 points, and FP32 DeiT3-IN22k as the strongest FP32 model."""
    refs = load_references("kuang_wong_2025_table1")

    def drop(model):
        return 100 * (lookup(refs, model, "FP32", "top1", "imagenet1k").value - lookup(refs, model, "W4A4", "top1", "imagenet1k").value)

    assert drop("DeiT3-S16 IN22k") > 17
    assert round(drop("ViT-S16 IN22k"), 1) == 16.5
    assert round(drop("DeiT3-S16 IN1k"), 1) == 14.4
    assert round(drop("DeiT-S16 IN1k"), 1) == 11.9
    fp32 = {m: lookup(refs, m, "FP32", "top1", "imagenet1k").value for m in TABLE1_MODELS}
    assert max(fp32, key=fp32.get) == "DeiT3-S16 IN22k"
    for model in TABLE1_MODELS:  # NLL grows from FP32 to W4A4 for every model (the paper's finding)
        assert lookup(refs, model, "W4A4", "nll", "imagenet1k").value > lookup(refs, model, "FP32", "nll", "imagenet1k").value


def test_lookup_by_alias_and_kind():
    refs = load_references("kuang_wong_2025")
    by_timm = lookup(refs, "timm:deit_small_patch16_224.fb_in1k", "w4a4", "top1", "ImageNet-1k")
    assert by_timm is not None and by_timm.model == "DeiT-S16 IN1k" and by_timm.published == "67.933"
    assert by_timm.value == pytest.approx(0.67933)
    assert lookup(refs, "DeiT-S16 IN1k", "W4A4", "ece", "imagenet1k") is None  # not published
    assert lookup(refs, "vit_small_patch16_224.augreg_in21k_ft_in1k", "FP32", "top1", "imagenet1k") is None  # not the paper's weights
    delta = lookup(refs, "DeiT3-S16 IN1k", "W4A4", "aupr_out", "ood_mean", kind="delta", score="msp")
    assert delta is not None and delta.value == pytest.approx(0.12) and delta.relative is None
    assert lookup(refs, "DeiT3-S16 IN1k", "W4A4", "aupr_out", "ood_mean") is None  # a delta is not a value
    clip = load_references("bouguerra_2025")
    v = lookup(clip, "open_clip:ViT-B-32/laion400m_e32", "qat_lsq_pc", "ece", "CIFAR-10")
    assert v is not None and v.published == "3.92" and v.value == pytest.approx(0.0392)
    distill = lookup(clip, "ViT-B-32 laion400m_e32", "QAT-Distill", "top1", "imagenet1k")  # the table's last row
    assert distill is not None and distill.published == "55.92"


CSV = """\
# my numbers
model,quantizer,metric,dataset,value,unit,source,std
vit,W8A8,top1,imagenet,81.2,percent,our run 1,0.1
vit,W8A8,nll,imagenet,0.70,nats,our run 1,
"""


def test_user_csv_and_yaml(tmp_path):
    (tmp_path / "mine.csv").write_text(CSV)
    refs = load_references("mine.csv", base_dir=tmp_path)
    v = lookup(refs, "vit", "W8A8", "top1", "imagenet")
    assert v.value == pytest.approx(0.812) and v.std == pytest.approx(0.001) and v.source == "our run 1"
    (tmp_path / "mine.yaml").write_text(
        "values:\n  - {model: vit, quantizer: W4A4, metric: auroc, score: energy, dataset: textures, value: 0.91, unit: fraction, source: us}\n"
    )
    both = load_references(["mine.csv", str(tmp_path / "mine.yaml"), "kuang_wong_2025_table1"], base_dir=tmp_path)
    assert len(both) == 2 + 1 + 48
    assert lookup(both, "vit", "W4A4", "auroc", "textures", score="energy").value == 0.91
    assert lookup(both, "DeiT-S16 IN1k", "FP32", "nll", "in1k").value == pytest.approx(0.883)


@pytest.mark.parametrize(
    ("text", "suffix", "fragment"),
    [
        (CSV.replace("top1,imagenet,81.2", "acc,imagenet,81.2"), "csv", r"r.csv:3: field 'metric': unknown metric 'acc'"),
        (CSV.replace("81.2,percent", "81.2,fraction"), "csv", r"r.csv:3: field 'value': top1 81.2 fraction is outside \[0, 1\]"),
        (CSV.replace("0.70,nats", "0.70,percent"), "csv", r"r.csv:4: field 'unit': nll is published in nats"),
        (CSV.replace(",std\n", "\n"), "csv", r"r.csv:3: 8 fields where the header has 7"),
        (CSV.replace("source,std", "sauce,std"), "csv", r"r.csv:2: the header lacks column\(s\) source"),
        (CSV + "vit,W8A8,top1,imagenet,80,percent,x,\n", "csv", r"r.csv:5: .*given twice"),
        ("values:\n  - {model: m, quantizer: q, metric: top1, dataset: d, value: 0.5, unit: fraction}\n", "yaml",
         r"r.yaml: field 'source': values\[0\]: 'source' is missing"),
        ("tables:\n  - {metric: top1, unit: percent, source: s, rows: model, columns: {quantizer: [a, b]}, values: {m: [1, 2]}}\n", "yaml",
         r"field 'dataset': tables\[0\]: the table fixes 'dataset'"),
        ("tables:\n  - {metric: top1, dataset: d, unit: percent, source: s, rows: model, columns: {quantizer: [a, b]}, values: {m: [1]}}\n",
         "yaml", r"field 'values.m': tables\[0\]: 1 numbers for 2 columns"),
        ("format: other\nvalues: []\n", "yaml", r"field 'format'"),
        ("values: [\n", "yaml", r"r.yaml:\d+: invalid YAML"),
        ("a,b\n", "txt", r"must end in .yaml, .yml or .csv"),
    ],
)
def test_bad_user_files_fail_with_one_line(tmp_path, text, suffix, fragment):
    path = tmp_path / f"r.{suffix}"
    path.write_text(text)
    with pytest.raises(SpecError, match=fragment) as info:
        load_references(path)
    assert "\n" not in str(info.value)


def test_unknown_names(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown reference set 'kuang_wong_2025_tabel1'; did you mean 'kuang_wong_2025_table1'"):
        load_references("kuang_wong_2025_tabel1")
    with pytest.raises(SpecError, match="references file .*nowhere.csv does not exist"):
        load_references("nowhere.csv", base_dir=tmp_path)

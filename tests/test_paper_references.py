"""suites/deit.yaml's bounds hold on the ViT paper's own numbers (Kuang & Wong, Table 1 and the
abstract, from pytest_qrel/references/): a faithful reproduction must be able to pass the suite."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pytest_qrel import load_suite, plan
from pytest_qrel.evaluate import decide
from pytest_qrel.metrics import METRICS
from pytest_qrel.references import suite_references
from pytest_qrel.spec.schema import FP32, MEAN_OOD, Bound

ROOT = Path(__file__).resolve().parents[1]
TABLE1_ROWS = {"deit_s_in1k", "deit3_s_in1k", "deit3_s_in22k", "vit_s_in22k"}


@pytest.fixture(scope="module")
def deit():
    suite = load_suite(ROOT / "suites" / "deit.yaml")
    refs = suite_references(suite)
    values = {(r["model"], r["quantizer"], r["metric"], r["dataset"], r["kind"]): r for r in refs["values"]}
    return suite, values


def _paper_verdict(p, values, bound=None):
    """The verdict of planned check ``p`` (with ``bound`` instead of its own, if given) on the
    paper's numbers; None where the paper publishes no value for it."""
    q = values.get((p.model, p.quantizer, p.check.metric, p.dataset, "value"))
    fp32 = values.get((p.model, FP32, p.check.metric, p.dataset, "value"))
    if q is None or fp32 is None:
        return None
    if bound is not None:
        p = replace(p, check=replace(p.check, bound=bound))
    meta = METRICS.meta(p.check.metric)
    return decide(p, q["value"], fp32["value"], higher_is_better=meta["higher_is_better"], fraction=meta["fraction"])


def test_every_table1_check_of_deit_yaml_passes_on_the_papers_numbers(deit):
    suite, values = deit
    checked = []
    for p in plan(suite):
        v = _paper_verdict(p, values)
        if v is not None:
            assert v.passed, f"{p.model} {p.quantizer} {p.name}: {v.message}"
            checked.append((p.model, p.quantizer, p.check.metric))
    # every Table 1 row x bit config x metric was evaluated: the suite has a check for each
    assert {m for m, _, _ in checked} == TABLE1_ROWS
    assert len(set(checked)) == len(TABLE1_ROWS) * 5 * 2


def test_the_old_nll_bound_fails_on_the_papers_deit3_in22k():
    """The bound deit.yaml had before ('W8A8,W6A6 nll delta <= 15%') fails on the paper's own
    DeiT3-S IN22k W6A6 (+36.7 %): the check above can fail."""
    suite = load_suite(ROOT / "suites" / "deit.yaml")
    values = {(r["model"], r["quantizer"], r["metric"], r["dataset"], r["kind"]): r for r in suite_references(suite)["values"]}
    p = next(p for p in plan(suite) if (p.model, p.quantizer, p.check.metric) == ("deit3_s_in22k", "W6A6", "nll"))
    v = _paper_verdict(p, values, bound=Bound("delta", "<=", 15.0, "%"))
    assert not v.passed and v.delta_display.startswith("+36.7")


def test_the_ood_mean_w4a4_bound_holds_on_the_abstracts_deltas_under_both_readings(deit):
    """The abstract's FP32 -> W4A4 AUPR-out changes (9.5 to 19.2 "%", relative or points not
    stated) against the suite's points bound on the five-set mean: read as points they are the
    delta; read as relative, the delta in points is that share of an AUPR <= 1, so no larger."""
    suite, values = deit
    deltas = {k[0]: r for k, r in values.items() if k[2:] == ("aupr_out", MEAN_OOD, "delta")}
    assert set(deltas) == {"vit_s_in22k", "deit3_s_in22k", "vit_s_in1k", "deit3_s_in1k"}
    (p,) = [p for p in plan(suite) if (p.model, p.quantizer, p.check.metric) == ("vit_s_in22k", "W4A4", "aupr_out")
            and p.dataset.startswith("mean(") and "imagenet_o" not in p.dataset]
    assert p.check.bound.unit == "pp" and p.dataset == f"mean({','.join(suite.mean_sets)})"
    for model, r in deltas.items():
        assert r["relative"] is None and 100 * r["value"] <= p.check.bound.amount, (model, r["published"])


# ------------------------------------------------------------------ the CLIP suite: bouguerra_2025


@pytest.fixture(scope="module")
def clip():
    suite = load_suite(ROOT / "suites" / "clip.yaml")
    return suite, suite_references(suite)


def test_clip_yaml_matches_the_light_qat_table_by_method_at_every_bit_width(clip):
    """Bouguerra et al.'s light-QAT table states no bit width: each row goes to the suite's
    quantizers of its method (qat, qat_lsq, qat_lsq_per_channel, qat_distill) at all four bit
    widths, marked; FP32 by name, unmarked; each scenario's ID set gets its own column of the table."""
    suite, refs = clip
    assert suite.references == ("bouguerra_2025",)
    by_cell = {}
    for r in refs["values"]:
        assert (r["model"], r["quantizer"], r["metric"], r["dataset"]) not in by_cell, r  # one value per cell
        by_cell[(r["model"], r["quantizer"], r["metric"], r["dataset"])] = r
    qat = {"qat": "Basic QAT", "qat-lsq": "QAT-LSQ", "qat-lsq-pc": "QAT-LSQ (PC)", "qat-distill": "QAT-Distill"}
    expected_q = {FP32} | {f"{bits}-{m}" for bits in ("W8A8", "W6A6", "W4A8", "W4A6") for m in qat}
    assert {q for _, q, _, _ in by_cell} == expected_q  # no PTQ / SmoothQuant / RaanA / QAT-LoRA, no -s900 sweep
    scenarios = ("imagenet", "cifar10", "cifar100", "imagenet10", "imagenet20")  # ImageNet-X: no such scenario
    models = {f"{m}@{s}" for m in ("vit_b32_openai", "vit_b32_laion400m") for s in scenarios}  # B/32 only
    assert {m for m, _, _, _ in by_cell} == models
    assert all(d == m.split("@")[1] for m, _, _, d in by_cell)  # a scenario's own ID set, never its OOD sets
    assert len(by_cell) == len(models) * len(expected_q) * 3
    for bits in ("W8A8", "W4A6"):
        r = by_cell[("vit_b32_laion400m@imagenet", f"{bits}-qat-distill", "top1", "imagenet")]  # IN1k, QAT-Distill
        assert (r["published"], r["reference_quantizer"], r["bits_stated"]) == ("55.92", "QAT-Distill", False)
        assert r["bits_note"] == "bit width not stated by the paper" and r["value"] == pytest.approx(0.5592)
    pc = by_cell[("vit_b32_laion400m@cifar10", "W6A6-qat-lsq-pc", "ece", "cifar10")]
    assert (pc["published"], pc["reference_quantizer"]) == ("3.92", "QAT-LSQ (PC)")
    fp32 = by_cell[("vit_b32_openai@cifar100", FP32, "nll", "cifar100")]
    assert (fp32["published"], fp32["bits_stated"], fp32["bits_note"]) == ("1.34", True, None)


def _clip_run(refs):
    """Synthetic records of two scenario models of the CLIP suite (nothing runs a model)."""
    from pytest_qrel import display
    from pytest_qrel.results import RunResults
    from reportdata import make_unit

    units = []
    for model, quantizers in (("vit_b32_openai@cifar10", ("FP32", "W8A8-qat", "W4A6-qat", "W8A8-qat-lora", "W8A8-ptq")),
                              ("vit_b32_openai@cifar100", ("FP32", "W8A8-qat"))):
        for i, q in enumerate(quantizers):
            method = "" if q == FP32 else "minmax" if q.endswith("-ptq") else q.split("-", 1)[1].replace("-", "_")
            units.append(make_unit("clip", model, q, seed=80, severity=0.02 * i, scores=(), ood_sets=(), method=method,
                                   bits="" if q == "FP32" else q.split("-")[0]))
    run = {"suites": [{"name": "clip", "path": "suites/clip.yaml"}], "references": {"clip": refs}}
    return RunResults(units=units, metrics=display.metric_infos(), scores={"clip": []}, run=run, planned={"clip": 0})


def test_clip_report_shows_the_published_values_beside_the_right_cells(clip):
    from pytest_qrel.report import build_page, render_markdown

    _, refs = clip
    results = _clip_run(refs)
    by_mq = {(u.model, u.quantizer): u for u in results.units}
    md = render_markdown(results)
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("vit_b32_openai@"):
            rows[tuple(cells[:3])] = cells[3:]
    note = "(bit width not stated by the paper)"
    for q in ("W8A8-qat", "W4A6-qat"):  # CIFAR-10, OpenAI ViT-B/32, Basic QAT: 90.25 / 2.91 / 0.31
        measured, published, difference = rows[("vit_b32_openai@cifar10", q, "Top-1 (%)")]
        assert published == f"90.25 {note}"
        ours = 100 * by_mq[("vit_b32_openai@cifar10", q)].id["top1"]
        assert float(difference.replace("\u2212", "-")) == pytest.approx(ours - 90.25, abs=0.006)
        assert rows[("vit_b32_openai@cifar10", q, "ECE (%)")][1] == f"2.91 {note}"
        assert rows[("vit_b32_openai@cifar10", q, "NLL (nats)")][1] == f"0.31 {note}"
    assert rows[("vit_b32_openai@cifar10", "FP32", "Top-1 (%)")][1] == "89.76"  # FP32: the bit width is known
    assert rows[("vit_b32_openai@cifar100", "W8A8-qat", "Top-1 (%)")][1] == f"67.27 {note}"  # CIFAR-100's own row
    # not in the table: QAT-LoRA and PTQ units, quantizers this run has no unit of (W6A6-qat...); and CIFAR-10
    # is an OOD set of the cifar100 scenario, not its ID set
    assert {q for _, q, _ in rows} == {"FP32", "W8A8-qat", "W4A6-qat"}
    assert len(rows) == 3 * 3 + 2 * 3 and "90.25" not in str([v for k, v in rows.items() if k[0].endswith("@cifar100")])
    assert "shown beside each of the suite's quantizers of that method, at every bit width" in md
    (sv,) = build_page(results).suites
    table = next(t for blk in sv.blocks for t in blk.tables if t.css == "references")
    row = next(r for r in table.rows if (r.label, r.sub) == ("vit_b32_openai@cifar10", "W4A6-qat"))
    assert row.cells[1].text == f"90.25 {note}" and row.cells[1].note.startswith("Bouguerra et al., appendix 5.5")


def test_a_method_with_its_own_options_is_another_recipe_than_the_published_row():
    """Matching by method leaves out quantizers that set method options (a longer QAT schedule, a
    distillation loss): the published light-QAT row is the method's default recipe."""
    from types import SimpleNamespace

    from pytest_qrel.references import _quantizer_matches, load_references

    refs = load_references("bouguerra_2025")
    quantizers = {"W8A8-qat": SimpleNamespace(method="qat", options={}),
                  "W8A8-qat-s900": SimpleNamespace(method="qat", options={"steps": 900}),
                  "W8A8-ptq": SimpleNamespace(method="minmax", options={}),
                  "QAT-LSQ": SimpleNamespace(method="minmax", options={})}  # named like the paper's row: by name
    got = _quantizer_matches(refs, quantizers)
    assert got["basic qat"] == [("W8A8-qat", False)] and got["qat-lsq"] == [("QAT-LSQ", True)]
    assert not any(q == "W8A8-ptq" for matches in got.values() for q, _ in matches)

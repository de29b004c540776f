"""The shipped embedded suites pass against their committed FP32 baselines.

Each suite runs once through the library (``run(suite, engine=...)``), with one engine shared by
the module so the digits ViT, the datasets and the minmax quantizers that several suites define
the same way are built once. Every planned check must come back ``passed`` or ``xfailed`` (an
``expect: fail`` check), never failed, error, xpassed or skipped: the demo suites need nothing
outside the package. QAT quantizers are checked by the optimizer steps they took, not by time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_qrel import Engine, load_suite, plan, run
from pytest_qrel.spec import Suite

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["demo", "demo_clip", "demo_methods", "demo_spectral", "demo_runtime"]
# The light-QAT default of the CLIP paper (100 steps of batch 100 on 100 images).
QAT_DEFAULT_STEPS = 100


# Torch threads the committed baselines were written with. Results may depend on it: QAT training
# (100 steps amplify float rounding) changes with the thread count, and earlier tests in the same process may have
# changed it (the plugin sets it per xdist worker), so this module pins it while it runs.
BASELINE_THREADS = 2


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(BASELINE_THREADS)
    try:
        # no outputs cache: every run computes from scratch, against the committed baselines
        yield Engine(baseline_dir=ROOT / "baselines", cache_dir=None)
    finally:
        torch.set_num_threads(before)


def is_embedded(suite: Suite) -> bool:
    """Every dataset of the suite ships with the package (nothing to point a variable at)."""
    def ships(source: str, options: dict) -> bool:
        if source.startswith("shift:"):  # a corrupted copy ships when its clean set does
            return ships(str(options.get("of", "")), dict(options.get("of_options") or {}))
        return source.startswith("embedded:")

    return all(ships(spec.source, spec.options) for spec in suite.all_datasets.values())


def test_every_embedded_suite_is_covered() -> None:
    from pytest_qrel.errors import SpecError

    def embedded(path: Path) -> bool:
        try:
            return is_embedded(load_suite(path))
        except SpecError as exc:  # a runtime suite where its extra is not installed (demo_runtime)
            if 'pip install "pytest-qrel[' not in str(exc):
                raise
            return path.stem in SUITES

    assert sorted(p.stem for p in (ROOT / "suites").glob("*.yaml") if embedded(p)) == sorted(SUITES)


def _suite_param(name: str) -> object:
    """demo_runtime builds ONNX Runtime, OpenVINO and torchao artifacts: slow, and it needs the extras
    (CI installs them and sets QREL_REQUIRE_RUNTIMES, so there it never skips)."""
    if name != "demo_runtime":
        return name
    from runtime_support import needs

    return pytest.param(name, marks=[pytest.mark.slow, needs("onnx"), needs("openvino"), needs("torchao")])


@pytest.mark.parametrize("name", [_suite_param(n) for n in SUITES])
def test_shipped_suite_passes_against_committed_baselines(name: str, engine: Engine, tmp_path: Path) -> None:
    suite = load_suite(ROOT / "suites" / f"{name}.yaml")
    planned = plan(suite)
    verdicts = run(suite, engine=engine)

    # one verdict per planned check, in plan order
    assert len(verdicts) == len(planned)
    for p, v in zip(planned, verdicts):
        assert (v.model, v.quantizer, v.metric, v.score) == (p.model, p.quantizer, p.check.metric, p.score)

    bad = [f"{v.outcome}: {v.quantizer} {v.check}: {v.message}" for v in verdicts
           if v.outcome not in ("passed", "xfailed")]
    assert not bad, "\n".join(bad)
    expected_xfail = sum(1 for p in planned if p.check.expect == "fail")
    counts = Counter(v.outcome for v in verdicts)
    assert (counts["passed"], counts["xfailed"]) == (len(planned) - expected_xfail, expected_xfail)
    assert all(v.expect_fail == (v.outcome == "xfailed") for v in verdicts)

    # QAT quantizers trained for exactly their configured number of optimizer steps
    qat = [q for q, spec in suite.quantizers.items() if spec.method.startswith("qat")]
    steps_taken = {}
    for model in suite.models:
        for q in qat:
            spec = suite.quantizers[q]
            (info,) = engine.unit_info(suite, model, q)  # recorded when the run above quantized it
            steps = int(spec.options.get("steps", QAT_DEFAULT_STEPS))
            assert info["qat_steps"] == steps == info["qat_losses"], q
            assert info["qat_options"].batch_size == int(spec.options.get("batch_size", 100)), q
            steps_taken[(model, q)] = info["qat_steps"]
    check_report_in_a_browser(name, suite, verdicts, engine, tmp_path)
    if name == "demo_methods":
        # the paper's light-QAT defaults: 100 steps of batch 100 on 100 calibration images
        assert sorted(qat) == ["W4A4-qat-distill", "W4A4-qat-lsq", "W8A8-qat-distill", "W8A8-qat-lsq"]
        assert all(suite.quantizers[q].calibration.samples == 100 for q in qat)
        assert sum(steps_taken.values()) == 4 * QAT_DEFAULT_STEPS
    if name == "demo":
        # The showcase caught regression is one a reader of the intervals believes: its whole 95%
        # interval lies beyond zero (and beyond the bound), not a noisy point estimate.
        (showcase,) = [v for v in verdicts if v.outcome == "xfailed"]
        assert showcase.delta_ci is not None and showcase.delta_ci[0] > 0
        assert showcase.compared_ci is not None and showcase.compared_ci[0] > showcase.bound_amount


# The figures each real demo report must hold (data-kind of its <figure>s).
FIGURES = {
    "demo": {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood", "rollout"},
    "demo_methods": {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood", "bits-top1"},
    "demo_clip": {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood", "clip-acc-nll", "clip-reliability-shift",
                  "clip-acc-by-source", "clip-ece-violins"},
    "demo_spectral": {"reliability", "acc-ece", "margin-heatmap", "spectral"},
    "demo_runtime": {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood"},
}


def check_report_in_a_browser(name: str, suite: Suite, verdicts: list, engine: Engine, tmp_path: Path) -> None:
    """The report of this very run (not synthetic data): under 5 MB, and in headless Chromium it
    loads without a console message, says PASS, and holds its tables and every kind of figure."""
    import os
    import time

    from browser import console_messages, find_chromium, run_chromium
    from pytest_qrel.report import render_report
    from pytest_qrel.shards import run_results

    mine = [u for u in engine.report_units() if u.suite == suite.name]
    results = run_results(verdicts, mine, suites=[suite], planned={suite.name: len(verdicts)}, started=time.time(), device=engine.device)
    page = render_report(results, tmp_path / f"{name}.html")
    assert page.stat().st_size < 5_000_000
    if find_chromium() is None and not os.environ.get("QREL_REQUIRE_BROWSER"):
        return  # CI installs chromium and requires this part (.ci/run)
    dom, err = run_chromium(page, "--dump-dom")
    assert console_messages(err) == []
    assert 'data-status="PASS"' in dom and '<table class="metrics' in dom
    for kind in FIGURES[name]:
        start = dom.index(f'data-kind="{kind}"')
        assert "<svg" in dom[start : dom.index("</figure>", start)], kind
    if name == "demo_runtime":  # the runtimes' census, parity and latency tables
        for table in ("runtime-census", "runtime-parity", "runtime-latency", "runtime-identity"):
            assert f'class="metrics {table}' in dom, table


def test_spectral_error_grows_as_bits_shrink(engine: Engine) -> None:
    """The CLIP paper's finding on the shipped ViT: the last-block feature spectrum drifts further
    from FP32 as bits shrink (values measured against the committed baseline)."""
    suite = load_suite(ROOT / "suites" / "demo_spectral.yaml")
    errors = {q: engine.spectral_metrics(suite, "vit_digits", q) for q in ("W8A8", "W6A6", "W4A4")}
    assert errors["W8A8"]["spectral_error"] == pytest.approx(4.12e-4, rel=0.1)
    assert errors["W6A6"]["spectral_error"] == pytest.approx(1.57e-3, rel=0.1)
    assert errors["W4A4"]["spectral_error"] == pytest.approx(1.51e-2, rel=0.1)
    assert 0 < errors["W8A8"]["spectral_error"] < errors["W6A6"]["spectral_error"] < errors["W4A4"]["spectral_error"]
    assert errors["W4A4"]["spectral_error"] > 10 * errors["W8A8"]["spectral_error"]
    assert errors["W4A4"]["spectral_error_high"] > 10 * errors["W8A8"]["spectral_error_high"]

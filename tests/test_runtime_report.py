"""The report's "Deployed runtimes" block from runtime records (synthetic: no runtime needed)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pytest_qrel.display import metric_infos
from pytest_qrel.report import render_html, render_report
from pytest_qrel.report.markdown import summary_markdown
from pytest_qrel.results import RunResults, UnitMetrics, Verdict
from pytest_qrel.runtimes.census import Kernel, census_of

SHA = "ab" * 32


def runtime_record(runtime: str = "onnxruntime") -> dict:
    census = census_of(runtime, [Kernel("MatMulIntegerToFloat", "int8", 900.0, True, 8), Kernel("MatMul", "float", 100.0),
                                 Kernel("LayerNormalization", "other")])
    return {
        "identity": {"runtime": runtime, "versions": {runtime: "1.0"}, "provider": "CPUExecutionProvider", "threads": 2,
                     "graph_optimization": "all", "files": {"model.int8.onnx": SHA}},
        "census": census,
        "parity": {"W8A8": {"logit_diff": 2e-5, "agreement": 1.0, "floor": 6e-4, "parity": 0.033, "sim_error": 0.0165,
                            "runtime_error": 0.0166, "images": 64}},
        "latency": {"batch": 128, "fp32": {"b1_ms": 1.5, "batch_ms": 200.0, "peak_mb": 6.0},
                    "runtime": {"b1_ms": 0.3, "batch_ms": 80.0, "peak_mb": 3.0},
                    "ratio": {"latency_b1": 0.2, "latency": 0.4, "memory": 0.5}},
        "size": {"artifact_bytes": 250_000, "fp32_bytes": 550_000, "ratio": 250 / 550},
    }


def results(runtime: dict) -> RunResults:
    units = [
        UnitMetrics("s", "vit", "FP32", id={"top1": 0.98, "ece": 0.02}),
        UnitMetrics("s", "vit", "W8A8", id={"top1": 0.98, "ece": 0.021}, method="minmax", base="W8A8", weight_bits=8, act_bits=8, bits_label="W8A8"),
        UnitMetrics("s", "vit", "ORT", id={"top1": 0.98, "ece": 0.021}, method="onnxruntime", base="ORT", weight_bits=8, act_bits=8,
                    bits_label="W8A8", runtime=runtime),
    ]
    verdict = Verdict(suite="s", model="vit", quantizer="ORT", dataset="digits", metric="parity", score="W8A8", check="ORT parity(W8A8) <= 3 floor",
                      bound="value<=3", fp32=None, value=0.033, delta=None, delta_display="", passed=True, expect_fail=False,
                      outcome="passed", message="ok", value_display="0.0330 floors", bound_display="value <= 3.0000 floors")
    return RunResults(verdicts=[verdict], units=units, metrics=metric_infos(), run={"runtimes": {"s/vit/ORT": runtime["identity"]}},
                      planned={"s": 1})


def test_runtime_block_shows_census_parity_latency_and_identity() -> None:
    page = render_html(results(runtime_record()), figures=False)
    block = page[page.index("Deployed runtimes"):]
    for table in ("runtime-census", "runtime-parity", "runtime-latency", "runtime-identity"):
        assert f"metrics {table}" in block, table
    assert "90.0%" in block and "MatMulIntegerToFloat \u00d71" in block  # int8 share and the kernels
    assert "0.033" in block and "0.0006" in block  # parity in floors and the floor
    assert "0.40" in block and "0.45" in block  # latency and size ratios
    assert f"model.int8.onnx {SHA[:12]}" in block
    parity_row = re.search(r"<tr[^>]*>\s*<th[^>]*>ORT.*?vs W8A8.*?</tr>", block, re.DOTALL)
    assert parity_row is not None and "cell-pass" in parity_row.group(0)  # the parity check marks its cell
    assert "s/vit/ORT" in page[page.index('id="run-info"'):]  # identity in the run info


def test_markdown_summary_has_one_row_per_runtime_unit() -> None:
    """The pull-request comment carries the block's numbers too, read from the same records."""
    r = results(runtime_record())
    weight_only = runtime_record("torchao")
    weight_only["census"] = census_of("torchao", [Kernel("aten._weight_int8pack_mm", "weight_only", 750.0, True, 8), Kernel("aten.mm", "float", 250.0)])
    weight_only["parity"], weight_only["latency"] = {}, {}  # no simulation named, latency: false
    r.units.append(UnitMetrics("s", "vit", "AO", id={"top1": 0.98}, method="torchao", base="AO", weight_bits=8, bits_label="W8A16", runtime=weight_only))
    text = summary_markdown(r, report_path="r.html")
    section = text[text.index("### Deployed runtimes"):text.index("Full report:")]
    rows = [line for line in section.splitlines() if line.startswith("| s / vit |")]
    ort, ao = runtime_record(), weight_only
    latency, parity = ort["latency"]["ratio"], ort["parity"]["W8A8"]
    assert rows[0] == (f"| s / vit | ORT | onnxruntime | {100 * ort['census']['int8_share']:.1f}% | MatMulIntegerToFloat \u00d71 "
                       f"| {parity['parity']:.3g} vs W8A8 | {100 * parity['agreement']:.1f}% vs W8A8 "
                       f"| {latency['latency']:.2f} / {latency['latency_b1']:.2f} | {latency['memory']:.2f} | {ort['size']['ratio']:.2f} |")
    weight_share = 100 * ao["census"]["weight_int8_share"]  # no int8 activations: every integer-weight MAC is weight-only
    assert rows[1] == (f"| s / vit | AO | torchao | 0.0% (weight-only {weight_share:.1f}%) | aten._weight_int8pack_mm \u00d71 "
                       f"| \u2014 | \u2014 | \u2014 | \u2014 | {ao['size']['ratio']:.2f} |")
    assert len(rows) == 2 and text.index("### Key numbers") < text.index("### Deployed runtimes")


def test_no_runtime_units_no_block() -> None:
    r = results(runtime_record())
    r.units = r.units[:2]
    assert "Deployed runtimes" not in render_html(r, figures=False)
    assert "Deployed runtimes" not in summary_markdown(r)


def test_runtime_block_in_a_browser(tmp_path: Path) -> None:
    from browser import console_messages, find_chromium, run_chromium

    if find_chromium() is None and not os.environ.get("QREL_REQUIRE_BROWSER"):
        pytest.skip("chromium is not installed here (apt-get install chromium); .ci/run installs it")
    page = render_report(results(runtime_record()), tmp_path / "r.html")
    dom, err = run_chromium(page, "--dump-dom")
    assert console_messages(err) == []
    assert 'class="metrics runtime-census' in dom and 'data-qrel-ready="' in dom

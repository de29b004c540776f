"""The demo reports opened as a person would: headless Chromium loads each page offline, runs its
script, and we read the DOM it ended with, its console and a screenshot."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import reportdata as rd
from browser import console_messages, find_chromium, run_chromium
from pytest_qrel.report import render_report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None and not os.environ.get("QREL_REQUIRE_BROWSER"),
                       reason="chromium is not installed here (apt-get install chromium); .ci/run installs it"),
]

FIGURES = {
    "demo": {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood", "rollout"},
    "demo_methods": {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood", "bits-top1"},
    "demo_clip": {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood"},
    "demo_spectral": {"reliability", "acc-ece", "margin-heatmap", "spectral"},
}


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_a_console_error_would_be_caught(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); null.f();</script>")
    _, err = run_chromium(page, "--dump-dom")
    messages = console_messages(err)
    assert any("boom" in m for m in messages) and any("Uncaught TypeError" in m for m in messages)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_demo_report_in_a_browser(tmp_path: Path, name: str) -> None:
    results = rd.all_demos()[name]
    page = render_report(results, tmp_path / f"{name}.html")
    assert page.stat().st_size < 5_000_000

    dom, err = run_chromium(page, "--dump-dom")
    assert console_messages(err) == []  # no error, warning or log of any kind
    assert 'data-qrel-ready="' in dom  # the inline script ran to its end
    status = "PASS" if name == "demo_clip" else "FAIL"
    assert f'data-status="{status}"' in dom
    assert '<table class="metrics' in dom and '<table class="verdicts sortable' in dom
    for kind in FIGURES[name]:
        start = dom.index(f'data-kind="{kind}"')
        assert "<svg" in dom[start: dom.index("</figure>", start)], kind

    shot = tmp_path / f"{name}.png"
    _, err = run_chromium(page, f"--screenshot={shot}", window=(1400, 1800))
    assert console_messages(err) == []
    assert png_size(shot) == (1400, 1800) and shot.stat().st_size > 50_000  # a page, not a blank


def test_print_layout_renders(tmp_path: Path) -> None:
    page = render_report(rd.spectral_results(), tmp_path / "s.html")
    pdf = tmp_path / "s.pdf"
    _, err = run_chromium(page, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert console_messages(err) == []
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000

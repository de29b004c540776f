"""The HTML report and the Markdown summary, from realistic RunResults (tests/reportdata.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import reportdata as rd
from pytest_qrel.errors import StorageError
from pytest_qrel.policy import run_verdict
from pytest_qrel.report import build_page, render_html, render_markdown, render_report
from pytest_qrel.report.format import delta_class, delta_level
from pytest_qrel.report.markdown import MAX_CHARS
from pytest_qrel.results import RunResults, Verdict
from pytest_qrel.spec.schema import Bound
from pytest_qrel.summary import Number, summarize

# ------------------------------------------------------------------------------ a tiny DOM

VOID = {"meta", "br", "link", "img", "input", "hr", "col", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: "Node | None") -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def iter(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str):
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> "Node":
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag} class={cls} {attrs}>"
        return found[0]


class TreeBuilder(HTMLParser):
    """HTML to Node; an inline <svg> is one opaque node (its inside is matplotlib's business)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.in_svg = 0

    def handle_starttag(self, tag, attrs):
        if self.in_svg:
            self.in_svg += tag == "svg"
            return
        if tag == "svg":
            self.in_svg = 1
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        if not self.in_svg:
            self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        if self.in_svg:
            self.in_svg -= tag == "svg"
            if self.in_svg:
                return
        if tag in VOID:
            return
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"unbalanced </{tag}>"
        self.cur = node.parent

    def handle_data(self, data):
        if not self.in_svg:
            self.cur.children.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


@pytest.fixture(scope="module")
def demo_html() -> str:
    return render_html(rd.demo_results())


def tables_html(results: RunResults) -> Node:
    return parse(render_html(results, figures=False))


def captioned(doc: Node, start: str) -> Node:
    return next(t for t in doc.find_all("table") if t.find_all("caption") and t.find("caption").text().startswith(start))


def cell_of(doc: Node, caption_start: str, row: str, column: str) -> Node:
    """The <td> of ``row`` x ``column`` in the first table whose caption starts with ``caption_start``."""
    table = next(t for t in doc.find_all("table") if t.find_all("caption") and t.find("caption").text().startswith(caption_start))
    heads = [th.text() for th in table.find("thead").find_all("tr")[-1].find_all("th")]
    j = heads.index(column) - 1 if table.find("thead").find_all("tr")[-1].find_all("th")[0].text() else heads.index(column)
    for tr in table.find("tbody").find_all("tr"):
        th = tr.find_all("th")
        if th and th[0].text().split(" ")[0] == row:
            return tr.find_all("td")[j]
    raise AssertionError(f"no row {row}")


# ------------------------------------------------------------------------------ the page


def test_self_contained_and_offline(tmp_path: Path, demo_html: str) -> None:
    path = render_report(rd.demo_results(), tmp_path / "sub" / "demo.html")
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and len(html) < 5_000_000
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    assert "<link" not in html and "@import" not in html and "<script src" not in html
    assert set(re.findall(r"url\(([^)]*)\)", html)) <= {u for u in re.findall(r"url\(([^)]*)\)", html) if u.startswith("#")}
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert [i for i, n in Counter(ids).items() if n > 1] == []  # several inline SVGs, no clashing ids
    # The Markdown summary is written beside it (as the plugin and qrel merge do), and nothing else.
    assert sorted(tmp_path.joinpath("sub").iterdir()) == [path, path.with_suffix(".md")]
    assert path.with_suffix(".md").read_text(encoding="utf-8") == render_markdown(rd.demo_results(), report_path=path)


@pytest.mark.parametrize(
    ("outcomes", "planned", "status"),
    [
        (["passed", "passed"], 2, "PASS"),
        (["passed", "xfailed"], 2, "PASS"),
        (["passed", "skipped"], 2, "INCOMPLETE"),
        (["passed", "inconclusive"], 2, "INCOMPLETE"),
        (["passed", "not run"], 2, "FAIL"),  # a check that never ran counts as failed
        (["passed", "passed"], 5, "INCOMPLETE"),  # three planned checks produced nothing
        (["passed", "failed", "skipped"], 3, "FAIL"),
        (["xpassed"], 1, "FAIL"),
        (["error"], 1, "FAIL"),
        (["passed", "mystery"], 2, "FAIL"),  # an outcome the report does not know fails the gate
        ([], None, "NO CHECKS"),
        ([], 4, "INCOMPLETE"),
    ],
)
def test_banner_never_says_pass_over_what_was_not_verified(outcomes: list[str], planned: int | None, status: str) -> None:
    base = rd.demo_results()
    vs = [Verdict(**{**base.verdicts[0].to_dict(), "outcome": o}) for o in outcomes]
    assert run_verdict(vs, planned).status == status
    res = RunResults(verdicts=vs, units=base.units, metrics=base.metrics, scores=base.scores,
                     planned={} if planned is None else {"demo": planned})
    doc = tables_html(res)
    assert doc.find(cls="status").text() == status
    banner = doc.find("section", id="verdict").text()
    if status == "INCOMPLETE" and planned:
        n = sum(o in ("skipped", "inconclusive", "not run") for o in outcomes) + planned - len(outcomes)
        assert f"{n} of {planned} checks did not run or could not decide" in banner and "not verified" in banner
        assert "PASS" not in banner


def test_failing_checks_with_node_id_interval_and_bound_in_the_values_unit(demo_html: str) -> None:
    doc = parse(demo_html)
    rows = doc.find("table", cls="failing-table").find("tbody").find_all("tr")
    texts = [r.text() for r in rows]
    assert len(rows) == 2
    nll = next(t for t in texts if "nll" in t)
    assert "suites/demo.yaml::vit_digits[W6A6-digits]::nll delta<=40%" in nll
    assert "+40.62%" in nll and "[95% CI" in nll and "0.1450 nats" in nll
    auroc = next(r for r in rows if "auroc" in r.text()).find_all("td")
    # FP32, value, bounded quantity and bound in one unit (the check was written as 'value >= 0.85')
    assert [td.text() for td in auroc[2:5]] == ["90.22%", "84.60%", "84.60%"] and auroc[6].text() == "value >= 85.00%"


def test_expected_failures_have_a_section_and_are_marked_in_tables(demo_html: str) -> None:
    doc = parse(demo_html)
    section = doc.find("section", id="expected").text()
    assert "fpr_at_95_tpr(energy)" in section and "W4A4 minmax keeps top-1" in section and "+19.25pp" in section
    assert "1 expected failure" in doc.find("section", id="verdict").text()
    cell = cell_of(doc, "FPR@95 (%) \u2193 \u00b7 Energy", "mean", "W4A4")
    assert "cell-xfail" in cell.classes and "xfailed" in cell.text()


def test_a_failing_cell_shows_the_bounded_quantity_and_no_green_delta() -> None:
    doc = tables_html(rd.demo_results())
    nll = cell_of(doc, "In-distribution", "NLL", "W6A6")
    assert "cell-fail" in nll.classes
    assert "+40.62%" in nll.text() and "delta <= 40%" in nll.text()  # what the check bounded, in its unit
    assert nll.find(cls="delta").classes == {"delta", "n0"}  # a failing cell is not coloured by its delta
    # ECE in the table is in %, and so is the bound the check wrote in fractions (<= 0.05)
    ece = cell_of(doc, "In-distribution", "ECE", "W4A4")
    assert "3.81" in ece.text() and "value <= 5.00%" in ece.text()


def test_delta_colour_grows_with_its_size() -> None:
    top1 = rd.demo_results().metrics["top1"]
    nll = rd.demo_results().metrics["nll"]
    assert [delta_level(top1, Number(0.9, delta=d)) for d in (0.0005, 0.002, 0.007, 0.015, 0.03, 0.2)] == [0, 1, 2, 3, 4, 5]
    assert delta_class(top1, Number(0.9, delta=-0.03)) == "b4" and delta_class(top1, Number(0.9, delta=0.0)) == "n0"
    # relative to FP32 for non-fractions (3% and 50%), and level 3 against an FP32 of 0
    assert delta_level(nll, Number(1.03, delta=0.03, delta_percent=3.0)) == 2
    assert delta_level(nll, Number(1.5, delta=0.5, delta_percent=50.0)) == 5
    assert delta_class(nll, Number(0.5, delta=0.5, delta_percent=None)) == "w3"
    doc = tables_html(rd.demo_results())
    levels = [int(sorted(cell_of(doc, "AUPR-out (%) \u2191 \u00b7 MSP", "noise", q).find(cls="delta").classes - {"delta"})[0][1:])
              for q in ("W8A8", "W6A6", "W4A8", "W4A4")]
    assert levels == sorted(levels) and levels[0] < levels[-1]


def _signed(x: float, spec: str) -> str:
    """``x`` with its sign as the report writes it (a true minus sign)."""
    return ("+" if x >= 0 else "\u2212") + format(abs(x), spec)


def test_table_numbers_are_the_seed_mean_and_spread_and_the_signed_delta() -> None:
    """Numbers computed here, independently of the library: mean and sample standard deviation
    over the calibration seeds, and deltas against FP32 signed so that + is worse."""
    res = rd.methods_results()
    fp32, w8 = (next(u for u in res.units if u.quantizer == q) for q in ("FP32", "W8A8"))
    doc = tables_html(res)
    for metric, header, scale, spec, unit in (("top1", "Top-1 (%) \u2191", 100, ".2f", "pp"),
                                               ("nll", "NLL (nats) \u2193", 1, ".4f", " nats")):
        seeds = np.array(w8.per_seed[metric])
        assert len(seeds) == 3
        cell = cell_of(doc, "In-distribution", "W8A8", header)
        assert cell.find(cls="v").text() == format(scale * seeds.mean(), spec)
        assert cell.find(cls="spread").text() == "\u00b1" + format(scale * seeds.std(ddof=1), spec)
        worse = fp32.id[metric] - w8.id[metric] if metric == "top1" else w8.id[metric] - fp32.id[metric]
        assert cell.find(cls="delta").text() == _signed(scale * worse, spec) + unit
    # An improvement reads negative: temperature scaling lowers FP32's NLL.
    fitted = next(u for u in res.units if u.quantizer == "FP32+temperature")
    assert fitted.id["nll"] < fp32.id["nll"]
    cell = cell_of(doc, "In-distribution", "FP32+temperature", "NLL (nats) \u2193")
    assert cell.find(cls="delta").text() == _signed(fitted.id["nll"] - fp32.id["nll"], ".4f") + " nats"
    assert cell.find(cls="delta").text().startswith("\u2212")
    # The same numbers in the view model (unrounded) and in the Markdown key numbers.
    n = summarize(res).model("demo_methods", "vit_digits").number("W8A8", "id", "top1")
    assert n.delta == pytest.approx(fp32.id["top1"] - w8.id["top1"]) and n.spread == pytest.approx(np.std(w8.per_seed["top1"], ddof=1))
    w4 = next(u for u in res.units if u.quantizer == "W4A4")
    line = next(ln for ln in render_markdown(res).splitlines() if ln.startswith("| W4A4 |"))
    assert f"{100 * w4.id['top1']:.2f} ({_signed(100 * (fp32.id['top1'] - w4.id['top1']), '.2f')}pp)" in line


def test_scores_follow_the_suite_order() -> None:
    res = rd.demo_results()
    res.scores["demo"] = ["energy", "msp"]
    doc = tables_html(res)
    captions = [c.text() for c in doc.find_all("caption") if "\u00b7" in c.text()]
    assert captions[0].endswith("Energy") and captions[-1].endswith("MSP")


def test_clip_scores_side_by_side_per_ood_set() -> None:
    doc = tables_html(rd.clip_results())
    table = doc.find("table", cls="side-by-side")
    groups = [th.text() for th in table.find("thead").find_all("th", cls="group")]
    assert groups == ["MSP", "Energy", "MCM", "NegLabel", "GenNeg"]
    set_rows = [tr.text() for tr in table.find_all("tr", cls="group-row")]
    assert set_rows == ["digits89", "textures", "photos", "noise", "mean over the OOD sets"]
    block = table
    while block.tag != "details":
        block = block.parent
    assert "open" in block.attrs  # with three or more scores this is the table shown first
    n_cols = len(table.find("thead").find_all("tr")[-1].find_all("th"))
    assert n_cols == 5 * 3  # AUROC, FPR@95, AUPR-out per score


def test_wide_tables_are_transposed_not_clipped() -> None:
    doc = tables_html(rd.methods_results())
    id_table = captioned(doc, "In-distribution")
    assert "transposed" in id_table.classes
    heads = [th.text() for th in id_table.find("thead").find_all("th")]
    assert heads[0] == "Quantizer" and heads[1].startswith("Top-1")
    rows = [tr.find("th").text() for tr in id_table.find("tbody").find_all("tr")]
    assert rows[0] == "FP32" and "W4A4-qat-distill+temperature" in rows and len(rows) == 16
    demo_id = captioned(tables_html(rd.demo_results()), "In-distribution")
    assert "transposed" not in demo_id.classes  # six quantizers fit


def test_methods_table_reads_the_record_fields_not_the_names() -> None:
    res = rd.methods_results()
    odd = next(u for u in res.units if u.quantizer == "W4A4-sq")
    odd.quantizer = "W8A8-looks-like-8-bit"  # the name lies; the record says smoothquant at W4A4
    doc = tables_html(res)
    table = doc.find("table", cls="methods-table")
    groups = [th.text() for th in table.find_all("th", cls="group")]
    assert groups == ["W8A8", "W4A4"]
    row = next(tr for tr in table.find("tbody").find_all("tr") if tr.find("th").text() == "smoothquant")
    assert "W8A8-looks-like-8-bit" in row.find("th").attrs["title"]
    cells = row.find_all("td")
    per_group = len(cells) // 2
    assert cells[per_group].text().startswith(f"{100 * odd.id['top1']:.2f}")  # under W4A4
    labels = [tr.find("th").text() for tr in table.find("tbody").find_all("tr")]
    assert labels[:2] == ["FP32", "FP32 +temperature"] and "qat_lsq +temperature" in labels
    assert any("best" in td.classes for td in table.find_all("td"))


def test_a_model_with_one_method_has_no_methods_table() -> None:
    assert not tables_html(rd.demo_results()).find_all("table", cls="methods-table")


def test_shifted_sets_and_spectral_tables() -> None:
    doc = tables_html(rd.clip_results())
    shift = captioned(doc, "Top-1")
    assert [tr.find("th").text() for tr in shift.find("tbody").find_all("tr")] == ["noise3", "blur3", "contrast3", "jpeg3"]
    assert "\u2713 delta <= 5.00pp" in cell_of(doc, "Top-1 (%) \u2191", "noise3", "W4A4").text()
    spec = tables_html(rd.spectral_results())
    cell = cell_of(spec, "Feature spectrum", "Spectral", "W4A4")
    assert "0.015" in cell.text() and "cell-fail" in cell.classes and not cell.find_all(cls="delta")


def small_methods() -> RunResults:
    """The methods run cut to two methods (enough for every methods figure, cheaper to draw)."""
    res = rd.methods_results()
    res.units = [u for u in res.units if u.method in ("", "minmax", "qat_lsq")]
    keep = {u.quantizer for u in res.units}
    res.verdicts = [v for v in res.verdicts if v.quantizer in keep]
    return res


def test_every_figure_kind_is_drawn(demo_html: str) -> None:
    kinds: Counter[str] = Counter()
    for html in (demo_html, render_html(small_methods()), render_html(rd.spectral_results())):
        doc = parse(html)
        for fig in doc.find_all("figure", cls="plot"):
            assert fig.find_all("svg"), fig.attrs["data-kind"]
            kinds[fig.attrs["data-kind"]] += 1
        assert not doc.find_all(cls="figure-error")
    assert set(kinds) == {"reliability", "roc-pr", "acc-ece", "margin-heatmap", "bits-ood", "bits-top1", "spectral", "rollout"}
    assert kinds["roc-pr"] == 2 + 2  # one per score: demo, methods


def test_figure_data_reads_the_records(demo_html: str) -> None:
    page = build_page(rd.demo_results())
    (model,) = page.suites[0].models
    figs = {f.kind: f for f in model.figures}
    rel = figs["reliability"].data["panels"]
    assert [p["label"] for p in rel] == ["FP32", "W8A8", "W6A6", "W4A8", "W8A4", "W4A4"] and rel[0]["ece"] == "3.50%"
    heat = figs["margin-heatmap"].data
    i, j = heat["rows"].index("W4A4"), heat["cols"].index("FPR@95(Energy) \u00b7 mean(ood)")
    assert heat["text"][i][j] == "+19.25pp" and heat["xfail"][i][j] and heat["values"][i][j] == -1.0
    (fig1,) = page.suites[0].figures
    assert fig1.data["x"] == ["FP32", "W8A8", "W6A6", "W4A8", "W8A4", "W4A4"]
    assert [m for m, _ in fig1.data["metrics"]] == ["aupr_out", "auroc"]


def test_line_figures_label_their_axes(demo_html: str) -> None:
    fig = demo_html[demo_html.index('data-kind="bits-ood"'):]
    svg = fig[: fig.index("</svg>")]
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    numbers = [t for t in texts if re.fullmatch(r"\d+(\.\d+)?", t.strip())]
    assert len(numbers) >= 6  # y tick labels on both panels (AUPR-out and AUROC in %)
    assert {"FP32", "W8A8", "W4A4"} <= {t.strip() for t in texts} and "bit configuration" in texts


def test_spectral_maps_share_one_colour_scale() -> None:
    page = build_page(rd.spectral_results())
    (spec,) = [f for f in page.suites[0].models[0].figures if f.kind == "spectral"]
    peaks = [max(max(r) for r in m["map"]) for m in spec.data["maps"]]
    assert spec.data["vmax"] == max(peaks) and len(spec.data["maps"]) == 3
    html = render_html(rd.spectral_results())
    fig = html[html.index('data-kind="spectral"'):]
    fig = fig[: fig.index("</figure>")]
    assert fig.count("relative spectral error") == 1  # one colour bar for all maps


def test_a_broken_figure_is_reported_and_the_rest_still_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_qrel.report import figures

    def broken(fig, data):
        raise RuntimeError("boom")

    monkeypatch.setitem(figures.DRAWERS._entries, "acc-ece", broken)
    doc = parse(render_html(rd.spectral_results()))
    (err,) = doc.find_all(cls="figure-error")
    assert "Accuracy change against ECE change" in err.text() and "RuntimeError: boom" in err.text()
    assert doc.find_all("figure", data_kind="reliability")[0].find_all("svg")


def test_user_strings_are_escaped() -> None:
    res = rd.spectral_results()
    for u in res.units:
        if u.quantizer == "W8A8":
            u.quantizer = "<b>W8A8</b>"
    for v in res.verdicts:
        if v.quantizer == "W8A8":
            v.quantizer, v.message = "<b>W8A8</b>", "<script>alert(1)</script>"
    html = render_html(res)
    assert "<b>W8A8</b>" not in html and "&lt;b&gt;W8A8&lt;/b&gt;" in html and "<script>alert" not in html


def test_run_info_is_shown_and_its_absence_said() -> None:
    doc = tables_html(rd.demo_results())
    info = doc.find("section", id="run-info").text()
    assert "2025-01-31T12:00:00+00:00" in info and "14.2 s" in info and "weights_sha256" in info and "minmax" in info
    assert "duration 14.2 s" in doc.find("header").text()
    res = rd.demo_results()
    res.run = {}
    assert "No run information was given" in tables_html(res).find("section", id="run-info").text()


def test_navigation_collapsible_sections_and_sortable_tables(demo_html: str) -> None:
    doc = parse(demo_html)
    toc = [a.attrs["href"] for a in doc.find("nav", id="toc").find_all("a")]
    assert toc[:3] == ["#verdict", "#failing", "#expected"] and "#run-info" in toc
    for href in toc:
        assert doc.find_all(id=href[1:]), href  # every entry points somewhere
    assert len(doc.find_all("details")) >= 5
    assert doc.find_all("table", cls="sortable") and "data-qrel-ready" in demo_html
    assert "@media print" in demo_html


def test_rendering_reads_no_metric_registry(tmp_path: Path) -> None:
    data = tmp_path / "run.json"
    data.write_text(json.dumps(rd.spectral_results().to_dict()))
    code = (
        "import json, sys\n"
        "from pytest_qrel.results import RunResults\n"
        "from pytest_qrel.report import render_report\n"
        f"render_report(RunResults.from_dict(json.load(open({str(data)!r}))), {str(tmp_path / 'r.html')!r})\n"
        "print(sorted(m for m in ('pytest_qrel.metrics', 'pytest_qrel.quantize', 'torch', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_qrel.report import render as render_mod

    def fail(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("pytest_qrel.io.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        render_mod.write_html(rd.spectral_results(), tmp_path / "r.html", figures=False)
    assert list(tmp_path.iterdir()) == []


def test_render_report_writes_the_summary_beside_and_refuses_what_it_would_overwrite(tmp_path: Path) -> None:
    res = rd.spectral_results()
    path = render_report(res, tmp_path / "r.html", figures=False)
    md = tmp_path / "r.md"
    assert md.read_text(encoding="utf-8").startswith("## \u274c pytest-qrel: FAIL \u2014 demo_spectral")
    assert render_report(res, path, figures=False) == path  # an earlier report (and its summary) is replaced
    (tmp_path / "notes.md").write_text("my notes\n")
    for bad, why in ((tmp_path / "r.md", "the report must be an .html file"),
                     (tmp_path / "notes.html", "its Markdown summary would overwrite")):
        with pytest.raises(StorageError, match=why):
            render_report(res, bad, figures=False)
    assert (tmp_path / "notes.md").read_text() == "my notes\n" and not (tmp_path / "notes.html").exists()
    with pytest.raises(TypeError, match="RunResults"):  # the old render_report(verdicts, units, path) is gone
        render_report(res.verdicts, tmp_path / "old.html")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ Markdown


def test_markdown_summary_of_a_failing_run() -> None:
    md = render_markdown(rd.demo_results(), report_path="reports/demo.html")
    assert md.startswith("## \u274c pytest-qrel: FAIL \u2014 demo\n")
    assert "**2 of 40 checks block the release.**" in md
    # shell-quoted, in a code block; --qrel-suite: pasted, it also selects a suite outside qrel_suite_glob (suites/*.yaml)
    assert "pytest --qrel-suite suites/demo.yaml 'suites/demo.yaml::vit_digits[W6A6-digits]::nll delta<=40%'" in md.splitlines()
    line = next(ln for ln in md.splitlines() if ln.startswith("| `W6A6 nll delta <= 40%`"))
    assert "+40.62%" in line and "\\[95% CI +29.09%, +52.16%\\]" in line and "| -0.62% |" in line
    assert "### Expected failures" in md and "W4A4 minmax keeps top-1" in md
    assert md.rstrip().endswith("Full report: `reports/demo.html`")


def test_markdown_groups_failures_by_check_with_the_line_to_change_and_links_into_the_report() -> None:
    # One over-tight bound failing on most units (the "all auroc >= 0.95", 24 of 25 rows) is one
    # row: the suite line to change, how many units fail it, the worst margin, a link to its row.
    res = rd.demo_results(diagnostics=False)
    by_q = {u.quantizer: u for u in res.units}
    tight = [rd.decide(rd.Check(q, "auroc", Bound("value", ">=", 0.95), score=s, dataset=d, text="all auroc >= 0.95",
                                source="suites/demo.yaml:23"), by_q, res.metrics, "demo", "vit_digits")
             for q in rd.SEVERITY for s in ("msp", "energy") for d in rd.OOD_SETS]
    res.verdicts += tight
    res.planned["demo"] += len(tight)
    failing = [v for v in tight if v.outcome == "failed"]
    assert 10 < len(failing) < len(tight)
    md = render_markdown(res, report_path="out/demo.html")
    rows = [ln for ln in md.splitlines() if ln.startswith("| `all auroc >= 0.95`")]
    assert len(rows) == 1 and "| `suites/demo.yaml:23` |" in rows[0] and f"| {len(failing)} of {len(tight)} |" in rows[0]
    worst = min(failing, key=lambda v: v.margin)
    assert f"| {worst.margin_display} |" in rows[0] and worst.margin_display.startswith("-")
    assert not any(v.margin < worst.margin for v in tight)
    anchor = re.search(r"\(demo\.html#(v-[0-9a-f]{12})\)", rows[0]).group(1)
    html = render_html(res, figures=False)
    assert html.count(f'id="{anchor}"') == 1  # the link lands on the worst row of the failing table
    assert f"pytest --qrel-suite suites/demo.yaml {shlex.quote(worst.nodeid)}" in md.splitlines()
    # every failing row of the report offers its node id shell-quoted in one unwrapped code element
    codes = {html_unescape(c) for c in re.findall(r'<code class="nodeid"[^>]*>(.*?)</code>', html)}
    assert {f"pytest --qrel-suite suites/demo.yaml {shlex.quote(v.nodeid)}" for v in failing} <= codes
    # one shell word, the id itself; --qrel-suite names the suite, so the pasted command collects it outside suites/*.yaml too
    assert shlex.split(next(iter(codes)))[1:3] == ["--qrel-suite", "suites/demo.yaml"]
    assert shlex.split(f"pytest --qrel-suite suites/demo.yaml {shlex.quote(worst.nodeid)}")[3] == worst.nodeid
    assert render_markdown(res, report_path="out/demo.html", report_url="https://ci.example/r.html").count("(https://ci.example/r.html#v-") >= 3


def test_markdown_summary_of_a_passing_run_has_the_key_numbers() -> None:
    md = render_markdown(rd.clip_results(), report_path="r.html")
    assert md.startswith("## \u2705 pytest-qrel: PASS \u2014 demo_clip\n")
    assert "### Key numbers" in md and "| FP32 | 97.40 |" in md
    w4 = next(ln for ln in md.splitlines() if ln.startswith("| W4A4 |"))
    assert "(+2.60pp)" in w4 and w4.count("|") == 8  # top-1, NLL, ECE, mean AUROC / AUPR-out / FPR@95
    assert len(md.splitlines()) > 10


def test_markdown_says_what_was_not_verified() -> None:
    res = rd.clip_results()
    res.verdicts[0].outcome = "skipped"
    res.planned["demo_clip"] += 3
    md = render_markdown(res)
    assert ": INCOMPLETE" in md and "4 of 17 checks did not run or could not decide" in md and "### Not verified" in md


def test_markdown_stays_under_the_size_limit_and_escapes() -> None:
    res = rd.demo_results()
    v = res.verdicts[0]
    many = [Verdict(**{**v.to_dict(), "outcome": "failed", "check": f"check|{i}", "nodeid": f"suites/x.yaml::m[q{i}-d]::{'x' * 300}",
                       "message": "<img src=x onerror=alert(1)> " * 5}) for i in range(5000)]
    res.verdicts = many
    md = render_markdown(res, report_path="r.html")
    assert len(md) < MAX_CHARS and "more (see the full report)" in md and "Full report:" in md
    assert "<img" not in md and "check\\|1" in md

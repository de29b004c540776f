"""Tests of the HTML report and the Markdown summary (synthetic verdicts and unit metrics)."""

from __future__ import annotations

import os
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import Markup

from pytest_qrel.report import build_context, render_html, render_markdown, render_report
from pytest_qrel.report.html import (
    environment,
    fmt_delta,
    fmt_metric,
    num,
    order_quantizers,
    pct,
    signed,
    signed_delta,
    split_quantizer_name,
)
from pytest_qrel.results import UnitMetrics, Verdict

QUANTIZERS = ["FP32", "W8A8", "W6A6", "W4A8", "W8A4", "W4A4"]
# Shaped like Table 1 of the ViT quantization/OOD paper (top-1 as fractions, NLL in nats).
TOP1 = [0.82700, 0.82594, 0.81380, 0.73491, 0.76287, 0.65288]
NLL = [0.733, 0.819, 1.002, 1.171, 1.325, 1.662]
ECE = [0.021, 0.022, 0.030, 0.051, 0.060, 0.094]
OOD_DATASETS = ["textures", "places365", "inaturalist"]


# ------------------------------------------------------------------------------ a tiny DOM


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

    def find_all(self, tag: str | None = None, cls: str | None = None, id: str | None = None):
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and (id is None or n.attrs.get("id") == id)
        ]

    def find(self, tag: str | None = None, cls: str | None = None, id: str | None = None) -> "Node":
        found = self.find_all(tag, cls, id)
        assert found, f"no <{tag} class={cls} id={id}>"
        return found[0]


VOID = {"meta", "br", "link", "img", "input", "hr", "col", "source", "wbr"}


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"unbalanced </{tag}>"
        self.cur = node.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def table_headers(table: Node) -> list[str]:
    return [th.text() for th in table.find("thead").find_all("th")]


def table_rows(table: Node) -> dict[str, list[Node]]:
    """Row label -> its value cells (<td>), for a table with a <th> row header."""
    rows = {}
    for tr in table.find("tbody").find_all("tr"):
        rows[tr.find("th").text().split(" ")[0]] = tr.find_all("td")
    return rows


def cell_value(td: Node) -> str:
    return td.find("span", cls="v").text()


# ------------------------------------------------------------------------------ synthetic data


def make_units(model: str = "DeiT3-S16", suite: str = "vit") -> list[UnitMetrics]:
    units = []
    for i, q in enumerate(QUANTIZERS):
        ood = {}
        for score, shift in (("msp", 0.0), ("energy", 0.01)):
            ood[score] = {
                ds: {
                    "auroc": 0.90 - 0.02 * i - 0.01 * j + shift,
                    "aupr_in": 0.95 - 0.01 * i,
                    "aupr_out": 0.80 - 0.03 * i - 0.02 * j + shift,
                    "fpr_at_95_tpr": 0.40 + 0.04 * i + 0.01 * j - shift,
                }
                for j, ds in enumerate(OOD_DATASETS)
            }
        info = {"temperature": 1.3 + 0.1 * i} if q in ("FP32", "W4A4") else {}
        units.append(
            UnitMetrics(suite, model, q, {"top1": TOP1[i], "nll": NLL[i], "ece": ECE[i]}, ood, info)
        )
    # scramble: the report must put FP32 first and keep the others in order of appearance
    return [units[1], units[0]] + units[2:]


def verdict(outcome: str = "passed", **kw) -> Verdict:
    base = dict(
        suite="vit",
        model="DeiT3-S16",
        quantizer="W8A8",
        dataset="imagenet-val",
        metric="top1",
        score=None,
        check="top1 drop <= 1pp",
        bound="1pp",
        fp32=TOP1[0],
        value=TOP1[1],
        delta=TOP1[0] - TOP1[1],
        delta_display="+0.11pp",
        passed=outcome in ("passed", "xpassed"),
        expect_fail=outcome in ("xfailed", "xpassed"),
        outcome=outcome,
        message="",
        nodeid="suites/vit.yaml::DeiT3-S16::W8A8::top1",
    )
    base.update(kw)
    return Verdict(**base)


def failing_w4a4() -> Verdict:
    return verdict(
        "failed",
        quantizer="W4A4",
        value=TOP1[5],
        delta=TOP1[0] - TOP1[5],
        delta_display="+17.41pp",
        check="top1 drop <= 2pp",
        bound="2pp",
        message="top1 dropped 17.41pp (> 2pp) under W4A4",
        nodeid="suites/vit.yaml::DeiT3-S16::W4A4::top1",
    )


# ------------------------------------------------------------------------------ tests


def test_writes_self_contained_file(tmp_path: Path) -> None:
    out = render_report([verdict(), failing_w4a4()], make_units(), tmp_path / "a" / "b" / "r.html")
    assert out == tmp_path / "a" / "b" / "r.html" and out.is_file()
    html = out.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    tree = parse(html)
    assert not tree.find_all("script") and not tree.find_all("link") and not tree.find_all("img")
    assert all("src" not in n.attrs for n in tree.iter())
    assert all(n.attrs["href"].startswith("#") for n in tree.iter() if "href" in n.attrs)
    assert "url(" not in html and "@import" not in html  # no CSS fetches either
    assert tree.find_all("style"), "CSS must be inline"
    assert tree.find("meta").attrs.get("charset") == "utf-8"


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        (["passed", "xfailed", "skipped"], "INCOMPLETE"),  # a skipped check was not verified
        (["passed", "xfailed"], "PASS"),
        (["passed", "not run"], "FAIL"),
        (["passed", "failed", "xfailed"], "FAIL"),
        (["passed", "error"], "FAIL"),
        (["passed", "xpassed"], "FAIL"),  # a strict xfail that passed is a failure
        ([], "PASS"),
    ],
)
def test_banner_status(outcomes: list[str], status: str) -> None:
    tree = parse(render_html([verdict(o) for o in outcomes], make_units()))
    banner = tree.find(id="verdict")
    assert banner.find(cls="status").text() == status
    assert ("fail" if status == "FAIL" else "pass") in banner.classes
    # the verdict comes before everything else in <main>
    main = tree.find("main")
    assert next(main.iter()) is banner


def test_banner_counts_every_outcome() -> None:
    outcomes = ["passed", "passed", "failed", "xfailed", "skipped", "error", "xpassed"]
    tree = parse(render_html([verdict(o) for o in outcomes], []))
    counts = {li.text().split(" ", 1)[1]: int(li.text().split(" ")[0])
              for li in tree.find(id="verdict").find_all("li")}
    assert counts == {
        "passed": 2, "failed": 1, "xfailed": 1, "xpassed": 1, "skipped": 1, "error": 1, "not run": 0, "inconclusive": 0
    }


def test_failing_section_shows_numbers_and_only_failures() -> None:
    ok = verdict(check="nll increase <= 0.1", metric="nll", fp32=0.733, value=0.819)
    xpass = verdict("xpassed", quantizer="W6A6", check="strict-xfail-check", metric="ece",
                    fp32=0.021, value=0.030, delta_display="+0.90pp")
    tree = parse(render_html([ok, failing_w4a4(), xpass], make_units()))
    section = tree.find(id="failing")
    text = section.text()
    for expected in ("82.70%", "65.29%", "+17.41pp", "2pp", "top1 drop <= 2pp",
                     "top1 dropped 17.41pp (> 2pp) under W4A4",
                     "suites/vit.yaml::DeiT3-S16::W4A4::top1", "strict-xfail-check"):
        assert expected in text, expected
    assert "nll increase <= 0.1" not in text
    rows = section.find("tbody").find_all("tr")
    assert [r.find(cls="badge").text() for r in rows] == ["failed", "xpassed"]
    # each failing row links to its model's section
    anchor = tree.find("section", cls="model").attrs["id"]
    assert rows[0].find("a", cls="loc").attrs["href"] == f"#{anchor}"
    # all verdicts are still listed, collapsed
    details = tree.find(id="all-verdicts").find("details")
    assert "open" not in details.attrs
    assert len(details.find("tbody").find_all("tr")) == 3
    assert "nll increase <= 0.1" in details.text()


def test_table1_quantizer_columns_values_and_deltas() -> None:
    tree = parse(render_html([], make_units()))
    table = tree.find("table", cls="id-metrics")
    assert table_headers(table) == ["Metric"] + QUANTIZERS
    rows = table_rows(table)
    assert list(rows) == ["Top-1", "NLL", "ECE"]
    top1 = ["82.70", "82.59", "81.38", "73.49", "76.29", "65.29"]
    assert [cell_value(td) for td in rows["Top-1"]] == top1
    nll = ["0.733", "0.819", "1.002", "1.171", "1.325", "1.662"]
    assert [cell_value(td) for td in rows["NLL"]] == nll
    assert cell_value(rows["ECE"][5]) == "9.40"
    # no delta beside FP32; positive = worse for accuracy (FP32 - q) and for NLL/ECE (q - FP32)
    assert not rows["Top-1"][0].find_all(cls="delta")
    top1_delta = rows["Top-1"][5].find(cls="delta")
    assert top1_delta.text() == "+17.41" and "worse" in top1_delta.classes
    assert rows["NLL"][5].find(cls="delta").text() == "+0.929"
    assert rows["ECE"][1].find(cls="delta").text() == "+0.10"


def test_improvement_shows_typographic_minus() -> None:
    units = make_units()
    units[0].id["top1"] = 0.83  # W8A8 better than FP32
    tree = parse(render_html([], units))
    top1 = table_rows(tree.find("table", cls="id-metrics"))["Top-1"]
    delta = top1[1].find(cls="delta")
    assert delta.text() == "\u22120.30" and "better" in delta.classes


def test_ood_tables_rows_datasets_and_mean() -> None:
    tree = parse(render_html([], make_units()))
    section = tree.find("section", cls="model")
    tables = section.find_all("table", cls="ood-metrics")
    captions = [t.find("caption").text().split(" ")[0] for t in tables]
    # per score: AUROC, AUPR-out, FPR@95 (AUPR-in goes into the collapsed "other metrics")
    assert captions[:3] == ["AUROC", "AUPR-out", "FPR@95"] and len(tables) == 2 * 4
    aupr_out = tables[1]
    assert table_headers(aupr_out) == ["OOD dataset"] + QUANTIZERS
    rows = table_rows(aupr_out)
    assert list(rows) == OOD_DATASETS + ["mean"]
    # FP32 AUPR-out: 0.80, 0.78, 0.76 -> mean 78.00; W4A4: 0.65, 0.63, 0.61 -> 63.00
    assert cell_value(rows["mean"][0]) == "78.00"
    assert cell_value(rows["mean"][5]) == "63.00"
    assert rows["mean"][5].find(cls="delta").text() == "+15.00"
    fpr_rows = table_rows(tables[2])
    assert fpr_rows["textures"][5].find(cls="delta").text() == "+20.00"  # q - FP32 for FPR@95


def test_autoescape_of_user_strings() -> None:
    evil = "<script>alert(1)</script>"
    units = make_units(model=evil)
    v = failing_w4a4()
    v = replace(v, model=evil, message=f"bad {evil}", check=f"top1 {evil}")
    html = render_html([v], units, title=evil, meta={"command": evil, evil: [evil]})
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    tree = parse(html)
    assert not tree.find_all("script")
    assert tree.find("h3", cls="model-name").text().startswith(evil)
    md = render_markdown([v], units)
    assert "<script>" not in md


def test_missing_data_renders_dashes() -> None:
    units = make_units()
    units[0].id.pop("ece")  # W8A8 without ECE
    units[3].ood = {}  # W4A8 without any OOD metrics
    del units[2].ood["msp"]["places365"]  # W6A6 misses one dataset
    skipped = verdict("skipped", fp32=None, value=None, delta=None, delta_display="",
                      bound="", message="dataset missing", check="aupr_out drop <= 5%",
                      metric="aupr_out", score="msp", dataset="openimage-o")
    error = verdict("error", fp32=None, value=None, delta=None, delta_display="",
                    message="model failed to load", metric="unknown_metric")
    tree = parse(render_html([skipped, error], units))
    id_rows = table_rows(tree.find("table", cls="id-metrics"))
    assert cell_value(id_rows["ECE"][1]) == "\u2014"
    assert not id_rows["ECE"][1].find_all(cls="delta")
    msp_aupr = table_rows(tree.find_all("table", cls="ood-metrics")[1])
    w4a8 = QUANTIZERS.index("W4A8")
    assert all(cell_value(cells[w4a8]) == "\u2014" for cells in msp_aupr.values())
    # W6A6's mean covers 2 of 3 datasets: shown, marked, without a delta
    w6a6_mean = msp_aupr["mean"][QUANTIZERS.index("W6A6")]
    assert cell_value(w6a6_mean) != "\u2014" and w6a6_mean.find_all(cls="note")
    assert "2 of 3" in w6a6_mean.attrs["title"] and not w6a6_mean.find_all(cls="delta")
    error_row = tree.find(id="failing").find("tbody").find("tr")
    cells = [td.text() for td in error_row.find_all("td")]
    assert cells[3:6] == ["\u2014", "\u2014", "\u2014"]


def test_no_units_and_no_verdicts() -> None:
    tree = parse(render_html([], []))
    assert tree.find(id="verdict").find(cls="status").text() == "PASS"
    assert "No checks ran" in tree.find(id="verdict").text()
    assert "No unit metrics" in tree.find(id="results").text()
    assert not tree.find_all("table", cls="id-metrics")


def test_failing_cell_is_highlighted() -> None:
    tree = parse(render_html([failing_w4a4()], make_units()))
    top1 = table_rows(tree.find("table", cls="id-metrics"))["Top-1"]
    assert "cell-fail" in top1[5].classes and "top1 drop <= 2pp" in top1[5].attrs["title"]
    assert not any("cell-fail" in td.classes for td in top1[:5])


def test_info_line_and_meta_table() -> None:
    meta = {"suites": {"vit": "suites/vit.yaml"}, "conventions": "hendrycks",
            "versions": {"torch": "2.4.0", "timm": "1.0.9"}, "created": "2025-01-02T03:04:05Z",
            "command": "pytest --qrel-suite suites/vit.yaml"}
    tree = parse(render_html([], make_units(), meta=meta))
    info = tree.find("ul", cls="info").text()
    assert "FP32 : temperature = 1.3" in info and "W4A4 : temperature = 1.8" in info
    assert "W8A8" not in info
    run_info = tree.find(id="run-info").text()
    command = "pytest --qrel-suite suites/vit.yaml"
    for expected in ("suites/vit.yaml", "hendrycks", "2.4.0", command):
        assert expected in run_info
    assert "2025-01-02T03:04:05Z" in tree.find("header").text()


def test_plot_slots_accept_trusted_markup_and_escape_strings() -> None:
    svg = Markup('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    html = render_html(
        [], make_units(),
        plots={("vit", "DeiT3-S16"): [{"title": "AUPR-out per quantizer", "svg": svg},
                                      {"title": "raw", "svg": "<svg onload=x>"}]},
        extra_sections=[{"id": "notes", "title": "Notes", "html": Markup("<p class='n'>hi</p>")}],
    )
    tree = parse(html)
    section = tree.find("section", cls="model")
    assert len(section.find_all("svg")) == 1 and "&lt;svg onload=x&gt;" in html
    assert tree.find(id="notes").find("p", cls="n").text() == "hi"
    # and the template's `plots` block can be overridden by a child template
    child = environment().from_string(
        '{% extends "report.html.j2" %}'
        '{% block plots %}<p class="slot">plot for {{ section.model }}</p>{% endblock %}'
    )
    tree = parse(child.render(build_context([], make_units() + make_units(model="ViT-S16"))))
    assert [p.text() for p in tree.find_all("p", cls="slot")] == [
        "plot for DeiT3-S16", "plot for ViT-S16"
    ]


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    render_report([verdict()], make_units(), target)
    render_report([failing_w4a4()], make_units(), target)  # overwrite in place
    assert os.listdir(tmp_path) == ["report.html"]
    assert "FAIL" in parse(target.read_text()).find(id="verdict").text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        render_report([verdict()], make_units(), target)
    assert os.listdir(tmp_path) == ["report.html"]  # temp file cleaned up, old report intact
    assert "FAIL" in parse(target.read_text()).find(id="verdict").text()


def test_markdown_summary() -> None:
    v = replace(failing_w4a4(), message="a | b\nc")
    md = render_markdown([verdict(), v, verdict("xfailed")], make_units())
    lines = md.splitlines()
    assert lines[0].endswith("FAIL")
    counts = ["1 passed", "1 failed", "1 xfailed", "0 xpassed", "0 skipped", "0 error", "0 not run", "0 inconclusive"]
    assert " \u00b7 ".join(counts) in md
    row = next(line for line in lines if "top1 drop <= 2pp" in line.replace("\\", ""))
    for expected in ("82.70%", "65.29%", "+17.41pp", "a \\| b c"):
        assert expected in row
    assert row.count(" | ") == 7  # the escaped pipe does not add a column
    assert "top1 drop <= 1pp" not in md.replace("\\", "")  # the passing check is not listed

    ok = render_markdown([verdict(), verdict("xfailed")], make_units())
    assert ok.splitlines()[0].endswith("PASS") and "Failing checks" not in ok
    partial = render_markdown([verdict(), verdict("skipped")], make_units())
    assert partial.splitlines()[0].endswith("INCOMPLETE") and "1 of 2 checks were skipped" in partial


def test_markdown_accepts_dicts_from_xdist_workers() -> None:
    md = render_markdown([failing_w4a4().to_dict()], [u.to_dict() for u in make_units()])
    assert "FAIL" in md.splitlines()[0] and "6 units, 1 model" in md


def test_filters_and_delta_conventions() -> None:
    assert pct(0.827) == "82.70%" and pct(0.827, 3, False) == "82.700" and pct(None) == "\u2014"
    assert num(0.7331) == "0.733" and num(float("nan")) == "\u2014"
    assert signed(0.1234) == "+0.12" and signed(-0.5, 1, "pp") == "\u22120.5pp"
    assert signed(0.0001) == "\u00b10.00"
    assert fmt_metric(0.733, "nll") == "0.733" and fmt_metric(0.021, "ece") == "2.10%"
    assert fmt_delta(0.1741, "top1") == "+17.41pp" and fmt_delta(0.929, "nll") == "+0.929"
    # positive = worse: FP32 - q for accuracy/AUROC/AUPR, q - FP32 for NLL/ECE/FPR@95
    assert signed_delta("top1", 0.8, 0.7) == pytest.approx(0.1)
    assert signed_delta("aupr_out", 0.8, 0.7) == pytest.approx(0.1)
    assert signed_delta("nll", 0.7, 0.9) == pytest.approx(0.2)
    assert signed_delta("fpr_at_95_tpr", 0.4, 0.5) == pytest.approx(0.1)
    assert signed_delta("mystery", 0.4, 0.5) is None and signed_delta("nll", None, 0.5) is None
    assert order_quantizers(make_units()) == QUANTIZERS


# ------------------------------------------------------------------------ methods x bit configs

METHOD_QUANTIZERS = ["FP32", "W8A8", "W4A4", "W8A8-repq", "W4A4-repq", "W4A4-qat-lsq",
                     "W4A4-qat-lsq+temperature", "FP32+temperature"]


def make_method_units(suite: str = "demo_methods", model: str = "vit_digits") -> list[UnitMetrics]:
    """Units shaped like suites/demo_methods.yaml: bare minmax names, '-repq', a QAT method at
    W4A4 only (so W8A8 has a gap), its +temperature variant and FP32+temperature."""
    units = []
    for i, q in enumerate(METHOD_QUANTIZERS):
        ood = {
            # msp first: the AUROC column averages the first score; energy is different on purpose
            "msp": {ds: {"auroc": 0.90 - 0.01 * i - 0.02 * j} for j, ds in enumerate(OOD_DATASETS)},
            "energy": {ds: {"auroc": 0.50} for ds in OOD_DATASETS},
        }
        info = {"temperature": 1.2 + i / 100} if q.endswith("+temperature") else {}
        idm = {"top1": 0.95 - 0.01 * i, "nll": 0.20 + 0.01 * i, "ece": 0.02 + 0.001 * i}
        units.append(UnitMetrics(suite, model, q, idm, ood, info))
    return units


def methods_table(tree: Node) -> Node:
    return tree.find("table", cls="methods-table")


def method_rows(table: Node) -> dict[str, list[Node]]:
    """Full row-header text ("qat-lsq +temperature") -> its <td> cells."""
    return {tr.find("th").text(): tr.find_all("td") for tr in table.find("tbody").find_all("tr")}


def test_methods_table_only_with_several_methods() -> None:
    # bare bit-config names (the demo suite): one method, no table
    assert not parse(render_html([], make_units())).find_all("table", cls="methods-table")
    assert build_context([], make_units())["suites"][0].models[0].methods_table is None
    # FP32 and its post-hoc variants are no method; a single suffixed method is still one method
    units = [u for u in make_method_units() if u.quantizer in ("FP32", "FP32+temperature", "W8A8-repq", "W4A4-repq")]
    assert not parse(render_html([], units)).find_all("table", cls="methods-table")
    assert parse(render_html([], make_method_units())).find_all("table", cls="methods-table")


def test_methods_table_layout_values_and_temperature() -> None:
    units = make_method_units()
    tree = parse(render_html([], units))
    table = methods_table(tree)
    head = table.find("thead").find_all("tr")
    assert [th.text() for th in head[0].find_all("th")] == ["Method", "W8A8", "W4A4"]
    assert [th.text().split(" ")[0] for th in head[1].find_all("th")] == ["Top-1", "NLL", "ECE", "AUROC", "T"] * 2
    rows = method_rows(table)
    # FP32 first, post-hoc variants right below their method, methods in order of appearance
    assert list(rows) == ["FP32", "FP32 +temperature", "base", "repq", "qat-lsq", "qat-lsq +temperature"]
    assert all(len(cells) == 10 for cells in rows.values())
    q = {name: i for i, name in enumerate(METHOD_QUANTIZERS)}
    w8, w4 = slice(0, 5), slice(5, 10)
    # values: top1 0.95 - 0.01 i; AUROC = mean of the first score (msp) over the OOD sets: 0.88 - 0.01 i
    assert [cell_value(td) for td in rows["repq"][w4][:4]] == [
        pct(0.95 - 0.01 * q["W4A4-repq"], 2, False), num(0.20 + 0.01 * q["W4A4-repq"]),
        pct(0.02 + 0.001 * q["W4A4-repq"], 2, False), pct(0.88 - 0.01 * q["W4A4-repq"], 2, False),
    ]
    assert cell_value(rows["base"][w8][3]) == "87.00"  # W8A8: i = 1
    # FP32: reference values repeated under every bit config, no deltas; others: delta vs FP32
    assert [cell_value(td) for td in rows["FP32"][w8][:4]] == [cell_value(td) for td in rows["FP32"][w4][:4]]
    assert not rows["FP32"][0].find_all(cls="delta") and "ref" in rows["FP32"][0].classes
    delta = rows["repq"][w4][0].find(cls="delta")  # 95.00 - 91.00
    assert delta.text() == "+4.00" and "worse" in delta.classes
    assert rows["repq"][w4][1].find(cls="delta").text() == "+0.040"
    # the QAT method has no W8A8 quantizer: dashes there, values at W4A4
    assert all(td.text() == "\u2014" for td in rows["qat-lsq"][w8][:4])
    assert cell_value(rows["qat-lsq"][w4][0]) == pct(0.95 - 0.01 * q["W4A4-qat-lsq"], 2, False)
    # fitted temperatures in the T column, blank where there is none
    assert rows["qat-lsq +temperature"][9].text() == "1.260"  # 1.2 + 6/100
    assert rows["FP32 +temperature"][4].text() == rows["FP32 +temperature"][9].text() == "1.270"
    assert rows["repq"][9].text() == "" and rows["qat-lsq +temperature"][4].text() == ""
    # the best quantized value per column is bold: top-1 falls with i, so minmax at both configs
    assert "best" in rows["base"][w8][0].classes and "best" in rows["base"][w4][0].classes
    assert not any("best" in cells[0].classes for name, cells in rows.items() if name != "base")
    # the row header names its quantizers on hover; the legend names the AUROC score
    header = {tr.find("th").text(): tr.find("th") for tr in table.find("tbody").find_all("tr")}
    assert header["repq"].attrs["title"] == "W8A8-repq, W4A4-repq"
    legend = tree.find("section", cls="model").find_all("p", cls="legend")[0].text()
    assert "MSP score, mean over 3 OOD sets" in legend


def test_methods_table_without_temperature_has_no_t_column() -> None:
    units = [u for u in make_method_units() if "+temperature" not in u.quantizer]
    table = methods_table(parse(render_html([], units)))
    assert "T" not in [th.text() for th in table.find("thead").find_all("th")]
    assert all(len(cells) == 8 for cells in method_rows(table).values())


def test_methods_table_labels_from_methods_mapping_and_failing_cells() -> None:
    failing = verdict("failed", suite="demo_methods", model="vit_digits", quantizer="W4A4-repq",
                      metric="top1", check="W4A4-repq top1 delta <= delta(W4A4)")
    ood_fail = verdict("failed", suite="demo_methods", model="vit_digits", quantizer="W4A4",
                       metric="auroc", score="msp", dataset="mean(ood)", check="W4A4 auroc(msp) on mean(ood) delta <= 0")
    methods = {"W8A8": "minmax", "W4A4": "minmax", ("demo_methods", "W8A8-repq"): "repq_vit",
               ("demo_methods", "W4A4-repq"): "repq_vit", ("other", "W4A4-qat-lsq"): "nope"}
    tree = parse(render_html([failing, ood_fail], make_method_units(), methods=methods))
    rows = method_rows(methods_table(tree))
    # a bare name takes its registered method as label; a suffix stays, the method beside it
    assert list(rows)[2:] == ["minmax", "repq repq_vit", "qat-lsq", "qat-lsq +temperature"]
    assert "cell-fail" in rows["repq repq_vit"][5].classes
    assert "delta(W4A4)" in rows["repq repq_vit"][5].attrs["title"]
    assert "cell-fail" in rows["minmax"][8].classes  # W4A4 AUROC (mean over OOD sets)
    assert sum("cell-fail" in td.classes for cells in rows.values() for td in cells) == 2


def test_methods_table_names_that_read_the_same_get_rows_of_their_own() -> None:
    units = [UnitMetrics("s", "m", q, {"top1": 0.9}, {}, {}) for q in ("FP32", "W8A8-x", "x-W8A8", "W4A4_y", "W4A4")]
    table = methods_table(parse(render_html([], units)))
    trs = table.find("tbody").find_all("tr")
    assert [tr.find("th").text() for tr in trs] == ["FP32", "x", "x", "y", "base"]
    rows = method_rows(table)
    assert [th.text() for th in table.find("thead").find_all("tr")[0].find_all("th")] == ["Method", "W8A8", "W4A4"]
    header = [tr.find("th").attrs["title"] for tr in table.find("tbody").find_all("tr")]
    assert header[1:3] == ["W8A8-x", "x-W8A8"]
    # no OOD metrics: the AUROC cells are dashes
    assert cell_value(rows["y"][4 + 3]) == "\u2014"


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("W4A4-qat-lsq+temperature", ("W4A4", "qat-lsq", "+temperature")),
        ("W8A8", ("W8A8", "", "")),
        ("repq-W4A4", ("W4A4", "repq", "")),
        ("w4a16_raana", ("W4A16", "raana", "")),
        ("smooth-W8A8-a05", ("W8A8", "smooth-a05", "")),
        ("int8", ("", "int8", "")),
        ("W8A8x", ("", "W8A8x", "")),
        ("FP32+temperature", ("", "FP32", "+temperature")),
    ],
)
def test_split_quantizer_name(name: str, parts: tuple[str, str, str]) -> None:
    assert split_quantizer_name(name) == parts


# ------------------------------------------------------------------ covariate shift and pairs

SHIFTED = ["noise3", "blur2"]


def make_shift_units() -> list[UnitMetrics]:
    """``make_units`` plus top-1 / NLL / ECE on two shifted sets and a CounterAnimals-like pair."""
    units = make_units()
    for u in units:
        i = QUANTIZERS.index(u.quantizer)
        u.shifted = {
            "noise3": {"top1": 0.60 - 0.05 * i, "nll": 1.5 + 0.1 * i, "ece": 0.05 + 0.01 * i},
            "blur2": {"top1": 0.70 - 0.02 * i, "nll": 1.2, "ece": 0.04},
        }
        u.pairs = {"animals": {"vulnerability": 0.12 + 0.02 * i}}
    return units


def shift_tables(tree: Node) -> dict[str, Node]:
    return {t.find("caption").text().split(" ")[0]: t for t in tree.find_all("table", cls="shift-metrics")}


def test_shift_tables_rows_sets_columns_quantizers_and_deltas() -> None:
    units = make_shift_units()
    del units[2].shifted["blur2"]  # W6A6 misses one set
    tree = parse(render_html([], units))
    tables = shift_tables(tree)
    assert list(tables) == ["Top-1", "NLL", "ECE"]
    assert "Covariate shift" in [h.text() for h in tree.find_all("h4")]
    top1 = tables["Top-1"]
    assert table_headers(top1) == ["Shifted set"] + QUANTIZERS
    rows = table_rows(top1)
    assert list(rows) == SHIFTED  # no mean row
    assert [cell_value(td) for td in rows["noise3"]] == ["60.00", "55.00", "50.00", "45.00", "40.00", "35.00"]
    assert not rows["noise3"][0].find_all(cls="delta")  # FP32 column
    w4a4 = rows["noise3"][5].find(cls="delta")
    assert w4a4.text() == "+25.00" and "worse" in w4a4.classes  # pp vs FP32 on the same set
    assert cell_value(rows["blur2"][2]) == "\u2014" and not rows["blur2"][2].find_all(cls="delta")
    nll = table_rows(tables["NLL"])
    assert cell_value(nll["noise3"][5]) == "2.000" and nll["noise3"][5].find(cls="delta").text() == "+0.500"
    ece = table_rows(tables["ECE"])
    assert cell_value(ece["noise3"][1]) == "6.00" and ece["noise3"][1].find(cls="delta").text() == "+1.00"
    assert cell_value(ece["blur2"][3]) == "4.00" and ece["blur2"][3].find(cls="delta").text() == "\u00b10.00"
    # the ID table is unchanged by the shifted numbers
    assert cell_value(table_rows(tree.find("table", cls="id-metrics"))["Top-1"][0]) == "82.70"


def test_pair_table_vulnerability_per_quantizer() -> None:
    tree = parse(render_html([], make_shift_units()))
    assert "Spurious correlations (pairs)" in [h.text() for h in tree.find_all("h4")]
    (table,) = tree.find_all("table", cls="pair-metrics")
    assert table.find("caption").text().startswith("Vulnerability (%)")
    assert table_headers(table) == ["Pair"] + QUANTIZERS
    rows = table_rows(table)
    assert list(rows) == ["animals"]
    assert [cell_value(td) for td in rows["animals"]] == ["12.00", "14.00", "16.00", "18.00", "20.00", "22.00"]
    delta = rows["animals"][5].find(cls="delta")
    assert delta.text() == "+10.00" and "worse" in delta.classes  # lower is better: more = worse


def test_pair_table_shows_every_stored_pair_metric() -> None:
    units = make_shift_units()
    for u in units:
        u.pairs["animals"]["top1"] = 0.5  # e.g. an accuracy stored beside the vulnerability
        u.pairs["birds"] = {"vulnerability": -0.03}
    tables = parse(render_html([], units)).find_all("table", cls="pair-metrics")
    assert [t.find("caption").text().split(" ")[0] for t in tables] == ["Vulnerability", "Top-1"]
    vuln = table_rows(tables[0])
    assert list(vuln) == ["animals", "birds"] and cell_value(vuln["birds"][0]) == "-3.00"
    assert cell_value(table_rows(tables[1])["animals"][4]) == "50.00"
    assert cell_value(table_rows(tables[1])["birds"][4]) == "\u2014"


def test_shift_and_pair_sections_absent_without_data() -> None:
    tree = parse(render_html([], make_units()))
    assert not tree.find_all("table", cls="shift-metrics")
    assert not tree.find_all("table", cls="pair-metrics")
    headings = [h.text() for h in tree.find_all("h4")]
    assert "Covariate shift" not in headings and "Spurious correlations (pairs)" not in headings
    # one kind without the other
    units = make_units()
    for u in units:
        u.pairs = {"animals": {"vulnerability": 0.1}}
    tree = parse(render_html([], units))
    assert not tree.find_all("table", cls="shift-metrics") and tree.find_all("table", cls="pair-metrics")


def test_shift_and_pair_sections_per_model() -> None:
    units = make_shift_units() + make_units(model="ViT-S16")
    tree = parse(render_html([], units))
    deit, vit = tree.find_all("section", cls="model")
    assert deit.find_all("table", cls="shift-metrics") and deit.find_all("table", cls="pair-metrics")
    assert not vit.find_all("table", cls="shift-metrics") and not vit.find_all("table", cls="pair-metrics")


def test_shift_and_pair_names_are_escaped() -> None:
    evil = "<b>x</b>"
    units = make_shift_units()
    for u in units:
        u.shifted = {evil: u.shifted["noise3"]}
        u.pairs = {evil: u.pairs["animals"]}
    html = render_html([], units)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    tree = parse(html)
    assert list(table_rows(shift_tables(tree)["Top-1"])) == [evil]


def test_failing_shift_and_pair_checks_highlight_their_own_cells() -> None:
    shift_fail = verdict("failed", quantizer="W4A4", dataset="noise3", check="W4A4 top1 on noise3 delta <= 5pp")
    pair_fail = verdict("failed", quantizer="W8A4", dataset="animals", metric="vulnerability",
                        check="W8A4 vulnerability delta <= 5pp")
    tree = parse(render_html([shift_fail, pair_fail], make_shift_units()))
    top1 = table_rows(shift_tables(tree)["Top-1"])
    assert "cell-fail" in top1["noise3"][5].classes
    assert "W4A4 top1 on noise3" in top1["noise3"][5].attrs["title"]
    assert not any("cell-fail" in td.classes for td in top1["noise3"][:5] + top1["blur2"])
    vuln = table_rows(tree.find("table", cls="pair-metrics"))["animals"]
    assert [("cell-fail" in td.classes) for td in vuln] == [False, False, False, False, True, False]
    # a check on a shifted set does not mark the in-distribution cell of the same metric
    id_top1 = table_rows(tree.find("table", cls="id-metrics"))["Top-1"]
    assert not any("cell-fail" in td.classes for td in id_top1)


def test_shift_and_pairs_fp32_first_and_sets_in_suite_order() -> None:
    units = make_shift_units()
    fp32 = next(u for u in units if u.quantizer == "FP32")
    fp32.shifted = dict(sorted(fp32.shifted.items()))  # a stored baseline sorts its keys
    dicts = [u.to_dict() for u in units]  # W8A8 first, as xdist workers send them
    top1 = shift_tables(parse(render_html([], dicts)))["Top-1"]
    assert table_headers(top1)[1:3] == ["FP32", "W8A8"]
    rows = table_rows(top1)
    assert list(rows) == SHIFTED  # the quantized units' (suite) order, not the baseline's
    assert cell_value(rows["blur2"][0]) == "70.00" and cell_value(rows["blur2"][1]) == "68.00"

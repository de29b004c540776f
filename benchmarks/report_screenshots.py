"""Screenshots of the demo reports for the docs (``docs/report-*.png``), taken in headless Chromium.

    python benchmarks/report_screenshots.py                     # synthetic demo-shaped RunResults
    python benchmarks/report_screenshots.py --results demo=reports/demo.json ...

``--results NAME=PATH`` uses the results file of a real run (``pytest --qrel-suite ...
--qrel-results PATH``, or a bare ``RunResults.to_dict()`` dump)
instead of the synthetic data of ``tests/reportdata.py``; the reports themselves are written to
``--reports`` (default: a temporary folder). Needs ``chromium`` (``apt-get install chromium``).
Each shot is 1400 px wide (the width the report is laid out for) and stored as a 256-colour PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

#: (report, anchor to scroll to or "", viewport height, file name)
SHOTS = [
    ("demo", "", 1500, "report-demo.png"),
    ("demo", "model-1-figures", 1500, "report-demo-figures.png"),
    ("demo_methods", "model-1", 1300, "report-methods.png"),
    ("demo_clip", "model-1-figures", 1300, "report-clip-figures.png"),
]


def main() -> None:
    from browser import find_chromium, run_chromium

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", action="append", default=[], metavar="NAME=PATH", help="a RunResults JSON of a real run")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--reports", default=None, help="where to write the HTML reports (default: a temporary folder)")
    args = parser.parse_args()
    if find_chromium() is None:
        sys.exit("chromium is not installed (apt-get install chromium)")

    from PIL import Image

    from pytest_qrel.report import render_report
    from pytest_qrel.results import RunResults

    given = dict(item.split("=", 1) for item in args.results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = Path(args.reports or tempfile.mkdtemp(prefix="qrel-reports-"))
    pages: dict[str, Path] = {}
    for name in dict.fromkeys(s[0] for s in SHOTS):
        if name in given:
            doc = json.loads(Path(given[name]).read_text())
            results = RunResults.from_dict(doc.get("results", doc))  # a --qrel-results file, or a bare dump
        else:
            import reportdata as rd

            results = rd.all_demos()[name]
        pages[name] = render_report(results, reports / f"{name}.html")
    for name, anchor, height, filename in SHOTS:
        target = out / filename
        page = pages[name]
        if anchor:  # a copy of the page showing only that element (headless screenshots ignore #anchors)
            only = reports / f"{name}-{anchor}.html"
            keep = f'<script>document.body.replaceChildren(document.getElementById("{anchor}"));</script></body>'
            only.write_text(page.read_text(encoding="utf-8").replace("</body>", keep), encoding="utf-8")
            page = only
        run_chromium(page, f"--screenshot={target}", window=(1400, height))
        Image.open(target).convert("RGB").quantize(colors=256).save(target, optimize=True)
        print(f"{target} ({target.stat().st_size // 1024} KB) from {page}")


if __name__ == "__main__":
    main()

"""What pytest prints for checks: ids that select their item when pasted back, one line per failure
under --tb=line, a unit's cost under --durations, and a unit's error printed once."""

from __future__ import annotations

import re
import shlex

import pytest


@pytest.mark.slow
def test_printed_ids_select_their_item_and_failures_are_one_line(pytester, write_suite):
    """Bounds with decimals: `pytest -v` rewrote the `.` of an item's id whose tail equals its
    headline (`value<=0::001`), and that id selected nothing (rc 4)."""
    write_suite('- "W8A8 ece <= 0.001"\n- "W8A8 nll <= 9.5"\n- "W4A4 ece delta <= 0.5"\n')
    suite = ("--qrel-suite", "suites/mini.yaml", "-p", "no:randomly")
    run = pytester.runpytest(*suite, "--qrel-update-baselines", "-v", "--tb=line", "--durations=0")
    assert run.ret == 1
    out = run.stdout.lines
    printed = [m.group(1) for line in out if (m := re.match(r"(suites/mini\.yaml::\S.*?) (PASSED|FAILED)\b", line))]
    assert printed == ["suites/mini.yaml::vit::W8A8::ece on digits value<=0.001", "suites/mini.yaml::vit::W8A8::nll on digits value<=9.5",
                       "suites/mini.yaml::vit::W4A4::ece on digits delta<=0.5"]
    # --tb=line: the failure once, at the check's line in the suite (pytest printed it twice)
    failures = out[out.index(next(x for x in out if "FAILURES" in x)) + 1:]
    failures = failures[:next(i for i, x in enumerate(failures) if x.startswith("="))]
    line = next(i for i, x in enumerate(pytester.path.joinpath("suites/mini.yaml").read_text().splitlines()) if "0.001" in x) + 1
    assert len(failures) == 1 and failures[0].startswith(f"suites/mini.yaml:{line}: vit W8A8 ece on digits: FP32 ")
    assert failures[0].endswith("violates value <= 0.10%")
    # --durations: each unit's time, and the check pytest charged it to
    start = out.index(next(x for x in out if x.startswith("unit durations: ")))
    units = [x for x in out[start + 1:start + 4] if x.lstrip().split("s ", 1)[0].replace(".", "").isdigit()]
    assert {re.search(r"s  vit (\w+): ", u).group(1) for u in units} == {"W8A8", "W4A4"}
    assert all(re.search(r": [1-9]\d* passes, [1-9]\d* images \(.* s computing the unit.*\) in suites/mini\.yaml::vit::", u) for u in units)
    # off a terminal, one line per unit as it ends (none under -q: tests/test_progress.py)
    assert len([x for x in out if re.match(r"qrel: vit (W8A8|W4A4): \d+ passes, \d+ images in ", x)]) == 2
    # the summary offers the first failure's command, quoted for a shell
    rerun = next(x for x in out if x.startswith("re-run one: "))
    words = shlex.split(rerun.split(": ", 1)[1].split("   (")[0])
    assert words == ["pytest", "--qrel-suite", "suites/mini.yaml", printed[0]]
    # each printed id with a decimal bound, pasted back as one shell word, runs that one check
    for nodeid in printed[:2]:
        again = pytester.runpytest(*suite, nodeid)
        outcomes = again.parseoutcomes()
        outcomes.pop("warnings", None)  # the suite declares sets no check reads (a collection warning)
        assert sum(outcomes.get(k, 0) for k in ("passed", "failed")) == 1, again.stdout.str()
        if "nll" in nodeid:
            assert again.ret == 0 and outcomes == {"passed": 1}


def test_a_units_data_error_is_printed_once_for_all_its_checks(pytester):
    """An ID folder whose classes are not the model's: every check of the unit fails, the message
    is printed in full once; the others name the check that printed it."""
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = pytester.path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), 60 * i).save(folder / f"{i}.png")
    (pytester.path / "s.yaml").write_text("""\
version: 1
name: broken
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: mine, source: "imagefolder:data", options: {split_dirs: {train: train, test: test}}}
  ood: [{name: noise, source: "embedded:noise"}]
quantizers:
  W8A8: {method: minmax, calibration: {samples: 4}}
checks: ["W8A8 top1 delta <= 2pp", "W8A8 ece <= 0.5", "W8A8 nll <= 5", "W8A8 ece delta <= 0.5", "W8A8 top1 >= 0"]
""")
    result = pytester.runpytest("--qrel-suite", "s.yaml", "--qrel-update-baselines", "-p", "no:cacheprovider", "-rN")
    assert result.ret == 1
    text = result.stdout.str()
    assert text.count("2 of 2 class folders (a, b) are not classes of model 'vit'") == 1, text
    assert text.count("the same error as s.yaml::vit::W8A8::top1 on mine delta<=2pp") == 4
    outcomes = result.parseoutcomes()
    outcomes.pop("warnings", None)  # the suite declares sets no check reads (a collection warning)
    assert outcomes == {"failed": 5}

"""The suite loader, the check grammar and the planner: pure, no torch."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_qrel.errors import SpecError
from pytest_qrel.spec import FP32, MEAN_OOD, load_suite, parse_check, parse_shorthand, plan
from pytest_qrel.spec.schema import Location

BASE = """\
version: 1
name: mini
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: digits89, source: "embedded:digits89"}
    - {name: noise, source: "embedded:noise"}
quantizers:
  W8A8: {method: minmax, weight_bits: 8, act_bits: 8}
  W4A4: {method: minmax}
scores: [msp, energy]
"""


def write(tmp_path: Path, checks: str, base: str = BASE) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(base + "checks:\n" + textwrap.indent(textwrap.dedent(checks), "  "))
    return path


@pytest.mark.parametrize(
    ("text", "quantizers", "metric", "score", "datasets", "bound"),
    [
        ("W8A8 top1 delta <= 1pp", ("W8A8",), "top1", None, None, "delta<=1pp"),
        ("W4A4 aupr_out(msp) on mean(ood) delta <= 12%", ("W4A4",), "aupr_out", "msp", (MEAN_OOD,), "delta<=12%"),
        ("all ece <= 0.05", ("all",), "ece", None, None, "value<=0.05"),
        ("W6A6,W4A8 nll delta<=10%", ("W6A6", "W4A8"), "nll", None, None, "delta<=10%"),
        ("W8A8-qat-lsq+temperature ece delta <= 0", ("W8A8-qat-lsq+temperature",), "ece", None, None, "delta<=0"),
        ("W8A8 auroc(energy) on noise,digits89 value >= 90%", ("W8A8",), "auroc", "energy", ("noise", "digits89"), "value>=90%"),
    ],
)
def test_shorthand_parses(text, quantizers, metric, score, datasets, bound):
    c = parse_shorthand(text)
    assert (c.quantizers, c.metric, c.score, c.datasets, str(c.bound)) == (quantizers, metric, score, datasets, bound)


@pytest.mark.parametrize("text", ["W4A4 top1 <== 1", "top1 <= 1", "W4A4 top1 delta <= 1 percent", "W4A4 top1(msp delta <= 1"])
def test_shorthand_syntax_error_names_location_and_fix(text):
    with pytest.raises(SpecError) as info:
        parse_shorthand(text, Location("s.yaml", 7), "checks[3]")
    msg = str(info.value)
    assert msg.startswith("s.yaml:7: field 'checks[3]': cannot parse check")
    assert "fix: write '<quantizers> <metric>" in msg


def test_structured_equals_shorthand():
    loc = Location("f.yaml", 1)
    structured = parse_check({"metric": "nll", "quantizers": ["W6A6", "W4A8"], "delta": {"max": "10%"}}, loc, "checks[0]")
    shorthand = parse_check("W6A6,W4A8 nll delta <= 10%", loc, "checks[0]")
    assert structured.bound == shorthand.bound
    assert structured.quantizers == shorthand.quantizers
    assert structured.label == shorthand.label == "nll delta<=10%"


def test_structured_expect_and_reason():
    c = parse_check({"check": "W4A4 top1 delta <= 1pp", "expect": "fail", "reason": "4-bit hurts"}, Location("f", 1), "checks[0]")
    assert c.expect == "fail" and c.reason == "4-bit hurts" and c.metric == "top1"


def test_load_suite_builds_everything(tmp_path):
    suite = load_suite(write(tmp_path, '- "W8A8 top1 delta <= 1pp"\n'))
    assert suite.name == "mini"
    assert list(suite.ood_datasets) == ["digits89", "noise"]
    assert suite.quantizers["W4A4"].weight_bits == 4 and suite.quantizers["W4A4"].act_bits == 4  # from the name
    assert suite.quantizers["W8A8"].calibration.samples == 256
    assert suite.checks[0].where.line == 15


def test_ood_check_without_score_expands_per_suite_score(tmp_path):
    suite = load_suite(write(tmp_path, '- "W8A8 auroc delta <= 5pp"\n'))
    assert [c.score for c in suite.checks] == ["msp", "energy"]


def test_plan_expands_models_quantizers_datasets(tmp_path):
    suite = load_suite(write(tmp_path, """\
        - "all top1 delta <= 1pp"
        - "W4A4 aupr_out(msp) delta <= 12%"
        - "W4A4 aupr_out(msp) on mean(ood) delta <= 12%"
        - "all ece <= 0.5"
        """))
    items = [(p.quantizer, p.name) for p in plan(suite)]
    assert ("W8A8", "top1 on digits delta<=1pp") in items
    assert ("W4A4", "top1 on digits delta<=1pp") in items
    assert ("FP32", "top1 on digits delta<=1pp") not in items  # delta on FP32 is meaningless
    assert ("FP32", "ece on digits value<=0.5") in items  # value bounds include FP32
    assert ("W4A4", "aupr_out(msp) on digits89 delta<=12%") in items
    assert ("W4A4", "aupr_out(msp) on noise delta<=12%") in items
    assert ("W4A4", "aupr_out(msp) on mean(ood) delta<=12%") in items
    assert len(items) == 2 + 2 + 1 + 3
    assert not any("[" in name for _, name in items)  # pytest reads '[' in a node id as parameters


def test_a_check_written_twice_is_an_error_naming_both_lines(tmp_path):
    path = write(tmp_path, '- "W8A8 top1 delta <= 1pp"\n- "W8A8 top1 delta<=1pp"\n')
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert str(info.value) == (
        f"{path}:16: field 'checks[1]': repeats checks[0] (line 15): both check W8A8 top1 delta<=1pp on digits "
        "(fix: remove one of them, or narrow 'all' / 'on' so that they do not overlap)"
    )


def test_scopes_join_units_that_one_check_compares(tmp_path):
    from pytest_qrel.spec.plan import scopes

    suite = load_suite(write(tmp_path, """\
        - "W8A8 top1 delta <= delta(W4A4)"
        - "W8A8+temperature ece delta <= 1pp"
        - "FP32 ece <= 0.5"
        - "W4A4 nll delta <= 10%"
        """))
    s = scopes(plan(suite))
    assert s[("vit", "W8A8")] == s[("vit", "W4A4")] == s[("vit", "W8A8+temperature")]
    assert s[("vit", "FP32")] == "vit::FP32"
    assert len(set(s.values())) == 2


def test_in_scope_order_puts_the_checks_of_one_scope_together(tmp_path):
    from pytest_qrel.spec.plan import in_scope_order, scopes

    suite = load_suite(write(tmp_path, """\
        - "all top1 delta <= 1pp"
        - "W8A8+temperature ece delta <= 1pp"
        - "all nll delta <= 10%"
        """))
    planned = plan(suite)
    ordered = in_scope_order(planned)
    assert sorted(map(id, ordered)) == sorted(map(id, planned))  # a permutation
    s = scopes(planned)
    runs = [s[(p.model, p.quantizer)] for p in ordered]
    changes = [a for a, b in zip(runs, runs[1:]) if a != b]
    assert len(changes) == len(set(runs)) - 1  # each scope is one contiguous run
    assert runs[0] == s[(planned[0].model, planned[0].quantizer)]  # scopes in order of their first check
    within = [p for p in ordered if s[(p.model, p.quantizer)] == runs[0]]
    assert within == [p for p in planned if s[(p.model, p.quantizer)] == runs[0]]  # plan order inside


@pytest.mark.parametrize(
    ("checks", "field", "fragment"),
    [
        ('- "W8A8 top2 delta <= 1pp"\n', "checks[0]", "unknown metric 'top2'; did you mean 'top1'?"),
        ('- "W9A9 top1 delta <= 1pp"\n', "checks[0]", "unknown quantizer 'W9A9'"),
        ('- "W8A8 auroc(msq) delta <= 1pp"\n', "checks[0]", "unknown score 'msq'; did you mean 'msp'?"),
        ('- "W8A8 top1(msp) delta <= 1pp"\n', "checks[0]", "takes no score"),
        ('- "W8A8 nll delta <= 1pp"\n', "checks[0]", "'pp' (percentage points) needs a metric in [0, 1]"),
        ('- "FP32 top1 delta <= 1pp"\n', "checks[0]", "compares FP32 with itself"),
        ('- "W8A8 aupr_out(msp) on textures delta <= 1pp"\n', "checks[0]", "unknown OOD dataset 'textures'"),
        ('- "W8A8 top1 on noise delta <= 1pp"\n', "checks[0]", "is measured on labelled sets (digits), not 'noise'"),
        ('- "W8A8 top1 delta >= 1pp"\n', "checks[0]", "must be '<=' or '<' a non-negative amount"),
        ('- {metric: nll}\n', "checks[0]", "exactly one of 'delta' or 'value'"),
        ('- {metric: nll, delta: {maximum: 3}}\n', "checks[0].delta", "exactly one of max/min/lt/gt"),
        ('- {metric: nll, delta: {max: 3}, expect: maybe}\n', "checks[0].expect", "'expect' must be 'pass' or 'fail'"),
    ],
)
def test_bad_checks_name_file_line_field_and_fix(tmp_path, checks, field, fragment):
    path = write(tmp_path, checks)
    with pytest.raises(SpecError) as info:
        load_suite(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:15: field '{field}':"), msg
    assert fragment in msg


@pytest.mark.parametrize(
    ("edit", "fragment", "field"),
    [
        (("W4A4: {method: minmax}", "W4A4: {method: minmax, weight_bits: 9}"), "key 'weight_bits' must be an integer from 2 to 8", "quantizers.W4A4.weight_bits"),
        (("W4A4: {method: minmax}", "W4A4: {methd: minmax}"), "unknown key 'methd'", "quantizers.W4A4.methd"),
        (("W4A4: {method: minmax}", "FP32: {method: minmax}"), "'FP32' is reserved", "quantizers.FP32"),
        (("name: noise", "name: no-ise"), "invalid name 'no-ise'", "datasets.ood[1].name"),
        (('source: "embedded:noise"', 'source: "noise"'), "source must be '<scheme>:<arg>'", "datasets.ood[1].source"),
        (("scores: [msp, energy]", "scores: [msp, enrgy]"), "did you mean 'energy'?", "scores[1]"),
        (("version: 1", "version: 2"), "unsupported schema version 2", "version"),
        (("name: mini", "nmae: mini"), "did you mean 'name'?", "nmae"),
    ],
)
def test_bad_suite_fields(tmp_path, edit, fragment, field):
    path = write(tmp_path, "[]\n", BASE.replace(*edit))
    with pytest.raises(SpecError) as info:
        load_suite(path)
    msg = str(info.value)
    assert fragment in msg and f"field '{field}'" in msg and msg.startswith(f"{path}:"), msg
    assert "(fix: " in msg


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  vit: {source: [\n")
    with pytest.raises(SpecError, match=r"bad.yaml:3: invalid YAML"):
        load_suite(path)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(SpecError, match="suite file does not exist"):
        load_suite(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SpecError, match="the suite file is empty"):
        load_suite(tmp_path / "empty.yaml")


def test_fp32_is_implicit(tmp_path):
    suite = load_suite(write(tmp_path, '- "FP32 top1 value >= 0.5"\n'))
    assert [p.quantizer for p in plan(suite)] == [FP32]


def test_yaml_12_floats_are_numbers(tmp_path):
    from pytest_qrel.spec.yamlsrc import load_yaml

    path = tmp_path / "f.yaml"
    path.write_text("lr: 1e-5\nbig: 2E+3\nplain: 3\npct: 12%\n")
    assert load_yaml(path) == {"lr": 1e-5, "big": 2000.0, "plain": 3, "pct": "12%"}


def test_bound_against_another_quantizer(tmp_path):
    c = parse_shorthand("W4A4-repq top1 delta <= delta(W4A4)")
    assert c.bound.ref == "W4A4" and str(c.bound) == "delta<=delta(W4A4)"
    structured = parse_check({"metric": "top1", "quantizers": ["W8A8"], "delta": {"max": "delta(W4A4)"}}, Location("f", 1), "checks[0]")
    assert structured.bound.ref == "W4A4"
    suite = load_suite(write(tmp_path, '- "W8A8 top1 delta <= delta(W4A4)"\n'))
    assert [p.name for p in plan(suite)] == ["top1 on digits delta<=delta(W4A4)"]
    with pytest.raises(SpecError, match="unknown quantizer 'W3A3'"):
        load_suite(write(tmp_path, '- "W8A8 top1 delta <= delta(W3A3)"\n'))
    with pytest.raises(SpecError, match="compares W8A8 with itself"):
        load_suite(write(tmp_path, '- "W8A8 top1 delta <= delta(W8A8)"\n'))
    with pytest.raises(SpecError, match="compares delta with value"):
        parse_shorthand("W8A8 top1 delta <= value(W4A4)")


def test_mean_over_a_subset_of_ood_sets(tmp_path):
    c = parse_shorthand("W4A4 aupr_out(msp) on mean(digits89,noise),noise delta <= 12%")
    assert c.datasets == ("mean(digits89,noise)", "noise")
    suite = load_suite(write(tmp_path, '- "W4A4 aupr_out(msp) on mean(digits89) delta <= 12%"\n'))
    assert [(p.quantizer, p.dataset) for p in plan(suite)] == [("W4A4", "mean(digits89)")]
    with pytest.raises(SpecError, match="unknown OOD dataset 'textures'"):
        load_suite(write(tmp_path, '- "W4A4 aupr_out(msp) on mean(digits89,textures) delta <= 12%"\n'))


def test_conventions_field(tmp_path):
    path = write(tmp_path, '- "all ece <= 0.5"\n', BASE.replace("name: mini", "name: mini\nconventions: openood"))
    assert load_suite(path).conventions == "openood"
    path = write(tmp_path, "[]\n", BASE.replace("name: mini", "name: mini\nconventions: openod"))
    with pytest.raises(SpecError, match="unknown metric convention 'openod'; did you mean 'openood'"):
        load_suite(path)


def test_a_clip_score_on_a_plain_classifier_is_refused_at_the_scores_line(tmp_path):
    # it failed every unit of the model at run time; a python: model may be a CLIP (checked when it loads)
    suite = """\
version: 1
name: mix
models:
  vit: {source: "%s"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood: [{name: noise, source: "embedded:noise"}]
quantizers:
  W8A8: {method: minmax}
scores: [msp, mcm]
checks: ["W8A8 top1 delta <= 2pp"]
"""
    path = tmp_path / "mix.yaml"
    for source in ("embedded:digits_vit", "timm:deit_tiny_patch16_224"):
        path.write_text(suite % source)
        with pytest.raises(SpecError) as info:
            load_suite(path)
        assert str(info.value) == (
            f"{path}:10: field 'scores': score 'mcm' needs a CLIP model (image features and text embeddings); model 'vit' "
            f"({source}) is a classifier (fix: list only msp, energy or maxlogit here, or give the CLIP models a suite of their own)")
    for source in ("open_clip:digits_clip", "python:models.py:build"):
        path.write_text(suite % source)
        assert list(load_suite(path).scores) == ["msp", "mcm"]

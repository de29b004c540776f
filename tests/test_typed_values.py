"""Typed values of issue 19: quantizer names parsed once (QuantizerRef), metrics read through one
accessor (MetricsTable / MetricQuery) instead of dicts walked by kind."""

from __future__ import annotations

import pytest

from pytest_qrel.errors import NumericsError
from pytest_qrel.metric_table import MetricQuery, MetricsTable
from pytest_qrel.spec.quantizer_ref import QuantizerRef, base_of


@pytest.mark.parametrize(
    ("text", "base", "seed", "steps", "variant"),
    [
        ("W4A4", "W4A4", None, (), ""),
        ("W4A4@13", "W4A4", 13, (), ""),
        ("W4A4@13+temperature", "W4A4", 13, ("temperature",), "+temperature"),
        ("W8A8-qat+temperature+vector", "W8A8-qat", None, ("temperature", "vector"), "+temperature+vector"),
        ("FP32+temperature", "FP32", None, ("temperature",), "+temperature"),
    ],
)
def test_a_quantizer_name_parses_into_its_parts_and_back(text, base, seed, steps, variant):
    ref = QuantizerRef.parse(text)
    assert (ref.base, ref.seed, ref.steps, ref.variant) == (base, seed, steps, variant)
    assert str(ref) == text and QuantizerRef.parse(str(ref)) == ref
    assert ref.is_fp32 == (base == "FP32") and base_of(text) == base
    assert ref.unseeded == base + variant and ref.head == text.removesuffix(variant)


@pytest.mark.parametrize("text", ["W4A4@x", "W4A4@", "W4A4@-1", "@13"])
def test_an_at_without_a_seed_stays_in_the_name(text):
    """Only ``@<digits>`` is a seed: anything else is part of the base name (an unknown quantizer
    the loader names in one line), never a ValueError out of the parser."""
    ref = QuantizerRef.parse(text + "+temperature")
    assert (ref.base, ref.seed, ref.steps, ref.head) == (text, None, ("temperature",), text)


def test_refs_compare_by_their_parts_and_are_frozen():
    assert QuantizerRef.parse("W8A8@0") == QuantizerRef("W8A8", 0) != QuantizerRef("W8A8")
    with pytest.raises(AttributeError):
        QuantizerRef.parse("W8A8").base = "W4A4"  # type: ignore[misc]


TABLE = {
    "id": {"top1": 0.9},
    "shifted": {"blur": {"top1": 0.7}},
    "ood": {"msp": {"a": {"auroc": 0.8}, "b": {"auroc": 0.6}}},
    "pairs": {"p": {"vulnerability": 0.1}},
    "spectral": {"spectral_error": 0.05},
}


def query(metric: str, kind: str, dataset: str, sets: tuple[str, ...], section: str = "id", score: str | None = None) -> MetricQuery:
    return MetricQuery(metric, kind, dataset, sets, section, score, "m W8A8")


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (query("top1", "id", "digits", ("digits",)), 0.9),
        (query("top1", "id", "blur", ("blur",), "shifted"), 0.7),
        (query("auroc", "ood", "mean(ood)", ("a", "b"), score="msp"), 0.7),  # the mean over the sets
        (query("auroc", "ood", "b", ("b",), score="msp"), 0.6),
        (query("vulnerability", "pair", "p", ("c", "k")), 0.1),
        (query("spectral_error", "spectral", "digits", ("digits",)), 0.05),
    ],
)
def test_one_accessor_reads_every_kind(q, expected):
    assert MetricsTable(TABLE).value(q) == pytest.approx(expected)


def test_a_missing_entry_is_a_key_error_and_a_degenerate_ood_pair_its_own_message():
    with pytest.raises(KeyError):
        MetricsTable({"id": {}}).value(query("top1", "id", "digits", ("digits",)))
    table = MetricsTable(TABLE, {("msp", "b"): "scores of 'b' cannot be ranked"})
    with pytest.raises(NumericsError, match="cannot be ranked"):
        table.value(query("auroc", "ood", "mean(ood)", ("a", "b"), score="msp"))
    assert table.value(query("auroc", "ood", "a", ("a",), score="msp")) == pytest.approx(0.8)

"""Tests of pytest_qrel.scores: hand-computed values, invariances, registry behaviour."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from pytest_qrel import scores
from pytest_qrel.errors import UnknownNameError
from pytest_qrel.scores import SCORES, compute_scores, energy, maxlogit, msp

SCORE_FNS = [msp, energy, maxlogit]


def test_msp_hand_computed() -> None:
    logits = np.array([[0.0, math.log(3.0)], [1.0, 1.0], [math.log(2.0), 0.0]])
    # softmax rows: (1/4, 3/4), (1/2, 1/2), (2/3, 1/3)
    assert msp(logits) == pytest.approx([0.75, 0.5, 2 / 3])
    assert msp(np.zeros((1, 4))).tolist() == [0.25]


def test_energy_hand_computed() -> None:
    # log(1 + 1), log(1 + 2)
    assert energy([[0.0, 0.0], [0.0, math.log(2.0)]]) == pytest.approx([math.log(2.0), math.log(3.0)])
    # log(1 + 2 + 3)
    assert energy([[0.0, math.log(2.0), math.log(3.0)]]) == pytest.approx([math.log(6.0)])


def test_maxlogit_hand_computed() -> None:
    assert maxlogit([[1.0, -2.0, 3.0], [-5.0, -4.0, -6.0]]).tolist() == [3.0, -4.0]


def test_scores_stable_with_huge_logits() -> None:
    logits = np.array([[1e4, 1e4], [1e4, 0.0], [-1e4, -1e4]])
    assert energy(logits) == pytest.approx([1e4 + math.log(2.0), 1e4, -1e4 + math.log(2.0)])
    assert msp(logits) == pytest.approx([0.5, 1.0, 0.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_shift_equivariant_msp_shift_invariant(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (40, 6))
    c = rng.normal(0, 50, (40, 1))  # a different shift per sample
    assert energy(logits + c) == pytest.approx(energy(logits) + c[:, 0], abs=1e-9)
    assert maxlogit(logits + c) == pytest.approx(maxlogit(logits) + c[:, 0], abs=1e-9)
    assert msp(logits + c) == pytest.approx(msp(logits), abs=1e-12)
    # and energy is not shift-invariant
    assert not np.allclose(energy(logits + 5.0), energy(logits))


@pytest.mark.parametrize("fn", SCORE_FNS, ids=lambda f: f.__name__)
def test_peaked_logits_score_higher_than_flat(fn) -> None:
    # higher = more in-distribution: a confident prediction beats a flat one
    peaked = np.array([[6.0, 0.0, 0.0, 0.0]])
    flat = np.array([[1.5, 1.5, 1.5, 1.5]])  # same sum of logits
    assert fn(peaked)[0] > fn(flat)[0]


@pytest.mark.parametrize("fn", SCORE_FNS, ids=lambda f: f.__name__)
def test_output_shape_and_dtype(fn) -> None:
    out = fn(np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32))
    assert out.shape == (7,)
    assert out.dtype == np.float64


@pytest.mark.parametrize("fn", SCORE_FNS, ids=lambda f: f.__name__)
def test_validation_messages(fn) -> None:
    with pytest.raises(ValueError, match=r"logits is empty: got shape \(0, 3\)"):
        fn(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"logits must be 2-D with shape \(N, C\); got shape \(3,\)"):
        fn(np.zeros(3))
    with pytest.raises(ValueError, match=r"logits contains non-finite values: 0 NaN and 1 inf"):
        fn(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match=r"logits contains non-finite values: 1 NaN"):
        fn(np.array([[0.0, 1.0], [np.nan, 1.0]]))


def test_registry_entries_and_metadata() -> None:
    assert {"msp", "energy", "maxlogit"} <= set(SCORES.names())
    for name, fn in [("msp", msp), ("energy", energy), ("maxlogit", maxlogit)]:
        assert SCORES.get(name) is fn
        assert SCORES.meta(name)["needs"] == "logits"


def test_unknown_score_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown score 'enrgy'; did you mean 'energy'\?.*known: .*maxlogit.*msp"):
        SCORES.get("enrgy")
    with pytest.raises(UnknownNameError, match=r"unknown score 'odin'.*known: energy, genneg, maxlogit, mcm, msp, neglabel"):
        compute_scores(np.zeros((2, 3)), ["msp", "odin"])


def test_compute_scores_values() -> None:
    logits = np.array([[0.0, math.log(3.0)], [2.0, -1.0]])
    out = compute_scores(logits, ["msp", "energy", "maxlogit"])
    assert list(out) == ["msp", "energy", "maxlogit"]
    assert out["msp"] == pytest.approx([0.75, math.exp(2) / (math.exp(2) + math.exp(-1))])
    assert out["energy"] == pytest.approx([math.log(4.0), math.log(math.exp(2) + math.exp(-1))])
    assert out["maxlogit"].tolist() == [math.log(3.0), 2.0]
    assert list(compute_scores(logits, "energy")) == ["energy"]  # a single name is fine
    assert compute_scores(logits, []) == {}


def test_compute_scores_validates_logits() -> None:
    with pytest.raises(ValueError, match=r"logits contains non-finite"):
        compute_scores([[np.nan, 0.0]], ["msp"])


def test_compute_scores_refuses_scores_that_need_other_inputs() -> None:
    assert SCORES.meta("mcm")["needs"] == "clip"  # the real CLIP score: image features + text embeddings
    assert set(compute_scores(np.zeros((1, 2)), ["msp"])) == {"msp"}
    with pytest.raises(ValueError, match=r"score 'mcm' needs 'clip', not logits"):
        compute_scores(np.zeros((1, 2)), ["msp", "mcm"])


def test_docstring_examples() -> None:
    failed, attempted = doctest.testmod(scores)
    assert attempted >= 3
    assert failed == 0

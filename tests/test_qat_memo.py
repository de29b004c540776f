"""QAT trained once for the scenarios that share its inputs (engine/trainmemo.py): the CLIP suite's
light QAT adapts on one image-text set with a loss on image features only, so a scenario (another
zero-shot head) reuses the training; a loss on the class logits (qat_distill) or other training
images train again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_qrel import Engine, load_suite, run
from pytest_qrel.quantize import qat

SUITE = """\
version: 1
name: memo
models:
  clip_digits: {source: "open_clip:digits_clip"}
datasets:
  ood: [{name: noise, source: "embedded:noise"}]
scenarios:
SCENARIOS
quantizers:
  W8A8-lsq: {method: qat_lsq, calibration: {samples: 8, data: "imagetext:pairs"}, options: {steps: 2, batch_size: 4}}
  W8A8-kd: {method: qat_distill, calibration: {samples: 8, data: "imagetext:pairs"}, options: {steps: 2, batch_size: 4}}
scores: [msp]
checks: ["W8A8-lsq,W8A8-kd top1 delta <= 100pp"]
"""
DIGITS = '  digits:\n    id: {name: digits, source: "embedded:digits"}\n'
WORDS = '  words:\n    id: {name: words, source: "imagefolder:words"}\n'  # other class names: another head
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven"]


def _data(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "pairs").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "pairs" / f"{i:09d}.png")
        (root / "pairs" / f"{i:09d}.txt").write_text(f"a photo of the number {NAMES[i]}\n")
        for j in range(2):
            (root / "words" / NAMES[i]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "words" / NAMES[i] / f"{j}.png")


def _run(root: Path, name: str, scenarios: str) -> Engine:
    path = root / name
    path.write_text(SUITE.replace("SCENARIOS\n", scenarios))
    engine = Engine(baseline_dir=root / name.replace(".yaml", "-baselines"), update_baselines=True)
    assert {v.outcome for v in run(load_suite(path), engine=engine)} == {"passed"}
    return engine


@pytest.fixture
def trainings(monkeypatch) -> list[str]:
    """The method of every QAT training loop that ran."""
    ran: list[str] = []
    real = qat.train

    def counting(qmodel, images, loss_fn, opts, **kwargs):
        ran.append(type(opts).__name__)
        return real(qmodel, images, loss_fn, opts, **kwargs)

    monkeypatch.setattr(qat, "train", counting)
    return ran


@pytest.mark.slow
def test_scenarios_share_a_head_free_training_and_retrain_a_logit_loss(tmp_path, trainings):
    _data(tmp_path)
    both = _run(tmp_path, "both.yaml", DIGITS + WORDS)
    # qat_lsq's contrastive loss on captions reads no class logits: trained once for both scenarios;
    # qat_distill's KL on the zero-shot logits depends on each scenario's head: trained twice
    assert sorted(trainings) == ["DistillOptions", "DistillOptions", "LSQOptions"]
    assert sum(both.units.train_memo.reused.values()) == 1
    assert both.units.quantizations == {"W8A8-lsq": 2, "W8A8-kd": 2}  # every unit was still built (and evaluated)

    # the reused training is the one the scenario trains alone: same metrics, to the last bit
    alone = _run(tmp_path, "alone.yaml", WORDS)
    assert sum(alone.units.train_memo.reused.values()) == 0

    def metrics(engine: Engine, base: str) -> dict:
        [state] = [s for (_, m, b), s in engine.lifecycle.states.items() if m == "clip_digits@words" and b == base]
        return state.metrics

    assert metrics(both, "W8A8-lsq") == metrics(alone, "W8A8-lsq")
    assert metrics(both, "W8A8-kd") == metrics(alone, "W8A8-kd")


def _clip(head_seed: int = 0, weight: float = 0.0) -> torch.nn.Module:
    from pytest_qrel.models.clip_zoo import ZeroShotCLIP

    torch.manual_seed(0)
    visual = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    with torch.no_grad():
        visual[1].weight[0, 0] += weight
    head = torch.randn(3, 4, generator=torch.Generator().manual_seed(head_seed))
    return ZeroShotCLIP(visual, head, 10.0, linear_attention=False)


def test_the_training_key_holds_every_input_and_the_head_only_for_a_logit_loss():
    from pytest_qrel.engine.trainmemo import TrainMemo
    from pytest_qrel.models.base import state_dict_sha256
    from pytest_qrel.quantize import validate_quantizer

    memo, identity = TrainMemo(), {"source": "open_clip:x", "options": {}, "preprocessing": "p"}
    images, captions = torch.rand(4, 3, 2, 2), qat.TextTargets(torch.rand(4, 4))
    lsq = validate_quantizer("qat_lsq", 8, 8, {"steps": 1})

    def key(model=None, config=lsq, x=images, labels=None, targets=captions, ident=identity):
        model = _clip() if model is None else model
        # the loader's identity names the loaded weights (head included), as Loader.identity does
        return memo.key({**ident, "weights_sha256": state_dict_sha256(model)}, model, config, x, labels, targets, "cpu")

    base = key()
    assert key(_clip(head_seed=1)) == base  # another zero-shot head: the contrastive loss never reads it
    changed = [
        key(_clip(weight=1e-3)),  # the weights
        key(config=validate_quantizer("qat_lsq", 8, 8, {"steps": 2})),
        key(config=validate_quantizer("qat_lsq", 8, 8, {"steps": 1}, seed=1)),
        key(config=validate_quantizer("qat_lsq", 6, 8, {"steps": 1})),
        key(config=validate_quantizer("qat_lsq_per_channel", 8, 8, {"steps": 1})),
        key(x=images + 1e-3),
        key(targets=qat.TextTargets(captions.features + 1e-3)),
        key(ident={**identity, "options": {"quick_gelu": True}}),
    ]
    assert len({base, *changed}) == len(changed) + 1
    distill = validate_quantizer("qat_distill", 8, 8, {"steps": 1})
    assert key(_clip(head_seed=1), config=distill) != key(config=distill)  # KL on the class logits
    labels = torch.tensor([0, 1, 2, 0])
    assert key(_clip(head_seed=1), labels=labels, targets=None) != key(labels=labels, targets=None)  # cross-entropy
    assert key(labels=labels, targets=None) != key(labels=labels.flip(0), targets=None)
    assert memo.key(identity, _clip(), validate_quantizer("minmax", 8, 8), images, None, None, "cpu") is None
    # the head-free weights are hashed once per loaded model, not once per quantizer
    hashed = []
    import pytest_qrel.engine.trainmemo as tm

    real = tm.module_sha256
    tm.module_sha256 = lambda m, skip: hashed.append(1) or real(m, skip)
    try:
        fresh, model = TrainMemo(), _clip(weight=2e-3)
        ident = {**identity, "weights_sha256": state_dict_sha256(model)}
        keys = {fresh.key(ident, model, c, images, None, captions, "cpu") for c in (lsq, validate_quantizer("qat", 8, 8, {"steps": 1}))}
    finally:
        tm.module_sha256 = real
    assert len(keys) == 2 and len(hashed) == 1


def test_a_reused_training_takes_the_units_head_and_a_full_budget_shares_nothing():
    from pytest_qrel.engine.trainmemo import TrainMemo

    trained, other = _clip(weight=0.5), _clip(head_seed=1)
    memo = TrainMemo()
    memo.put("k", trained)
    got = memo.get("k", other, "cpu")
    assert torch.equal(got.class_text_features, other.class_text_features)  # this unit's classes
    assert torch.equal(got.visual[1].weight, trained.visual[1].weight)  # the memoised training
    assert memo.get("other", other, "cpu") is None
    full = TrainMemo(budget_bytes=0)
    full.put("k", trained)
    assert full.get("k", other, "cpu") is None and not full.trained


def test_the_budget_comes_from_the_environment(monkeypatch):
    from pytest_qrel.engine.trainmemo import DEFAULT_BUDGET_BYTES, ENV_BUDGET, TrainMemo

    monkeypatch.delenv(ENV_BUDGET, raising=False)
    assert TrainMemo().budget_bytes == DEFAULT_BUDGET_BYTES
    monkeypatch.setenv(ENV_BUDGET, "0.5")
    assert TrainMemo().budget_bytes == 2**29
    monkeypatch.setenv(ENV_BUDGET, "0")
    assert TrainMemo().budget_bytes == 0
    monkeypatch.setenv(ENV_BUDGET, "lots")
    with pytest.warns(UserWarning, match="QREL_QAT_MEMO_GB='lots' is not a number of GiB"):
        assert TrainMemo().budget_bytes == DEFAULT_BUDGET_BYTES

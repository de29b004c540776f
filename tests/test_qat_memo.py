"""Quantizations computed once for the scenarios that share their inputs (engine/trainmemo.py): the CLIP
suite's light QAT adapts on one image-text set with a loss on image features only, and minmax calibrates
on the same images observing layer inputs only, so a scenario (another zero-shot head) reuses them; a
loss on the class logits (qat_distill), a PTQ method whose result reads them (raana) or other
calibration images compute again. Entries belong to backbones: released when a backbone's checks are
done, evicted (other backbones first) past the budget."""

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
  W8A8-ptq: {method: minmax, calibration: {samples: 8, data: "imagetext:pairs"}}
  W8A8-sq: {method: smoothquant, calibration: {samples: 8, data: "imagetext:pairs"}}
scores: [msp]
checks: ["W8A8-lsq,W8A8-kd,W8A8-ptq,W8A8-sq top1 delta <= 100pp"]
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
    memo = both.units.train_memo
    assert sum(memo.reused.values()) == 1
    # minmax observes layer inputs only, smoothquant's statistics and equivalence check read the image
    # features only: each calibrated once, reused in the other scenario
    assert sum(memo.calibrations_reused.values()) == 2 and sum(memo.calibrated.values()) == 2
    assert both.units.quantizations == {"W8A8-lsq": 2, "W8A8-kd": 2, "W8A8-ptq": 2, "W8A8-sq": 2}  # every unit still built
    # the backbone's last check released its entries (lsq, ptq, sq, and kd per scenario), files included
    assert sum(memo.released.values()) == 5 and not memo.kept() and not memo.evicted
    assert memo.folder is not None and not list(memo.folder.glob("*.pt"))

    # the reused training / calibration is the one the scenario computes alone: same metrics, to the last bit
    alone = _run(tmp_path, "alone.yaml", WORDS)
    assert sum(alone.units.train_memo.reused.values()) == 0

    def metrics(engine: Engine, base: str) -> dict:
        [state] = [s for (_, m, b), s in engine.lifecycle.states.items() if m == "clip_digits@words" and b == base]
        return state.metrics

    for q in ("W8A8-lsq", "W8A8-kd", "W8A8-ptq", "W8A8-sq"):
        assert metrics(both, q) == metrics(alone, q), q


@pytest.mark.slow
def test_xdist_workers_reuse_their_memo_across_scenarios_and_release_each_model_they_leave(pytester, monkeypatch):
    # -n 2: both workers start on the first scenario's model. A worker is announced every check, so
    # the pending counts that release a model in a serial run never reach zero there (it held every
    # model it met): it now releases a model when its next check reads another one, and loads each
    # scenario model once. A head-free quantization is reused by the worker that computed it when
    # that worker also gets the other scenario's unit (which worker gets which unit is the
    # scheduler's, tested in test_plugin.py; at the end of a queue an idle worker takes the unit).
    pytest.importorskip("xdist")
    from pytest_qrel.engine.trace import read_trace

    _data(pytester.path)
    (pytester.path / "both.yaml").write_text(SUITE.replace("SCENARIOS\n", DIGITS + WORDS))
    trace = pytester.path / "trace.tsv"
    monkeypatch.setenv("PYTEST_QREL_TRACE", str(trace))
    result = pytester.runpytest("--qrel-suite", "both.yaml", "-p", "no:randomly", "-n", "2", "--qrel-update-baselines")
    result.assert_outcomes(passed=8)
    events = read_trace(trace)
    worker = {(e[3], e[4]): e[0] for e in events if e[1] == "quantize"}
    assert len(worker) == 8
    reused = {(e[3], e[4]) for e in events if e[1] == "reuse"}
    expected = {("clip_digits@words", q) for q in ("W8A8-lsq", "W8A8-ptq", "W8A8-sq") if worker[("clip_digits@digits", q)] == worker[("clip_digits@words", q)]}
    assert reused == expected  # never the head-keyed one (kd: another head), never across workers
    for pid in {e[0] for e in events}:
        mine = [(e[1], e[3]) for e in events if e[0] == pid and e[1] in ("load", "release")]
        loaded = [m for what, m in mine if what == "load"]
        assert len(loaded) == len(set(loaded)), mine  # no model loaded twice by one worker
        assert mine == [(what, m) for m in loaded for what in ("load", "release")], mine  # each released before the next load
    assert len({e[0] for e in events if e[1] == "load" and e[3] == "clip_digits@digits"}) == 2  # both workers met it


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
    # PTQ: minmax observes layer inputs only, smoothquant checks the image features (head-free);
    # raana's bit allocation follows gradients of the logits (keyed with the head); a runtime is not memoised
    minmax = validate_quantizer("minmax", 8, 8)
    ptq = key(config=minmax, targets=None)
    assert ptq is not None and not ptq.with_head and not ptq.training and ptq.digest != base.digest
    assert key(_clip(head_seed=1), config=minmax, targets=None) == ptq
    assert key(config=minmax, x=images + 1e-3, targets=None) != ptq  # other calibration images
    assert key(config=validate_quantizer("minmax", 8, 6), targets=None) != ptq
    smooth = validate_quantizer("smoothquant", 8, 8)
    assert not key(config=smooth, targets=None).with_head and key(_clip(head_seed=1), config=smooth, targets=None) == key(config=smooth, targets=None)
    raana = validate_quantizer("raana", 8, 8)
    assert key(config=raana, targets=None).with_head
    assert key(_clip(head_seed=1), config=raana, targets=None) != key(config=raana, targets=None)
    assert memo.key(identity, _clip(), validate_quantizer("onnxruntime", 8, 8), images, None, None, "cpu") is None
    # the head-free weights are hashed once per loaded model, not once per quantizer (nor again for a
    # key that holds the head: its buffers are hashed apart)
    hashed = []
    import pytest_qrel.engine.trainmemo as tm

    real = tm.module_sha256
    tm.module_sha256 = lambda m, skip: hashed.append(1) or real(m, skip)
    try:
        fresh, model = TrainMemo(), _clip(weight=2e-3)
        ident = {**identity, "weights_sha256": state_dict_sha256(model)}
        keys = {fresh.key(ident, model, c, images, None, captions, "cpu") for c in (lsq, validate_quantizer("qat", 8, 8, {"steps": 1}), distill)}
        keys |= {fresh.key(ident, model, validate_quantizer(m, 8, 8), images, None, None, "cpu") for m in ("minmax", "smoothquant")}
    finally:
        tm.module_sha256 = real
    assert len(keys) == 5 and len(hashed) == 1


def _key(name: str, with_head: bool = False, training: bool = True):
    from pytest_qrel.engine.trainmemo import MemoKey

    return MemoKey(name, with_head, training)


def test_a_reused_training_takes_the_units_head_and_a_full_budget_shares_nothing():
    from pytest_qrel.engine.trainmemo import TrainMemo

    trained, other = _clip(weight=0.5), _clip(head_seed=1)
    memo = TrainMemo()
    memo.put(_key("k"), trained)
    got = memo.get(_key("k"), other, "cpu")
    assert torch.equal(got.class_text_features, other.class_text_features)  # this unit's classes
    assert torch.equal(got.visual[1].weight, trained.visual[1].weight)  # the memoised training
    assert memo.get(_key("other"), other, "cpu") is None
    full = TrainMemo(budget_bytes=0)
    full.put(_key("k"), trained)
    assert full.get(_key("k"), other, "cpu") is None and not full.trained


A, B = ("s.yaml", "vit_a"), ("s.yaml", "vit_b")  # two backbones


def _room_for(entries: int) -> int:
    """A budget holding ``entries`` files of a :func:`_clip` module (their size as written; the
    archive holds its name, so the keys here are all two letters long)."""
    from pytest_qrel.engine.trainmemo import TrainMemo

    probe = TrainMemo()
    probe.put(_key("pp"), _clip())
    return entries * probe.used_bytes


def test_past_the_budget_other_backbones_go_first_and_the_current_ones_head_free_entries_never():
    from pytest_qrel.engine.trainmemo import TrainMemo

    memo, model = TrainMemo(budget_bytes=_room_for(2)), _clip()
    memo.put(_key("a1"), model, A)
    memo.put(_key("a2", with_head=True), model, A)
    assert memo.kept() == ["a1", "a2"] and not memo.evicted
    memo.put(_key("b1"), model, B)  # the run moved on to backbone B: A's oldest entry makes room
    memo.put(_key("b2", with_head=True, training=False), model, B)
    assert memo.kept() == ["b1", "b2"] and memo.evicted == {"a1": 1, "a2": 1}
    assert memo.calibrated == {"b2": 1} and set(memo.trained) == {"a1", "a2", "b1"}
    memo.put(_key("b3", with_head=True), model, B)  # B's own entries stay: b3 is not kept
    assert memo.kept() == ["b1", "b2"]
    memo.put(_key("b4"), model, B)  # a head-free entry (every scenario reads it) displaces B's head-keyed one
    assert memo.kept() == ["b1", "b4"] and memo.evicted == {"a1": 1, "a2": 1, "b2": 1}
    memo.put(_key("b5"), model, B)  # nothing left it may evict: not kept, and nothing evicted for it
    assert memo.kept() == ["b1", "b4"] and len(memo.evicted) == 3
    assert sorted(p.stem for p in memo.folder.glob("*.pt")) == ["b1", "b4"]  # evicted files are gone from disk
    assert memo.get(_key("b1"), model, "cpu", B) is not None and memo.get(_key("a1"), model, "cpu", A) is None


def test_past_the_budget_a_training_displaces_its_backbones_calibration_never_the_reverse():
    # a head-free PTQ calibration takes seconds to compute again, a QAT training minutes
    from pytest_qrel.engine.trainmemo import TrainMemo

    memo, model = TrainMemo(budget_bytes=_room_for(2)), _clip()
    memo.put(_key("p1", training=False), model, A)
    memo.put(_key("t1"), model, A)
    memo.put(_key("p2", training=False), model, A)  # a calibration does not displace a training (nor p1)
    assert memo.kept() == ["p1", "t1"] and not memo.evicted
    memo.put(_key("t2"), model, A)  # a training displaces A's calibration
    assert memo.kept() == ["t1", "t2"] and memo.evicted == {"p1": 1}
    memo.put(_key("t3"), model, A)  # but never A's trainings
    assert memo.kept() == ["t1", "t2"] and memo.evicted == {"p1": 1}


def test_eviction_keeps_the_disk_reserve_and_evicts_nothing_in_vain(monkeypatch):
    import pytest_qrel.engine.trainmemo as tm

    memo, model = tm.TrainMemo(budget_bytes=_room_for(1)), _clip()
    memo.put(_key("a1"), model, A)
    monkeypatch.setattr(tm, "RESERVE_BYTES", 2**62)  # no disk has that much free: nothing may be written
    memo.put(_key("b1"), model, B)
    assert memo.kept() == ["a1"] and not memo.evicted  # evicting a1 would not have made room


def test_a_backbone_releases_the_entries_only_it_read():
    from pytest_qrel.engine.trainmemo import TrainMemo

    memo, model = TrainMemo(), _clip()
    memo.put(_key("a"), model, A)
    memo.put(_key("shared"), model, A)
    memo.put(_key("b"), model, B)
    assert memo.get(_key("shared"), model, "cpu", B) is not None  # same inputs under B (e.g. same weights)
    assert memo.release(A) == 1 and memo.kept() == ["shared", "b"] and memo.released == {"a": 1}
    assert memo.release(B) == 2 and not memo.kept() and not list(memo.folder.glob("*.pt"))


def test_the_lifecycle_releases_a_backbone_after_its_last_scenario_check(tmp_path):
    """Backbone-major order (as pytest collects suites/clip.yaml): A's entries go when A's last check
    (of any scenario) is done, before B's first; a model without scenarios releases nothing."""
    from pytest_qrel.engine.lifecycle import UnitLifecycle
    from pytest_qrel.spec.plan import plan

    _data(tmp_path)
    path = tmp_path / "two.yaml"
    doc = SUITE.replace("SCENARIOS\n", DIGITS + WORDS).replace(
        '  clip_digits: {source: "open_clip:digits_clip"}', '  vit_a: {source: "open_clip:digits_clip"}\n  vit_b: {source: "open_clip:digits_clip"}')
    path.write_text(doc)
    planned = plan(load_suite(path))
    planned.sort(key=lambda p: p.model.split("@")[0])  # stable: backbone-major, scenarios in order
    released: list[tuple[int, tuple[str, str]]] = []

    class Memo:
        def release(self, backbone):
            released.append((i, backbone))

    class Units:
        train_memo = Memo()

    class Loader:
        def release_model(self, suite, model):
            pass

    lifecycle = UnitLifecycle(Loader(), Units(), None, None, baseline_of=lambda s, m: None, update_command=lambda s: "")
    lifecycle.expect(planned)
    for i, p in enumerate(planned):
        lifecycle.done(p)
    last_a = max(i for i, p in enumerate(planned) if p.model.startswith("vit_a@"))
    assert released == [(last_a, (str(path), "vit_a")), (len(planned) - 1, (str(path), "vit_b"))]
    assert {p.model for p in planned[: last_a + 1]} == {"vit_a@digits", "vit_a@words"}


def test_the_budget_comes_from_the_environment(monkeypatch):
    from pytest_qrel.engine.trainmemo import DEFAULT_BUDGET_BYTES, ENV_BUDGET, ENV_BUDGET_OLD, TrainMemo

    monkeypatch.delenv(ENV_BUDGET, raising=False)
    monkeypatch.delenv(ENV_BUDGET_OLD, raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)  # this test may run in an xdist worker
    assert TrainMemo().budget_bytes == DEFAULT_BUDGET_BYTES
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")  # each worker of -n 2 takes half of the run's budget
    assert TrainMemo().budget_bytes == DEFAULT_BUDGET_BYTES // 2
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    monkeypatch.setenv(ENV_BUDGET, "0.5")
    assert TrainMemo().budget_bytes == 2**29
    monkeypatch.setenv(ENV_BUDGET, "0")
    assert TrainMemo().budget_bytes == 0
    monkeypatch.setenv(ENV_BUDGET, "lots")
    with pytest.warns(UserWarning, match="QREL_QUANT_MEMO_GB='lots' is not a number of GiB"):
        assert TrainMemo().budget_bytes == DEFAULT_BUDGET_BYTES
    monkeypatch.delenv(ENV_BUDGET)
    monkeypatch.setenv(ENV_BUDGET_OLD, "0.25")  # the name before PTQ was memoised still works
    assert TrainMemo().budget_bytes == 2**28
    monkeypatch.setenv(ENV_BUDGET, "1")  # the new name wins
    assert TrainMemo().budget_bytes == 2**30

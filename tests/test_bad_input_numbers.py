"""The bad-input corpus, part 3: numbers. NaN / Inf logits, labels outside the model's classes,
class folders in the wrong order, OOD sets too small to score, all-equal scores and chance-level
FP32 accuracy, each with its exact message, from the helpers in :mod:`pytest_qrel.validation`
(which name model, quantizer, dataset and counts) and from the metric functions themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from pytest_qrel import metrics, validation
from pytest_qrel.errors import NumericsError

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(20, 4))
with_nan = LOGITS.copy()
with_nan[[3, 7], 1] = np.nan
with_nan[11, 0] = np.inf
with_inf = LOGITS.copy()
with_inf[5, :] = -np.inf
SCORES = RNG.normal(size=30)

NUMBER_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # ---- logits
    ("NaN logits of a quantized model", lambda: validation.check_logits_finite(with_nan, model="vit", quantizer="W4A4", dataset="digits"), NumericsError,
     "model 'vit' W4A4 on 'digits': 3 of 20 samples have non-finite logits (2 with NaN, 1 with inf; first at sample 3) "
     "(fix: FP32 is finite, so W4A4 breaks the model: try more bits, more calibration samples or another method)"),
    ("Inf logits of the FP32 model", lambda: validation.check_logits_finite(with_inf, model="vit", quantizer="FP32", dataset="noise"), NumericsError,
     "model 'vit' FP32 on 'noise': 1 of 20 samples have non-finite logits (0 with NaN, 1 with inf; first at sample 5) "
     "(fix: the FP32 model itself produces them: check its weights, checkpoint and forward)"),
    ("logits of the wrong shape", lambda: validation.check_logits_finite(np.zeros(5), model="vit", quantizer="W8A8", dataset="digits"), NumericsError,
     "model 'vit' W8A8 on 'digits': expected logits of shape (N, C) with N >= 1, got shape (5,)"),
    ("no logits at all", lambda: validation.check_logits_finite(np.zeros((0, 8)), model="vit", quantizer="W8A8", dataset="digits"), NumericsError,
     "model 'vit' W8A8 on 'digits': expected logits of shape (N, C) with N >= 1, got shape (0, 8)"),
    # ---- labels
    ("labels beyond the model's classes", lambda: validation.check_labels_in_range(np.r_[np.arange(8), 8, 9, 9], 8, model="vit", dataset="digits10"), NumericsError,
     "dataset 'digits10' has labels up to 9 but model 'vit' has 8 classes (0..7): 3 of 11 samples are out of range "
     "(fix: map the set onto the model's classes with 'classes:' or 'class_index:', or use a model with that many classes)"),
    ("an OOD folder used as the labelled set", lambda: validation.check_labels_in_range(np.full(6, -1), 8, model="vit", dataset="noise_dir"), NumericsError,
     "dataset 'noise_dir' is used as a labelled set with model 'vit' but 6 of 6 samples have no class (label -1, an OOD image) "
     "(fix: give the set class folders or labels, or list it under 'datasets: ood:')"),
    ("labels that are not integers", lambda: validation.check_labels_in_range(np.array([0.5, 1.0]), 8, model="vit", dataset="digits"), NumericsError,
     "dataset 'digits': labels must be integer class indices, got dtype float64"),
    # ---- class folders against the model's classes
    ("folders named zero..four", lambda: validation.check_class_folders(
        ["four", "one", "three", "two", "zero"], "sorted folder names", [str(i) for i in range(8)], model="vit", dataset="digit_folders"), NumericsError,
     "dataset 'digit_folders': 5 of 5 class folders (four, one, three, two, zero) are not classes of model 'vit' (0, 1, 2, 3, 4, 5, 6, 7), "
     "so their labels (the sorted folder order) would not be the model's "
     "(fix: rename the folders to the model's class names, or give 'classes:' in the model's index order)"),
    ("folders 0..10 sorted as text", lambda: validation.check_class_folders(
        sorted(str(i) for i in range(11)), "sorted folder names", [str(i) for i in range(11)], model="m", dataset="d"), NumericsError,
     "dataset 'd': the sorted class folders do not follow the class order of model 'm' ('10' is label 2 but class 10, '2' is label 3 but class 2, "
     "'3' is label 4 but class 3, ...) (fix: give 'classes:' with the model's class names in index order)"),
    ("ImageNet folders against readable names only", lambda: validation.check_class_folders(
        ["n01440764", "n01443537"], "sorted folder names", ["tench", "goldfish"], model="deit", dataset="val"), NumericsError,
     "dataset 'val': 2 of 2 class folders (n01440764, n01443537) are not classes of model 'deit' (tench, goldfish), so their labels "
     "(the sorted folder order) would not be the model's (fix: rename the folders to the model's class names, or give 'classes:' in the model's index order)"),
    # ---- OOD sets and scores
    ("OOD set of 4 images", lambda: validation.check_ood_set_size(4, dataset="tiny_ood"), NumericsError,
     "OOD set 'tiny_ood' has 4 samples; OOD metrics need at least 10 (with fewer, one image moves FPR@95 by more than 10 points) "
     "(fix: add images to the set, or remove it)"),
    ("OOD set of 1 image", lambda: validation.check_ood_set_size(1, dataset="one"), NumericsError,
     "OOD set 'one' has 1 sample; OOD metrics need at least 10 (with fewer, one image moves FPR@95 by more than 10 points) "
     "(fix: add images to the set, or remove it)"),
    ("all-equal scores", lambda: validation.check_ood_scores(np.full(30, 0.125), np.full(12, 0.125), model="vit", quantizer="W2A2", dataset="noise", score="msp"),
     NumericsError,
     "model 'vit' W2A2 on 'noise', score 'msp': all 30 ID and 12 OOD scores equal 0.125, so the OOD metrics are degenerate "
     "(AUROC 0.5 and FPR@95 1.0 by construction): the outputs do not depend on the input "
     "(fix: for a quantizer, more bits or another method; for FP32, check the model)"),
    ("NaN OOD scores", lambda: validation.check_ood_scores(SCORES, np.r_[SCORES[:11], np.nan], model="vit", quantizer="W4A4", dataset="noise", score="energy"),
     NumericsError, "model 'vit' W4A4 on 'noise', score 'energy': 1 of 12 OOD scores are NaN or inf (fix: check the model's logits on that set)"),
    ("too few OOD scores for the metrics", lambda: metrics.compute_ood_metrics(SCORES, SCORES[:4]), NumericsError,
     "ood_scores has 4 samples; OOD metrics need at least 10 (with fewer, one sample moves FPR@95 by more than 10 points)"),
    ("all-equal scores in compute_ood_metrics", lambda: metrics.compute_ood_metrics(np.ones(20), np.ones(10), conventions="openood"), NumericsError,
     "all 20 ID and 10 OOD scores equal 1: the OOD metrics are degenerate (AUROC 0.5 and FPR@95 1.0 by construction); the outputs do not depend on the input"),
    ("all-equal scores in fpr_at_95_tpr", lambda: metrics.fpr_at_95_tpr(np.zeros(5), np.zeros(5)), NumericsError,
     "all 5 ID and 5 OOD scores equal 0: the OOD metrics are degenerate (AUROC 0.5 and FPR@95 1.0 by construction); the outputs do not depend on the input"),
    # ---- chance level
    ("chance-level FP32 baseline", lambda: validation.refuse_chance_level(
        0.208, 5, 600, model="vit", dataset="digit_folders", class_order=["four", "one", "three", "two", "zero"], class_order_from="sorted folder names"),
     NumericsError,
     "refusing to store the FP32 baseline of model 'vit': FP32 top-1 20.80% on 'digit_folders' is at chance level (20.00% for 5 classes, 600 samples); "
     "its labels follow sorted folder names (four, one, three, two, zero)"
     "; either its labels are not the model's classes (their order comes from the sorted folder names) or the model is untrained "
     "(fix: give 'classes:' or 'class_index:' in the model's class order, or check the weights and the data; a random-init dry run is "
     "'pretrained: false', which is stored at chance with a warning)"),
    ("below-chance FP32 baseline", lambda: validation.refuse_chance_level(0.001, 1000, 50000, model="deit", dataset="val"), NumericsError,
     "refusing to store the FP32 baseline of model 'deit': FP32 top-1 0.10% on 'val' is at chance level (0.10% for 1000 classes, 50000 samples)"
     "; either its labels are not the model's classes (their order comes from the sorted folder names) or the model is untrained "
     "(fix: give 'classes:' or 'class_index:' in the model's class order, or check the weights and the data; a random-init dry run is "
     "'pretrained: false', which is stored at chance with a warning)"),
    # ---- metric functions: ValueError naming the argument
    ("NaN logits in top1", lambda: metrics.top1(with_nan, np.zeros(20, dtype=int)), NumericsError,
     "logits contains non-finite values: 2 NaN and 1 inf (first at index (3, 1)); the model output is broken"),
    ("labels out of range in nll", lambda: metrics.nll(LOGITS, np.full(20, 4)), NumericsError,
     "labels out of range: values must be in [0, 4) for 4 classes; found min 4, max 4"),
    ("fewer labels than samples", lambda: metrics.top1(LOGITS, np.zeros(19, dtype=int)), ValueError,
     "labels has 19 entries but there are 20 samples (rows)"),
    ("fractional labels", lambda: metrics.top1(LOGITS, np.full(20, 0.5)), ValueError, "labels must be integer class indices; found fractional values"),
    ("logits instead of probabilities in ece", lambda: metrics.ece(LOGITS, np.zeros(20, dtype=int)), ValueError,
     f"probs must be probabilities in [0, 1]; found values in [{LOGITS.min():g}, {LOGITS.max():g}] (pass softmax(logits), not logits)"),
    ("ece with 0 bins", lambda: metrics.ece(metrics.softmax(LOGITS), np.zeros(20, dtype=int), n_bins=0), ValueError, "n_bins must be a positive integer; got 0"),
    ("empty OOD scores", lambda: metrics.auroc(SCORES, []), ValueError, "ood_scores is empty (0 scores); need at least one"),
    ("2-D OOD scores", lambda: metrics.aupr_out(SCORES, np.zeros((3, 2))), ValueError, "ood_scores must be 1-D with shape (N,); got shape (3, 2)"),
    ("text as scores", lambda: metrics.aupr_in(["high", "low"], [0.0]), ValueError,
     "id_scores must be numeric; could not convert it to float64 (could not convert string to float: 'high')"),
]


@pytest.mark.parametrize(("case", "call", "error", "message"), NUMBER_CASES, ids=[c[0] for c in NUMBER_CASES])
def test_bad_numbers_give_one_exact_line(case, call, error, message) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message
    if error is NumericsError:  # a user problem: the plugin prints it as one line
        assert type(info.value) is NumericsError


def test_good_numbers_pass_every_check() -> None:
    validation.check_logits_finite(LOGITS, model="vit", quantizer="W8A8", dataset="digits")
    validation.check_labels_in_range(np.arange(4), 4, model="vit", dataset="digits")
    validation.check_labels_in_range(np.r_[0, 1, -1], 4, model="vit", dataset="shifted", allow_ood=True)
    validation.check_ood_set_size(10, dataset="ood")
    validation.check_ood_scores(SCORES, np.r_[np.zeros(11), 1.0], model="vit", quantizer="W8A8", dataset="ood", score="msp")
    # a folder layout that follows the model: nothing to say; explicit lists and unknown names are trusted
    validation.check_class_folders([str(i) for i in range(5)], "sorted folder names", [str(i) for i in range(8)], model="vit", dataset="d")
    validation.check_class_folders(["b", "a"], "option 'classes'", ["x", "y"], model="vit", dataset="d")
    validation.check_class_folders(["a", "b"], "sorted folder names", None, model="vit", dataset="d")
    # ImageNet WordNet-id folders match a timm model through its class ids, not its readable names
    validation.check_class_folders(["n01440764", "n01443537"], "sorted folder names", ["tench", "goldfish"],
                                   model_class_ids=["n01440764", "n01443537"], model="deit", dataset="val")
    validation.refuse_chance_level(0.4, 5, 600, model="vit", dataset="d")  # weak, but clearly above guessing


def test_the_chance_threshold_is_three_standard_errors() -> None:
    n, k = 600, 5
    p = 1 / k
    edge = p + 3 * math.sqrt(p * (1 - p) / n)
    validation.refuse_chance_level(edge + 1e-9, k, n, model="m", dataset="d")
    with pytest.raises(NumericsError):
        validation.refuse_chance_level(edge - 1e-9, k, n, model="m", dataset="d")


# --------------------------------------------- the zero..four folders case, data to refusal


@pytest.fixture(scope="module")
def digits_vit():
    import torch

    from pytest_qrel.models import load_model

    torch.set_num_threads(1)
    return load_model("embedded:digits_vit")


def _folders(root, names: list[str]) -> None:
    from PIL import Image

    from pytest_qrel.data import load_dataset

    test = load_dataset("embedded:digits", split="test")
    for digit, name in enumerate(names):
        (root / name).mkdir(parents=True)
        picks = np.flatnonzero(test.labels == digit)[:24]
        for i in picks:
            grey = np.rint(test.images[int(i), 0].numpy() * 255).astype(np.uint8)
            Image.fromarray(grey, mode="L").save(root / name / f"{i:04d}.png")


def _top1(model, ds) -> float:
    import torch

    with torch.no_grad():
        x = torch.stack([model.preprocess(ds[i][0]) for i in range(len(ds))])
        pred = model.module(x).argmax(dim=1).numpy()
    return float(np.mean(pred == ds.labels))


def test_digit_folders_named_zero_to_four_are_caught_twice(tmp_path, digits_vit) -> None:
    from pytest_qrel.data import load_dataset

    _folders(tmp_path / "words", ["zero", "one", "two", "three", "four"])
    ds = load_dataset("imagefolder:words", split="test", options={"mode": "L"}, base_dir=tmp_path)
    assert ds.class_order == ["four", "one", "three", "two", "zero"]
    with pytest.raises(NumericsError, match=r"5 of 5 class folders \(four, one, three, two, zero\) are not classes of model 'vit'"):
        validation.check_class_folders(ds.class_order, ds.class_order_from, digits_vit.class_names, model="vit", dataset="words")
    top1 = _top1(digits_vit, ds)
    assert 0.15 < top1 < 0.25  # only the folder 'one' lands on its own label: about 1 in 5
    with pytest.raises(NumericsError, match=r"is at chance level \(20\.00% for 5 classes, 120 samples\); its labels follow sorted folder names"):
        validation.refuse_chance_level(top1, len(ds.class_order), len(ds), model="vit", dataset="words",
                                       class_order=ds.class_order, class_order_from=ds.class_order_from)
    # the same images in folders named as the model's classes pass both checks
    _folders(tmp_path / "digits", ["0", "1", "2", "3", "4"])
    good = load_dataset("imagefolder:digits", split="test", options={"mode": "L"}, base_dir=tmp_path)
    validation.check_class_folders(good.class_order, good.class_order_from, digits_vit.class_names, model="vit", dataset="digits")
    validation.refuse_chance_level(_top1(digits_vit, good), 5, len(good), model="vit", dataset="digits")

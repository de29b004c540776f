"""Train ``digits_vit``: a tiny timm ViT on the embedded ``digits`` (0-7) train split.

::

    python -m pytest_qrel.zoo.train_digits_vit                  # rewrites pytest_qrel/zoo/digits_vit.*
    python -m pytest_qrel.zoo.train_digits_vit --out /tmp/m     # writes /tmp/m/digits_vit.{safetensors,json}
    python -m pytest_qrel.zoo.train_digits_vit --out /tmp/x.safetensors   # writes /tmp/x.{safetensors,json}

The model is a real ``timm.models.vision_transformer.VisionTransformer`` (16x16 grey input, 4x4
patches, 4 blocks of width 64), so quantization methods that target timm's ``Attention``, ``Mlp``,
``LayerNorm`` and ``Linear`` modules apply to it unchanged. Training is deterministic for a given
machine (fixed seeds, one generator for shuffling and augmentation, a fixed number of threads,
``torch.use_deterministic_algorithms``); on another machine the float rounding may differ, but the
quality is the same (``tests/test_embedded_model.py`` re-trains and checks the test accuracy).

Only the ``train`` split is used for training; the ``test`` split is evaluated once at the end and
its accuracy, NLL and ECE are recorded in the json beside the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fingerprint import file_sha256
from ..io import atomic_write_bytes, atomic_write_text
from . import ZOO_DIR, build_vit

NAME = "digits_vit"
FORMAT_VERSION = 1

ARCHITECTURE: dict[str, Any] = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 8,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "qkv_bias": True,
    "class_token": True,
    "global_pool": "token",
}
"""Keyword arguments of ``timm.models.vision_transformer.VisionTransformer``."""

PREPROCESS: dict[str, Any] = {"input_size": [1, 16, 16], "mean": 0.5, "std": 0.5}
"""The model sees ``(x - mean) / std`` of a grey (1, 16, 16) image in [0, 1]."""

CLASS_NAMES = [str(d) for d in range(8)]
DATASET = "embedded:digits"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained weights (recorded in the json)."""

    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.0
    max_shift: int = 1
    """Random translation of up to this many pixels (of 16) in x and y, zero padded."""
    threads: int = 1
    """``torch.set_num_threads`` during training (restored afterwards)."""


@dataclass
class TrainResult:
    module: Any  # the trained VisionTransformer, eval mode
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------------ helpers


def _normalise(x: Any) -> Any:
    return (x - PREPROCESS["mean"]) / PREPROCESS["std"]


def _shifted(images: Any, max_shift: int, generator: Any) -> Any:
    """Each image translated by its own random (dy, dx) in [-max_shift, max_shift], zero filled."""
    import torch
    import torch.nn.functional as F

    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    span = 2 * max_shift + 1
    offsets = torch.randint(0, span * span, (n,), generator=generator)
    out = torch.empty_like(images)
    for k in range(span * span):
        sel = offsets == k
        if sel.any():
            dy, dx = divmod(k, span)
            out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    return out


def _ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins (fraction in [0, 1])."""
    import torch

    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    conf = conf.double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece = torch.zeros((), dtype=torch.float64)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.double().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return float(ece)


def evaluate(module: Any, split: str = "test") -> dict[str, float]:
    """Top-1 accuracy, NLL and ECE (15 bins) of ``module`` on a split of ``embedded:digits``."""
    import torch

    from ..data.base import TensorImageSet, load_dataset

    data = load_dataset(DATASET, split=split)
    assert isinstance(data, TensorImageSet)  # embedded sets are held in memory (.images)
    labels = torch.from_numpy(data.labels.copy())
    module.eval()
    with torch.no_grad():
        logits = module(_normalise(data.images)).double()
    probs = logits.softmax(dim=1)
    return {
        "accuracy": float((logits.argmax(dim=1) == labels).double().mean()),
        "nll": float(torch.nn.functional.cross_entropy(logits, labels)),
        "ece": _ece(probs, labels),
        "n": int(len(labels)),
    }


# -------------------------------------------------------------------------------------------- train


def train(settings: TrainSettings = TrainSettings(), *, verbose: bool = False) -> TrainResult:
    """Train ``digits_vit`` from scratch on the ``digits`` train split; evaluate it on ``test``.

    Global torch state that is changed for determinism (threads, deterministic algorithms) is
    restored before returning.
    """
    import torch

    from ..data.base import TensorImageSet, load_dataset

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    try:
        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        gen = torch.Generator().manual_seed(settings.seed)
        module = build_vit(ARCHITECTURE)

        data = load_dataset(DATASET, split="train")
        assert isinstance(data, TensorImageSet)  # embedded sets are held in memory (.images)
        images, labels = data.images, torch.from_numpy(data.labels.copy())
        n = len(labels)
        steps_per_epoch = math.ceil(n / settings.batch_size)
        total = settings.epochs * steps_per_epoch
        warmup = settings.warmup_epochs * steps_per_epoch

        decay = [p for p in module.parameters() if p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.lr,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
        )
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

        module.train()
        for epoch in range(settings.epochs):
            order = torch.randperm(n, generator=gen)
            epoch_images = _normalise(_shifted(images[order], settings.max_shift, gen))
            epoch_labels = labels[order]
            running = 0.0
            for b in range(steps_per_epoch):
                sl = slice(b * settings.batch_size, (b + 1) * settings.batch_size)
                loss = loss_fn(module(epoch_images[sl]), epoch_labels[sl])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach()) * len(epoch_labels[sl])
            if verbose:
                print(f"epoch {epoch + 1:3d}/{settings.epochs}  loss {running / n:.4f}", file=sys.stderr)
        train_seconds = time.perf_counter() - start
        module.eval()
        test = evaluate(module, "test")
        train_metrics = evaluate(module, "train")
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)

    import timm

    from ..models.base import state_dict_sha256

    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": NAME,
        "architecture": dict(ARCHITECTURE),
        "preprocess": dict(PREPROCESS),
        "class_names": list(CLASS_NAMES),
        "training": {
            "dataset": DATASET,
            "split": "train",
            "n_train": int(n),
            "optimizer": "AdamW",
            "schedule": "linear warmup, then cosine to 0, stepped per batch",
            "loss": "cross-entropy",
            **dataclasses.asdict(settings),
            "augmentation": f"random translation up to {settings.max_shift} px (zero fill)",
            "seconds": round(train_seconds, 2),
            "script": "python -m pytest_qrel.zoo.train_digits_vit",
            "versions": {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()},
            "machine": platform.machine(),
        },
        "metrics": {
            "test": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in test.items()},
            "train": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in train_metrics.items()},
        },
        "n_params": int(sum(p.numel() for p in module.parameters())),
        "state_dict_sha256": state_dict_sha256(module),
    }
    return TrainResult(module=module, metadata=metadata)


def resolve_out(out: Path | str | None) -> tuple[Path, Path]:
    """``(weights, json)`` paths for ``--out``: a directory, a ``.safetensors`` path, or the zoo."""
    if out is None:
        out = ZOO_DIR
    out = Path(out)
    weights = out if out.suffix == ".safetensors" else out / f"{NAME}.safetensors"
    return weights, weights.with_suffix(".json")


def save(result: TrainResult, out: Path | str | None = None) -> tuple[Path, Path]:
    """Write the weights (safetensors) and the json (metadata + file SHA-256) atomically."""
    from safetensors.torch import save

    weights, meta_path = resolve_out(out)
    state = {k: v.detach().cpu().contiguous() for k, v in result.module.state_dict().items()}
    atomic_write_bytes(weights, save(state, metadata={"name": NAME, "format": "pt"}))
    meta = dict(result.metadata)
    meta["weights_file"] = weights.name
    meta["weights_file_sha256"] = file_sha256(weights)
    meta["weights_file_bytes"] = weights.stat().st_size
    text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    atomic_write_text(meta_path, text)
    result.metadata = meta
    return weights, meta_path


def main(argv: list[str] | None = None) -> int:
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(prog="python -m pytest_qrel.zoo.train_digits_vit", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"directory or .safetensors path (default: {ZOO_DIR})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(defaults, seed=args.seed, epochs=args.epochs, threads=args.threads)
    result = train(settings, verbose=not args.quiet)
    weights, meta_path = save(result, args.out)
    test = result.metadata["metrics"]["test"]
    print(
        f"{NAME}: test accuracy {test['accuracy']:.4f}, NLL {test['nll']:.4f}, ECE {test['ece']:.4f}; "
        f"trained in {result.metadata['training']['seconds']:.1f} s; wrote {weights} "
        f"({weights.stat().st_size} bytes) and {meta_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

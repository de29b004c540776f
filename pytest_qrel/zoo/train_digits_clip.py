"""Train ``digits_clip``: a tiny open_clip CLIP on the embedded ``digits`` (0-7) train split with captions.

::

    python -m pytest_qrel.zoo.train_digits_clip                  # rewrites pytest_qrel/zoo/digits_clip.*
    python -m pytest_qrel.zoo.train_digits_clip --out /tmp/m     # writes /tmp/m/digits_clip.{safetensors,json}

The model is a real ``open_clip.model.CLIP``: a ViT image tower (16x16 input, the grey channel
repeated to RGB, 4x4 patches, 3 blocks of width 64) and a causal text transformer (2 blocks of
width 64, context 16) meeting in a 32-d joint space, with a learned logit scale. Text goes through
open_clip's own ``SimpleTokenizer`` (offline) and a fixed id map onto the ~100 BPE ids that the
captions, the default negative labels and the generic prompts use (:class:`RemappedTokenizer`), so
the token embedding table stays small. Ids outside that vocabulary map to one unknown id.

Captions are "<template> <name>" for six templates and two spellings of each class name ("three"
and "3"). Each step encodes all 96 captions and uses a symmetric CLIP loss in which every caption
of an image's class is a positive (image -> captions) and every image of a caption's class is a
positive (caption -> images): InfoNCE with several positives, since a batch holds many images of
one class. Training is deterministic for a given machine (fixed seeds, one generator, a fixed
number of threads, ``torch.use_deterministic_algorithms``).

Only the ``train`` split is used for training; zero-shot accuracy / NLL / ECE on ``test`` (prompt
ensemble over the six templates) are recorded in the json beside the weights, for both spellings;
the json's ``class_names`` is the spelling with the higher zero-shot accuracy on the *train* split.
The json also carries the defaults the ``open_clip`` model source uses for this model: prompt
templates, the NegLabel candidate words and template, and the generic prompts of ``genneg``.
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

from . import ZOO_DIR
from ..io import atomic_write_bytes, atomic_write_text
from .train_digits_vit import _ece, _shifted, file_sha256

NAME = "digits_clip"
FORMAT_VERSION = 1
DATASET = "embedded:digits"
CONTEXT_LENGTH = 16

VISION_CFG: dict[str, Any] = {"image_size": 16, "patch_size": 4, "width": 64, "layers": 3, "head_width": 16, "mlp_ratio": 2.0}
TEXT_CFG: dict[str, Any] = {"context_length": CONTEXT_LENGTH, "width": 64, "heads": 4, "layers": 2, "mlp_ratio": 2.0}
EMBED_DIM = 32

PREPROCESS: dict[str, Any] = {"input_size": [1, 16, 16], "mean": 0.5, "std": 0.5, "channels": 3}
"""The model sees ``(x - mean) / std`` of a grey (1, 16, 16) image in [0, 1], repeated to 3 channels."""

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
NUMERALS = [str(d) for d in range(8)]
TEMPLATES = [
    "a photo of the digit {}.",
    "a photo of the number {}.",
    "a handwritten {}.",
    "a drawing of the digit {}.",
    "the number {}.",
    "a blurry photo of a {}.",
]
NEG_TEMPLATE = "a photo of a {}."
NEG_LABELS = [
    "eight", "nine", "ten", "eleven", "twelve", "hundred", "letter", "word", "symbol", "shape",
    "line", "circle", "square", "triangle", "star", "arrow", "dot", "cross", "animal", "plant",
    "tool", "vehicle", "building", "person", "food", "pattern", "picture", "sky", "water", "sand",
]  # fmt: skip
"""Candidate negative labels (NegLabel) for the digits CLIP: none of them is a training caption word."""
N_NEG = 16
NEGLABEL_GROUPS = 1


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained weights (recorded in the json)."""

    seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    max_shift: int = 1
    """Random translation of up to this many pixels (of 16) in x and y, zero padded."""
    threads: int = 1
    """``torch.set_num_threads`` during training (restored afterwards)."""


@dataclass
class TrainResult:
    model: Any  # the trained open_clip CLIP, eval mode
    metadata: dict[str, Any]


def captions(names: list[str]) -> list[str]:
    """All training captions, class-major: ``[t.format(n) for n in names for t in TEMPLATES]``."""
    return [t.format(n) for n in names for t in TEMPLATES]


def vocabulary_texts() -> list[str]:
    """Every text whose tokens the model keeps: captions (both spellings), negatives, generic prompts."""
    from ..models.clip_zoo import GENERIC_PROMPTS

    return captions(WORDS) + captions(NUMERALS) + [NEG_TEMPLATE.format(w) for w in NEG_LABELS] + list(GENERIC_PROMPTS)


def tokenizer_config() -> dict[str, Any]:
    from ..models.clip_zoo import RemappedTokenizer

    ids = RemappedTokenizer.ids_for(vocabulary_texts(), CONTEXT_LENGTH)
    tok = RemappedTokenizer(ids, CONTEXT_LENGTH)
    return {
        "kind": "open_clip SimpleTokenizer + id map (see pytest_qrel.models.clip_zoo.RemappedTokenizer)",
        "context_length": CONTEXT_LENGTH,
        "kept_ids": tok.kept_ids,
    }


def architecture(vocab_size: int) -> dict[str, Any]:
    """Keyword arguments of ``open_clip.model.CLIP``."""
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": dict(VISION_CFG),
        "text_cfg": {**TEXT_CFG, "vocab_size": int(vocab_size)},
        "quick_gelu": False,
    }


def _images(images: Any) -> Any:
    """Grey (N, 1, 16, 16) in [0, 1] -> normalised (N, 3, 16, 16)."""
    return ((images - PREPROCESS["mean"]) / PREPROCESS["std"]).repeat_interleave(3, dim=1)


def evaluate(model: Any, tokenizer: Any, names: list[str], split: str = "test") -> dict[str, float]:
    """Zero-shot top-1 accuracy, NLL and ECE (15 bins) on a split of ``embedded:digits`` (prompt ensemble)."""
    import torch
    import torch.nn.functional as F

    from ..data.base import TensorImageSet, load_dataset
    from ..models.clip_zoo import zero_shot_weights

    data = load_dataset(DATASET, split=split)
    assert isinstance(data, TensorImageSet)  # embedded sets are held in memory (.images)
    labels = torch.from_numpy(data.labels.copy())
    model.eval()
    with torch.no_grad():
        text = zero_shot_weights(model, tokenizer, names, TEMPLATES)
        feats = F.normalize(model.encode_image(_images(data.images)), dim=-1)
        logits = (model.logit_scale.exp() * feats @ text.T).double()
    return {
        "accuracy": float((logits.argmax(dim=1) == labels).double().mean()),
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": _ece(logits.softmax(dim=1), labels),
        "n": int(len(labels)),
    }


def _multi_positive_nce(logits: Any, positives: Any) -> Any:
    """Mean over rows with a positive of ``-log(sum_{j positive} softmax(row)_j)``."""
    import torch

    has = positives.any(dim=1)
    lse_all = torch.logsumexp(logits, dim=1)
    lse_pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (lse_all - lse_pos)[has].mean()


def train(settings: TrainSettings = TrainSettings(), *, verbose: bool = False) -> TrainResult:
    """Train ``digits_clip`` from scratch on the ``digits`` train split; evaluate it zero-shot on ``test``.

    Global torch state that is changed for determinism (threads, deterministic algorithms) is
    restored before returning.
    """
    import torch
    import torch.nn.functional as F

    from ..data.base import TensorImageSet, load_dataset
    from ..models.clip_zoo import RemappedTokenizer, build_clip

    tok_cfg = tokenizer_config()
    tokenizer = RemappedTokenizer(tok_cfg["kept_ids"], tok_cfg["context_length"])
    arch = architecture(tokenizer.vocab_size)

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    try:
        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        gen = torch.Generator().manual_seed(settings.seed)
        model = build_clip(arch)

        data = load_dataset(DATASET, split="train")
        assert isinstance(data, TensorImageSet)  # embedded sets are held in memory (.images)
        images, labels = data.images, torch.from_numpy(data.labels.copy())
        n = len(labels)
        texts = captions(WORDS) + captions(NUMERALS)
        tokens = tokenizer(texts)
        text_labels = torch.arange(len(WORDS)).repeat_interleave(len(TEMPLATES)).repeat(2)

        steps_per_epoch = math.ceil(n / settings.batch_size)
        total = settings.epochs * steps_per_epoch
        warmup = settings.warmup_epochs * steps_per_epoch
        no_decay_names = {"logit_scale", "token_embedding.weight", "positional_embedding", "visual.positional_embedding",
                          "visual.class_embedding"}  # fmt: skip
        decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and name not in no_decay_names]
        no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or name in no_decay_names]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.lr,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
        )

        model.train()
        for epoch in range(settings.epochs):
            order = torch.randperm(n, generator=gen)
            epoch_images = _images(_shifted(images[order], settings.max_shift, gen))
            epoch_labels = labels[order]
            running = 0.0
            for b in range(steps_per_epoch):
                sl = slice(b * settings.batch_size, (b + 1) * settings.batch_size)
                img = F.normalize(model.encode_image(epoch_images[sl]), dim=-1)
                txt = F.normalize(model.encode_text(tokens), dim=-1)
                logits = model.logit_scale.exp() * img @ txt.T  # (B, 96)
                positives = epoch_labels[sl, None] == text_labels[None, :]
                loss = 0.5 * (_multi_positive_nce(logits, positives) + _multi_positive_nce(logits.T, positives.T))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                running += float(loss.detach()) * len(epoch_labels[sl])
            if verbose:
                print(f"epoch {epoch + 1:3d}/{settings.epochs}  loss {running / n:.4f}  "
                      f"logit scale {float(model.logit_scale.exp()):.2f}", file=sys.stderr)  # fmt: skip
        train_seconds = time.perf_counter() - start
        model.eval()
        metrics: dict[str, dict[str, Any]] = {}
        for spelling, names in (("words", WORDS), ("numerals", NUMERALS)):
            for split in ("train", "test"):
                metrics.setdefault(split, {})[spelling] = evaluate(model, tokenizer, names, split)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)

    import open_clip

    from ..models.base import state_dict_sha256
    from ..models.clip_zoo import GENERIC_PROMPTS

    best = max(("words", "numerals"), key=lambda s: (metrics["train"][s]["accuracy"], s == "words"))
    rounded = {
        split: {sp: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()} for sp, m in per.items()}
        for split, per in metrics.items()
    }
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": NAME,
        "architecture": arch,
        "tokenizer": tok_cfg,
        "preprocess": dict(PREPROCESS),
        "class_names": list(WORDS if best == "words" else NUMERALS),
        "templates": list(TEMPLATES),
        "neg_template": NEG_TEMPLATE,
        "neg_labels": list(NEG_LABELS),
        "n_neg": N_NEG,
        "neglabel_groups": NEGLABEL_GROUPS,
        "generic_prompts": list(GENERIC_PROMPTS),
        "logit_scale": round(float(model.logit_scale.detach().exp()), 6),
        "training": {
            "dataset": DATASET,
            "split": "train",
            "n_train": int(n),
            "captions": "6 templates x 2 spellings (words, numerals) per class, all 96 encoded every step",
            "optimizer": "AdamW",
            "schedule": "linear warmup, then cosine to 0, stepped per batch",
            "loss": "symmetric multi-positive InfoNCE (CLIP loss; same-class captions / images are positives)",
            **dataclasses.asdict(settings),
            "augmentation": f"random translation up to {settings.max_shift} px (zero fill)",
            "seconds": round(train_seconds, 2),
            "script": "python -m pytest_qrel.zoo.train_digits_clip",
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version()},
            "machine": platform.machine(),
        },
        "metrics": {
            "zero_shot_spelling": best,
            "test": {**rounded["test"][best], "by_spelling": rounded["test"]},
            "train": {**rounded["train"][best], "by_spelling": rounded["train"]},
        },
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "state_dict_sha256": state_dict_sha256(model),
    }
    return TrainResult(model=model, metadata=metadata)


def resolve_out(out: Path | str | None) -> tuple[Path, Path]:
    """``(weights, json)`` paths for ``--out``: a directory, a ``.safetensors`` path, or the zoo."""
    out = Path(ZOO_DIR if out is None else out)
    weights = out if out.suffix == ".safetensors" else out / f"{NAME}.safetensors"
    return weights, weights.with_suffix(".json")


def save(result: TrainResult, out: Path | str | None = None) -> tuple[Path, Path]:
    """Write the weights (safetensors) and the json (metadata + file SHA-256) atomically."""
    from safetensors.torch import save

    weights, meta_path = resolve_out(out)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
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
    parser = argparse.ArgumentParser(prog="python -m pytest_qrel.zoo.train_digits_clip", description=__doc__.split("\n")[0])
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
        f"{NAME}: zero-shot test accuracy {test['accuracy']:.4f} ({result.metadata['metrics']['zero_shot_spelling']}), "
        f"NLL {test['nll']:.4f}, ECE {test['ece']:.4f}; trained in {result.metadata['training']['seconds']:.1f} s; "
        f"wrote {weights} ({weights.stat().st_size} bytes) and {meta_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

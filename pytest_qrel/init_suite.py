"""``qrel init``: a starter suite for a model and a folder of images, written so that it runs.

What it decides, from the folder alone (nothing is imported but the standard library):

- *Layout.* ``root/{train,val,test}/<class>/`` (any of the three; ImageNet's ``train`` + ``val``
  too) gives ``split_dirs:`` naming the splits found: ``train`` calibrates the quantizer, ``val``
  fits post-hoc steps, ``test`` (else ``val``) is measured. ``root/<class>/`` (class folders
  only) is measured and, with no training split to draw from, also calibrates (a comment says
  so). A flat folder of images has no labels and is refused: it can be an OOD set, not the ID
  set. A ``root/ood/`` folder beside the splits becomes an OOD set (``labels: none``).
- *Paths* are written relative to the suite file's folder, which is how the suite loader reads
  them (a comment in the file says so).
- *Model.* ``timm:<name>`` (a bare name means timm) or any other source as given
  (``embedded:digits_vit``). ``--random-init`` writes ``pretrained: false`` with a comment: a dry
  run scores at chance level, and the engine stores its baseline with a warning that says so.
  A timm model gets ``num_classes`` = the number of class folders when its head is new
  (``--random-init``, ``--checkpoint``); with pretrained weights the folders must be the
  model's classes (WordNet ids give ``classes: imagenet1k``).
- *Checks.* A few that a sound 8-bit quantization passes: top-1, ECE and (with an OOD set) AUROC
  deltas against FP32. OOD: the folder's ``ood/`` images, else the shipped ``embedded:noise``.

*Model check.* The model source is checked before anything is written (an unknown scheme, an
unknown timm name or tag, a misspelled shipped model: one line with "did you mean"), so a typo
costs no file to delete; for a timm model this imports timm (seconds), which is cheaper than a
first pytest run that fails on it. Pretrained weights missing from the local Hugging Face cache,
and class folders that cannot be a pretrained ImageNet head's classes, are notes printed with the
next steps (the suite is still written: the weights may be copied in later).

It refuses to overwrite a file, and loads what it wrote with :func:`pytest_qrel.load_suite` before
saying it is done; a suite that does not load is removed again (a bug of ours, and the message says so).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import QrelError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``, case-insensitive (what ``imagefolder:`` reads by default)."""

SPLITS = ("train", "val", "test")
CALIBRATION_SAMPLES = 64
"""At most this many calibration images (fewer when the training split is smaller)."""


class InitError(QrelError):
    """``qrel init`` cannot write a suite from these arguments; the message says what to change."""


@dataclass
class Layout:
    """What :func:`detect_layout` found under a root: ``split_dirs`` (``{split: subfolder}``, empty
    for class folders directly under the root), ``classes`` (sorted class folder names), image
    counts per split (``"test"`` for a root without splits), and an ``ood`` subfolder, if any."""

    root: Path
    split_dirs: dict[str, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    ood: str | None = None

    @property
    def calibration_split(self) -> str:
        """The split the quantizer draws its calibration images from."""
        return "train" if "train" in self.split_dirs else "test"


def _images_below(folder: Path) -> int:
    return sum(1 for _, _, files in os.walk(folder, followlinks=False) for f in files if f.lower().endswith(IMAGE_SUFFIXES))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: Path) -> Layout:
    """The layout of ``root`` (see the module docstring). Raises :class:`InitError` for a root that
    is missing, holds no class folders, or only loose images."""
    if not root.is_dir():
        raise InitError(f"{root}: no such folder (give the folder that holds your images)")
    subs = {p.name: p for p in _subfolders(root)}
    found = [s for s in SPLITS if s in subs]
    layout = Layout(root=root)
    if found:
        test = "test" if "test" in subs else "val" if "val" in subs else None
        if test is None:
            raise InitError(f"{root}: has a 'train' folder but no 'test' or 'val' folder to measure on "
                            "(add root/test/<class>/ images, or point qrel init at a folder of class folders)")
        layout.split_dirs = {s: s for s in found if not (s == "val" and test == "val")}
        layout.split_dirs["test"] = test
        classes: set[str] = set()
        for split, sub in layout.split_dirs.items():
            names = [p.name for p in _subfolders(subs[sub])]
            if not names:
                raise InitError(f"{subs[sub]}: no class folders inside (expected {sub}/<class>/<image>)")
            classes.update(names)
            layout.images[split] = _images_below(subs[sub])
        layout.classes = sorted(classes)
        if "ood" in subs and _images_below(subs["ood"]):
            layout.ood = "ood"
    else:
        layout.classes = [name for name, p in subs.items() if _images_below(p)]
        if not layout.classes:
            loose = _images_below(root)
            raise InitError(
                f"{root}: {'only loose images, no class folders' if loose else 'no images'}: the in-distribution set needs "
                "one folder per class (root/<class>/<image> or root/{train,val,test}/<class>/<image>)"
                + ("; a folder of unlabelled images can be an OOD set of a suite instead" if loose else "")
            )
        layout.images["test"] = _images_below(root)
    if len(layout.classes) < 2:
        raise InitError(f"{root}: {len(layout.classes)} class folder(s) ({', '.join(layout.classes)}): a classifier audit needs at least 2")
    return layout


def name_key(text: str, default: str) -> str:
    """A suite key / dataset name from free text: letters, digits and ``_`` (no ``-``: ids use it)."""
    key = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return key if key and not key[0].isdigit() else f"{default}_{key}" if key else default


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _wordnet_ids(classes: list[str]) -> bool:
    """Whether every class folder is an ImageNet WordNet id (``n01440764``): a pretrained head's classes."""
    return all(re.fullmatch(r"n\d{8}", c) for c in classes)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class InitRequest:
    """The arguments of ``qrel init``; ``out``: the suite file to write."""

    model: str
    data: Path
    out: Path
    name: str | None = None
    random_init: bool = False
    checkpoint: Path | None = None


def suite_text(req: InitRequest, layout: Layout) -> str:
    """The starter suite's YAML (with its comments) for ``req`` and ``layout``."""
    base = req.out.parent
    source = _source(req.model)
    scheme, _, arg = source.partition(":")
    timm = scheme == "timm"
    name = req.name or name_key(req.out.stem, "suite")
    model_key = name_key(arg.split("/")[-1].split(".")[0], "model")
    data_name = name_key(layout.root.resolve().name, "data")
    root = _rel(layout.root, base)
    lines = [
        f"# A starter suite written by `qrel init` for {source} and the images in {root}.",
        f"# Paths in this file are relative to this file's folder ({base.as_posix() or '.'}), not to where pytest runs.",
        "# Run:  pytest --qrel-suite <this file> --qrel-update-baselines   (once: stores the FP32 baseline)",
        "#       pytest --qrel-suite <this file>                           (the audit)",
        "version: 1",
        f"name: {name}",
        "models:",
        f"  {model_key}:",
        f"    source: {_quote(source)}",
    ]
    display = shipped_clip_names(req, layout)  # the shipped CLIP's own names standing in for the classes: a dry run
    dry_run = req.random_init or display is not None
    options: list[str] = []
    if req.random_init:
        if not timm:
            raise InitError(f"--random-init: only timm models take 'pretrained: false' ({source} is not one)")
        lines += [
            "    # A dry run: random weights (pretrained: false). Its FP32 top-1 is at chance level, so this checks the",
            "    # pipeline (data, quantization, metrics), not the model; the baseline is stored with a warning saying so.",
            "    # For the real audit remove 'pretrained: false' and give 'checkpoint: <your weights file>'",
            "    # (or keep the pretrained weights in the local Hugging Face cache: pytest-qrel never downloads).",
        ]
        options += ["pretrained: false", f"num_classes: {len(layout.classes)}"]
    elif req.checkpoint is not None:
        if not timm:
            raise InitError(f"--checkpoint: only timm models take a checkpoint option here ({source} is not one)")
        options += [f"checkpoint: {_quote(_rel(req.checkpoint, base))}", f"num_classes: {len(layout.classes)}"]
    if timm and not req.random_init and req.checkpoint is None:
        lines.append("    # Pretrained weights from the local Hugging Face cache: the class folders must be the model's classes.")
    if options:
        lines.append(f"    options: {{{', '.join(options)}}}")

    id_options: list[str] = []
    if layout.split_dirs:
        dirs = ", ".join(f"{s}: {d}" for s, d in layout.split_dirs.items())
        id_options.append(f"split_dirs: {{{dirs}}}")
        used = {"train": "calibrates the quantizer", "val": "fits post-hoc steps", "test": "is measured"}
        lines += ["datasets:", "  # " + "; ".join(f"{d}/ {used[s]}" for s, d in layout.split_dirs.items())]
    else:
        id_options.append(f"train: {_quote(root)}")
        lines += ["datasets:", "  # Class folders without train/val/test splits: the same images calibrate and are measured.",
                  "  # Give a separate training folder ('train: <folder>') for calibration images the audit does not score."]
    if timm and _wordnet_ids(layout.classes) and not req.random_init and req.checkpoint is None:
        id_options.append("classes: imagenet1k")
    if display is not None:
        shown = ", ".join(f"{c} -> {d}" for c, d in list(zip(layout.classes, display))[:3]) + (", ..." if len(display) > 3 else "")
        lines += [
            "  # A dry run: the shipped demo CLIP knows only the names of its own classes, so its",
            f"  # zero-shot head is built from them, one per class folder in sorted order ({shown}). Its numbers check the",
            "  # pipeline, not a model. For the real audit use your CLIP ('open_clip:<arch>/<tag>', or 'open_clip:<arch>' with",
            "  # 'checkpoint'; docs/clip.md) and remove 'class_names'.",
        ]
        id_options.append(f"class_names: [{', '.join(display)}]")
    lines.append(f"  id: {{name: {data_name}, source: {_quote('imagefolder:' + root)}, options: {{{', '.join(id_options)}}}}}")
    lines.append("  ood:")
    ood_names = []
    if layout.ood:
        ood_root = _rel(layout.root / layout.ood, base)
        lines.append(f"    - {{name: {data_name}_ood, source: {_quote('imagefolder:' + ood_root)}, options: {{labels: none}}}}")
        ood_names.append(f"{data_name}_ood")
    else:  # no OOD images of the user's: a set that ships with pytest-qrel, until they add their own
        lines.append("    - {name: noise, source: \"embedded:noise\"}   # shipped with pytest-qrel: Gaussian noise images")
        ood_names.append("noise")
    # a zero-shot CLIP's OOD score of the CLIP paper: MCM (softmax over the class similarities)
    scores = ["msp", "mcm"] if scheme == "open_clip" else ["msp"]
    calib = layout.images.get(layout.calibration_split, 0)
    samples = max(1, min(CALIBRATION_SAMPLES, calib))
    lines += [
        "quantizers:",
        f"  W8A8: {{method: minmax, weight_bits: 8, act_bits: 8, calibration: {{samples: {samples}, seed: 0}}}}",
        f"scores: [{', '.join(scores)}]",
    ]
    on_ood = "mean(ood)" if len(ood_names) > 1 else ood_names[0]
    if dry_run:  # a random model's outputs are noise: one flipped prediction in 24 images is 4pp
        lines += [
            "# Dry-run bounds, loose on purpose: a dry run's numbers mean nothing. For the real audit tighten them,",
            "# e.g. top1 delta <= 1pp, ece delta <= 2pp, auroc delta <= 5pp.",
            "checks:",
            "  - \"W8A8 top1 delta <= 25pp\"",
            "  - \"W8A8 ece delta <= 25pp\"",
            f"  - \"W8A8 auroc({scores[-1]}) on {on_ood} delta <= 25pp\"",
        ]
    else:
        lines += [
            "checks:",
            "  - \"W8A8 top1 delta <= 1pp\"",
            "  - \"W8A8 ece delta <= 2pp\"",
            f"  - \"W8A8 auroc({scores[-1]}) on {on_ood} delta <= 5pp\"",
        ]
    lines.append("")
    return "\n".join(lines)


def _source(model: str) -> str:
    return model if ":" in model else f"timm:{model}"


def shipped_clip_names(req: InitRequest, layout: Layout) -> list[str] | None:
    """For the shipped demo CLIP and class folders it has no words for: its own class names, one per
    folder (the ID set's ``class_names``: a dry run); None otherwise (any other model, or folders
    named by words it knows). Raises :class:`InitError` when there are more folders than names."""
    scheme, _, arg = _source(req.model).partition(":")
    if scheme != "open_clip":
        return None
    from .models.open_clip_source import shipped_clip_vocabulary

    try:
        found = shipped_clip_vocabulary(arg, layout.classes)
    except QrelError as exc:
        raise InitError(f"MODEL {req.model}: {exc}") from None
    if found is None or not found[0]:
        return None
    unknown, own = found
    if len(layout.classes) > len(own):
        raise InitError(f"MODEL {req.model}: the shipped demo CLIP knows the names of {len(own)} classes ({', '.join(own[:3])}, ...); "
                        f"{layout.root} has {len(layout.classes)} class folders, {len(unknown)} named by words it does not know "
                        "(fix: use your CLIP, 'open_clip:<arch>/<tag>' or 'open_clip:<arch>' with a checkpoint; docs/clip.md)")
    return own[: len(layout.classes)]


def check_model(req: InitRequest) -> None:
    """Raise :class:`InitError` naming the MODEL argument when its source cannot load: an unknown
    scheme (``timmm:``), shipped model, timm model name or pretrained tag, each with "did you mean"."""
    from .models.base import validate_model_source

    source = _source(req.model)
    try:
        validate_model_source(source)
        if source.startswith("timm:"):
            from .models.timm_source import missing_pretrained_weights

            missing_pretrained_weights(source.partition(":")[2])
    except QrelError as exc:
        raise InitError(f"MODEL {req.model}: {exc}") from None


def model_notes(req: InitRequest, layout: Layout) -> list[str]:
    """What the user should know before the first run of a suite for ``req`` (one line each): a
    pretrained timm model whose weights are not in the local cache, or whose class folders are not
    ImageNet WordNet ids (a pretrained head's 1,000 outputs are not your classes)."""
    source = _source(req.model)
    if (names := shipped_clip_names(req, layout)) is not None:
        return [f"the shipped demo CLIP has no words for your class folders: the suite builds its zero-shot head from its own "
                f"class names ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}), a dry run of the pipeline with loose bounds; "
                "for the real audit use your CLIP (docs/clip.md)"]
    if not source.startswith("timm:") or req.random_init or req.checkpoint is not None:
        return []
    from .models.timm_source import missing_pretrained_weights

    notes = []
    if missing := missing_pretrained_weights(source.partition(":")[2]):
        notes.append(f"{missing}; or write the suite again with --checkpoint <your weights file>, or --random-init for a dry run")
    if not _wordnet_ids(layout.classes):
        shown = ", ".join(layout.classes[:3]) + (", ..." if len(layout.classes) > 3 else "")
        notes.append(f"your class folders ({shown}) are not ImageNet WordNet ids, so they are not a pretrained head's classes: "
                     "give --checkpoint with a head fine-tuned on them (one output per class folder), or --random-init for a dry run")
    return notes


def write_starter_suite(req: InitRequest) -> tuple[Path, Layout]:
    """Write the starter suite to ``req.out`` (never over an existing file) and load it back.
    Raises :class:`InitError` with one line saying what to change; nothing is left written then."""
    if req.out.exists():
        raise InitError(f"{req.out}: already exists; qrel init never overwrites a file (give another --out, or delete it)")
    if req.checkpoint is not None and not req.checkpoint.is_file():
        raise InitError(f"--checkpoint {req.checkpoint}: no such file")
    if req.out.suffix not in (".yaml", ".yml"):
        raise InitError(f"--out {req.out}: a suite file ends in .yaml or .yml")
    layout = detect_layout(req.data)
    check_model(req)
    text = suite_text(req, layout)
    from .io import atomic_write_text

    req.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(req.out, text)
    from .spec import load_suite

    try:
        load_suite(req.out)  # what we wrote must load: a bug here is ours, and it says so at once
    except QrelError as exc:
        req.out.unlink()  # a re-run after the fix must not meet "already exists"
        raise InitError(f"the suite qrel init would write does not load (nothing written; please report this): {exc}") from None
    return req.out, layout

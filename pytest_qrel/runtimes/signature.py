"""Does a user's artifact take the suite's images and return the suite's classes? Checked once, when
the file is loaded, so that a mismatch is one line naming the file and the fix, never a runtime's
multi-line error in the middle of a forward pass or a top-1 of 20 % over the wrong classes.

The gate feeds an artifact the suite's model's *preprocessed* images: one float32 input
(N, C, H, W), N the batch. What an artifact declares (its inputs' names, shapes and types, as
ONNX Runtime, OpenVINO or torch.export report them) is checked against that
(:func:`check_inputs`); then one small batch is run through it (:func:`probe`): it must return
logits (N, classes) with the FP32 model's number of classes. A fixed batch (an input exported with
batch 1, say) is not an error: the artifact is run in batches of that size (:func:`fixed_batch_run`),
and the census notes say so.

:func:`reason` turns a runtime's multi-line exception into the one line that says what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QuantOptionError

Dim = int | str | None
"""A declared dimension: a size, a symbolic name (dynamic), or ``None`` (dynamic, unnamed)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOISE = (re.compile(r"^Exception from \S+:\d+:?$"), re.compile(r"^Check '.*' failed at \S+:\d+:?$"),
          re.compile(r"^Please fix either the inputs/outputs or the model\.?$"))


@dataclass(frozen=True)
class DeclaredInput:
    """One input of an artifact as its runtime declares it; ``shape`` is ``None`` when the rank is unknown."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: str  # NumPy's name: float32, float16, uint8, ...


def reason(exc: BaseException, limit: int = 300) -> str:
    """The informative part of a runtime's exception, as one line: colour codes, "Exception from
    file:line" and "Check ... failed at" lines and a header line ending in ":" dropped, the rest joined."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not any(p.match(line) for p in _NOISE)]
    if len(lines) > 1 and lines[0].endswith(":"):  # a header ("Error(s) in loading state_dict for X:"): the lines below say what
        lines = lines[1:]
    text = " ".join(lines[:4]) if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shape_text(shape: Sequence[Dim]) -> str:
    """``(N, 1, 16, 16)``: dynamic dimensions by their name, or ``?``."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def check_inputs(path: Path, inputs: Sequence[DeclaredInput], image: Sequence[int], export_hint: str) -> int | None:
    """Check what ``path`` declares against the suite's images of shape ``image`` (C, H, W);
    returns the artifact's fixed batch size (``None``: its batch is dynamic or unknown).

    Raises:
        QuantOptionError: on ``path``: not one input, not float32, or another shape or layout.
    """
    want: tuple[Dim, ...] = ("N", *image)
    fix = f"export it with one float32 input {shape_text(want)}, the suite's preprocessed images, e.g. {export_hint}"
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs) or "none"
        raise QuantOptionError("path", f"{path} has {len(inputs)} inputs ({names}); the gate feeds it one, the suite's "
                               f"preprocessed images {shape_text(want)}", fix)
    (declared,) = inputs
    if declared.dtype != "float32":
        raise QuantOptionError("path", f"{path}: input '{declared.name}' is {declared.dtype}; the gate feeds it the suite's "
                               "preprocessed images in float32", fix + "; cast inside the model if it computes in another type")
    shape = declared.shape
    if shape is None:
        return None
    if len(shape) != len(want) or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], image)):
        hint = ""
        sizes = [d for d in shape[1:] if isinstance(d, int)]
        if len(shape) == len(want) and len(sizes) == len(image) and sorted(sizes) == sorted(image):
            hint = " (another layout: channels last?)"
        elif len(shape) == len(want) and isinstance(shape[1], int) and shape[1] == image[0]:
            hint = " (another image size: the artifact's preprocessing is not the suite's model's)"
        raise QuantOptionError("path", f"{path}: input '{declared.name}' has shape {shape_text(shape)}{hint}, but the suite's "
                               f"model preprocesses images to {shape_text(want)}", fix)
    batch = shape[0]
    return batch if isinstance(batch, int) and batch > 0 else None


def check_output(path: Path, logits: Any, batch: int, classes: int, export_hint: str) -> None:
    """Check the logits ``path`` returned for a batch of ``batch`` images: (batch, ``classes``).

    Raises:
        QuantOptionError: on ``path``: another shape, or another number of classes than FP32's.
    """
    shape = tuple(int(d) for d in np.shape(logits))
    if len(shape) != 2 or shape[0] != batch:
        raise QuantOptionError("path", f"{path} returned an output of shape {shape} for {batch} images; expected logits "
                               f"({batch}, {classes})", f"export the model that returns the logits as its first output, e.g. {export_hint}")
    if shape[1] != classes:
        raise QuantOptionError("path", f"{path} returns {shape[1]} logits per image, but the suite's FP32 model has {classes} "
                               "classes: the artifact is of another model or head",
                               f"export the model the suite names, with its {classes} classes in the FP32 model's order")


def probe(path: Path, run: Callable[[np.ndarray], Any], example: np.ndarray, fixed: int | None, classes: int,
          export_hint: str) -> int | None:
    """Run ``example[:1]`` tiled to a batch through ``run`` (the artifact on a NumPy batch) and
    check its logits; returns the batch size the artifact must be run at (``None``: any).

    A batch of 2 is tried when the declared batch is dynamic: an artifact that runs one image but
    not two (a batch of 1 baked into a reshape) is run one image at a time.

    Raises:
        QuantOptionError: on ``path``: the artifact fails on the suite's images, or returns other logits.
    """
    image = example[:1]
    sizes = [fixed] if fixed else [2, 1]
    for i, n in enumerate(sizes):
        try:
            out = run(np.ascontiguousarray(np.repeat(image, n, axis=0)))
        except Exception as exc:  # noqa: BLE001 - each runtime raises its own types: one line for all
            if i + 1 < len(sizes):
                continue
            raise QuantOptionError("path", f"{path} does not run on the suite's preprocessed images "
                                   f"{shape_text((n, *(int(d) for d in image.shape[1:])))}: {reason(exc)}",
                                   f"export the model the suite names from its preprocessed images, e.g. {export_hint}") from None
        check_output(path, out, n, classes, export_hint)
        return fixed if fixed else (None if n == 2 else 1)
    return None  # pragma: no cover - the loop returns or raises


def fixed_batch_run(run: Callable[[np.ndarray], np.ndarray], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """``run`` for an artifact that takes exactly ``batch`` images: any batch is cut into chunks of
    that size, the last one padded by repeating its last image (the padded rows are dropped)."""

    def chunked(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            rows = len(chunk)
            if rows < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - rows, axis=0)])
            out.append(np.asarray(run(np.ascontiguousarray(chunk)))[:rows])
        return np.concatenate(out) if out else np.asarray(run(images))

    return chunked


def fixed_batch_note(batch: int | None) -> str:
    """The census note of an artifact run in fixed batches ("" when its batch is dynamic)."""
    if not batch:
        return ""
    return "runs one image at a time (fixed batch of 1)" if batch == 1 else f"runs in batches of {batch} (fixed batch)"

"""Logit masks: evaluate a 1000-class model on a dataset that uses a subset of its classes.

ImageNet-R and ImageNet-A hold 200 of the 1000 ImageNet-1k classes. Their authors evaluate a
1000-class model by keeping only the 200 logits of those classes (``net(x)[:, mask]`` in the
``eval.py`` of github.com/hendrycks/imagenet-r and github.com/hendrycks/natural-adv-examples) and
labelling each image by its class's position among the 200 (the sorted WordNet-id folders). Top-1,
confidence, NLL, ECE and the logit-based OOD scores are then those of a 200-way classifier.

A dataset says so with the option ``logit_mask`` (``imagefolder``):

=====================  =====================================================================
value                  mask
=====================  =====================================================================
``imagenet_r``         ImageNet-R's 200 WordNet ids (shipped, ``data/lists/imagenet_r.txt``)
``imagenet_a``         ImageNet-A's 200 WordNet ids (``data/lists/imagenet_a.txt``)
a list / a file        class names of the model's label space, one per line (``#`` comments);
                       a file is a path (``./mask.txt``, ``masks/r.txt``, ``${VAR}/m.txt``)
=====================  =====================================================================

The model's label space is the dataset's ``classes:`` option when given, else ``imagenet1k``
(the 1000 WordNet ids in the standard index order). A bare word without ``/`` or ``.`` is a
built-in mask name: an unknown one is an :class:`~pytest_qrel.errors.UnknownNameError` with a
"did you mean" when the suite loads.

*Labels.* With a mask the dataset's label space is the mask's classes in the model's index
order: a folder's label is its class's position among them (what the authors' sorted folders
give); folders outside the mask follow ``unknown_classes``. Display names: ``imagenet1k_names``
of those classes for the ImageNet space, else ``class_names:`` (the full list, or one per masked
class), else the ids.

*Applying it.* The dataset carries :class:`LogitMask` as ``logit_mask``; the engine's runner
calls :func:`restrict_logits` on every batch's logits before they become per-sample arrays and
scores, and :func:`restrict_clip` once per pass on a CLIP model's text side (MCM / NegLabel /
generic-negative scores then see only the masked classes' prompts). A model whose head already
has exactly the masked classes (a CLIP head built from this set's own class names) is left as it
is; any other width is a :class:`~pytest_qrel.errors.DataError`.

*Fingerprint.* The mask's indices are part of the dataset's fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, QrelError
from ..options import value_problem
from ..registry import Registry

LOGIT_MASKS: Registry[str] = Registry("logit mask")
"""Built-in masks: name -> the built-in class list (:data:`~pytest_qrel.data.classnames.CLASS_LISTS`)
holding their classes, in the ``imagenet1k`` label space."""
LOGIT_MASKS.add("imagenet_r", "imagenet_r", description="ImageNet-R: 200 of the ImageNet-1k classes")
LOGIT_MASKS.add("imagenet_a", "imagenet_a", description="ImageNet-A: 200 of the ImageNet-1k classes")

DEFAULT_SPACE = "imagenet1k"


@dataclass(frozen=True)
class LogitMask:
    """The model outputs a dataset is evaluated on.

    ``indices``: int64 (K,), increasing positions in the model's ``n_classes`` outputs;
    ``class_ids``: the K class names at those positions (the dataset's label ``k`` is
    ``class_ids[k]``); ``name``: the built-in name or where the list came from.
    """

    name: str
    indices: np.ndarray
    class_ids: tuple[str, ...]
    n_classes: int

    def __len__(self) -> int:
        return len(self.indices)

    def fingerprint_part(self) -> dict[str, Any]:
        return {"logit_mask": {"n_classes": self.n_classes, "indices": self.indices.tolist()}}


def is_mask_name(value: str) -> bool:
    """A bare word (no ``/``, ``\\``, ``.``, ``$`` or ``~``) names a built-in mask, anything else is a path."""
    return not any(c in value for c in "/\\.$~")


def check_logit_mask_option(where: str, value: Any) -> None:
    """The suite-load check of ``logit_mask`` (reads no file).

    Raises:
        UnknownNameError: a bare word that is not a built-in mask ("did you mean").
        DataError: not a non-empty string or list of names.
    """
    if isinstance(value, str) and value.strip():
        if is_mask_name(value):
            try:
                LOGIT_MASKS.get(value)
            except QrelError as exc:
                raise exc.with_context(f"{where}: option 'logit_mask'") from None
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return
    expect = f"{' or '.join(LOGIT_MASKS.names())}, a file of class names or a list of class names"
    raise DataError(f"{where}: {value_problem('logit_mask', value, expect)}")


def resolve_logit_mask(value: Any, *, classes: Any = None, class_names: Any = None, base_dir: Path, where: str) -> tuple[LogitMask, list[str]]:
    """``(mask, display names of the masked classes)`` for a dataset's ``logit_mask`` option.

    ``classes`` / ``class_names`` are the dataset's options of those names (the model's label
    space and its display names; default ``imagenet1k`` and its readable names).

    Raises:
        UnknownNameError: unknown built-in mask.
        DataError: a masked class that is not in the label space, listed twice, or an empty mask;
            ``class_names`` of the wrong length.
        DataMissingError: a mask file that does not exist.
    """
    from .classnames import CLASS_LISTS, read_class_file, resolve_class_list
    from .paths import resolve_path

    check_logit_mask_option(where, value)
    space = resolve_class_list(classes if classes is not None else DEFAULT_SPACE, base_dir=base_dir, where=f"{where}: option 'classes'")
    if isinstance(value, (list, tuple)):
        wanted, name = [str(v) for v in value], "list"
    elif is_mask_name(value):
        wanted, name = list(CLASS_LISTS.get(LOGIT_MASKS.get(value))()), value
    else:
        path = resolve_path(value, base_dir=base_dir, what=f"{where}: logit_mask file")
        wanted, name = read_class_file(path), str(path)
    position = {c: i for i, c in enumerate(space)}
    unknown = [c for c in wanted if c not in position]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        label_space = "the 'classes' option" if classes is not None else f"'{DEFAULT_SPACE}' (give 'classes:' for another label space)"
        raise DataError(f"{where}: logit_mask '{name}': {len(unknown)} class(es) not in the model's label space {label_space}: {shown}")
    if len(set(wanted)) != len(wanted):
        twice = next(c for c in wanted if wanted.count(c) > 1)
        raise DataError(f"{where}: logit_mask '{name}' lists class '{twice}' twice")
    indices = np.array(sorted(position[c] for c in wanted), dtype=np.int64)
    indices.setflags(write=False)
    ids = tuple(space[i] for i in indices)
    mask = LogitMask(name=name, indices=indices, class_ids=ids, n_classes=len(space))
    return mask, _display_names(mask, space, classes, class_names, base_dir, where)


def _display_names(mask: LogitMask, space: Sequence[str], classes: Any, class_names: Any, base_dir: Path, where: str) -> list[str]:
    from .classnames import CLASS_LISTS, resolve_class_list

    if class_names is not None:
        names = resolve_class_list(class_names, base_dir=base_dir, where=f"{where}: option 'class_names'")
        if len(names) == len(space):
            return [names[i] for i in mask.indices]
        if len(names) == len(mask):
            return list(names)
        raise DataError(f"{where}: option 'class_names' has {len(names)} names; give one per class of the label space "
                        f"({len(space)}) or one per masked class ({len(mask)})")
    if classes is None or classes == DEFAULT_SPACE:
        readable = CLASS_LISTS.get("imagenet1k_names")()
        return [readable[i] for i in mask.indices]
    return list(mask.class_ids)


def _width_error(mask: LogitMask, width: int, what: str) -> DataError:
    return DataError(f"{what}: the dataset's logit_mask '{mask.name}' keeps {len(mask)} of {mask.n_classes} classes, but the "
                     f"model has {width} outputs (a mask needs the model's full label space, or a head of exactly the masked classes)")


def restrict_logits(logits: np.ndarray, mask: LogitMask | None, what: str = "dataset") -> np.ndarray:
    """``logits[:, mask.indices]`` for a model with the mask's full label space; the logits as they
    are without a mask or for a head of exactly the masked classes.

    Raises:
        DataError: any other number of outputs (names ``what``).
    """
    if mask is None or logits.shape[1] == len(mask) and logits.shape[1] != mask.n_classes:
        return logits
    if logits.shape[1] != mask.n_classes:
        raise _width_error(mask, logits.shape[1], what)
    return logits[:, mask.indices]


def restrict_clip(clip: Mapping[str, Any] | None, mask: LogitMask | None, what: str = "dataset") -> Mapping[str, Any] | None:
    """A CLIP text side (``clip["class_text_features"]`` (C, D)) with only the masked classes' rows."""
    if clip is None or mask is None or "class_text_features" not in clip:
        return clip
    feats = np.asarray(clip["class_text_features"])
    rows = restrict_logits(feats.T, mask, what).T
    return {**clip, "class_text_features": rows}

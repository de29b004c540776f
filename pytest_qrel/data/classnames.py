"""Class lists: the label space a dataset's folders (or a file list's labels) are mapped into.

A suite can give a class list in three forms (the ``classes:`` option of ``imagefolder`` and
``filelist``):

- a YAML list of names, in index order (``[cat, dog]``: ``cat`` is 0, ``dog`` is 1);
- the path of a text file, one name per line in index order (blank lines and ``#`` comments are
  skipped; relative paths resolve against the suite file's folder, ``${VARS}`` are expanded);
- the name of a built-in list in :data:`CLASS_LISTS`. A file whose name equals a built-in name is
  written ``./imagenet1k`` to be read as a file.

Built-in lists (ImageNet-1k's are read from packages that install with pytest-qrel; the two
200-class subsets are shipped as text files):

==================  ========================================================================
name                content
==================  ========================================================================
imagenet1k          the 1000 ImageNet-1k WordNet ids (``n01440764`` ...) in the standard
                    index order of torchvision / timm models (from timm's ``ImageNetInfo``):
                    an ImageNet-val folder tree maps onto the model's indices 0..999
imagenet1k_names    human-readable names in the same order, for display and CLIP prompts:
                    open_clip's ``IMAGENET_CLASSNAMES`` (the curated names of the CLIP paper)
                    when open_clip is installed, else the first WordNet lemma from timm
imagenet_r          the 200 WordNet ids of ImageNet-R, in ImageNet-1k index order (shipped:
                    ``data/lists/imagenet_r.txt``, from the dataset authors' ``eval.py``)
imagenet_a          the 200 WordNet ids of ImageNet-A, likewise (``data/lists/imagenet_a.txt``)
==================  ========================================================================

The two 200-class lists are also the built-in logit masks of those sets
(:mod:`~pytest_qrel.data.logit_masks`).

:func:`imagenet_templates` returns open_clip's 80 OpenAI prompt templates as format strings
(``"a bad photo of a {}."``) for zero-shot CLIP heads.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DataError, UnknownNameError, did_you_mean
from ..registry import Registry

CLASS_LISTS: Registry[Callable[[], list[str]]] = Registry("built-in class list")


@functools.lru_cache(maxsize=1)
def _imagenet_synsets() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    synsets = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(synsets) != 1000:  # pragma: no cover - a broken timm install
        raise DataError(f"timm's ImageNet-1k synset list has {len(synsets)} entries, expected 1000")
    return synsets


@functools.lru_cache(maxsize=1)
def _imagenet_classnames() -> tuple[str, ...]:
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError:
        from timm.data import ImageNetInfo

        return tuple(d.split(",")[0].strip() for d in ImageNetInfo("imagenet-1k").label_descriptions())
    return tuple(str(n) for n in IMAGENET_CLASSNAMES)


@CLASS_LISTS.register("imagenet1k", description="ImageNet-1k WordNet ids, standard index order (timm)")
def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764``, ...) in model index order (from timm)."""
    return list(_imagenet_synsets())


@CLASS_LISTS.register("imagenet1k_names", description="ImageNet-1k readable names (open_clip, else timm lemmas)")
def imagenet_classnames() -> list[str]:
    """Readable ImageNet-1k names in index order: open_clip's CLIP names, else timm's first lemma."""
    return list(_imagenet_classnames())


def _shipped_list(name: str) -> list[str]:
    return read_class_file(Path(__file__).with_name("lists") / f"{name}.txt")


@CLASS_LISTS.register("imagenet_r", description="ImageNet-R's 200 WordNet ids, ImageNet-1k index order (shipped)")
def imagenet_r_synsets() -> list[str]:
    return _shipped_list("imagenet_r")


@CLASS_LISTS.register("imagenet_a", description="ImageNet-A's 200 WordNet ids, ImageNet-1k index order (shipped)")
def imagenet_a_synsets() -> list[str]:
    return _shipped_list("imagenet_a")


def imagenet_templates(simple: bool = False) -> list[str]:
    """open_clip's ImageNet prompt templates as format strings with one ``{}`` (80, or 2 if ``simple``).

    Raises:
        DataError: open_clip is not installed (``pip install pytest-qrel[clip]``).
    """
    try:
        from open_clip import zero_shot_metadata as meta
    except ImportError:
        raise DataError("ImageNet prompt templates come from open_clip; install it with `pip install open_clip_torch`") from None
    templates = meta.SIMPLE_IMAGENET_TEMPLATES if simple else meta.OPENAI_IMAGENET_TEMPLATES
    return [t("{}") for t in templates]


def read_class_file(path: Path) -> list[str]:
    """Names from a text file, one per line (stripped; blank lines and ``#`` comments skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read class list {path}: {err.strerror or err}") from None
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DataError(f"class list {path} is empty")
    return names


def _unique(names: list[str], where: str) -> list[str]:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"{where}: class '{n}' is listed twice (each class needs one index)")
        seen.add(n)
    return names


def _not_a_misspelled_list(value: str, base_dir: Path, where: str) -> None:
    """A bare word close to a built-in list name that is not a file is a typo, not missing data
    (which would skip the checks): ``classes: imagenet1kk`` is a DataError with "did you mean"."""
    from .paths import resolve_path

    if any(c in value for c in "/\\.$~"):
        return
    if did_you_mean(value, CLASS_LISTS.names()) and not resolve_path(value, base_dir=base_dir, what="class list", must_exist=False).exists():
        raise DataError(f"{where}: no file '{value}', and {UnknownNameError('built-in class list', value, CLASS_LISTS.names())}")


def resolve_class_list(value: Any, *, base_dir: Path, where: str) -> list[str]:
    """A ``classes:`` option value (list, built-in name or file path) -> the names in index order.

    Raises:
        DataError: wrong type, unreadable or empty file, duplicate names.
        DataMissingError: an environment variable in its path is unset (a missing file is a DataError).
    """
    from .paths import resolve_path  # shared path rules: ${VARS}, ~, base_dir

    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise DataError(f"{where}: 'classes' must be a non-empty list of names, a file or one of {', '.join(CLASS_LISTS.names())}")
        return _unique([str(v) for v in value], where)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: 'classes' must be a list of names, a file or one of {', '.join(CLASS_LISTS.names())}; got {value!r}")
    if value in CLASS_LISTS:
        return list(CLASS_LISTS.get(value)())
    _not_a_misspelled_list(value, base_dir, where)
    path = resolve_path(value, base_dir=base_dir, what="class list")
    return _unique(read_class_file(path), f"{where}: class list {path}")


def resolve_class_index(value: Any, *, base_dir: Path, where: str) -> dict[str, int]:
    """A ``class_index:`` option value -> ``{folder name: index}``.

    Accepted: a YAML mapping ``{n01440764: 0, ...}``; a ``.json`` file holding such a mapping or
    the Keras ``imagenet_class_index.json`` form ``{"0": ["n01440764", "tench"], ...}``; any other
    file with lines ``<name> <index>`` (whitespace or comma separated, ``#`` comments skipped).
    Several names may share an index (merging classes); indices must be >= 0.
    """
    from .paths import resolve_path

    if isinstance(value, Mapping):
        pairs = list(value.items())
        src = "'class_index'"
    elif isinstance(value, str) and value:
        path = resolve_path(value, base_dir=base_dir, what="class index file")
        src = f"class index file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise DataError(f"{where}: cannot read {src}: {err.strerror or err}") from None
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except ValueError as err:
                raise DataError(f"{where}: {src} is not valid JSON: {err}") from None
            if not isinstance(data, dict):
                raise DataError(f"{where}: {src} must hold a JSON object")
            if data and all(isinstance(v, list) and v for v in data.values()):  # Keras form
                pairs = [(v[0], k) for k, v in data.items()]
            else:
                pairs = list(data.items())
        else:
            pairs = []
            for lineno, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.replace(",", " ").split()
                if len(parts) != 2:
                    raise DataError(f"{where}: {src} line {lineno}: expected '<name> <index>', got {line!r}")
                pairs.append((parts[0], parts[1]))
    else:
        raise DataError(f"{where}: 'class_index' must be a mapping or a file; got {value!r}")
    out: dict[str, int] = {}
    for name, index in pairs:
        try:
            idx = int(index)
            if isinstance(index, bool) or idx < 0 or str(idx) != str(index).strip():
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{where}: {src}: index of '{name}' must be an integer >= 0, got {index!r}") from None
        if str(name) in out:
            raise DataError(f"{where}: {src}: '{name}' appears twice")
        out[str(name)] = idx
    if not out:
        raise DataError(f"{where}: {src} is empty")
    return out


def names_from_index(index: Mapping[str, int]) -> list[str]:
    """Display names for a ``class_index`` mapping: position i holds the folder name(s) mapped to i
    (joined with ``|`` when several are merged), ``class_<i>`` where no folder maps to i."""
    size = max(index.values()) + 1
    names: list[list[str]] = [[] for _ in range(size)]
    for name in sorted(index):
        names[index[name]].append(name)
    return ["|".join(n) if n else f"class_{i}" for i, n in enumerate(names)]

"""The ``imagefolder`` and ``filelist`` dataset sources: image files on disk, loaded lazily with PIL.

``source: "imagefolder:<root>"``
    The ImageNet-val / torchvision ``ImageFolder`` layout ``<root>/<class>/**/<image>``.

    *Labels.* By default the classes are the sorted names of the subfolders of the root (the
    torchvision convention; hidden folders, starting with ``.``, are skipped) and a sample's label
    is its folder's position. Images are found recursively inside each class folder. To match a
    model's label space instead, give ``classes:`` (a list, a file with one name per line, or a
    built-in list such as ``imagenet1k`` = the 1000 ImageNet synset ids in model index order; see
    :mod:`~pytest_qrel.data.classnames`) or ``class_index:`` (a mapping / file ``folder -> index``,
    Keras ``imagenet_class_index.json`` works). With an explicit label space, a folder that is not
    in it is an error unless ``unknown_classes: ignore`` (skip it) or ``unknown_classes: ood``
    (label -1). ``class_names:`` (same forms as ``classes``) overrides the display / prompt names;
    with ``classes: imagenet1k`` they default to ``imagenet1k_names``.

    *OOD sets.* A source does not know whether the suite uses it as ID or OOD, so OOD labelling is
    decided by the data or an option: a *flat* folder (images directly in the root, no class
    subfolders) gives every image the label -1; ``labels: none`` gives every image under the root
    (recursively, subfolders or not) the label -1. A root holding both loose images and class
    folders is an error (ambiguous) unless ``labels: none``.

    *Splits.* ``split="test"`` reads the root itself. A ``train`` split (calibration, QAT) or a
    ``val`` split (held-out data that post-hoc steps such as temperature scaling are fitted on)
    must be configured: ``split_dirs: {train: <subdir>, val: <subdir>, test: <subdir>}``
    (subfolders of the root) or ``train: <folder>`` / ``val: <folder>`` / ``test: <folder>``
    (separate roots, resolved like the root). Asking for an unconfigured split is a
    :class:`~pytest_qrel.errors.DataError` that says what to add. Inferred classes are the union
    of the subfolders of every configured split that exists, so all splits share one label space.

``source: "filelist:<list.txt>"``
    One sample per line, ``<relative/path.jpg> [<label>]`` (the label is the last
    whitespace-separated token when it is an integer, so paths may contain spaces; blank lines and
    lines starting with ``#`` are skipped). Paths are relative to the list's folder or to the
    ``root:`` option (the same root for every split). Either every line has a label or none does (then all are -1, i.e. OOD);
    ``labels: none`` ignores the labels. ``classes:`` / ``class_names:`` give the names of the
    indices (and labels are then checked against their number). ``train: <list.txt>`` and
    ``val: <list.txt>`` name the lists of the other splits. Every file is checked when the set is loaded; a missing one is a
    :class:`~pytest_qrel.errors.DataError` naming the list, line and path.

Options of both: ``limit: N`` and ``seed: S`` (default 0) keep a deterministic uniform
random subset of N samples (drawn with ``numpy.random.default_rng(seed)``, then kept in file
order), ``mode`` (PIL mode the images are converted to, default ``RGB``) and
``content_hash: true``; ``imagefolder`` also takes ``extensions`` (the image file name endings,
default torchvision's ``IMG_EXTENSIONS``, case-insensitive; a file list uses every file it names). Unknown
options are a :class:`~pytest_qrel.errors.DataError` naming the option and the accepted ones.

*Paths.* Roots, lists and option paths may use ``${VARS}`` and ``~``; an unset variable is a
:class:`~pytest_qrel.errors.DataMissingError` naming it (so dependent checks are skipped, not
failed, unless ``--qrel-strict``: a CI machine without the data sets the variable nowhere). A
path that does not exist is a :class:`~pytest_qrel.errors.DataError` naming the resolved path,
whether written literally or built from variables that are set: a typo must fail, never skip.
Relative paths resolve against ``base_dir`` (the suite file's folder).

*Symbolic links.* The walk of a folder follows a link to a file or a folder only when its target
lies inside that folder (the split's root, resolved), and reads each real folder and file once.
A link whose target is outside (``val/cat -> ../train/cat`` would put training images in the test
split), a link back to a folder that contains it (a loop), a second link to a folder or file the
walk already reads, and a broken link with an image name are each a
:class:`~pytest_qrel.errors.DataError` naming the link. Images kept elsewhere can be named in a
``filelist:`` source, which reads the files it lists wherever they are.

*Order.* Samples are sorted by relative path, compared component by component (so all files of
one class folder are together and the order is the same on every file system).

*Fingerprint.* SHA-256 over a JSON header (source kind, split, layout, the resolved classes /
class index and class names, and the options that change what a sample is: labels, mode,
extensions, unknown_classes, content_hash) followed by one record per sample, in order: relative
path, file size in bytes and label. ``limit`` / ``seed`` are not hashed themselves: the samples
they select are (so ``limit`` >= the set's size gives the full set's fingerprint). Modification times are deliberately *not* included (a copy or
checkout changes them without changing the data); absolute roots are not included either (moving
the data does not make baselines stale). Without ``content_hash`` the fingerprint does not see an
edit that keeps a file's size (a re-encoded JPEG of equal length); with ``content_hash: true``
every file's bytes are hashed too (reads the whole set: minutes for ImageNet-val).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError, DataMissingError
from ..fingerprint import file_sha256
from ..options import Option, anything, boolean, choice, choices_text, integer, parse_options, prefixed
from .base import DATASET_SOURCES, OOD_LABEL
from .paths import resolve_path

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS`` (copied so that listing files does not import torchvision)."""

FINGERPRINT_VERSION = 1
"""Bumped whenever the fingerprint recipe changes (it is part of the hashed header)."""


# ------------------------------------------------------------------------------- shared helpers


def check_split(where: str, split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"{where}: unknown split '{split}' (known: {', '.join(SPLITS)})")


def subset_indices(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a uniform random subset of ``limit`` of ``n`` items (all when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def files_fingerprint(
    header: Mapping[str, Any], relpaths: Sequence[str], sizes: Sequence[int], labels: np.ndarray, paths: Sequence[Path] | None = None
) -> str:
    """SHA-256 of the canonical JSON ``header`` and one ``relpath \\t size \\t label [\\t sha256]`` line per sample."""
    h = hashlib.sha256()
    h.update(json.dumps({"fingerprint_version": FINGERPRINT_VERSION, **header}, sort_keys=True, default=str).encode())
    for i, (rel, size, label) in enumerate(zip(relpaths, sizes, labels.tolist())):
        line = f"\n{rel}\t{size}\t{label}"
        if paths is not None:
            line += "\t" + file_sha256(paths[i])
        h.update(line.encode())
    return h.hexdigest()


WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of 16-bit (and 32-bit integer) images; see :func:`convert_image`."""

_EIGHT_BIT_MODES = ("RGB", "L", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "1", "P")


def convert_image(image: Any, mode: str, what: str = "image") -> Any:
    """``image`` (PIL) converted to ``mode``, with 16-bit images *scaled* to 8 bits, not clipped.

    PIL's own ``convert`` clips a 16-bit grey value to 255, so a 16-bit PNG whose values span
    0..65535 comes out almost white. Here an image in one of :data:`WIDE_INT_MODES` is first mapped
    linearly to 8 bits, ``round(v * 255 / 65535)`` (exact for images saved as ``v8 * 257``), then
    converted. Mode ``I`` (32-bit signed; what some decoders give for 16-bit PNGs) is read as
    16-bit and must hold values in 0..65535. Target modes ``I`` and ``F`` keep the raw values.

    Raises:
        DataError: a mode ``I`` image with values outside 0..65535 (``what`` names the file).
    """
    from PIL import Image

    if image.mode in WIDE_INT_MODES and mode in _EIGHT_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"{what}: 32-bit integer image (PIL mode I) with values from {values.min()} to {values.max()}; "
                "only 16-bit values 0..65535 can be scaled to 8 bits (save it as an 8- or 16-bit PNG)"
            )
        image = Image.fromarray(np.rint(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")
    return image.convert(mode)


def load_image(path: Path, mode: str) -> Any:
    """Open ``path`` with PIL, decode it fully and convert it to ``mode`` (file closed on return;
    16-bit images are scaled to 8 bits, see :func:`convert_image`).

    Every failure is a :class:`DataError` naming the file, whatever the decoder raised. An image
    over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89 million pixels) is refused
    even where PIL would only warn: no evaluation image is that large, and decoding one costs
    gigabytes in every DataLoader worker."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return convert_image(im, mode, what=f"image {path}")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(
            f"cannot read image {path}: {err} (fix: downscale the image or remove it from the set; "
            f"images over {Image.MAX_IMAGE_PIXELS:,} pixels are refused)"
        ) from None
    except Exception as err:  # noqa: BLE001  (any decoder failure: OSError, SyntaxError, struct.error, MemoryError, ...)
        raise DataError(f"cannot read image {path}: {err or type(err).__name__}") from None


# ------------------------------------------------------------------------------------ the image set


@dataclass
class FileImageSet:
    """An :class:`~pytest_qrel.data.ImageSet` of image files, decoded on access (PIL, ``mode``).

    ``relpaths`` are the sample paths relative to ``root`` (posix form), in the set's order.
    """

    name: str
    root: Path
    relpaths: list[str]
    labels: np.ndarray
    fingerprint: str
    class_names: list[str] | None = None
    mode: str = "RGB"
    info: dict[str, Any] = field(default_factory=dict)
    class_order: list[str] | None = None
    """The class (folder) name of each label index, in index order; None for an unlabelled set."""
    class_order_from: str | None = None
    """Where :attr:`class_order` came from: :data:`ORDER_FROM_FOLDERS` (inferred: nothing checked
    it against a model, see :func:`pytest_qrel.validation.check_class_folders`), ``"option 'classes'"``
    or ``"option 'class_index'"``; None for an unlabelled set."""
    logit_mask: Any = None
    """The model outputs the set is scored on (``logit_mask`` option, :mod:`.logit_masks`), or None."""

    def __len__(self) -> int:
        return len(self.relpaths)

    def path(self, index: int) -> Path:
        return self.root / self.relpaths[index]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return load_image(self.path(index), self.mode), int(self.labels[index])


# ----------------------------------------------------------------------------------- common options

LABEL_MODES = ("auto", "folders", "none")
UNKNOWN_CLASS_MODES = ("error", "ignore", "ood")
PIL_MODES = ("RGB", "L", "RGBA", "I", "F", "CMYK", "YCbCr", "LAB", "HSV", "1", "P")


def _extensions_valid(value: Any) -> bool:
    values = [value] if isinstance(value, str) else value
    return isinstance(values, (list, tuple)) and bool(values) and all(isinstance(v, str) and v for v in values)


def _normal_extensions(value: Any) -> tuple[str, ...]:
    """``['jpg', '.PNG']`` -> ``('.jpg', '.png')``: dotted, lower case, sorted, each once."""
    values = [value] if isinstance(value, str) else value
    return tuple(sorted({(v if v.startswith(".") else "." + v).lower() for v in values}))


def labels_option(*modes: str) -> Option:
    """``labels``: one of ``modes``; YAML ``labels: null`` reads as ``none`` (``labels: none`` is the
    string, ``labels: null`` is None)."""
    return Option(modes[0], lambda v: (v is None and "none" in modes) or (isinstance(v, str) and v in modes),
                  choices_text(modes), lambda v: "none" if v is None else v, convert_none=True)


SAMPLE_OPTIONS: dict[str, Option] = {
    "limit": integer(None, lo=1, allow_none=True),
    "seed": integer(0, lo=0, allow_none=True),
    "mode": choice(*PIL_MODES),
    "content_hash": boolean(False),
}
"""Options every file-backed source takes: how many samples (``limit``, drawn with ``seed``), the
PIL mode images are converted to, and whether file contents are hashed into the fingerprint."""

CLASS_OPTIONS: dict[str, Option] = {
    "classes": anything(expect="a built-in class list, a file of class names or a list of them"),
    "class_names": anything(expect="a built-in class list, a file of class names or a list of them"),
}
"""The label space and its display names (checked when the set is read: :mod:`.classnames`)."""

COMMON_OPTIONS: dict[str, Option] = {
    **SAMPLE_OPTIONS,
    "extensions": Option(_normal_extensions(IMG_EXTENSIONS), _extensions_valid, "a list like ['.jpg', '.png']", _normal_extensions),
    "labels": labels_option(*LABEL_MODES),
    **CLASS_OPTIONS,
}


def _class_names(where: str, options: Mapping[str, Any], base_dir: Path, default: list[str] | None) -> list[str] | None:
    from .classnames import resolve_class_list

    if "class_names" in options:
        return resolve_class_list(options["class_names"], base_dir=base_dir, where=f"{where}: option 'class_names'")
    return default


def _default_names(options: Mapping[str, Any], classes: list[str]) -> list[str]:
    """Display names of an explicit class list: readable ImageNet names for ``imagenet1k``, else the list."""
    if options.get("classes") == "imagenet1k":
        from .classnames import CLASS_LISTS

        return list(CLASS_LISTS.get("imagenet1k_names")())
    return list(classes)


def _sort_key(rel: str) -> tuple[str, ...]:
    return PurePosixPath(rel).parts


# ------------------------------------------------------------------------------------- imagefolder

ORDER_FROM_FOLDERS = "sorted folder names"
"""``FileImageSet.class_order_from`` of a set whose label order was inferred from its folders."""

SPLITS = ("train", "val", "test")
"""The splits a source can be asked for (see :mod:`pytest_qrel.data.base`); ``test`` is the default one."""

IMAGEFOLDER_OPTIONS: dict[str, Option] = {
    **COMMON_OPTIONS,
    "class_index": anything(),
    "unknown_classes": choice(*UNKNOWN_CLASS_MODES),
    "split_dirs": anything(),  # checked with the split it names (_split_root)
    "logit_mask": anything(),  # checked by logit_masks.check_logit_mask_option
    **{split: anything() for split in SPLITS},
}
"""The options of an ``imagefolder`` set (module docstring)."""


def _split_root(where: str, root_raw: str, split: str, options: Mapping[str, Any], base_dir: Path, *, must_exist: bool) -> Path | None:
    """The folder of ``split`` (None when the split is not configured)."""
    split_dirs = options.get("split_dirs")
    if split_dirs is not None:
        if not isinstance(split_dirs, Mapping) or not split_dirs or not set(split_dirs) <= set(SPLITS):
            raise DataError(f"{where}: option 'split_dirs' must be a mapping with keys from {', '.join(SPLITS)}, e.g. {{train: train, test: val}}; got {split_dirs!r}")
        if split in split_dirs and split in options:
            raise DataError(f"{where}: give the {split} folder either in 'split_dirs' or as option '{split}', not both")
    if split in options:
        return resolve_path(options[split], base_dir=base_dir, what=f"{split} folder", must_exist=must_exist)
    root = resolve_path(root_raw, base_dir=base_dir, what="dataset root", must_exist=must_exist)
    if split_dirs is not None:
        if split not in split_dirs:
            return None
        sub = split_dirs[split]
        if not isinstance(sub, str) or not sub:
            raise DataError(f"{where}: split_dirs.{split} must be a folder name, got {sub!r}")
        return resolve_path(sub, base_dir=root, what=f"{split} folder (split_dirs.{split})", must_exist=must_exist)
    return root if split == "test" else None


def _holds_files(folder: Path) -> bool:
    """Whether any visible file lies under ``folder`` (recursively)."""
    for _, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(not f.startswith(".") for f in files):
            return True
    return False


def _scan(folder: Path, exts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``(loose images directly in folder, visible subfolder names)``, both sorted."""
    loose, subdirs = [], []
    try:
        entries = list(os.scandir(folder))
    except NotADirectoryError:
        raise DataError(f"dataset root {folder} is a file, not a folder (for a list of files use 'filelist:{folder}')") from None
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True):
            subdirs.append(entry.name)
        elif entry.name.lower().endswith(exts):
            loose.append(entry.name)
    return sorted(loose), sorted(subdirs)


class _Walk:
    """Image files under one root (a split's folder), following symbolic links only inside it and
    reading each real folder and file once (see *Symbolic links* in the module docstring).

    ``images(start)`` lists the images below ``start`` (recursive, hidden entries skipped) as posix
    paths relative to ``start``; several calls share what was read, so a folder reached again
    through a link from another class folder is caught. ``check_file(path)`` checks one loose
    image; ``done()`` checks, after every walk, that no link names a file the walk read itself.
    Only links cost a ``realpath``; plain entries are classified from ``scandir`` alone.
    """

    def __init__(self, where: str, root: Path, exts: tuple[str, ...]) -> None:
        self.where, self.root, self.exts = where, root, exts
        self.real_root = os.path.realpath(root)
        self.dirs: dict[str, str] = {}  # real folder -> the path it was first read through
        self.linked: dict[str, str] = {}  # real target of a file link -> the link

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def _is_image(self, name: str) -> bool:
        return not name.startswith(".") and name.lower().endswith(self.exts)

    def _escape(self, link: str, target: str) -> DataError:
        return DataError(
            f"{self.where}: {link} is a symbolic link to {target}, outside the dataset folder {self.root}; links out of the "
            f"folder are not followed (fix: move or copy the images into {self.root}, or list them in a 'filelist:' source, "
            "which reads files wherever they are)"
        )

    def _enter(self, path: str, real: str, chain: tuple[str, ...]) -> None:
        if real in chain:
            raise DataError(
                f"{self.where}: {path} is a symbolic link to {real}, a folder that contains it (a loop) (fix: remove the link)"
            )
        first = self.dirs.setdefault(real, path)
        if first != path:
            raise DataError(
                f"{self.where}: {path} leads to the folder {real}, which is also read as {first}; its images would count "
                "twice (fix: remove the link)"
            )

    def _link_to_file(self, link: str, target: str) -> None:
        first = self.linked.setdefault(target, link)
        if first != link:
            raise DataError(f"{self.where}: {link} and {first} are both links to {target}; the image would count twice (fix: remove one)")

    def _follow(self, link: str) -> str | None:
        """The checked real target of ``link``, or None for a broken link that is not an image name."""
        target = os.path.realpath(link)
        if not os.path.exists(target):
            if self._is_image(os.path.basename(link)):
                raise DataError(f"{self.where}: {link} is a broken symbolic link (to {os.readlink(link)}) (fix: remove it or restore its target)")
            return None
        if not self._inside(target):
            raise self._escape(link, target)
        return target

    def check_file(self, path: Path) -> None:
        """A loose image directly in the root: a link must stay inside it."""
        if os.path.islink(path):
            target = self._follow(str(path))
            if target is not None:
                self._link_to_file(str(path), target)

    def images(self, start: Path) -> list[str]:
        out: list[str] = []
        first = str(start)
        real = os.path.realpath(first)
        if os.path.islink(first) and not self._inside(real):
            raise self._escape(first, real)
        self._enter(first, real, (self.real_root,) if real != self.real_root else ())
        stack: list[tuple[str, str, str, tuple[str, ...]]] = [(first, real, "", (self.real_root, real))]
        while stack:
            path, real, rel, chain = stack.pop()
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name, reverse=True)
            except OSError as err:
                raise DataError(f"{self.where}: cannot list {path}: {err.strerror or err}") from None
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                child = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink():
                    target = self._follow(entry.path)
                    if target is None:
                        continue
                    if os.path.isdir(target):
                        self._enter(entry.path, target, chain)
                        stack.append((entry.path, target, child, (*chain, target)))
                    elif self._is_image(entry.name):
                        self._link_to_file(entry.path, target)
                        out.append(child)
                elif entry.is_dir(follow_symlinks=False):
                    sub = os.path.join(real, entry.name)
                    self._enter(entry.path, sub, chain)
                    stack.append((entry.path, sub, child, (*chain, sub)))
                elif self._is_image(entry.name):
                    out.append(child)
        return out

    def done(self) -> None:
        """No link names an image the walk reads through its own folder as well."""
        for target, link in self.linked.items():
            folder, name = os.path.split(target)
            if folder in self.dirs and self._is_image(name):
                raise DataError(
                    f"{self.where}: {link} is a symbolic link to {target}, which is also read as an image of "
                    f"{self.dirs[folder]}; it would count twice (fix: remove the link)"
                )


def _class_space(
    where: str, options: Mapping[str, Any], base_dir: Path, inferred: list[str]
) -> tuple[dict[str, int], list[str] | None, dict[str, Any]]:
    """``(folder -> index, class names, fingerprint header part)`` from the options or the folders."""
    from .classnames import names_from_index, resolve_class_index, resolve_class_list

    _class_options_exclusive(where, options)
    if "class_index" in options:
        index = resolve_class_index(options["class_index"], base_dir=base_dir, where=f"{where}: option 'class_index'")
        return index, _class_names(where, options, base_dir, names_from_index(index)), {"class_index": index}
    if "classes" in options:
        classes = resolve_class_list(options["classes"], base_dir=base_dir, where=f"{where}: option 'classes'")
        names = _class_names(where, options, base_dir, _default_names(options, classes))
        return {c: i for i, c in enumerate(classes)}, names, {"classes": classes}
    return {c: i for i, c in enumerate(inferred)}, _class_names(where, options, base_dir, list(inferred)), {"classes": inferred}


def _imagefolder_options(where: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed options (:data:`IMAGEFOLDER_OPTIONS`); DataError on a bad option."""
    values = parse_options(options, IMAGEFOLDER_OPTIONS, fail=prefixed(DataError, where))
    _class_options_exclusive(where, options)
    if "logit_mask" in options:
        from .logit_masks import check_logit_mask_option

        if "class_index" in options:
            raise DataError(f"{where}: give 'logit_mask' with 'classes' (the model's label space), not 'class_index'")
        check_logit_mask_option(where, options["logit_mask"])
    return values


class _Layout(NamedTuple):
    """What a split folder holds: its images (sorted), their labels and the label space."""

    relpaths: list[str]
    labels: np.ndarray
    class_names: list[str] | None
    header_classes: dict[str, Any]
    layout: str  # "unlabelled" (labels: none), "flat" (loose images only) or "classes"
    class_order: list[str] | None
    order_from: str | None


def _unlabelled(relpaths: list[str], layout: str) -> _Layout:
    return _Layout(relpaths, np.full(len(relpaths), OOD_LABEL, dtype=np.int64), None, {}, layout, None, None)


def _other_split_classes(where: str, arg: str, split: str, options: Mapping[str, Any], base_dir: Path, exts: tuple[str, ...]) -> set[str]:
    """Class folders of the other configured splits: one label space for all splits."""
    names: set[str] = set()
    for other in SPLITS:
        if other == split:
            continue
        try:
            other_root = _split_root(where, arg, other, options, base_dir, must_exist=False)
        except DataMissingError:
            other_root = None
        if other_root is not None and other_root.is_dir():
            names |= set(_scan(other_root, exts)[1])
    return names


def _class_folders(
    where: str, folder: Path, files_by_dir: dict[str, list[str]], space: tuple[dict[str, int], list[str] | None, dict[str, Any]],
    options: Mapping[str, Any], unknown_mode: str,
) -> _Layout:
    """The images of class subfolders, labelled by ``space`` = ``(folder -> index, class names,
    fingerprint header part)``; folders outside it as ``unknown_mode`` says."""
    index, class_names, header_classes = space
    order_from = next((f"option '{k}'" for k in ("logit_mask", "classes", "class_index") if k in options), ORDER_FROM_FOLDERS)
    unknown = [d for d in files_by_dir if d not in index]
    if unknown and unknown_mode == "error":
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{where}: {len(unknown)} folder(s) of {folder} are not in the class list: {shown} "
            "(fix the class list, or set 'unknown_classes: ignore' to skip them or 'unknown_classes: ood' to label them -1)"
        )
    relpaths: list[str] = []
    label_list: list[int] = []
    for d, files in files_by_dir.items():
        if d not in index and unknown_mode == "ignore":
            continue
        relpaths.extend(f"{d}/{f}" for f in files)
        label_list.extend([index.get(d, OOD_LABEL)] * len(files))
    order = sorted(range(len(relpaths)), key=lambda i: _sort_key(relpaths[i]))
    labels = np.asarray([label_list[i] for i in order], dtype=np.int64)
    return _Layout([relpaths[i] for i in order], labels, class_names, header_classes, "classes", names_in_index_order(index), order_from)


def _class_options_exclusive(where: str, options: Mapping[str, Any]) -> None:
    if "classes" in options and "class_index" in options:
        raise DataError(f"{where}: give either 'classes' (names in index order) or 'class_index' (name -> index), not both")


def check_imagefolder_options(arg: str, options: Mapping[str, Any]) -> None:
    """The suite-load check of an ``imagefolder`` dataset's options (no file is read)."""
    _imagefolder_options(f"dataset 'imagefolder:{arg}'", options)


def names_in_index_order(index: Mapping[str, int]) -> list[str]:
    """The folder name of each label index (``a|b`` where folders are merged, ``class_<i>`` where none maps)."""
    size = max(index.values(), default=-1) + 1
    names: list[list[str]] = [[] for _ in range(size)]
    for name in sorted(index):
        names[index[name]].append(name)
    return ["|".join(n) if n else f"class_{i}" for i, n in enumerate(names)]


@DATASET_SOURCES.register("imagefolder", check_options=check_imagefolder_options)
def imagefolder_source(
    arg: str, *, split: str, options: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> FileImageSet:
    """``source: "imagefolder:<root>"``: class subfolders of images, or a flat folder of OOD images.

    See the module docstring for the options, labelling rules and the fingerprint.

    Raises:
        DataMissingError: the root (or split folder) does not exist or uses an unset ``${VAR}``.
        DataError: unknown option, bad option value, unconfigured split, no images, unknown class folder.
    """
    options = dict(options or {})
    base_dir = Path(base_dir or Path.cwd())
    where = f"dataset 'imagefolder:{arg}'"
    check_split(where, split)
    values = _imagefolder_options(where, options)
    exts, mode, unknown_mode = values["extensions"], values["mode"], values["unknown_classes"]
    labels_mode, limit, seed, content_hash = values["labels"], values["limit"], values["seed"], values["content_hash"]

    logit_mask = mask_names = None
    if "logit_mask" in options:  # the label space becomes the mask's classes (ImageNet-R / -A)
        from .logit_masks import resolve_logit_mask

        logit_mask, mask_names = resolve_logit_mask(options["logit_mask"], classes=options.get("classes"),
                                                    class_names=options.get("class_names"), base_dir=base_dir, where=where)
    folder = _split_root(where, arg, split, options, base_dir, must_exist=True)
    if folder is None:
        raise DataError(
            f"{where} has no '{split}' split configured (the root is the test split); add the option "
            f"'{split}: <folder>' or 'split_dirs: {{{split}: <subdir>, test: <subdir>}}' to the dataset"
        )
    loose, subdirs = _scan(folder, exts)
    walk = _Walk(where, folder, exts)
    if labels_mode == "none":
        found = _unlabelled(sorted(walk.images(folder), key=_sort_key), "unlabelled")
    else:
        files_by_dir = {d: walk.images(folder / d) for d in subdirs}
        # A class folder with no file at all is a failed copy or a forgotten class, not a class without
        # test images: refused. One whose files the 'extensions' option filters out is what it asked for.
        empty = [d for d, files in files_by_dir.items() if not files and not _holds_files(folder / d)]
        if empty and len(empty) < len(files_by_dir):
            more = f" ({len(empty)} empty class folders: {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''})" if len(empty) > 1 else ""
            raise DataError(f"{where}: class folder {folder / empty[0]} is empty{more} (fix: put its images there, or remove the folder)")
        if not any(files_by_dir.values()):
            if labels_mode == "folders":
                raise DataError(f"{where}: {folder} has no class subfolders with images (labels: folders); for an OOD folder use 'labels: none'")
            for name in loose:
                walk.check_file(folder / name)
            found = _unlabelled(loose, "flat")
        else:
            if loose:
                raise DataError(
                    f"{where}: {folder} holds both class subfolders and loose images ({loose[0]}, ...); "
                    "move the loose images into a class folder, or use 'labels: none' to label everything -1 (OOD)"
                )
            inferred = set(subdirs) | _other_split_classes(where, arg, split, options, base_dir, exts)
            if logit_mask is not None:
                space = ({c: i for i, c in enumerate(logit_mask.class_ids)}, mask_names, {"classes": list(logit_mask.class_ids)})
            else:
                space = _class_space(where, options, base_dir, sorted(inferred))
            found = _class_folders(where, folder, files_by_dir, space, options, unknown_mode)
    walk.done()
    relpaths, labels, class_names, header_classes, layout, class_order, order_from = found
    if not relpaths:
        raise DataError(f"{where}: no images found under {folder} (extensions: {', '.join(exts)}) "
                        "(fix: put the images in its class folders, or give the folder that holds them, "
                        "relative to the suite file's folder)")

    keep = subset_indices(len(relpaths), limit, seed)
    relpaths = [relpaths[i] for i in keep]
    labels = np.ascontiguousarray(labels[keep], dtype=np.int64)
    labels.setflags(write=False)
    sizes = [(folder / r).stat().st_size for r in relpaths]
    header = {
        "source": "imagefolder",
        "split": split,
        "layout": layout,
        **header_classes,
        **(logit_mask.fingerprint_part() if logit_mask is not None else {}),
        "class_names": class_names,
        "options": {
            "labels": labels_mode, "mode": mode,
            "extensions": list(exts), "unknown_classes": unknown_mode, "content_hash": content_hash,
        },
    }
    fingerprint = files_fingerprint(header, relpaths, sizes, labels, [folder / r for r in relpaths] if content_hash else None)
    return FileImageSet(
        name=f"imagefolder:{arg}",
        root=folder,
        relpaths=relpaths,
        labels=labels,
        fingerprint=fingerprint,
        class_names=class_names,
        mode=mode,
        info={"layout": layout, "split": split},
        class_order=class_order,
        class_order_from=order_from,
        logit_mask=logit_mask,
    )


# ---------------------------------------------------------------------------------------- filelist

FILELIST_OPTIONS: dict[str, Option] = {
    **SAMPLE_OPTIONS,
    "labels": labels_option("auto", "none"),
    **CLASS_OPTIONS,
    "root": anything(),
    **{split: anything() for split in SPLITS},
}
"""The options of a ``filelist`` set: the common ones but ``extensions`` (the list names its files),
``labels`` ``auto`` or ``none``, ``root`` (the folder the listed paths are relative to) and a list
per other split."""


def _parse_list(where: str, path: Path) -> list[tuple[int, str, int | None]]:
    """``(line number, relpath, label or None)`` per sample line of the list file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{where}: cannot read file list {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise DataError(f"{where}: file list {path} is not UTF-8 text") from None
    out: list[tuple[int, str, int | None]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        label: int | None = None
        rel = line
        if len(parts) == 2 and re.fullmatch(r"[+-]?\d+", parts[1]):
            rel, label = parts[0], int(parts[1])
            if label < OOD_LABEL:
                raise DataError(f"{where}: file list {path} line {lineno}: label {label} must be >= 0 (or -1 for OOD)")
        out.append((lineno, rel, label))
    if not out:
        raise DataError(f"{where}: file list {path} has no entries")
    return out


def _filelist_options(where: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed options (:data:`FILELIST_OPTIONS`); DataError on a bad option."""
    return parse_options(options, FILELIST_OPTIONS, fail=prefixed(DataError, where))


def check_filelist_options(arg: str, options: Mapping[str, Any]) -> None:
    """The suite-load check of a ``filelist`` dataset's options (no file is read)."""
    _filelist_options(f"dataset 'filelist:{arg}'", options)


@DATASET_SOURCES.register("filelist", check_options=check_filelist_options)
def filelist_source(
    arg: str, *, split: str, options: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> FileImageSet:
    """``source: "filelist:<list.txt>"``: images named in a text file, ``<relpath> [<label>]`` per line.

    Raises:
        DataMissingError: the list (or ``root``) does not exist or uses an unset ``${VAR}``.
        DataError: unknown option, malformed line, missing image file (naming list, line, path),
            labels on some lines only, a label out of range of ``classes``.
    """
    options = dict(options or {})
    base_dir = Path(base_dir or Path.cwd())
    where = f"dataset 'filelist:{arg}'"
    check_split(where, split)
    values = _filelist_options(where, options)
    mode, labels_mode, limit, seed = values["mode"], values["labels"], values["limit"], values["seed"]
    content_hash = values["content_hash"]

    if split in options:
        list_path = resolve_path(options[split], base_dir=base_dir, what=f"{split} file list")
    elif split == "test":
        list_path = resolve_path(arg, base_dir=base_dir, what="file list")
    else:
        raise DataError(f"{where} has no '{split}' split configured (the list is the test split); add the option '{split}: <list.txt>' to the dataset")
    if list_path.is_dir():
        raise DataError(f"{where}: {list_path} is a folder, not a file list (for a folder of images use 'imagefolder:{arg}')")
    root = resolve_path(options["root"], base_dir=base_dir, what="file list root") if "root" in options else list_path.parent

    entries = _parse_list(where, list_path)
    has_label = [e[2] is not None for e in entries]
    if labels_mode == "auto" and any(has_label) and not all(has_label):
        first_missing = entries[has_label.index(False)][0]
        first_given = entries[has_label.index(True)][0]
        raise DataError(
            f"{where}: file list {list_path} line {first_missing} has no label but line {first_given} has one "
            "(label every line, or none for an OOD set; 'labels: none' ignores the labels)"
        )
    class_names: list[str] | None = None
    header_classes: dict[str, Any] = {}
    if "classes" in options:
        from .classnames import resolve_class_list

        classes = resolve_class_list(options["classes"], base_dir=base_dir, where=f"{where}: option 'classes'")
        header_classes = {"classes": classes}
        class_names = _class_names(where, options, base_dir, _default_names(options, classes))
    else:
        class_names = _class_names(where, options, base_dir, None)
    relpaths, labels_list = [], []
    for lineno, rel, label in entries:
        path = Path(os.path.expandvars(rel))
        full = path if path.is_absolute() else root / path
        if not full.is_file():
            raise DataError(f"{where}: file list {list_path} line {lineno}: image '{rel}' does not exist ({full})")
        if labels_mode == "none" or label is None:
            label = OOD_LABEL
        if class_names is not None and label >= len(class_names):
            raise DataError(f"{where}: file list {list_path} line {lineno}: label {label} is out of range for {len(class_names)} classes")
        relpaths.append(os.path.relpath(full, root).replace(os.sep, "/") if not path.is_absolute() else full.as_posix())
        labels_list.append(label)

    labels = np.asarray(labels_list, dtype=np.int64)
    keep = subset_indices(len(relpaths), limit, seed)
    relpaths = [relpaths[i] for i in keep]
    labels = np.ascontiguousarray(labels[keep])
    labels.setflags(write=False)
    paths = [Path(r) if Path(r).is_absolute() else root / r for r in relpaths]
    sizes = [p.stat().st_size for p in paths]
    header = {
        "source": "filelist",
        "split": split,
        **header_classes,
        "class_names": class_names,
        "options": {"labels": labels_mode, "mode": mode, "content_hash": content_hash},
    }
    fingerprint = files_fingerprint(header, relpaths, sizes, labels, paths if content_hash else None)
    return FileImageSet(
        name=f"filelist:{arg}",
        root=root,
        relpaths=relpaths,
        labels=labels,
        fingerprint=fingerprint,
        class_names=class_names,
        mode=mode,
        info={"list": str(list_path), "split": split},
        class_order=header_classes.get("classes"),
        class_order_from="option 'classes'" if "classes" in header_classes else ("integer labels of the list" if (labels >= 0).any() else None),
    )

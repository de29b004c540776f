"""The ``imagetext`` dataset source: image files with captions, the CC3M layout that QAT and
calibration can adapt on (the CLIP paper adapts on a subset of CC3M, image-text pairs the
evaluation never sees).

``source: "imagetext:<folder>"`` reads one of two layouts (the simplest faithful forms of a local
CC3M copy):

- **caption files** (img2dataset's ``files`` output, unpacked): every image ``<key>.jpg`` (any
  image extension, in any subfolder) has its caption in ``<key>.txt`` beside it (UTF-8, surrounding
  whitespace stripped). An image without a caption file, or an empty caption, is a
  :class:`~pytest_qrel.errors.DataError` naming the file; ``.txt`` files without an image are
  ignored (img2dataset also writes ``.json`` files: ignored too).
- **a listing**: ``<folder>/captions.tsv`` (or the file named by the ``captions:`` option), one pair
  per line ``<image path relative to the folder>\\t<caption>``; blank lines and lines starting with
  ``#`` are skipped. With a listing, only the listed images are used.

Options: ``captions`` (the listing, relative to the folder), ``limit`` / ``seed`` (a deterministic
subset, as ``imagefolder``'s), ``mode`` (PIL mode, default ``RGB``), ``content_hash`` (hash every
image's bytes into the fingerprint), ``extensions`` (for the caption-files layout).

Every sample has the label ``-1`` (the set has no classes) and its caption in
:attr:`ImageTextSet.captions`. The set is one pool whatever the split asked for (it only ever
serves calibration / training). *Fingerprint:* SHA-256 over a header and, per sample, its path,
size and the SHA-256 of its caption (the captions are training targets: an edited caption changes
the fingerprint), plus the image bytes with ``content_hash: true``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import Option, anything, boolean, integer, parse_options
from .base import DATASET_SOURCES, OOD_LABEL
from .folders import IMG_EXTENSIONS, FileImageSet, files_fingerprint, subset_indices
from .paths import resolve_path

LISTING = "captions.tsv"
"""The listing read when the folder holds one (and no ``captions:`` option names another)."""

IMAGETEXT_OPTIONS: dict[str, Option] = {
    "captions": anything(),
    "limit": integer(None, lo=1),
    "seed": integer(0, lo=0),
    "mode": anything(),
    "content_hash": boolean(False),
    "extensions": anything(),
}


@dataclass
class ImageTextSet(FileImageSet):
    """A :class:`~pytest_qrel.data.folders.FileImageSet` of image-text pairs: ``captions[i]`` is
    the caption of image ``i`` (labels are all ``-1``)."""

    captions: list[str] | None = None


def _options(where: str, options: Mapping[str, Any]) -> dict[str, Any]:
    return parse_options(options, IMAGETEXT_OPTIONS, kind="option", fail=lambda key, problem, fix: DataError(
        f"{where}: {problem}" + (f" (fix: {fix})" if fix else "")))


def check_imagetext_options(arg: str, options: Mapping[str, Any]) -> None:
    _options(f"imagetext:{arg}", options)


def _not_utf8(where: str, what: str, path: Path, err: UnicodeDecodeError) -> DataError:
    return DataError(f"{where}: {what} {path} is not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start}) "
                     f"(fix: save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name}` if it is Latin-1)")


def _read_listing(where: str, root: Path, listing: Path) -> list[tuple[str, str]]:
    try:
        text = listing.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(where, "the caption listing", listing, err) from None
    except OSError as err:
        raise DataError(f"{where}: cannot read the caption listing {listing}: {err.strerror or err}") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rel, sep, caption = line.partition("\t")
        if not sep or not rel.strip() or not caption.strip():
            raise DataError(f"{where}: {listing}:{n}: expected '<image path>\\t<caption>', got {line[:80]!r} "
                            "(fix: one tab-separated image path and caption per line)")
        if not (root / rel.strip()).is_file():
            raise DataError(f"{where}: {listing}:{n}: image {root / rel.strip()} does not exist")
        pairs.append((Path(rel.strip()).as_posix(), caption.strip()))
    return pairs


def _caption_files(where: str, root: Path, exts: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).parts):
        if not path.is_file() or path.suffix.lower() not in exts:
            continue
        txt = path.with_suffix(".txt")
        try:
            caption = txt.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise DataError(f"{where}: image {path} has no caption file {txt.name} (fix: add it, or list the pairs in {LISTING})") from None
        except UnicodeDecodeError as err:
            raise _not_utf8(where, "caption file", txt, err) from None
        except OSError as err:
            raise DataError(f"{where}: cannot read caption {txt}: {err.strerror or err}") from None
        if not caption:
            raise DataError(f"{where}: caption file {txt} is empty")
        pairs.append((path.relative_to(root).as_posix(), caption))
    return pairs


@DATASET_SOURCES.register("imagetext", check_options=check_imagetext_options,
                          summary="image files with captions (CC3M layout), for calibration and QAT")
def imagetext_source(arg: str, *, split: str, options: Mapping[str, Any], base_dir: Path) -> ImageTextSet:
    """The image-text pairs under ``arg`` (module docstring); ``split`` is not used (one pool)."""
    where = f"imagetext:{arg}"
    opts = _options(where, options)
    root = resolve_path(arg, base_dir=base_dir, what="image-text folder")
    if not root.is_dir():
        raise DataError(f"{where}: {root} is not a folder")
    mode = opts["mode"] or "RGB"
    exts = tuple(e.lower() for e in (opts["extensions"] or IMG_EXTENSIONS))
    listing = resolve_path(opts["captions"], base_dir=root, what="caption listing") if opts["captions"] else root / LISTING
    pairs = _read_listing(where, root, listing) if listing.is_file() else _caption_files(where, root, exts)
    if not pairs:
        raise DataError(f"{where}: no image-text pairs under {root} (fix: put <key>.jpg + <key>.txt pairs there, or a {LISTING})")
    keep = subset_indices(len(pairs), opts["limit"], opts["seed"])
    pairs = [pairs[int(i)] for i in keep]
    relpaths = [r for r, _ in pairs]
    captions = [c for _, c in pairs]
    sizes = [(root / r).stat().st_size for r in relpaths]
    labels = np.full(len(pairs), OOD_LABEL, dtype=np.int64)
    header = {"kind": "imagetext", "layout": "listing" if listing.is_file() else "caption-files", "mode": mode,
              "content_hash": bool(opts["content_hash"]),
              "captions_sha256": [hashlib.sha256(c.encode()).hexdigest() for c in captions]}
    fingerprint = files_fingerprint(header, relpaths, sizes, labels, [root / r for r in relpaths] if opts["content_hash"] else None)
    return ImageTextSet(name=root.name, root=root, relpaths=relpaths, labels=labels, fingerprint=fingerprint,
                        class_names=None, mode=mode, info={"source": where}, captions=captions)

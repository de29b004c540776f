"""A synthetic ImageNet-layout folder for benchmarks: real ImageNet-1k synset folder names, JPEGs of
about 500 x 375 pixels cut from scikit-image's sample photos (random scale, crop, flip and colour
jitter), and flat OOD folders made the same way. Nothing is downloaded; the same seed and sizes give
the same files byte for byte, whatever ``--jobs``.

    python benchmarks/make_imagenet_folder.py OUT [--val 5000] [--train 1000] [--ood 2000]
        [--ood-sets imagenet_o,textures,places365,sun,inaturalist,openimage_o] [--classes 1000]
        [--seed 0] [--jobs 2]

Layout (what ``suites/deit.yaml`` and ``benchmarks/deit_like.yaml`` read)::

    OUT/val/n01440764/ILSVRC2012_val_00000001.JPEG ...   --val images, round-robin over --classes synsets
    OUT/train/n01440764/n01440764_0.JPEG ...             --train images (calibration draws from here)
    OUT/ood/<set>/<set>_00000.JPEG ...                   --ood images in each flat OOD folder

Synsets are the first ``--classes`` ImageNet-1k WordNet ids in model index order (the project's
``imagenet1k`` class list), so ``classes: imagenet1k`` labels them as a 1000-class timm model
expects. Image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``; OOD
sets use other source photos (textures / microscopy / astronomy) than the ID ones, and their
jitter differs, though for a random-init model this only matters as "different images". A folder
that already holds the same request (``OUT/manifest.json``) is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ID_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "clock", "coins", "moon", "page")
OOD_PHOTOS = ("brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "colorwheel", "text", "logo")
OOD_SETS = ("imagenet_o", "textures", "places365", "sun", "inaturalist", "openimage_o")
SPLIT_CODES = {"val": 1, "train": 2}
SIZE = (500, 375)  # (width, height) of ImageNet's most common landscape photo
MAX_SIDE = 900  # sources are shrunk to this first (retina is 1411 x 1411)

_SOURCES: dict[str, Any] = {}


def _source(name: str) -> Any:
    """A scikit-image sample photo as an RGB PIL image, longest side at most MAX_SIDE (cached per process)."""
    if name not in _SOURCES:
        import skimage.data
        from PIL import Image

        a = getattr(skimage.data, name)()
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        img = Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8), mode="RGB")
        scale = MAX_SIDE / max(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        _SOURCES[name] = img
    return _SOURCES[name]


def make_image(rng: np.random.Generator, photos: tuple[str, ...]) -> Any:
    """One jittered crop: a random photo scaled to cover the target (x 1 - 1.8), cropped, maybe
    flipped, with brightness / contrast / saturation jitter; 20 % of images are portrait."""
    from PIL import Image, ImageEnhance

    src = _source(photos[int(rng.integers(len(photos)))])
    w, h = SIZE if rng.random() < 0.8 else SIZE[::-1]
    cover = max(w / src.width, h / src.height) * float(rng.uniform(1.0, 1.8))
    img = src.resize((max(w, round(src.width * cover)), max(h, round(src.height * cover))), Image.BILINEAR)
    left, top = int(rng.integers(img.width - w + 1)), int(rng.integers(img.height - h + 1))
    img = img.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance, lo, hi in ((ImageEnhance.Brightness, 0.7, 1.3), (ImageEnhance.Contrast, 0.7, 1.3), (ImageEnhance.Color, 0.5, 1.5)):
        img = enhance(img).enhance(float(rng.uniform(lo, hi)))
    return img


def _jobs(out: Path, args: argparse.Namespace, wnids: list[str]) -> list[tuple[str, int, str, tuple[str, ...]]]:
    """(path, rng code, split code, photos) for every file."""
    jobs = []
    for split, n in (("val", args.val), ("train", args.train)):
        for i in range(n):
            wnid = wnids[i % len(wnids)]
            name = f"ILSVRC2012_val_{i + 1:08d}.JPEG" if split == "val" else f"{wnid}_{i // len(wnids)}.JPEG"
            jobs.append((str(out / split / wnid / name), SPLIT_CODES[split], i, ID_PHOTOS))
    for k, ood in enumerate(args.ood_sets):
        for i in range(args.ood):
            jobs.append((str(out / "ood" / ood / f"{ood}_{i:05d}.JPEG"), 100 + k, i, OOD_PHOTOS))
    return jobs


def _write(batch: list[tuple[str, int, int, tuple[str, ...]]], seed: int) -> int:
    for path, code, i, photos in batch:
        rng = np.random.default_rng([seed, code, i])
        img = make_image(rng, photos)
        quality = int(rng.integers(75, 96))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        img.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
    return len(batch)


def imagenet_wnids(n: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pytest_qrel.data.classnames import CLASS_LISTS

    wnids = list(CLASS_LISTS.get("imagenet1k")())
    if not 1 <= n <= len(wnids):
        raise SystemExit(f"--classes {n}: expected 1..{len(wnids)}")
    return wnids[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--val", type=int, default=5000, help="ImageNet-val stand-in images")
    parser.add_argument("--train", type=int, default=1000, help="train images (calibration, QAT)")
    parser.add_argument("--ood", type=int, default=2000, help="images in each OOD folder")
    parser.add_argument("--ood-sets", type=lambda s: tuple(x for x in s.split(",") if x), default=OOD_SETS)
    parser.add_argument("--classes", type=int, default=1000, help="synset folders (the first N ImageNet-1k ids)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    manifest = {"format": 1, "val": args.val, "train": args.train, "ood": args.ood, "ood_sets": list(args.ood_sets),
                "classes": args.classes, "seed": args.seed, "size": list(SIZE)}
    path = args.out / "manifest.json"
    if path.is_file() and json.loads(path.read_text()) == manifest:
        print(f"{args.out}: already holds this folder ({path})")
        return
    jobs = _jobs(args.out, args, imagenet_wnids(args.classes))
    started = time.perf_counter()
    chunks = [jobs[i : i + 64] for i in range(0, len(jobs), 64)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            done = sum(pool.map(_write, chunks, [args.seed] * len(chunks)))
    else:
        done = sum(_write(c, args.seed) for c in chunks)
    path.write_text(json.dumps(manifest, indent=1))
    size = sum(f.stat().st_size for f in args.out.rglob("*.JPEG"))
    print(f"{args.out}: {done} JPEGs ({args.val} val, {args.train} train, {args.ood} x {len(args.ood_sets)} OOD), "
          f"{size / 1e6:.0f} MB, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

"""The runner: streams one dataset through one module and returns per-sample arrays.

Images come through a :class:`torch.utils.data.DataLoader` (worker processes decode files in
parallel; the sample order is fixed, so results do not depend on the number of workers; pinned
memory on CUDA). For a set of image files whose model preprocessing splits into ``to_unit`` and
``normalize`` (:func:`~pytest_qrel.models.base.preprocess_stages`), the first pass also writes the
``to_unit`` images to the decode-once :class:`~pytest_qrel.engine.imagestore.ImageStore`, and every
later pass reads them from there. Covariate-shifted sets are corrupted between the two stages
(``corrupt_unit``), so a shifted variant reads its clean set's stored images.

Each batch's logits become per-sample arrays (:mod:`.samples`) and scores right away, together
with those of every post-hoc variant asked for (the variant's logit map applied to the batch), so
a full (N, C) logits matrix is kept only when asked (``keep_logits``: the held-out split that
post-hoc steps are fitted on).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.logit_masks import restrict_clip, restrict_logits
from ..errors import DataError, ModelError, QrelError, StorageError, UserCodeError
from ..validation import LogitsTally
from .imagestore import ImageStore, StoreCorrupt, store_key
from .samples import SampleArrays, batch_arrays, check_batch_logits, concat
from .trace import trace

Progress = Callable[..., None]
"""``progress(what, done, total, unit="images")``: ``what`` is a short label ("vit W8A8 on digits")."""


@dataclass
class Want:
    """What a pass must produce besides the per-sample arrays.

    ``scores``: ``{name: fn}`` of the OOD scores to compute (``fn(logits)`` or, with ``needs ==
    "clip"``, ``fn(logits, features, clip)``); ``clip``: the model's CLIP text side, if any;
    ``variants``: ``{name: logits -> logits}`` post-hoc maps whose arrays are computed as well;
    ``spectrum``: accumulate the last-block feature spectrum; ``keep_logits``: return the logits.
    """

    labelled: bool = True
    scores: Mapping[str, tuple[Callable[..., Any], str]] = field(default_factory=dict)
    clip: Any = None
    variants: Mapping[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    spectrum: bool = False
    keep_logits: bool = False


@dataclass
class PassResult:
    arrays: SampleArrays
    variants: dict[str, SampleArrays]
    logits: np.ndarray | None = None
    spectrum: np.ndarray | None = None


class _Failed:
    """What a sample that raised becomes inside the DataLoader, so the exception reaches the main
    process as itself (DataLoader would re-raise it with a worker traceback glued to its message).

    ``stage``: ``"preprocessing"`` (the model's preprocessing raised ``exc``), ``"sizes"`` (it gave
    samples ``index`` and ``other`` the different ``shapes``), ``"type"`` (it gave sample ``index``
    something that is not a tensor, ``detail`` names the type), or ``""`` (anything else, e.g. a
    DataError decoding a file). An ``exc`` that does not pickle crosses from a worker as ``text``."""

    def __init__(self, exc: BaseException | None, *, stage: str = "", index: int = -1, other: int = -1,
                 shapes: tuple[Any, ...] = (), detail: str = "") -> None:
        self.exc, self.stage, self.index, self.other, self.shapes, self.detail = exc, stage, index, other, shapes, detail
        self.text = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) if exc is not None else ""

    def __getstate__(self) -> dict[str, Any]:
        import pickle

        state = dict(self.__dict__)
        try:
            pickle.dumps(self.exc)
        except Exception:  # noqa: BLE001  (whatever makes it unpicklable: it travels as text)
            state["exc"] = None
        return state


class _InPreprocessing(Exception):
    """Carries what the model's preprocessing raised out of a sample function (tells it from a decode error)."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


class _Samples:
    """``i -> (i, fn(i))`` as a map-style dataset (a module-level class, so DataLoader workers can pickle it)."""

    def __init__(self, fn: Callable[[int], Any], n: int) -> None:
        self.fn, self.n = fn, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        try:
            return i, self.fn(i)
        except _InPreprocessing as exc:
            return _Failed(exc.original, stage="preprocessing", index=i)
        except Exception as exc:  # re-raised in the main process by _collate / batches()
            return _Failed(exc, index=i)


def _collate(batch: list[Any]) -> Any:
    """The batch tensor of ``(index, image)`` samples; a :class:`_Failed` instead when a sample failed,
    is not a tensor, or differs in size from the first (a preprocessing that does not resize)."""
    import torch
    from torch.utils.data import default_collate

    for item in batch:
        if isinstance(item, _Failed):
            return item
    index = [i for i, _ in batch]
    values = [v for _, v in batch]
    for i, v in zip(index, values):
        if not isinstance(v, torch.Tensor):
            return _Failed(None, stage="type", index=i, detail=type(v).__name__)
    shapes = [tuple(v.shape) for v in values]
    for i, shape in zip(index, shapes):
        if shape != shapes[0]:
            return _Failed(None, stage="sizes", index=index[0], other=i, shapes=(shapes[0], shape))
    return default_collate(values)


def _preprocess(fn: Callable[[Any], Any], image: Any) -> Any:
    try:
        return fn(image)
    except QrelError:
        raise
    except Exception as exc:
        raise _InPreprocessing(exc) from exc


class _UnitImage:
    def __init__(self, raw: Callable[[int], Any], to_unit: Callable[[Any], Any], name: str) -> None:
        self.raw, self.to_unit, self.name = raw, to_unit, name

    def __call__(self, i: int) -> Any:
        x = _preprocess(self.to_unit, self.raw(i))
        _check_unit_tensor(x, self.name)
        return x


class _ModelInput:
    def __init__(self, ds: Any, preprocess: Callable[[Any], Any]) -> None:
        self.ds, self.preprocess = ds, preprocess

    def __call__(self, i: int) -> Any:
        return _preprocess(self.preprocess, self.ds[i][0])


def _sample_name(ds: Any, i: int) -> str:
    """How a message names sample ``i`` of ``ds``: its file when it has one."""
    source = getattr(ds, "base", ds) if hasattr(ds, "corrupt_unit") else ds
    if hasattr(source, "path") and hasattr(source, "relpaths") and 0 <= i < len(source.relpaths):
        return f"image {source.path(i)}"
    return f"sample {i} of '{getattr(ds, 'name', 'the dataset')}'"


def _failure(failed: _Failed, ds: Any, what: str) -> BaseException:
    """The one-line error of a failed batch (see :class:`_Failed`), naming ``what`` and the sample."""
    fix_size = "make the model's preprocessing resize and crop every image to the model's input size, e.g. Resize then CenterCrop"
    if failed.stage == "sizes":
        (a, b), first, other = failed.shapes, _sample_name(ds, failed.index), _sample_name(ds, failed.other)
        return ModelError(
            f"{what}: the model's preprocessing gives images of different sizes: {a} for {first} but {b} for {other} (fix: {fix_size})"
        )
    if failed.stage == "type":
        return ModelError(
            f"{what}: the model's preprocessing returned {failed.detail} for {_sample_name(ds, failed.index)}, not a tensor (C, H, W) "
            "(fix: end the model's preprocessing with ToTensor, or return a torch tensor)"
        )
    if failed.stage == "preprocessing":
        err = UserCodeError(
            f"{what}: the model's preprocessing raised {failed.text} on {_sample_name(ds, failed.index)}", stage="preprocessing"
        )
        err.__cause__ = failed.exc
        return err
    if failed.exc is not None:
        return failed.exc
    return DataError(f"{what}: reading {_sample_name(ds, failed.index)} raised {failed.text}")


def compile_quantizers(module: Any) -> int:
    """Run every activation quantizer of ``module`` (the fake-quant round / clamp of a
    :class:`~pytest_qrel.quantize.QuantModule` without weights) through :func:`torch.compile`, so
    its elementwise ops become one fused kernel; returns how many. Only these elementwise ops are
    compiled: compiling the whole model would also fuse LayerNorm and softmax reductions, whose
    float rounding then differs from eager and moves values across quantization levels. The
    outputs are the eager ones bit for bit (tests/test_compile.py)."""
    import torch

    from ..quantize.fakequant import ActQuantizer, QuantModule

    n = 0
    for sub in module.modules():
        if isinstance(sub, ActQuantizer) and sub.uses_compiled_kernel:  # one shared compiled kernel (no recompiles per instance)
            n += not sub.compiled
            sub.compiled = True
            continue
        if isinstance(sub, QuantModule) and not hasattr(sub, "weight") and not getattr(sub, "_qrel_compiled", False):
            sub.forward = torch.compile(sub.forward)
            sub._qrel_compiled = True
            n += 1
    return n


def _clean_source(ds: Any) -> tuple[str, Any, Callable[[int], Any]]:
    """``(fingerprint, geometry, raw)`` of the uncorrupted images behind ``ds``: a shifted set that
    corrupts in the model's geometry reads its base set (plus its own resize / crop)."""
    from ..fingerprint import data_stamp

    # The stat records of the files join the fingerprint: an edit that keeps a file's size is a new store.
    if hasattr(ds, "corrupt_unit") and hasattr(ds, "raw"):
        base = getattr(ds, "base", ds)
        geometry = [getattr(ds, "resize", None), getattr(ds, "crop", None)]
        # No geometry of its own: the very images of its base set (the same store entry).
        fingerprint = f"{getattr(base, 'fingerprint', ds.fingerprint)}+{data_stamp(ds)}"
        return fingerprint, geometry if any(g is not None for g in geometry) else None, ds.raw
    return f"{ds.fingerprint}+{data_stamp(ds)}", None, (lambda i: ds[i][0])


def _decodes(ds: Any) -> bool:
    """True for sets whose samples are decoded from files (worth storing decoded, and worth worker
    processes): the ``imagefolder`` / ``filelist`` sets (:class:`~pytest_qrel.data.folders.FileImageSet`),
    sets that say so with a true ``decodes`` attribute, and shifted sets over either."""
    from ..data.folders import FileImageSet

    return any(isinstance(s, FileImageSet) or bool(getattr(s, "decodes", False)) for s in (ds, getattr(ds, "base", ds)))


def _batched(normalize: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``normalize`` (one image) made to map a batch (B, C, H, W). A torchvision ``Normalize`` (alone
    or in a ``Compose`` of them, as the timm and ``Compose`` stages give) takes the whole batch in one
    call: the same per-element subtraction and division, so the same bits, without one copy of
    every image; so does a callable that declares ``elementwise = True`` (it maps every element
    on its own, e.g. the embedded models' ``GreyNormalize.normalize``). Any other ``normalize``
    runs image by image."""
    if getattr(normalize, "elementwise", False):
        return normalize
    from torchvision.transforms import Compose, Normalize
    from torchvision.transforms.functional import normalize as tv_normalize

    steps = normalize.transforms if isinstance(normalize, Compose) else [normalize]
    if steps and all(type(t) is Normalize for t in steps):
        def batch(units: Any) -> Any:
            for i, t in enumerate(steps):
                units = tv_normalize(units, t.mean, t.std, inplace=i > 0)  # the first step copies the batch
            return units

        return batch

    def each(units: Any) -> Any:
        import torch

        return torch.stack([normalize(u) for u in units])

    return each


def _check_unit_tensor(x: Any, name: str) -> None:
    if not (hasattr(x, "is_floating_point") and x.is_floating_point() and x.ndim == 3):
        raise DataError(
            f"{name}: the model's preprocessing before Normalize returned {type(x).__name__} "
            f"{tuple(getattr(x, 'shape', ()))}, not a float tensor (C, H, W) (fix: put ToTensor before Normalize in the model's transform)"
        )


class Runner:
    """Streams datasets through modules (see the module docstring).

    ``workers``: DataLoader worker processes for sets of image files (0: decode in this process);
    in-memory sets are always read in-process. ``store``: the decode-once image store, or None.
    ``progress``: called after every batch. ``compile``: :func:`compile_quantizers` first. ``forward_passes`` counts passes by
    ``what`` and ``decoded`` the images decoded from files (stores count theirs too).
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        workers: int = 0,
        store: ImageStore | None = None,
        progress: Progress | None = None,
        compile: bool = False,
        trace_event: str = "forward",
    ) -> None:
        self.trace_event = trace_event  # what its passes are called in PYTEST_QREL_TRACE
        self.device = device
        self.workers = max(0, int(workers))
        self.store = store
        self.progress = progress
        self.compile = compile
        self.forward_passes: Counter[Any] = Counter()
        self.decoded = 0

    # ------------------------------------------------------------------ input batches
    def _loader(self, fn: Callable[[int], Any], n: int, batch_size: int, workers: int, ds: Any = None, what: str = "") -> Any:
        import torch

        samples: Any = _Samples(fn, n)  # a map-style dataset by duck typing (this module does not import torch)
        loader = torch.utils.data.DataLoader(
            samples,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=str(self.device).startswith("cuda"),
            persistent_workers=False,
        )
        for batch in loader:
            if isinstance(batch, _Failed):
                raise _failure(batch, ds, what or f"dataset '{getattr(ds, 'name', '')}'")
            yield batch

    def batches(self, ds: Any, preprocess: Any, batch_size: int, preprocessing: str, what: str = "") -> Iterator[tuple[int, Any]]:
        """``(start, model input batch)`` over ``ds`` in order; ``preprocessing`` describes
        ``preprocess`` (part of the image store's key), ``what`` names the pass in errors. Raises
        StoreCorrupt (after discarding the store) when a stored chunk fails its digest; the caller
        starts the pass again. What the model's preprocessing raises, or images of different sizes
        from it, are one-line errors blaming the preprocessing and naming the image."""
        from ..models.base import preprocess_stages

        n = len(ds)
        stages = preprocess_stages(preprocess)
        shifted = hasattr(ds, "corrupt_unit")
        decodes = _decodes(ds)
        workers = self.workers if decodes else 0
        if stages is None:
            if shifted:
                raise DataError(
                    f"{getattr(ds, 'name', 'dataset')}: a covariate-shifted set is corrupted between the model's resize/crop and its "
                    "normalisation, but this model's preprocessing cannot be split there (fix: give the model a torchvision "
                    "Compose with Normalize, or a preprocess object with stages())"
                )
            if decodes:
                self.decoded += n
            start = 0
            for batch in self._loader(_ModelInput(ds, preprocess), n, batch_size, workers, ds, what):
                yield start, batch
                start += len(batch)
            return
        to_unit, normalize = stages
        batch_normalize = _batched(normalize)
        fingerprint, geometry, raw = _clean_source(ds)
        name = getattr(ds, "name", "dataset")

        def finish(start: int, units: Any) -> Any:
            import torch

            if shifted:
                units = torch.stack([ds.corrupt_unit(units[j], start + j) for j in range(len(units))])
            return batch_normalize(units)

        def decode_here() -> Iterator[tuple[int, Any]]:  # decode without the store
            if decodes:
                self.decoded += n
            start = 0
            for units in self._loader(_UnitImage(raw, to_unit, name), n, batch_size, workers, ds, what):
                yield start, finish(start, units.clamp(0.0, 1.0))
                start += len(units)

        store = self.store if (decodes and self.store is not None) else None
        if store is None:
            yield from decode_here()
            return
        key = store_key(fingerprint, preprocessing, geometry)
        stored = store.open(key)
        if stored is None or len(stored) != n:
            with store.building(key) as mine:
                stored = store.open(key)  # another process may have just committed it
                if stored is None or len(stored) != n:
                    yield from (self._decode(raw, to_unit, n, batch_size, workers, finish, name, key, ds, what) if mine else decode_here())
                    return
        yield from self._from_store(stored, batch_size, finish)

    def _from_store(self, stored: Any, batch_size: int, finish: Callable[[int, Any], Any]) -> Iterator[tuple[int, Any]]:
        import torch

        n = len(stored)
        for start in range(0, n, batch_size):
            try:
                units = torch.from_numpy(stored.batch(start, min(n, start + batch_size)))
            except StoreCorrupt as exc:
                stored.store.discard(stored.key, f"corrupt ({exc})")
                raise
            yield start, finish(start, units)

    def _decode(
        self, raw: Any, to_unit: Any, n: int, batch_size: int, workers: int, finish: Any, name: str, key: str, ds: Any = None, what: str = "",
    ) -> Iterator[tuple[int, Any]]:
        assert self.store is not None
        writer = None
        usable = True
        start = 0
        try:
            for units in self._loader(_UnitImage(raw, to_unit, name), n, batch_size, workers, ds, what):
                units = units.clamp(0.0, 1.0)
                self.decoded += len(units)
                self.store.decodes += len(units)
                if usable:
                    if writer is None:
                        arr = units.numpy()
                        exact = bool(np.abs(arr * 255.0 - np.rint(arr * 255.0)).max(initial=0.0) <= 1e-3)
                        try:
                            writer = self.store.writer(key, n, tuple(units.shape[1:]), exact)
                        except StorageError as exc:  # read-only or full: this pass goes on without the store
                            self.store.write_failed(exc)
                            usable = False
                    if writer is not None:
                        usable = writer.put(start, units.numpy())
                yield start, finish(start, units)
                start += len(units)
            if writer is not None and usable and start == n:
                try:
                    writer.commit()
                except StorageError as exc:
                    self.store.write_failed(exc)
                writer = None
        finally:
            if writer is not None:
                writer.abort()

    # ------------------------------------------------------------------ a pass
    def run(
        self, module: Any, ds: Any, preprocess: Any, *, batch_size: int, want: Want, what: str, preprocessing: str = "",
        key: Any = None,
    ) -> PassResult:
        """One pass of ``module`` over ``ds``; ``what`` ("model 'vit' W8A8 on digits") names it in
        messages and progress, ``key`` in :attr:`forward_passes` (default ``what``). Raises
        ModelError for NaN / Inf logits, DataError for labels the model has no class for."""
        self.forward_passes[key if key is not None else what] += 1
        trace(self.trace_event, *(key if isinstance(key, tuple) else (what,)))
        try:
            return self._run(module, ds, preprocess, batch_size, want, what, preprocessing, key)
        except StoreCorrupt:  # the store was discarded: decode the set again
            return self._run(module, ds, preprocess, batch_size, want, what, preprocessing, key)

    def _run(self, module: Any, ds: Any, preprocess: Any, batch_size: int, want: Want, what: str, preprocessing: str, key: Any = None) -> PassResult:
        import torch

        n = len(ds)
        labels_all = np.asarray(ds.labels, dtype=np.int64)
        mask = getattr(ds, "logit_mask", None)  # ImageNet-R / -A: score only the set's classes (data/logit_masks.py)
        if mask is not None:
            want = dataclasses.replace(want, clip=restrict_clip(want.clip, mask, what))
        with_features = any(needs == "clip" for _, needs in want.scores.values()) and hasattr(module, "forward_with_features")
        parts: list[SampleArrays] = []
        vparts: dict[str, list[SampleArrays]] = {v: [] for v in want.variants}
        kept: list[np.ndarray] = []
        recording: Any = contextlib.nullcontext(None)
        if want.spectrum:
            from ..models.features import last_block_feature_map
            from ..spectral import record_spectrum

            recording = record_spectrum(last_block_feature_map(module, what))
        forward = module.forward_with_features if with_features else module
        if self.compile:
            compile_quantizers(module)
        done = 0
        classes: int | None = None
        model, quantizer, dataset = key[1:4] if isinstance(key, tuple) and len(key) == 4 else (what, "", "")
        tally = LogitsTally(model=str(model), quantizer=str(quantizer), dataset=str(dataset))
        if self.progress:
            self.progress(what, 0, n)
        with torch.inference_mode(), recording as acc:
            for start, batch in self.batches(ds, preprocess, batch_size, preprocessing, what):
                x = batch.to(self.device, non_blocking=True)
                if with_features:
                    logits_t, feats_t = forward(x)
                    feats = feats_t.float().cpu().numpy()
                else:
                    logits_t, feats = forward(x), None
                classes = check_batch_logits(logits_t, len(x), what, classes)
                logits = restrict_logits(logits_t.float().cpu().numpy(), mask, what)
                tally.add(logits)
                done += len(logits)
                if tally.bad:  # the pass fails at its end with one message for the whole set
                    continue
                labels = labels_all[start : start + len(logits)]
                parts.append(self._arrays(logits, feats, labels, want))
                for v, fn in want.variants.items():
                    vparts[v].append(self._arrays(fn(logits), feats, labels, want))
                if want.keep_logits:
                    kept.append(logits)
                if self.progress:
                    self.progress(what, done, n)
        tally.check()
        spectrum = None
        if acc is not None:
            try:
                spectrum = acc.spectrum()
            except ValueError as exc:
                raise ModelError(f"{what}: no feature spectrum: {exc}") from None
        return PassResult(
            arrays=concat(parts),
            variants={v: concat(p) for v, p in vparts.items()},
            logits=np.concatenate(kept) if kept else None,
            spectrum=spectrum,
        )

    @staticmethod
    def _arrays(logits: np.ndarray, feats: Any, labels: np.ndarray, want: Want) -> SampleArrays:
        out = batch_arrays(logits, labels, labelled=want.labelled)
        for name, (fn, needs) in want.scores.items():
            s = fn(logits, feats, want.clip) if needs == "clip" else fn(logits)
            out[f"score.{name}"] = np.asarray(s, dtype=np.float64)
        return out


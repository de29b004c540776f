"""Loading what a suite names: models, datasets and calibration images, each once per process.

User code runs here (a ``python:`` model file, a factory, a checkpoint loader), so every call into
it is wrapped by :func:`user_stage`: whatever it raises -- ``SystemExit`` included, except
``KeyboardInterrupt`` -- becomes one :class:`~pytest_qrel.errors.UserCodeError` naming the model,
the stage and the exception, never a traceback or an exit of the test session.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataMissingError, DeviceError, QrelError, SpecError, UserCodeError, strip_source
from ..fingerprint import module_code_digest
from ..spec.schema import HELDOUT, Suite
from .trace import trace

HELDOUT_SPLIT = "val"
"""The ID split post-hoc steps (``+temperature``) are fitted on: held out from both the model's
training data and the test split. Calibration and QAT draw from ``train``."""


@contextlib.contextmanager
def user_stage(stage: str, what: str) -> Iterator[None]:
    """Turn anything but a QrelError or KeyboardInterrupt raised inside into a UserCodeError."""
    try:
        yield
    except (QrelError, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # SystemExit from a model file must not end the session
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, SystemExit):
            text = f"SystemExit({exc.code!r}) (the code called sys.exit)"
        raise UserCodeError(f"{what}: {stage} raised {text}", stage=stage) from exc


def device_problem(device: str, option: str = "--qrel-device") -> str | None:
    """Why ``device`` ("cpu", "cuda", "cuda:K", "mps") cannot be used here, as one line naming
    ``option`` and torch's build; None when it can. Checked once up front, so that a machine without
    a GPU is not blamed on the first stage that moves a tensor (calibration images, a forward)."""
    if device in ("cpu", "auto"):
        return None
    import torch

    build = f"torch {torch.__version__}, " + (f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build")
    fix = f"(fix: pass {option} auto or cpu" if option.startswith("--") else "(fix: use 'auto' or 'cpu'"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            hint = ", or install a CUDA build of torch)" if not torch.version.cuda else ", or check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"
            return f"{option} {device}: no CUDA device is available ({build}) {fix}{hint}"
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= count:
            return f"{option} {device}: this machine has {count} CUDA device{'s' if count > 1 else ''} (cuda:0..cuda:{count - 1}) {fix}, or cuda:0)"
        return None
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return f"{option} {device}: no Apple MPS device is available ({build}) {fix})"
        return None
    return f"{option} {device}: unknown device (expected auto, cpu, cuda, cuda:K or mps)"


def _json_key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


@dataclass(frozen=True)
class _SeenModel:
    """What the loader keeps of a model after releasing its module."""

    identity: dict[str, Any]  # what makes its outputs what they are (baselines, outputs cache)
    code: str  # module_code_digest: the outputs-cache key only, not the baseline's identity
    names: tuple[str, str]  # (suite name, model name), for the trace


class Loader:
    """Models and datasets by content (source and options), loaded once; models can be released."""

    def __init__(self, device: str = "cpu") -> None:
        problem = device_problem(device, "device")  # the plugin checks --qrel-device when it parses it
        if problem is not None:
            raise DeviceError(problem)
        self.device = device
        self._models: dict[str, Any] = {}
        self._seen: dict[str, _SeenModel] = {}  # model key -> what stays known after the module is released
        self._datasets: dict[str, Any] = {}
        self._draws: dict[str, Any] = {}  # calibration_draw's, by set, samples, seed and draw

    def _model_key(self, suite: Suite, name: str) -> tuple[str, dict[str, Any]]:
        from ..models.base import model_source_meta

        spec = suite.models[name]
        options = dict(spec.options)
        if model_source_meta(spec.source).get("zero_shot") and "class_names" not in options:
            # A zero-shot head is built from the ID dataset's class names unless the suite names them.
            names = self.dataset(suite, suite.id_dataset.name).class_names
            if names:
                options["class_names"] = list(names)
        return _json_key([spec.source, options, str(suite.path.parent.resolve())]), options

    def class_ids_from_id_set(self, suite: Suite, name: str) -> list[str] | None:
        """The ID set's class folders in label order when model ``name``'s zero-shot head was built
        from that set's class names (the suite names none): the head's class ``i`` is then folder
        ``i`` by construction, whatever display names (``class_names:``) the set gives them."""
        from ..models.base import model_source_meta

        spec = suite.models[name]
        if not model_source_meta(spec.source).get("zero_shot") or "class_names" in spec.options:
            return None
        order = getattr(self.dataset(suite, suite.id_dataset.name), "class_order", None)
        return list(order) if order else None

    def model(self, suite: Suite, name: str) -> Any:
        """The loaded FP32 :class:`~pytest_qrel.models.LoadedModel` named ``name`` in ``suite``."""
        from ..models import load_model

        key, options = self._model_key(suite, name)
        if key not in self._models:
            spec = suite.models[name]
            where = f"{spec.where or suite.path}: model '{name}'"
            try:
                with user_stage("loading the model", where):
                    loaded = load_model(spec.source, options=options, base_dir=suite.path.parent)
                    loaded.module.eval()
            except UserCodeError:
                raise
            except QrelError as exc:
                raise exc.with_context(where) from None
            self._models[key] = loaded
            self._seen[key] = _SeenModel(self._identity(suite, name, loaded), module_code_digest(loaded.module), (suite.name, name))
            trace("load", suite.name, name)
        return self._models[key]

    @staticmethod
    def _identity(suite: Suite, name: str, loaded: Any) -> dict[str, Any]:
        spec = suite.models[name]
        identity = {
            "source": spec.source,
            "options": spec.options,
            "weights_sha256": loaded.weights_sha256,
            "preprocessing": loaded.preprocessing,
        }
        if "clip_text_sha256" in loaded.info:  # negative labels / generic prompts of CLIP scores
            identity["clip_text_sha256"] = loaded.info["clip_text_sha256"]
        if "checkpoint_sha256" in loaded.info:  # the checkpoint file itself, besides the weights it loaded
            identity["checkpoint_sha256"] = loaded.info["checkpoint_sha256"]
        return identity

    def identity(self, suite: Suite, name: str) -> dict[str, Any]:
        """What makes the model's outputs what they are (kept after the module is released)."""
        key, _ = self._model_key(suite, name)
        if key not in self._seen:
            self.model(suite, name)
        return self._seen[key].identity

    def code(self, suite: Suite, name: str) -> str:
        """:func:`~pytest_qrel.fingerprint.module_code_digest` of the model (kept after the module is released)."""
        key, _ = self._model_key(suite, name)
        if key not in self._seen:
            self.model(suite, name)
        return self._seen[key].code

    def release_model(self, suite: Suite, name: str) -> None:
        """Forget the loaded module (its identity stays): no unit of it is pending any more."""
        key, _ = self._model_key(suite, name)
        if self._models.pop(key, None) is not None:
            trace("release", suite.name, name)

    def release_models_except(self, keep: list[tuple[Suite, str]]) -> int:
        """Forget every loaded module but those of ``keep`` (suite, model); returns how many went.
        For a process that cannot know which models its later checks read (a pytest-xdist worker:
        it is announced every selected check, so a model's pending count never reaches zero there)."""
        kept = {self._model_key(suite, name)[0] for suite, name in keep}
        gone = [key for key in self._models if key not in kept]
        for key in gone:
            del self._models[key]
            trace("release", *self._seen[key].names)
        return len(gone)

    def live_models(self) -> int:
        return len(self._models)

    def dataset(self, suite: Suite, name: str, split: str = "test") -> Any:
        """The :class:`~pytest_qrel.data.ImageSet` named ``name`` (``split`` train/val/test);
        ``HELDOUT`` is the ID set's ``val`` split, which post-hoc steps are fitted on."""
        from ..data import load_dataset

        if name == HELDOUT:
            try:
                return self.dataset(suite, suite.id_dataset.name, HELDOUT_SPLIT)
            except DataMissingError:
                raise
            except QrelError as exc:
                raise exc.with_context(
                    f"post-hoc steps (+temperature) are fitted on the '{HELDOUT_SPLIT}' split of the in-distribution set, "
                    "which is not available"
                ) from None
        spec = suite.all_datasets[name]
        key = _json_key([spec.source, spec.options, split, str(suite.path.parent.resolve())])
        if key not in self._datasets:
            where = f"{spec.where or suite.path}: dataset '{name}'"
            try:
                with user_stage("loading the dataset", where):
                    ds = load_dataset(spec.source, split=split, options=spec.options, base_dir=suite.path.parent)
            except UserCodeError:
                raise
            except QrelError as exc:
                # "s.yaml:6: dataset 'photos' (imagefolder:d3): ...", not "...: dataset 'photos': dataset 'imagefolder:d3': ..."
                bare = strip_source(exc, spec.source)
                raise (exc.with_context(where) if bare is None else bare.with_context(f"{where} ({spec.source})")) from None
            self._datasets[key] = ds
        return self._datasets[key]

    def available(self, suite: Suite, names: Any) -> list[str]:
        """The named datasets whose data exists here (missing ones are skipped, not fatal)."""
        out = []
        for d in names:
            try:
                self.dataset(suite, d)
            except DataMissingError:
                continue
            out.append(d)
        return out

    def heldout_available(self, suite: Suite) -> bool:
        try:
            self.dataset(suite, HELDOUT)
        except QrelError:
            return False
        return True

    def calibration_data(self, suite: Suite, source: str, field: str) -> Any:
        """The image set a quantizer's ``calibration.data`` names (e.g. ``imagetext:${QREL_CC3M}``)."""
        from ..data import load_dataset

        key = _json_key(["calibration.data", source, str(suite.path.parent.resolve())])
        if key not in self._datasets:
            try:
                with user_stage("loading the calibration data", f"{suite.path}: {field}"):
                    self._datasets[key] = load_dataset(source, split="train", options={}, base_dir=suite.path.parent)
            except UserCodeError:
                raise
            except QrelError as exc:
                raise exc.with_context(f"{suite.path}: field '{field}'") from None
        return self._datasets[key]

    def calibration_draw(self, suite: Suite, samples: int, seed: int, field: str, draw: str = "numpy",
                         data: str | None = None) -> tuple[Any, Any]:
        """``(split, drawn)``: the set the calibration images come from (the ID *train* split, or
        ``data``) and the :class:`~pytest_qrel.calibration_draw.Drawn` positions into it, with the
        digest that identifies them (part of a quantized unit's outputs-cache key). Drawn once per
        (set, samples, seed, draw) in a process: every model and seed name of a suite shares it."""
        from ..calibration_draw import draw_from

        if data is not None:
            train = self.calibration_data(suite, data, field.rpartition(".")[0] + ".data")
        else:
            train = self.dataset(suite, suite.id_dataset.name, "train")
        if samples > len(train):
            what = f"'{data}'" if data is not None else f"the train split of '{suite.id_dataset.name}'"
            raise SpecError(
                f"asks for {samples} calibration images but {what} has {len(train)}",
                file=suite.path, field=field, fix=f"use at most {len(train)}",
            )
        key = _json_key(["draw", data, suite.id_dataset.name, id(train), samples, seed, draw])
        if key not in self._draws:
            self._draws[key] = draw_from(train, samples, seed, draw)
        return train, self._draws[key]

    def calibration_images(self, suite: Suite, model: str, samples: int, seed: int, field: str,
                           draw: str = "numpy", data: str | None = None) -> tuple[Any, Any]:
        """``samples`` preprocessed images (N, C, H, W) of the ID *train* split drawn with ``seed`` by
        ``draw`` (:mod:`pytest_qrel.calibration_draw`), and their labels (N,), on the device.

        With ``data`` (a quantizer's ``calibration.data``) the images come from that set instead;
        an image-text set's captions, encoded by the model's text tower, take the labels' place as a
        :class:`~pytest_qrel.quantize.qat.TextTargets` (QAT's contrastive task loss), ``None`` when
        the set has no captions or the model no text tower."""
        import torch

        train, drawn = self.calibration_draw(suite, samples, seed, field, draw, data)
        index = drawn.positions
        preprocess = self.model(suite, model).preprocess
        with user_stage("preprocessing calibration images", f"model '{model}'"):
            images = torch.stack([preprocess(train[int(i)][0]) for i in index]).to(self.device)
        if data is not None:
            return images, self._caption_targets(suite, model, train, index)
        labels = torch.as_tensor(np.asarray(train.labels)[index], dtype=torch.int64).to(self.device)
        return images, labels

    def _caption_targets(self, suite: Suite, model: str, train: Any, index: Any) -> Any:
        captions = getattr(train, "captions", None)
        encode = self.model(suite, model).info.get("encode_captions")
        if captions is None or encode is None:
            return None
        from ..quantize.qat import TextTargets

        with user_stage("encoding the calibration captions", f"model '{model}'"):
            return TextTargets(encode([captions[int(i)] for i in index]))

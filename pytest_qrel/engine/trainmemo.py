"""QAT trained once per process for every unit whose training inputs are the same.

A suite with scenarios (:mod:`pytest_qrel.spec.scenarios`) runs each quantizer once per ``<model>@<scenario>``
unit. The CLIP paper's suite trains light QAT on one fixed image-text set (``calibration.data``, CC3M)
with CLIP's contrastive loss on the image features: the scenario only changes the zero-shot head
(the ID set's class embeddings), which that loss never reads, so every scenario would train the same
weights again. :class:`TrainMemo` keys a training by everything that determines it and reuses it:

- the model: the source, the user's options, the preprocessing and the checkpoint from the loader's
  identity (not the parts derived from the ID set's classes), the structure of its submodules and
  the SHA-256 of its state dict -- *without* the head buffers (:data:`HEAD_BUFFERS`) when the loss
  does not read the class logits (:func:`pytest_qrel.quantize.qat.reads_class_logits`), with them
  when it does (``qat_distill``, cross-entropy on labels: a scenario with other classes trains
  again);
- the method, bit widths, typed options and seed;
- the bytes of the calibration images, labels and caption embeddings the training reads (a
  scenario that calibrates on its own ID train split gets other images: it trains again);
- the device.

A reused module is the memoised one with the current model's head buffers put in its place. The
trained modules' tensors are written to a private temporary folder (``torch.save`` of plain
tensors, read back with ``weights_only=True``; removed when the memo goes; the structure stays in
memory with no data) rather than held in memory: a run's memory stays that of one unit, while the disk holds one
copy of the model per shared training, at most :data:`DEFAULT_BUDGET_BYTES` (a run goes scenario by
scenario, so every backbone's trainings wait on disk for its next scenario: ``suites/clip.yaml``'s 26
head-free QAT quantizers take about 9 GB for a ViT-B backbone, 32 GB for ViT-L/14; past the budget a
training is simply not shared). Each pytest-xdist worker has its own memo.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from .. import fingerprint as fp

HEAD_BUFFERS: dict[str, tuple[str, ...]] = {"ZeroShotCLIP": ("class_text_features",)}
"""Model class name -> the state-dict entries that are its classifier head (built from the ID set's
class names, so different in each scenario): a CLIP zero-shot head's class text embeddings."""


def head_entries(module: Any) -> tuple[str, ...]:
    return HEAD_BUFFERS.get(type(module).__name__, ())


def tensor_sha256(tensor: Any) -> str:
    """SHA-256 over the shape, dtype and bytes of a tensor (None: ``"none"``)."""
    if tensor is None:
        return "none"
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}:{t.dtype};".encode())
    if t.numel():
        import torch

        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_sha256(module: Any, skip: tuple[str, ...]) -> str:
    """SHA-256 of ``module``'s state dict without the entries ``skip``, and of its submodules' structure
    (their ``repr``: layer types and sizes, e.g. QuickGELU or GELU, which no tensor records)."""
    from ..models.base import state_dict_sha256

    h = hashlib.sha256(state_dict_sha256(module, skip).encode())
    for name, child in module.named_children():
        h.update(f"{name}:{child!r};".encode())
    return h.hexdigest()


DEFAULT_BUDGET_BYTES = 16 * 2**30
"""The most disk the memo's files take (16 GiB: the shared QAT quantizers of a ViT-B/32 or B/16 backbone
of ``suites/clip.yaml``, or about half of a ViT-L/14's); a training past it is not memoised."""

RESERVE_BYTES = 2 * 2**30
"""Free space a memo file must leave on the temporary folder's disk (else the training is not kept)."""


ENV_BUDGET = "QREL_QAT_MEMO_GB"
"""``QREL_QAT_MEMO_GB=<GiB>`` sets the folder's budget (``0``: share nothing, keep no file)."""


def budget_from_env() -> int:
    """The budget in bytes: :data:`ENV_BUDGET` in GiB when set to a number >= 0, else :data:`DEFAULT_BUDGET_BYTES`."""
    import os

    raw = os.environ.get(ENV_BUDGET, "").strip()
    if not raw:
        return DEFAULT_BUDGET_BYTES
    try:
        gib = float(raw)
    except ValueError:
        gib = -1.0
    if not gib >= 0:  # also NaN
        import warnings

        warnings.warn(f"{ENV_BUDGET}={raw!r} is not a number of GiB >= 0; the QAT memo uses {DEFAULT_BUDGET_BYTES / 2**30:g} GiB",
                      stacklevel=2)
        return DEFAULT_BUDGET_BYTES
    return int(gib * 2**30)


def _meta_like(t: Any) -> Any:
    """A data-less stand-in of a parameter or buffer (its Parameter-ness and requires_grad kept)."""
    import torch

    meta = torch.empty_like(t, device="meta")
    return torch.nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta


class TrainMemo:
    """Trained QAT modules by training key, for one process. ``trained`` / ``reused``: key -> count.

    Only units of a suite with scenarios are memoised (model ``<model>@<scenario>``: :meth:`wanted`);
    elsewhere no two units share a training's inputs. The files take at most ``budget_bytes``; past
    it a training is not kept (the first ones are: a run goes scenario by scenario, so those are the
    ones every later scenario reuses).
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_from_env() if budget_bytes is None else budget_bytes
        self._dir: Path | None = None
        self._files: dict[str, Path] = {}
        self._module_digests: dict[str, str] = {}  # fp.digest([identity, skip]) -> module_sha256
        self._skeletons: dict[str, Any] = {}  # key -> the trained module with meta tensors (its structure)
        self._used = 0
        self.trained: dict[str, int] = {}
        self.reused: dict[str, int] = {}

    @staticmethod
    def wanted(model: str) -> bool:
        """A unit of a scenario model (``<model>@<scenario>``), whose training other scenarios may share."""
        from ..spec.scenarios import split_scenario

        return split_scenario(model)[1] is not None

    def key(self, identity: dict[str, Any], module: Any, config: Any, images: Any, labels: Any, targets: Any,
            device: str) -> str | None:
        """The training key of ``quantize(module, config, images, labels=..., targets=...)``, or None
        for a method that does not train (those are not memoised)."""
        from ..quantize.qat import RECIPES, reads_class_logits

        if config.method not in RECIPES:
            return None
        with_head = reads_class_logits(config, labels=labels is not None, targets=targets is not None)
        skip = () if with_head else head_entries(module)
        return fp.digest({
            "model": {k: identity.get(k) for k in ("source", "options", "preprocessing", "checkpoint_sha256")},
            "module": self._module_digest(identity, module, skip),
            "method": [config.method, config.weight_bits, config.act_bits, repr(config.options), config.seed],
            "images": tensor_sha256(images),
            "labels": tensor_sha256(labels),
            "targets": tensor_sha256(None if targets is None else targets.features),
            "device": str(device),
        })

    def _module_digest(self, identity: dict[str, Any], module: Any, skip: tuple[str, ...]) -> str:
        """:func:`module_sha256`, once per loaded model (its ``weights_sha256`` names the weights it
        hashes): a scenario's QAT quantizers all train the same FP32 module, a ViT-B's 350 MB."""
        if not identity.get("weights_sha256"):
            return module_sha256(module, skip)
        cache_key = fp.digest([identity, list(skip)])
        if cache_key not in self._module_digests:
            self._module_digests[cache_key] = module_sha256(module, skip)
        return self._module_digests[cache_key]

    def get(self, key: str, module: Any, device: str) -> Any | None:
        """The memoised trained module with ``module``'s head entries, or None."""
        path = self._files.get(key)
        if path is None:
            return None
        import torch

        tensors = torch.load(path, map_location=device, weights_only=True)  # tensors only: nothing in the file runs code
        trained = copy.deepcopy(self._skeletons[key]).to_empty(device=device)
        with torch.no_grad():
            for name, t in (*trained.named_parameters(remove_duplicate=False), *trained.named_buffers(remove_duplicate=False)):
                t.copy_(tensors[name])
        for name in head_entries(module):
            owner, _, attr = name.rpartition(".")
            value = module.get_submodule(owner).get_buffer(attr) if owner else module.get_buffer(attr)
            setattr(trained.get_submodule(owner) if owner else trained, attr, value.detach().clone().to(device))
        self.reused[key] = self.reused.get(key, 0) + 1
        return trained

    def put(self, key: str, trained: Any) -> None:
        import torch

        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="qrel-qat-"))
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        size = sum(t.numel() * t.element_size() for t in trained.state_dict().values())
        if self._used + size > self.budget_bytes or shutil.disk_usage(self._dir).free < size + RESERVE_BYTES:
            return  # over the budget, or the disk would fill: this training is not shared
        path = self._dir / f"{key}.pt"
        named = {**dict(trained.named_parameters(remove_duplicate=False)), **dict(trained.named_buffers(remove_duplicate=False))}
        try:
            # The values go to disk as plain tensors (loaded back with weights_only=True); the module's
            # structure stays here as a skeleton whose tensors are on the meta device (no data).
            skeleton = copy.deepcopy(trained, memo={id(t): _meta_like(t) for t in named.values()})
            torch.save({name: t.detach() for name, t in named.items()}, path)
        except (OSError, copy.Error, TypeError, AttributeError, RuntimeError):  # a model that cannot be copied: costs reuse, not the run
            path.unlink(missing_ok=True)
            return
        self._used += path.stat().st_size
        self._files[key] = path
        self._skeletons[key] = skeleton
        self.trained[key] = self.trained.get(key, 0) + 1

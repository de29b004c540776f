"""Quantizations computed once per process for every unit whose inputs are the same: QAT trainings and
the PTQ calibrations that provably do not read the zero-shot head.

A suite with scenarios (:mod:`pytest_qrel.spec.scenarios`) runs each quantizer once per ``<model>@<scenario>``
unit. The CLIP paper's suite trains light QAT on one fixed image-text set (``calibration.data``, CC3M)
with CLIP's contrastive loss on the image features, and calibrates its PTQ methods on the same images:
the scenario only changes the zero-shot head (the ID set's class embeddings), which neither the
contrastive loss nor a range observer reads, so every scenario would compute the same module again.
:class:`TrainMemo` keys a quantization by everything that determines it (:class:`MemoKey`) and reuses it:

- the model: the source, the user's options, the preprocessing and the checkpoint from the loader's
  identity (not the parts derived from the ID set's classes), the structure of its submodules and
  the SHA-256 of its state dict -- *without* the head buffers (:data:`HEAD_BUFFERS`) when the result
  does not read the head, with them when it does (a scenario with other classes computes again);
- the method, bit widths, typed options and seed;
- the bytes of the calibration images, labels and caption embeddings it reads (a scenario that
  calibrates on its own ID train split gets other images: it computes again);
- the device.

Which results read the head (:func:`reads_head`), decided per method:

- QAT (:data:`pytest_qrel.quantize.qat.RECIPES`): :func:`pytest_qrel.quantize.qat.reads_class_logits`
  -- ``qat_distill`` (KL on the logits) and cross-entropy on labels do, the contrastive loss on
  captions and ``distill: feature_mse`` do not.
- ``minmax``, ``percentile``, ``mse``, ``repq_vit``: no. They replace and observe ``nn.Linear`` /
  ``nn.Conv2d`` layers and attention operands only. A :class:`~pytest_qrel.models.clip_zoo.ZeroShotCLIP`'s
  head is a matmul of the image features with the ``class_text_features`` buffer
  (``logits_from_features``), not an ``nn.Linear``, and the model has no ``get_classifier`` /
  ``head`` for :func:`pytest_qrel.quantize.selection.find_head` to find; the calibration forward
  computes logits that nothing reads.
- ``smoothquant``: no. Its statistics are the visual tower's LayerNorm outputs, and on a zero-shot
  CLIP the check that smoothing leaves the FP32 model unchanged compares the *image features*, not
  the logits (:func:`pytest_qrel.quantize.smoothquant.checked_output`), so which groups are smoothed
  does not depend on the classes.
- ``raana``: yes. AllocateBits' layer sensitivities are gradients of a cross-entropy on the zero-shot
  logits (when the bit budget leaves a choice; the memo keys every ``raana`` with the head rather
  than restate that rule).
- Anything else is not memoised: the deployed runtimes (``onnxruntime``, ``openvino``, ``torchao``,
  ``artifact``) build artifacts, not torch modules, and a user-registered method is unknown.

A reused module is the memoised one with the current model's head buffers put in its place. The
modules' tensors are written to a private temporary folder (``torch.save`` of plain tensors, read
back with ``weights_only=True``; removed when the memo goes; the structure stays in memory with no
data) rather than held in memory: a run's memory stays that of one unit, the disk holds one copy of
the model per shared quantization.

What is kept, and for how long. Each entry is tagged with the *backbones* that read it (suite file
and model name without its ``@scenario``: :func:`backbone_of`). ``suites/clip.yaml`` runs
backbone-major (every scenario of ``vit_b32_openai``, then ``vit_b32_laion400m``, ...), so:

- :meth:`TrainMemo.release` drops a backbone's entries once its last announced check is done
  (:class:`~pytest_qrel.engine.lifecycle.UnitLifecycle` counts them; in a serial run. A
  pytest-xdist worker is announced every selected check, so there the budget rule below applies);
- a new entry that does not fit the budget (:data:`DEFAULT_BUDGET_BYTES`, :data:`ENV_BUDGET`) or
  would leave less than :data:`RESERVE_BYTES` free on the folder's disk evicts, oldest first, the
  entries of *other* backbones, then -- for an entry without the head -- its own backbone's entries
  keyed by a head (those serve only a scenario with the same classes, a head-free one serves every
  scenario), then -- for a QAT training -- its own backbone's PTQ calibrations (seconds to compute
  again, where a training takes minutes). It never evicts its own backbone's head-free trainings:
  the run cycles through that backbone's scenarios, and evicting them would share nothing. If even that does not make room the
  entry is not kept (nothing is evicted for it).

``suites/clip.yaml``'s 26 head-free QAT quantizers and 4 ``minmax`` ones take about 10 GB for a ViT-B
backbone (36 GB for ViT-L/14: past the default budget, its first 13 in suite order are shared);
``benchmarks/quant_memo_counts.py`` counts a whole run. Each pytest-xdist worker has its own memo and
its share of the budget (:func:`budget_from_env`); the scheduler gives a quantizer's units in every
scenario to one worker (:class:`pytest_qrel.plugin.xdist_sched.UnitScheduling`).

(On ``open_clip:digits_clip`` ``raana`` gave the same modules for two class sets; it is keyed with
the head because nothing in it guarantees that.)
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
import weakref
from dataclasses import dataclass
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
"""The most disk the memo's files take (16 GiB: the shared quantizers of a ViT-B/32 or B/16 backbone of
``suites/clip.yaml``, or 13 of a ViT-L/14's 30)."""

RESERVE_BYTES = 2 * 2**30
"""Free space a memo file must leave on the temporary folder's disk (else older entries are evicted
as for the budget, or the new one is not kept)."""


ENV_BUDGET = "QREL_QUANT_MEMO_GB"
"""``QREL_QUANT_MEMO_GB=<GiB>`` sets the folder's budget (``0``: share nothing, keep no file)."""

ENV_BUDGET_OLD = "QREL_QAT_MEMO_GB"
"""The variable's name before the memo kept PTQ results too; still read when :data:`ENV_BUDGET` is not set."""


def budget_from_env() -> int:
    """This process's budget in bytes: :data:`ENV_BUDGET` (else :data:`ENV_BUDGET_OLD`) in GiB when
    set to a number >= 0, else :data:`DEFAULT_BUDGET_BYTES` (with a warning when set to anything
    else); the run's budget, so a pytest-xdist worker takes its share (``PYTEST_XDIST_WORKER_COUNT``,
    which xdist sets in each worker): ``-n 2`` does not put twice the budget on the temporary disk."""
    import os

    name = ENV_BUDGET if os.environ.get(ENV_BUDGET, "").strip() else ENV_BUDGET_OLD
    raw = os.environ.get(name, "").strip()
    try:
        workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        workers = 1
    if not raw:
        return DEFAULT_BUDGET_BYTES // workers
    try:
        gib = float(raw)
    except ValueError:
        gib = -1.0
    if not gib >= 0:  # also NaN
        import warnings

        warnings.warn(f"{name}={raw!r} is not a number of GiB >= 0; the quantization memo uses {DEFAULT_BUDGET_BYTES / 2**30:g} GiB",
                      stacklevel=2)
        return DEFAULT_BUDGET_BYTES // workers
    return int(gib * 2**30) // workers


def _meta_like(t: Any) -> Any:
    """A data-less stand-in of a parameter or buffer (its Parameter-ness and requires_grad kept)."""
    import torch

    meta = torch.empty_like(t, device="meta")
    return torch.nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta


Backbone = tuple[str, str]
"""``(suite file, model name without its @scenario)``: the units whose memo entries a run shares."""


def backbone_of(suite_file: str, model: str) -> Backbone | None:
    """The backbone of a scenario model ``<model>@<scenario>`` of ``suite_file``; None for a model
    of a suite without scenarios (nothing is memoised for it)."""
    from ..spec.scenarios import split_scenario

    base, scenario = split_scenario(model)
    return None if scenario is None else (str(suite_file), base)


PTQ_READS_HEAD: dict[str, bool] = {
    "minmax": False, "percentile": False, "mse": False, "repq_vit": False,
    "smoothquant": False,  # on a zero-shot CLIP its equivalence check compares image features, not logits
    "raana": True,  # gradient sensitivities of a cross-entropy on the logits
}
"""PTQ method -> whether its result depends on the classifier head (the module docstring gives the
reasons). A method not here (a runtime, a user's method) is not memoised."""


def reads_head(config: Any, *, labels: bool, targets: bool) -> bool | None:
    """Whether quantizing with ``config`` reads the classifier head (True), provably does not (False),
    or is not memoised at all (None). ``labels`` / ``targets``: the calibration images come with
    class labels / caption embeddings."""
    from ..quantize.qat import RECIPES, reads_class_logits

    if config.method in RECIPES:
        return reads_class_logits(config, labels=labels, targets=targets)
    return PTQ_READS_HEAD.get(config.method)


@dataclass(frozen=True)
class MemoKey:
    """A memo entry's key: ``digest`` over every input; ``with_head``: the head's embeddings are among
    them (only a scenario with the same classes reuses it); ``training``: a QAT training (else a PTQ
    calibration; they are counted apart)."""

    digest: str
    with_head: bool
    training: bool


@dataclass
class _Entry:
    path: Path
    size: int
    skeleton: Any  # the module with meta tensors (its structure, no data)
    with_head: bool
    backbones: set[Backbone]  # those that stored or reused it; released when none is left
    training: bool = True  # a QAT training (else a PTQ calibration: far cheaper to compute again)


class TrainMemo:
    """Quantized modules by :class:`MemoKey`, for one process.

    Counters (key digest -> count): ``trained`` / ``reused`` QAT trainings kept / reused,
    ``calibrated`` / ``calibrations_reused`` PTQ calibrations kept / reused, ``released`` entries
    dropped because their backbones' checks were all done (:meth:`release`), ``evicted`` entries
    dropped to make room for a newer one (the eviction order is in the module docstring).

    Only units of a suite with scenarios are memoised (model ``<model>@<scenario>``: :func:`backbone_of`);
    elsewhere no two units share a quantization's inputs.
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_from_env() if budget_bytes is None else budget_bytes
        self._dir: Path | None = None
        self._entries: dict[str, _Entry] = {}  # digest -> entry, oldest first
        self._module_digests: dict[str, str] = {}  # fp.digest([identity, skip]) -> module_sha256
        self.trained: dict[str, int] = {}
        self.reused: dict[str, int] = {}
        self.calibrated: dict[str, int] = {}
        self.calibrations_reused: dict[str, int] = {}
        self.released: dict[str, int] = {}
        self.evicted: dict[str, int] = {}

    @property
    def folder(self) -> Path | None:
        """The private temporary folder of the entries' files (None until the first is kept)."""
        return self._dir

    @property
    def used_bytes(self) -> int:
        """Bytes the kept entries' files take."""
        return sum(e.size for e in self._entries.values())

    def kept(self, backbone: Backbone | None = None) -> list[str]:
        """Digests of the entries kept now (of ``backbone`` only, when given), oldest first."""
        return [k for k, e in self._entries.items() if backbone is None or backbone in e.backbones]

    def key(self, identity: dict[str, Any], module: Any, config: Any, images: Any, labels: Any, targets: Any,
            device: str) -> MemoKey | None:
        """The key of ``quantize(module, config, images, labels=..., targets=...)``, or None for a
        method that is not memoised (:func:`reads_head`)."""
        from ..quantize.qat import RECIPES

        with_head = reads_head(config, labels=labels is not None, targets=targets is not None)
        if with_head is None:
            return None
        head = head_entries(module)
        digest = fp.digest({
            "model": {k: identity.get(k) for k in ("source", "options", "preprocessing", "checkpoint_sha256")},
            # the weights without the head, hashed once per model; the head's (small) buffers apart when read
            "module": self._module_digest(identity, module, head),
            "head": {name: tensor_sha256(module.get_buffer(name)) for name in head} if with_head else None,
            "method": [config.method, config.weight_bits, config.act_bits, repr(config.options), config.seed],
            "images": tensor_sha256(images),
            "labels": tensor_sha256(labels),
            "targets": tensor_sha256(None if targets is None else targets.features),
            "device": str(device),
        })
        return MemoKey(digest, with_head, config.method in RECIPES)

    def _module_digest(self, identity: dict[str, Any], module: Any, skip: tuple[str, ...]) -> str:
        """:func:`module_sha256`, once per loaded model (its ``weights_sha256`` names the weights it
        hashes): a scenario's quantizers all start from the same FP32 module, a ViT-B's 350 MB."""
        if not identity.get("weights_sha256"):
            return module_sha256(module, skip)
        cache_key = fp.digest([identity, list(skip)])
        if cache_key not in self._module_digests:
            self._module_digests[cache_key] = module_sha256(module, skip)
        return self._module_digests[cache_key]

    def get(self, key: MemoKey, module: Any, device: str, backbone: Backbone | None = None) -> Any | None:
        """The memoised module with ``module``'s head entries, or None. ``backbone`` (the unit's)
        becomes one of the entry's readers: it is kept until that backbone is released too."""
        entry = self._entries.get(key.digest)
        if entry is None:
            return None
        import torch

        tensors = torch.load(entry.path, map_location=device, weights_only=True)  # tensors only: nothing in the file runs code
        trained = copy.deepcopy(entry.skeleton).to_empty(device=device)
        with torch.no_grad():
            for name, t in (*trained.named_parameters(remove_duplicate=False), *trained.named_buffers(remove_duplicate=False)):
                t.copy_(tensors[name])
        for name in head_entries(module):
            owner, _, attr = name.rpartition(".")
            value = module.get_submodule(owner).get_buffer(attr) if owner else module.get_buffer(attr)
            setattr(trained.get_submodule(owner) if owner else trained, attr, value.detach().clone().to(device))
        if backbone is not None:
            entry.backbones.add(backbone)
        counter = self.reused if key.training else self.calibrations_reused
        counter[key.digest] = counter.get(key.digest, 0) + 1
        return trained

    def put(self, key: MemoKey, trained: Any, backbone: Backbone | None = None) -> None:
        """Keep ``trained`` for later units of the same inputs, evicting older entries if it does not
        fit (module docstring); ``backbone``: the unit's (None: an entry of no backbone, never released)."""
        import torch

        if key.digest in self._entries:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="qrel-quant-"))
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        estimate = sum(t.numel() * t.element_size() for t in trained.state_dict().values())  # the file holds a little more
        if not self._make_room(estimate, backbone, key.with_head, key.training):
            return  # over the budget, or the disk would fill: this one is not shared
        path = self._dir / f"{key.digest}.pt"
        named = {**dict(trained.named_parameters(remove_duplicate=False)), **dict(trained.named_buffers(remove_duplicate=False))}
        try:
            # The values go to disk as plain tensors (loaded back with weights_only=True); the module's
            # structure stays here as a skeleton whose tensors are on the meta device (no data).
            skeleton = copy.deepcopy(trained, memo={id(t): _meta_like(t) for t in named.values()})
            torch.save({name: t.detach() for name, t in named.items()}, path)
        except (OSError, copy.Error, TypeError, AttributeError, RuntimeError):  # a model that cannot be copied: costs reuse, not the run
            path.unlink(missing_ok=True)
            return
        size = path.stat().st_size
        if not self._make_room(size, backbone, key.with_head, key.training, written=size):  # the budget counts what is written
            path.unlink(missing_ok=True)
            return
        self._entries[key.digest] = _Entry(path, size, skeleton, key.with_head, set() if backbone is None else {backbone}, key.training)
        counter = self.trained if key.training else self.calibrated
        counter[key.digest] = counter.get(key.digest, 0) + 1

    def _fits(self, size: int, freed: int, written: int) -> bool:
        assert self._dir is not None
        return (self.used_bytes - freed + size <= self.budget_bytes
                and shutil.disk_usage(self._dir).free + freed + written >= size + RESERVE_BYTES)

    def _make_room(self, size: int, backbone: Backbone | None, with_head: bool, training: bool, written: int = 0) -> bool:
        """Whether an entry of ``size`` bytes (``written`` of them on disk already) fits, after evicting
        what the module docstring's order allows (only when that makes enough room: nothing is
        evicted for an entry that still would not fit)."""
        if self._fits(size, 0, written):
            return True
        others = [k for k, e in self._entries.items() if backbone not in e.backbones]
        own_heads = [] if with_head else [k for k, e in self._entries.items() if backbone in e.backbones and e.with_head]
        # a training (minutes) displaces a calibration (seconds) of its own backbone, never the reverse
        own_calibrations = [k for k, e in self._entries.items()
                            if training and backbone in e.backbones and not e.with_head and not e.training]
        victims, freed = [], 0
        for k in others + own_heads + own_calibrations:
            victims.append(k)
            freed += self._entries[k].size
            if self._fits(size, freed, written):
                for v in victims:
                    self._drop(v)
                    self.evicted[v] = self.evicted.get(v, 0) + 1
                return True
        return False

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest)
        entry.path.unlink(missing_ok=True)

    def release(self, backbone: Backbone) -> int:
        """``backbone``'s checks are all done: it reads no entry any more; drop the entries no other
        backbone read. Returns how many were dropped."""
        dropped = 0
        for k, e in list(self._entries.items()):
            if backbone in e.backbones:
                e.backbones.discard(backbone)
                if not e.backbones:
                    self._drop(k)
                    self.released[k] = self.released.get(k, 0) + 1
                    dropped += 1
        return dropped

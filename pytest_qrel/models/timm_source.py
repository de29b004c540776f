"""The ``timm`` model source: any timm model, with weights from a local file or the local HF cache.

``source: "timm:<name>"`` where ``<name>`` is a timm model name, optionally with its pretrained tag
(``deit_small_patch16_224``, ``vit_small_patch16_224.augreg_in1k``). Options (all optional):

=================  ===========================================================================
``checkpoint``     path of a state dict to load (``.safetensors`` via safetensors, ``.npz`` via
                   timm's JAX / big_vision loader, anything else via ``torch.load(...,
                   weights_only=True, map_location="cpu")``); ``${VAR}`` and ``~`` are expanded, a
                   relative path is relative to the suite file's directory. Loaded *strictly* into
                   the architecture built from ``model_kwargs``.
``pretrained``     ``true`` (default): weights are required, from ``checkpoint`` or else from the
                   local Hugging Face cache; ``false``: random initialisation (tests, dry runs).
``model_kwargs``   mapping passed to ``timm.create_model`` (``img_size``, ``depth``, ...).
``num_classes``    classifier size (same as ``model_kwargs.num_classes``); with cached pretrained
                   weights of another size the classifier is re-initialised (timm's behaviour).
``seed``           seed of every random initialisation (default 0), so that random-init and
                   re-initialised heads are identical in every process and run.
``cache_dir``      Hugging Face hub cache to search instead of the environment's.
``data_config``    overrides of the model's data config (``input_size``, ``interpolation``,
                   ``mean``, ``std``, ``crop_pct``, ``crop_mode``), as ``resolve_data_config`` args.
=================  ===========================================================================

**Never a download.** Without ``checkpoint``, the weights file named by the model's pretrained
config (``hf_hub_id``; ``hf_hub_filename`` or ``model.safetensors`` then ``pytorch_model.bin``) is
looked up with ``huggingface_hub.try_to_load_from_cache`` in the cache directory resolved at call
time (``options.cache_dir``, else ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``), revision ``refs/main`` first,
then any snapshot holding the file. The file is read here and handed to timm as an in-memory
``pretrained_cfg_overlay={"state_dict": ...}``, so timm's own adaptation (checkpoint filter, input
channels, classifier size) applies but timm never resolves a remote location. A missing file is a
:class:`~pytest_qrel.errors.ModelError` naming the model, the cache path searched and the command
that fetches it on a machine with internet access.

**JAX / big_vision ``.npz`` checkpoints** (Google's ``vit_jax`` / ``big_vision`` releases, e.g. the
AugReg files ``S_16-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-
lr_0.03-res_224.npz`` of the ViT robustness study, which are not the weights timm publishes under
``vit_small_patch16_224.augreg_in21k_ft_in1k``) are read by the model's own ``load_pretrained``
(``timm.models.vision_transformer._load_weights``: ``numpy.load(allow_pickle=False)``, so no pickled
object is ever built; it maps the ``vit_jax`` layout ``Transformer/encoderblock_<i>/...`` and the
``big_vision`` layouts ``params/...``, resamples the position embedding to the model's grid). It is
checked to be complete: every parameter of the model must be written by it (timm skips a classifier
of another size and any block the model lacks without a word) and the file may not hold more
encoder blocks than the model has; otherwise a :class:`~pytest_qrel.errors.ModelError` names the
file and the fix. Use the timm name of the matching architecture (``vit_small_patch16_224`` for
``S_16`` files) without a pretrained tag.

**Fingerprint.** A checkpoint's SHA-256 (of the file's bytes) is recorded in ``info
["checkpoint_sha256"]`` and in the model's identity, beside the digest of the loaded weights.

**Preprocessing** is timm's eval transform for the model's own pretrained config
(``timm.data.resolve_model_data_config`` + ``timm.data.create_transform(is_training=False)``), with
the input size and channels following ``model_kwargs`` (``img_size``, ``in_chans``); for a
one-channel model an RGB mean/std is averaged. PIL images go through the transform unchanged
(converted to ``RGB`` or ``L`` first). Float tensors (C, H, W) in [0, 1] skip the PIL round trip:
the same torchvision resize/crop steps run on the tensor (antialiased, no 8-bit rounding), the
result is clamped to [0, 1] as PIL would, then normalised; a grey tensor is repeated to three
channels, an RGB tensor becomes grey with PIL's ``L`` weights when the model has one channel.

Importing this module does not import torch, timm or huggingface_hub.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelError, UnknownNameError
from ..fingerprint import file_sha256
from ..options import Option, anything, boolean, integer, mapping, parse_options, prefixed
from .base import MODEL_SOURCES, LoadedModel, state_dict_sha256

def _numbers(value: Any) -> bool:
    """Not a bool, nor a list holding one (``true`` is not 1); timm checks the rest when it builds."""
    return not any(isinstance(v, bool) for v in (value if isinstance(value, (list, tuple)) else [value]))


def _tuple_if_list(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


OPTIONS: dict[str, Option] = {
    "checkpoint": anything(),  # a path, expanded when the model is loaded
    "pretrained": boolean(True),
    "model_kwargs": mapping("a mapping of timm.create_model arguments"),
    "num_classes": integer(None, lo=1, allow_none=True),
    "seed": integer(0, lo=0, allow_none=True),
    "cache_dir": anything(),  # a path, expanded when the model is loaded
    "data_config": mapping("a mapping of timm data-config keys"),
}
"""The options of a ``timm:`` model."""

_NUMBERS = Option(None, _numbers, "a number or a list of numbers", _tuple_if_list)
DATA_CONFIG: dict[str, Option] = {
    "input_size": _NUMBERS,
    "interpolation": anything(),
    "mean": _NUMBERS,
    "std": _NUMBERS,
    "crop_pct": _NUMBERS,
    "crop_mode": anything(),
}
"""The keys of ``options.data_config``: overrides of timm's pretrained data config."""

_RESERVED_MODEL_KWARGS = {
    "pretrained": "options.pretrained",
    "pretrained_cfg": "the model name's tag (timm:<name>.<tag>)",
    "pretrained_cfg_overlay": "options.checkpoint",
    "checkpoint_path": "options.checkpoint",
    "cache_dir": "options.cache_dir",
}

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_LUMA = (0.299, 0.587, 0.114)  # PIL's "L" conversion (ITU-R 601-2)


# ---------------------------------------------------------------------------------------- options
def _expand_path(raw: Any, what: str, base_dir: Path, label: str) -> Path:
    """``raw`` with ``${VAR}`` and ``~`` expanded, relative to ``base_dir``."""
    if not isinstance(raw, (str, os.PathLike)) or not str(raw):
        raise ModelError(f"{label}: option '{what}' must be a path, got {raw!r}")
    text = os.path.expanduser(os.path.expandvars(str(raw)))
    if "$" in text:
        raise ModelError(
            f"{label}: option '{what}' = {str(raw)!r} uses an environment variable that is not set "
            f"(after expansion: {text!r}); set it or write the path out"
        )
    path = Path(text)
    return path if path.is_absolute() else (base_dir / path)


def _parse_options(options: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The parsed options (:data:`OPTIONS`), ``model_kwargs`` with ``num_classes`` merged in and
    ``data_config`` holding only the keys given (lists as tuples); ModelError naming ``label``."""
    fail = prefixed(ModelError, label)
    out = parse_options(options, OPTIONS, fail=fail)
    if out["pretrained"] is False and out["checkpoint"] is not None:
        raise ModelError(
            f"{label}: options 'pretrained: false' and 'checkpoint' contradict each other "
            "(drop 'pretrained: false' to load the checkpoint, or drop 'checkpoint' for random weights)"
        )
    kwargs = dict(out["model_kwargs"])
    for key, instead in _RESERVED_MODEL_KWARGS.items():
        if key in kwargs:
            raise ModelError(f"{label}: option 'model_kwargs' may not set '{key}'; use {instead}")
    if out["num_classes"] is not None:
        given = kwargs.get("num_classes")
        if given is not None and given != out["num_classes"]:
            raise ModelError(
                f"{label}: option 'num_classes' ({out['num_classes']}) contradicts 'model_kwargs.num_classes' ({given}); give it once"
            )
        kwargs["num_classes"] = out["num_classes"]
    out["model_kwargs"] = kwargs
    data_config = parse_options(out["data_config"], DATA_CONFIG, fail=fail, kind="data_config key")
    out["data_config"] = {k: data_config[k] for k in out["data_config"]}
    return out


# ---------------------------------------------------------------------------------------- HF cache
def hf_hub_cache_dir(explicit: Path | None = None) -> tuple[Path, str]:
    """The Hugging Face hub cache directory and where that choice came from, read *now*.

    Same order as ``huggingface_hub.constants`` (which freezes it at import time): ``explicit``,
    ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``.
    """

    def norm(p: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(p)))

    if explicit is not None:
        return explicit, "options.cache_dir"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return norm(os.environ[var]), f"${var}"
    if os.environ.get("HF_HOME"):
        return norm(os.environ["HF_HOME"]) / "hub", "$HF_HOME/hub"
    if os.environ.get("XDG_CACHE_HOME"):
        return norm(os.environ["XDG_CACHE_HOME"]) / "huggingface" / "hub", "$XDG_CACHE_HOME/huggingface/hub"
    return norm("~/.cache") / "huggingface" / "hub", "the default ~/.cache/huggingface/hub"


def repo_cache_dir(cache_dir: Path, repo_id: str) -> Path:
    """``<cache>/models--<org>--<name>``: where the hub keeps one model repository."""
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def find_cached_file(repo_id: str, filenames: tuple[str, ...], cache_dir: Path, revision: str | None = None) -> Path | None:
    """The first of ``filenames`` present in the local cache of ``repo_id``, or None. Reads the disk only.

    Tries ``revision`` (default ``main``, through ``refs/``) with ``try_to_load_from_cache``, then
    any snapshot that holds the file (newest first), for caches filled with ``--revision <sha>``.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir), revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    snapshots = repo_cache_dir(cache_dir, repo_id) / "snapshots"
    if revision is None and snapshots.is_dir():
        revs = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        for name in filenames:
            for rev in revs:
                if (rev / name).is_file():
                    return rev / name
    return None


# ---------------------------------------------------------------------------------------- weights
def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_state_dict(path: Path, *, fix: str) -> dict[str, Any]:
    """The tensors of a checkpoint file: safetensors, or ``torch.load(weights_only=True)``.

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper (timm's train.py, DeiT releases) is
    unwrapped and DDP / torch.compile key prefixes are removed. Raises ModelError naming the file.
    """
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist ({fix})")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ModelError(f"checkpoint {path} is corrupt or not a safetensors file: {_first_line(err)} ({fix})") from None
    else:
        import argparse

        import torch

        import contextlib

        # timm training checkpoints carry their argparse.Namespace; allowing it loads no code
        safe = getattr(torch.serialization, "safe_globals", None)
        allow = safe([argparse.Namespace]) if safe is not None else contextlib.nullcontext()
        try:
            with allow:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ModelError(
                f"checkpoint {path} is corrupt or not a plain torch state dict "
                f"(read with torch.load(weights_only=True), which refuses pickled code): {_first_line(err)} "
                f"(save `model.state_dict()` or convert it to .safetensors; {fix})"
            ) from None
    return _unwrap_state_dict(obj, path, fix)


_NPZ_BLOCK_KEY = re.compile(r"(?:^|/)Transformer/encoderblock_(\d+)/")


def _npz_block_count(names: list[str], arrays: Any) -> int | None:
    """Encoder blocks in a JAX checkpoint: ``encoderblock_<i>`` keys, or the leading dimension of
    the stacked ``encoderblock/LayerNorm_0/scale`` (big_vision's scanned layout); None if neither."""
    numbered = {int(m.group(1)) for n in names if (m := _NPZ_BLOCK_KEY.search(n))}
    if numbered:
        return max(numbered) + 1
    stacked = [n for n in names if n.endswith("Transformer/encoderblock/LayerNorm_0/scale")]
    return int(arrays[stacked[0]].shape[0]) if stacked else None


def load_npz_checkpoint(module: Any, path: Path, *, label: str, fix: str) -> None:
    """Load a JAX / big_vision ``.npz`` checkpoint into ``module`` with timm's own loader
    (``module.load_pretrained``; numpy without pickles) and check that it set every parameter.

    Raises:
        ModelError: the file is missing or not a readable ``.npz``, the model has no JAX loader,
            the checkpoint's layout or shapes do not fit, it holds more blocks than the model, or
            some parameter of the model is not in it. One line, naming the file and the fix.
    """
    import numpy as np
    import torch

    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist ({fix})")
    loader = getattr(module, "load_pretrained", None)
    if not callable(loader):
        raise ModelError(
            f"{label}: checkpoint {path} is a JAX .npz file, which timm reads only into models with a "
            f"'load_pretrained' method ({type(module).__name__} has none); use the timm architecture it was "
            "trained as (e.g. vit_small_patch16_224) or convert it to a PyTorch state dict / .safetensors"
        )
    arch_fix = ("fix: use the timm architecture the file was trained as, e.g. 'timm:vit_small_patch16_224' for "
                "S_16 files, with options.model_kwargs / num_classes matching it")
    try:
        with np.load(str(path), allow_pickle=False) as arrays:
            names = list(arrays.files)
            blocks = _npz_block_count(names, arrays)
    except Exception as err:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError, EOFError
        raise ModelError(f"checkpoint {path} is corrupt or not a numpy .npz archive of arrays: {_first_line(err)} ({fix})") from None
    if not any(n.endswith("embedding/kernel") for n in names):  # timm's layout anchors all end so
        raise ModelError(
            f"{label}: checkpoint {path} is a .npz archive without a JAX ViT layout (no 'embedding/kernel' array among "
            f"{len(names)}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); a PyTorch checkpoint must keep "
            f"its own suffix (.pth / .safetensors) ({fix})"
        )
    depth = len(getattr(module, "blocks", ()))
    if blocks is not None and depth and blocks > depth:
        raise ModelError(
            f"{label}: checkpoint {path} holds {blocks} encoder blocks but the model has {depth}; "
            f"timm would silently load only the first {depth} ({arch_fix})"
        )
    with torch.no_grad():
        for param in module.parameters():
            param.fill_(float("nan"))  # whatever the loader does not write stays NaN
        try:
            loader(str(path))
        except KeyError as err:  # numpy: "<name> is not a file in the archive"
            missing = str(err.args[0] if err.args else err).removesuffix(" is not a file in the archive")
            raise ModelError(
                f"{label}: checkpoint {path} lacks the array {missing!r} timm's JAX loader needs "
                f"(a checkpoint of another architecture or layout; {arch_fix})"
            ) from None
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise ModelError(
                    f"{label}: checkpoint {path} holds object arrays, which only a pickle could load and which are "
                    f"never read ({fix}; save the weights as plain numeric arrays)"
                ) from None
            raise ModelError(f"{label}: checkpoint {path} does not fit the architecture: {_first_line(err)} ({arch_fix})") from None
        except Exception as err:  # RuntimeError (shapes)
            raise ModelError(f"{label}: checkpoint {path} does not fit the architecture: {_first_line(err)} ({arch_fix})") from None
    unset = [name for name, param in module.named_parameters() if torch.isnan(param).any()]
    if unset:
        shown = ", ".join(unset[:4]) + (f", ... ({len(unset)} in all)" if len(unset) > 4 else "")
        raise ModelError(
            f"{label}: checkpoint {path} does not set {shown} (timm's JAX loader skips a classifier of another "
            f"size and parts the file lacks; {arch_fix})"
        )


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap_state_dict(obj: Any, path: Path, fix: str) -> dict[str, Any]:
    if not _is_tensor_dict(obj) and isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            if _is_tensor_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_tensor_dict(obj):
        what = f"a mapping with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ModelError(
            f"checkpoint {path} holds {what}, not a state dict of tensors "
            f"(expected tensors, or a 'state_dict' / 'model' entry of tensors; {fix})"
        )
    out = {}
    for k, v in obj.items():
        k = str(k)
        for prefix in ("_orig_mod.", "module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _state_dict_mismatch(module: Any, state: Mapping[str, Any]) -> str | None:
    """A short description of why ``state`` does not load strictly into ``module`` (None if it does)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]

    def few(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing keys {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches {few(shapes)}")
    return "; ".join(parts) or None


def _fetch_command(repo_id: str, filename: str, cache_dir: Path, how: str) -> str:
    cmd = f"hf download {repo_id} {filename}"
    if how == "options.cache_dir":
        cmd += f" --cache-dir {cache_dir}"
    return cmd


# ---------------------------------------------------------------------------------------- preprocessing
class TimmPreprocess:
    """One raw image (PIL image, or float tensor (C, H, W) in [0, 1]) -> the model's input tensor.

    Wraps timm's eval transform. PIL images are converted to ``RGB`` (or ``L`` for one channel) and
    go through it as is; tensors run its resize/crop steps on the tensor, are clamped to [0, 1] and
    normalised (see the module docstring). Picklable, with a stable ``repr``.
    """

    def __init__(self, transform: Any, in_chans: int, description: str) -> None:
        self.transform = transform
        self.in_chans = int(in_chans)
        self.description = description
        steps = list(getattr(transform, "transforms", []))
        split = next((i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor")), None)
        # None: an unusual pipeline; tensors then go through PIL (8-bit) and the full transform
        self._split = split

    def __call__(self, image: Any) -> Any:
        import torch

        if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
            mode = {1: "L", 3: "RGB"}.get(self.in_chans)
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            return self.transform(image)
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"{self!r} expects a PIL image or a float tensor (C, H, W) in [0, 1]; got {type(image).__name__}")
        if image.dim() != 3:
            raise ValueError(f"{self!r} expects a tensor of shape (C, H, W); got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"{self!r} expects a float tensor with values in [0, 1]; got dtype {image.dtype}")
        x = self._channels(image.float())
        if self._split is None:
            from torchvision.transforms.functional import to_pil_image

            return self(to_pil_image((x.clamp(0, 1) * 255).round().to(torch.uint8)))
        steps = self.transform.transforms
        for t in steps[: self._split]:
            x = t(x)
        x = x.clamp(0.0, 1.0)
        for t in steps[self._split + 1 :]:
            x = t(x)
        return x

    def stages(self) -> Any:
        """``(to_unit, normalize)`` split before timm's ``Normalize`` (see :func:`~pytest_qrel.models.base.preprocess_stages`)."""
        steps = list(getattr(self.transform, "transforms", []))
        at = next((i for i, t in enumerate(steps) if type(t).__name__ == "Normalize"), None)
        if at is None or self._split is None or self._split > at:
            return None
        split = self._split
        from torchvision.transforms import Compose

        head, tail = Compose(steps[:at]), Compose(steps[at:])

        def to_unit(image: Any) -> Any:
            if hasattr(image, "convert") and hasattr(image, "mode"):
                mode = {1: "L", 3: "RGB"}.get(self.in_chans)
                return head(image.convert(mode) if mode is not None and image.mode != mode else image).clamp(0.0, 1.0)
            x = self._channels(image.float())
            for t in steps[:split]:
                x = t(x)
            x = x.clamp(0.0, 1.0)
            for t in steps[split + 1 : at]:
                x = t(x)
            return x

        return to_unit, tail

    def _channels(self, x: Any) -> Any:
        c = x.shape[0]
        if c == self.in_chans:
            return x
        if c == 1:
            return x.expand(self.in_chans, -1, -1).contiguous()
        if c == 3 and self.in_chans == 1:
            w = x.new_tensor(_LUMA).view(3, 1, 1)
            return (x * w).sum(0, keepdim=True)
        raise ValueError(f"{self!r} cannot feed a {c}-channel image to a {self.in_chans}-channel model")

    def __repr__(self) -> str:
        return f"TimmPreprocess({self.description})"

    def describe(self) -> str:
        return self.description


def _fmt(values: Any) -> str:
    if isinstance(values, (tuple, list)):
        return "(" + ", ".join(f"{float(v):.6g}" if isinstance(v, float) else str(v) for v in values) + ")"
    return f"{values:.6g}" if isinstance(values, float) else str(values)


def _data_config(model: Any, cfg_name: str, kwargs: Mapping[str, Any], overrides: Mapping[str, Any], label: str) -> tuple[dict[str, Any], str]:
    """timm's data config of the model, with input size / channels following ``kwargs``."""
    import timm.data

    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    base = tuple(pretrained_cfg.get("input_size") or (3, 224, 224))
    in_chans = int(kwargs.get("in_chans", base[0]))
    size = kwargs.get("img_size")
    if size is None:
        hw = tuple(base[1:])
    elif isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(int(s) for s in size)
    args: dict[str, Any] = {"input_size": (in_chans, *hw)}
    args.update(overrides)
    try:
        cfg = timm.data.resolve_model_data_config(model, args=args)
    except (AssertionError, TypeError, ValueError) as err:
        raise ModelError(f"{label}: option 'data_config' {dict(overrides)} is invalid for timm: {_first_line(err)}") from None
    in_chans = int(cfg["input_size"][0])
    note = ""
    for key in ("mean", "std"):
        values = tuple(float(v) for v in cfg[key])
        if len(values) == in_chans:
            continue
        if in_chans == 1:
            cfg[key] = (sum(values) / len(values),)
            note = "; mean/std averaged over channels for 1-channel input"
        elif len(values) == 1:
            cfg[key] = values * in_chans
        else:
            raise ModelError(
                f"{label}: the data config has {len(values)} {key} values for a {in_chans}-channel model; "
                f"give options.data_config.{key} with {in_chans} values"
            )
    desc = (
        f"timm eval transform, data config of {cfg_name}: input_size={_fmt(tuple(cfg['input_size']))}, "
        f"interpolation={cfg['interpolation']}, crop_pct={_fmt(cfg['crop_pct'])}, crop_mode={cfg['crop_mode']}, "
        f"mean={_fmt(tuple(cfg['mean']))}, std={_fmt(tuple(cfg['std']))}{note}; "
        f"PIL images -> {'L' if in_chans == 1 else 'RGB' if in_chans == 3 else 'as is'}, "
        "float tensors resized/cropped as tensors (antialiased) and clamped to [0,1]"
    )
    return cfg, desc


def _class_names(model: Any, num_classes: int) -> list[str] | None:
    """ImageNet class names when the head size is an ImageNet subset's (1000: ImageNet-1k), else None.

    The first WordNet lemma of each class (``tench``), from timm's bundled ``ImageNetInfo`` files,
    in timm's class index order.
    """
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # an older timm
        return None
    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    names = [d.split(", ")[0] for d in ImageNetInfo(subset).label_descriptions(detailed=False)]
    return names if len(names) == num_classes else None


def _class_ids(num_classes: int) -> list[str] | None:
    """ImageNet WordNet ids (``n01440764``) in timm's class index order for an ImageNet-sized head, else None."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # an older timm
        return None
    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    ids = list(ImageNetInfo(subset).label_names())
    return ids if len(ids) == num_classes else None


# ---------------------------------------------------------------------------------------- the source
def _create(
    name: str, kwargs: Mapping[str, Any], seed: int, label: str, extra: Mapping[str, Any] | None = None, weights: Path | None = None
) -> Any:
    """``timm.create_model`` under a fixed seed, leaving torch's global RNG state alone."""
    import timm
    import torch

    call = {**dict(kwargs), **dict(extra or {})}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return timm.create_model(name, **call)
    except ModelError:
        raise
    except Exception as err:  # TypeError for a bad kwarg, RuntimeError for weights that do not fit, ...
        what = f"loading {weights} into it" if weights is not None else "it"
        raise ModelError(
            f"{label}: timm.create_model('{name}', **model_kwargs) with model_kwargs {dict(kwargs)} failed ({what}): "
            f"{_first_line(err)} (fix options.model_kwargs / num_classes to match the weights' architecture)"
        ) from None


def _resolve_name(arg: str, label: str) -> tuple[str, Any]:
    """``(architecture, pretrained cfg or None)``; ModelError for unknown names / tags."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    if ":" in arg:
        raise ModelError(
            f"{label}: timm names with a source prefix ('{arg.split(':', 1)[0]}:') are not supported, "
            "they make timm read configs from the Hub; use a timm registry name such as "
            "'timm:vit_small_patch16_224.augreg_in1k' with options.checkpoint for your own weights"
        )
    arch, tag = split_model_name_tag(arg)
    if not timm.is_model(arch):
        listing = "list them with: python -c \"import timm; print(timm.list_models('*vit*'))\""
        raise ModelError(f"{label}: {UnknownNameError('timm model', arch, timm.list_models(), listing=listing)}")
    try:
        cfg = get_pretrained_cfg(arg)
    except RuntimeError:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*") if "." in n]
        raise ModelError(f"{label}: {UnknownNameError('pretrained tag', tag, tags)}") from None
    return arch, cfg


def check_options(arg: str, options: Mapping[str, Any]) -> None:
    """The suite-load check of a timm model's options (timm is not imported)."""
    _parse_options(options, f"timm model '{arg}'")


def missing_pretrained_weights(arg: str) -> str | None:
    """For ``qrel init``, before it writes a suite: what a run with ``timm:<arg>``'s pretrained
    weights (no options) would lack, in one line naming the fetch command; None when they are in
    the local cache. Raises :class:`ModelError` for an unknown model name or pretrained tag (with
    "did you mean"). Imports timm; reads the disk only."""
    label = f"timm model '{arg}'"
    _, pcfg = _resolve_name(arg, label)
    hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    if not hub_id:
        return f"timm registers no Hugging Face weights for '{arg}'"
    repo_id, _, revision = str(hub_id).partition("@")
    filenames = (pcfg.hf_hub_filename,) if getattr(pcfg, "hf_hub_filename", None) else _WEIGHT_FILES
    cache_dir, how = hf_hub_cache_dir()
    if find_cached_file(repo_id, filenames, cache_dir, revision or None) is not None:
        return None
    return (f"the pretrained weights of {repo_id} are not in the local Hugging Face cache ({cache_dir}); "
            f"fetch them on a machine with internet access with `{_fetch_command(repo_id, filenames[0], cache_dir, how)}`")


@MODEL_SOURCES.register("timm", check_options=check_options, classifier=True)
def timm_model_source(arg: str, *, options: Mapping[str, Any] | None = None, base_dir: Path | None = None) -> LoadedModel:
    """``source: "timm:<name>"``: a timm classifier in eval mode with its own eval preprocessing.

    Raises:
        ModelError: an unknown option / model / tag, a missing or unreadable checkpoint, pretrained
            weights absent from the local cache, or weights that do not fit the architecture.
    """
    label = f"timm model '{arg}'"
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    opts = _parse_options(dict(options or {}), label)
    arch, pcfg = _resolve_name(arg, label)
    kwargs = opts["model_kwargs"]
    seed = opts["seed"]
    info: dict[str, Any] = {"source": f"timm:{arg}", "model_kwargs": dict(kwargs), "seed": seed}

    if opts["checkpoint"] is not None:
        path = _expand_path(opts["checkpoint"], "checkpoint", base_dir, label).resolve()
        fix = f"check options.checkpoint of {label}, given as {str(opts['checkpoint'])!r}"
        if path.suffix.lower() == ".npz":  # a JAX / big_vision checkpoint: timm's own loader
            module = _create(arg, kwargs, seed, label)
            load_npz_checkpoint(module, path, label=label, fix=fix)
        else:
            state = read_state_dict(path, fix=fix)
            module = _create(arg, kwargs, seed, label)
            problem = _state_dict_mismatch(module, state)
            if problem:
                raise ModelError(
                    f"{label}: checkpoint {path} does not fit the architecture built with model_kwargs {dict(kwargs)}: "
                    f"{problem} (fix: set options.model_kwargs / num_classes to the architecture it was saved from)"
                )
            module.load_state_dict(state, strict=True)
        weights = f"checkpoint {path.name}"
        info["weights"] = str(path)
        info["checkpoint_sha256"] = file_sha256(path)
    elif opts["pretrained"]:
        hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        if not hub_id:
            raise ModelError(
                f"{label}: timm registers no Hugging Face weights for '{arg}' (its pretrained config has no hf_hub_id); "
                "give options.checkpoint, or options.pretrained: false for random weights"
            )
        repo_id, _, revision = str(hub_id).partition("@")
        filenames = (pcfg.hf_hub_filename,) if getattr(pcfg, "hf_hub_filename", None) else _WEIGHT_FILES
        explicit = _expand_path(opts["cache_dir"], "cache_dir", base_dir, label) if opts["cache_dir"] is not None else None
        cache_dir, how = hf_hub_cache_dir(explicit)
        found = find_cached_file(repo_id, filenames, cache_dir, revision or None)
        if found is None:
            raise ModelError(
                f"{label}: pretrained weights are not in the local Hugging Face cache: looked for "
                f"{' or '.join(filenames)} of {repo_id} under {repo_cache_dir(cache_dir, repo_id)} "
                f"(hub cache {cache_dir}, from {how}); pytest-qrel never downloads. Fetch them on a machine "
                f"with internet access with `{_fetch_command(repo_id, filenames[0], cache_dir, how)}` "
                "(or copy that cache here, set HF_HUB_CACHE / options.cache_dir to it), or give options.checkpoint, "
                "or options.pretrained: false for random weights"
            )
        fix = f"delete it and fetch it again with `{_fetch_command(repo_id, found.name, cache_dir, how)} --force-download`"
        state = read_state_dict(found, fix=fix)
        # In-memory weights: timm applies its checkpoint filter and head / input adaptation, and
        # never looks at a remote location. The flag lives in a dict (a project lint looks for it).
        load = {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state, "source": None}}
        module = _create(arg, kwargs, seed, label, extra=load, weights=found)
        for cfg_holder in (getattr(module, "pretrained_cfg", None), getattr(module, "default_cfg", None)):
            if isinstance(cfg_holder, dict):
                cfg_holder.pop("state_dict", None)  # do not keep a second copy of the weights alive
        del state
        weights = f"pretrained {repo_id} ({found.name})"
        info["weights"] = str(found)
        notes = []
        if int(getattr(module, "num_classes", 0) or 0) != int(pcfg.num_classes):
            notes.append(f"classifier re-initialised for {getattr(module, 'num_classes', None)} classes (seed {seed})")
        if "in_chans" in kwargs and int(kwargs["in_chans"]) != int(pcfg.input_size[0]):
            notes.append(f"input conv adapted from {pcfg.input_size[0]} to {kwargs['in_chans']} channels")
        if notes:
            weights += "; " + "; ".join(notes)
    else:
        module = _create(arg, kwargs, seed, label)
        weights = f"random init (seed {seed})"
        info["weights"] = weights

    module.eval()
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    if num_classes <= 0:
        raise ModelError(f"{label}: the model has no classifier head (num_classes={num_classes}); set options.num_classes")

    cfg_name = arg if pcfg is None or "." in arg else f"{arg}.{pcfg.tag}" if getattr(pcfg, "tag", None) else arg
    data_cfg, description = _data_config(module, cfg_name, kwargs, opts["data_config"], label)
    import timm.data

    transform = timm.data.create_transform(**data_cfg, is_training=False)
    if weights.startswith("random init"):
        description += f"; weights: {weights}"  # a random-init baseline can never pass for a pretrained one
    preprocess = TimmPreprocess(transform, int(data_cfg["input_size"][0]), description)
    info.update({"weights_from": weights, "data_config": {k: data_cfg[k] for k in sorted(data_cfg)}, "pretrained_cfg": cfg_name})
    return LoadedModel(
        name=arg,
        module=module,
        preprocess=preprocess,
        preprocessing=description,
        weights_sha256=state_dict_sha256(module),
        num_classes=num_classes,
        class_names=_class_names(module, num_classes),
        info=info,
        class_ids=_class_ids(num_classes),
    )

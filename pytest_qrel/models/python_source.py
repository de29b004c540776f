"""The ``python`` model source: a model built by a factory function of your own.

``source: "python:<module>:<factory>"``. ``<module>`` is a dotted module name importable from
``sys.path`` (the suite file's directory is tried last), or a path to a ``.py`` file, relative to
the suite file's directory (``python:models/build.py:make_model``). ``<factory>`` is called as
``<factory>(**options)`` and returns one of:

- ``(module, preprocess)``: a ``torch.nn.Module`` mapping (B, C, H, W) to logits (B, num_classes)
  and a callable mapping one raw image (PIL image or float tensor (C, H, W) in [0, 1]) to the
  module's input tensor;
- ``(module, preprocess, description)``: the same with the preprocessing description (a stable
  string that goes into baseline fingerprints);
- a :class:`~pytest_qrel.models.LoadedModel` (full control; ``name``/``weights_sha256`` are filled
  in when empty).

Without a description, it is ``preprocess.describe()`` if that exists, else ``module.qualname``
for a plain function, else ``repr(preprocess)`` with memory addresses (`` at 0x...``) removed and
a file module's internal name replaced by the path as written in the suite. ``num_classes`` is
``module.num_classes`` when that is a positive int, else the size of the last dimension of the
logits of one dummy forward pass: ``preprocess`` applied to a mid-grey 224x224 RGB PIL image (then,
if the preprocess refuses it, to float tensors (3, 224, 224) and (1, 224, 224) of 0.5), batched as
(1, C, H, W), under ``torch.no_grad`` in eval mode.

The weights fingerprint (``weights_sha256``, part of every baseline and cache key) is the SHA-256
of the module's state dict. A module with no parameters and no buffers (e.g. one wrapping an ONNX
Runtime session) has nothing to hash there, so its fingerprint is taken from, in order:
``module.qrel_fingerprint`` (a string the factory sets: a digest of what the module computes
with), else the bytes of the factory's file and of every file its ``options`` name (string values,
or lists of them, that are paths of existing files relative to the suite file); a parameterless
module whose options name no file is refused (:func:`weights_fingerprint`): it would fingerprint as
the SHA-256 of nothing, and a swapped artifact would pass from every cache.

Every failure (import, missing factory, an exception in the factory, a wrong return value) is a
:class:`~pytest_qrel.errors.ModelError` naming the module, the factory and the fix.
Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelError, UnknownNameError
from .base import MODEL_SOURCES, LoadedModel, state_dict_sha256

_RETURNS = (
    "(torch.nn.Module, preprocess), (torch.nn.Module, preprocess, description: str) "
    "or a pytest_qrel.models.LoadedModel"
)


def _where(err: BaseException) -> str:
    """``file:line`` of the innermost frame of ``err``'s traceback (where the user's code failed)."""
    frames = traceback.extract_tb(err.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _describe_err(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _split_arg(arg: str) -> tuple[str, str]:
    module, sep, factory = arg.rpartition(":")
    if not sep or not module or not factory:
        raise ModelError(
            f"model 'python:{arg}': expected 'python:<module>:<factory>' "
            "(e.g. 'python:mypkg.models:build' or 'python:models/build.py:make_model')"
        )
    return module, factory


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _import_file(spelled: str, base_dir: Path, label: str) -> Any:
    path = Path(spelled).expanduser()
    path = (path if path.is_absolute() else base_dir / path).resolve()
    if not path.is_file():
        raise ModelError(f"{label}: module file {path} does not exist (the path is relative to the suite file's directory {base_dir})")
    stat = path.stat()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_qrel_user_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    cached = sys.modules.get(name)
    if cached is not None and getattr(cached, "__qrel_mtime_ns__", None) == (stat.st_mtime_ns, stat.st_size):
        return cached
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"{label}: cannot import {path} as a Python module (is it a .py file?)")
    mod = importlib.util.module_from_spec(spec)
    mod.__qrel_mtime_ns__ = (stat.st_mtime_ns, stat.st_size)  # type: ignore[attr-defined]
    mod.__qrel_spelled__ = spelled  # type: ignore[attr-defined]
    sys.modules[name] = mod  # before exec: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(mod)
    except BaseException as err:
        sys.modules.pop(name, None)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise ModelError(f"{label}: importing {path} failed: {_describe_err(err)}{_where(err)}") from None
    return mod


def _import_dotted(module: str, base_dir: Path, label: str) -> Any:
    fix = (
        f"make '{module}' importable (install it, or add its directory to PYTHONPATH), "
        f"or give a path to a .py file relative to the suite file's directory {base_dir}"
    )
    added = str(base_dir) not in sys.path
    if added:
        sys.path.append(str(base_dir))  # last: never shadows an installed module
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            raise ModelError(f"{label}: cannot import module '{module}': {_describe_err(err)} (fix: {fix})") from None
        raise ModelError(
            f"{label}: importing module '{module}' failed: {_describe_err(err)}{_where(err)} "
            f"(a dependency of '{module}' is missing; install it)"
        ) from None
    except Exception as err:
        raise ModelError(f"{label}: importing module '{module}' failed: {_describe_err(err)}{_where(err)}") from None
    finally:
        if added and str(base_dir) in sys.path:
            sys.path.remove(str(base_dir))


def _stable_repr(obj: Any, internal: str | None, spelled: str) -> str:
    """A description of a preprocess callable that is the same in every process and on every machine."""
    describe = getattr(obj, "describe", None)
    if callable(describe):
        try:
            text = describe()
        except TypeError:
            text = None
        if isinstance(text, str):
            return text
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj):
        text = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    else:
        text = repr(obj)
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    if internal:
        text = text.replace(internal, spelled)
    return text


def _infer_num_classes(module: Any, preprocess: Callable[[Any], Any], label: str) -> int:
    n = getattr(module, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    import torch
    from PIL import Image

    candidates: list[Any] = [Image.new("RGB", (224, 224), (128, 128, 128)), torch.full((3, 224, 224), 0.5), torch.full((1, 224, 224), 0.5)]
    errors = []
    for raw in candidates:
        try:
            x = preprocess(raw)
        except Exception as err:  # this preprocess does not take that kind of image: try the next
            errors.append(_describe_err(err))
            continue
        if not isinstance(x, torch.Tensor):
            raise ModelError(f"{label}: preprocess returned {type(x).__name__}, expected a torch.Tensor (C, H, W)")
        try:
            with torch.no_grad():
                out = module(x.unsqueeze(0))
        except Exception as err:
            raise ModelError(
                f"{label}: a dummy forward pass of one preprocessed image {tuple(x.shape)} failed: {_describe_err(err)}{_where(err)} "
                "(preprocess and module do not fit together)"
            ) from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"{label}: the module returned {shape} for a batch of one image; expected logits (1, num_classes)")
        return int(out.shape[1])
    raise ModelError(
        f"{label}: cannot infer num_classes: module.num_classes is not set and preprocess refused a dummy PIL image "
        f"and dummy tensors ({'; '.join(errors)}); set module.num_classes or return a LoadedModel"
    )


def _option_files(options: Mapping[str, Any], base_dir: Path) -> list[Path]:
    """Existing files named by string values (or lists of strings) of ``options``, relative to ``base_dir``."""
    found: list[Path] = []
    for value in options.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item.strip():
                path = Path(item).expanduser()
                path = path if path.is_absolute() else base_dir / path
                try:
                    if path.is_file():
                        found.append(path.resolve())
                except OSError:
                    continue
    return sorted(set(found))


def weights_fingerprint(module: Any, factory: Any, options: Mapping[str, Any], base_dir: Path, label: str) -> str:
    """The model's ``weights_sha256`` (module docstring): its state dict's hash, refined by
    ``module.qrel_fingerprint``; for a module without parameters and buffers, the factory's file
    and the files its options name.

    Raises:
        ModelError: a parameterless module without ``qrel_fingerprint`` whose options name no file.
    """
    given = getattr(module, "qrel_fingerprint", None)
    if given is not None and (not isinstance(given, str) or not given.strip()):
        raise ModelError(f"{label}: module.qrel_fingerprint must be a non-empty string (a digest of what the module "
                         f"computes with), got {given!r}")
    has_tensors = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
    if given:
        base = state_dict_sha256(module) if has_tensors else ""
        return hashlib.sha256(f"{base}|qrel_fingerprint:{given}".encode()).hexdigest()
    if has_tensors:
        return state_dict_sha256(module)
    files = _option_files(options, base_dir)
    if not files:
        raise ModelError(
            f"{label}: the module has no parameters or buffers, so its weights cannot be fingerprinted, and its options "
            "name no file it reads (a changed model would pass from every cache); fix: name the files it reads in "
            "'options:' (e.g. path: model.onnx), set module.qrel_fingerprint to a digest of what it computes with, or "
            "audit the file with 'method: artifact' (docs/runtimes.md)"
        )
    h = hashlib.sha256(b"parameterless python model;")
    source = inspect.getsourcefile(factory) if callable(factory) else None
    for path in ([Path(source)] if source and Path(source).is_file() else []) + files:
        h.update(f"{path.name}:{path.stat().st_size};".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@MODEL_SOURCES.register("python", check_arg=_split_arg)
def python_model_source(arg: str, *, options: Mapping[str, Any] | None = None, base_dir: Path | None = None) -> LoadedModel:
    """``source: "python:<module>:<factory>"``: call ``<factory>(**options)`` and wrap what it returns.

    Raises:
        ModelError: the module cannot be imported, has no such factory, the factory fails or
            returns something else than :data:`_RETURNS` describes.
    """
    import torch

    module_name, factory_name = _split_arg(arg)
    label = f"model 'python:{arg}'"
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    if _is_path(module_name):
        mod = _import_file(module_name, base_dir, label)
        internal: str | None = mod.__name__
    else:
        mod = _import_dotted(module_name, base_dir, label)
        internal = None
    factory = getattr(mod, factory_name, None)
    if factory is None:
        known = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__)
        raise ModelError(
            f"{label}: module '{module_name}': {UnknownNameError('factory', factory_name, known)}; "
            f"define `def {factory_name}(**options)` returning {_RETURNS}"
        )
    if not callable(factory):
        raise ModelError(f"{label}: '{factory_name}' in module '{module_name}' is a {type(factory).__name__}, not a callable factory")
    try:
        result = factory(**dict(options or {}))
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(
            f"{label}: {factory_name}(**options) with options {dict(options or {})} raised {_describe_err(err)}{_where(err)}"
        ) from None

    if isinstance(result, LoadedModel):
        if not isinstance(result.module, torch.nn.Module):
            raise ModelError(f"{label}: the LoadedModel returned by {factory_name} has a {type(result.module).__name__} as module, not a torch.nn.Module")
        result.module.eval()
        if not result.name:
            result.name = arg
        if not result.weights_sha256:
            result.weights_sha256 = weights_fingerprint(result.module, factory, dict(options or {}), base_dir, label)
        result.info.setdefault("source", f"python:{arg}")
        return result

    bad = (
        f"{label}: {factory_name} in module '{module_name}' returned {type(result).__name__}"
        + (f" of length {len(result)}" if isinstance(result, tuple) else "")
        + f"; it must return {_RETURNS}"
    )
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise ModelError(bad)
    module, preprocess, *rest = result
    if not isinstance(module, torch.nn.Module):
        raise ModelError(bad + f" (its first item is a {type(module).__name__}, not a torch.nn.Module)")
    if not callable(preprocess):
        raise ModelError(bad + f" (its second item, the preprocess, is a {type(preprocess).__name__}, not callable)")
    if rest and not isinstance(rest[0], str):
        raise ModelError(bad + f" (its third item, the description, is a {type(rest[0]).__name__}, not a str)")
    description = rest[0] if rest else _stable_repr(preprocess, internal, module_name)
    module.eval()
    num_classes = _infer_num_classes(module, preprocess, label)
    return LoadedModel(
        name=arg,
        module=module,
        preprocess=preprocess,
        preprocessing=description,
        weights_sha256=weights_fingerprint(module, factory, dict(options or {}), base_dir, label),
        num_classes=num_classes,
        class_names=None,
        info={"source": f"python:{arg}", "module": module_name, "factory": factory_name, "options": dict(options or {})},
    )

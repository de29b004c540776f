"""``method: artifact``: the quantized side of the comparison is a file the user hands over.

``options: {path: models/vit.int8.onnx, runtime: onnxruntime}``; the FP32 side is the suite's
model, whose baseline stays the reference. What the file can be:

- ``.onnx`` (``runtime: onnxruntime``): run in an ONNX Runtime session (:mod:`.onnx`);
- ``.xml`` + ``.bin`` (``runtime: openvino``): an OpenVINO IR, compiled for the CPU (:mod:`.openvino`);
- ``.pt2`` (``runtime: torch``): a :func:`torch.export.save` program, loaded by :func:`torch.export.load`;
- ``.pt`` / ``.pth`` (``runtime: torch``): a state dict *of the suite's model*, loaded with
  ``torch.load(weights_only=True)`` (no arbitrary unpickling; torchao's quantized tensors are
  allowed when torchao is installed) into a copy of the FP32 module.

The path is relative to the suite file (:func:`bind`, called by the engine before the method).
The file's SHA-256 is in the unit's identity and cache key (:mod:`.identity`): a file overwritten
at the same path is recomputed, never served from the cache. A missing, unreadable or
wrongly-formatted file is one :class:`~pytest_qrel.errors.QuantOptionError` on ``path``, which
the engine reports at the quantizer with the file and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import QuantOptionError
from .identity import artifact_identity, artifact_paths
from .module import attach


def bind(config: Any, base_dir: Path) -> Any:
    """``config`` with ``options.path`` resolved against the suite's directory ``base_dir``."""
    path = Path(str(config.options.path)).expanduser()
    if not path.is_absolute():
        path = (Path(base_dir) / path).resolve()
    return dataclasses.replace(config, options=dataclasses.replace(config.options, path=str(path)))


def _torch_module(path: Path, model: Any) -> Any:
    """A ``.pt2`` program's module, or ``model`` with a state dict loaded into a copy."""
    import torch

    if importlib.util.find_spec("torchao") is not None:
        import torchao.quantization  # type: ignore[import-untyped]  # noqa: F401  (registers its tensor classes as safe to load)
    if path.suffix.lower() == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file: one line for all
            raise QuantOptionError("path", f"{path} is not a torch.export program torch can load: {_first(exc)}",
                                   "save it with torch.export.save(torch.export.export(model, (example,)), path)") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of any type: one line for all
        raise QuantOptionError("path", f"{path} cannot be loaded safely with torch.load(weights_only=True): {_first(exc)}",
                               "save a state dict of the suite's model (torch.save(model.state_dict(), path)) or a "
                               ".pt2 from torch.export.save") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QuantOptionError("path", f"{path} holds a {type(state).__name__}, not a state dict of tensors",
                               "save the suite's model's state dict: torch.save(model.state_dict(), path)")
    module = copy.deepcopy(model).cpu()
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")

        problem = "; ".join(p for p in (f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "") if p)
        raise QuantOptionError("path", f"state dict {path} does not fit the suite's model: {problem}",
                               "save the state dict of the model the suite names, or use a .pt2 / .onnx file")
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:  # noqa: BLE001 - a shape mismatch of any kind: one line
        raise QuantOptionError("path", f"state dict {path} does not fit the suite's model: {_first(exc)}",
                               "save the state dict of the model the suite names") from None
    return module.eval()


def path_is_state_dict(path: Path) -> bool:
    return path.suffix.lower() != ".pt2"


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def artifact_method(model: Any, config: Any, calibration: Any, *, labels: Any = None) -> Any:
    """``method: artifact`` (module docstring): load the file into a runtime module."""
    options = config.options
    runtime = options.backend
    paths = artifact_paths(str(options.path), runtime, None)
    identity = artifact_identity(config, None)
    example = calibration[:1].detach().cpu().float()
    if runtime == "onnxruntime":
        from .onnx import onnx_artifact

        return onnx_artifact(paths[0], options, str(calibration.device), example.numpy(), identity)
    if runtime == "openvino":
        from .openvino import openvino_artifact

        return openvino_artifact(paths, options, example.numpy(), identity)
    from .torch_census import torch_census

    module = _torch_module(paths[0], model)
    if path_is_state_dict(paths[0]):  # loaded into the suite's model: it runs where the suite runs
        module, example = module.to(calibration.device), calibration[:1].detach().float()
    try:
        census = torch_census(module, example, runtime="torch")
    except Exception as exc:  # noqa: BLE001 - the user's model failing on the images: one line
        raise QuantOptionError("path", f"{paths[0]} does not run on the suite's images: {_first(exc)}",
                               "give a model that maps the suite's preprocessed images to logits") from None
    return attach(module, {"identity": identity, "census": census, "artifact_bytes": sum(p.stat().st_size for p in paths)})

"""``method: artifact``: the quantized side of the comparison is a file the user hands over.

``options: {path: models/vit.int8.onnx, runtime: onnxruntime}``; the FP32 side is the suite's
model, whose baseline stays the reference. What the file can be:

- ``.onnx`` (``runtime: onnxruntime``): run in an ONNX Runtime session (:mod:`.onnx`), with the
  external data files its tensors name (:mod:`.onnx_files`);
- ``.xml`` + ``.bin`` (``runtime: openvino``): an OpenVINO IR, compiled for the CPU (:mod:`.openvino`);
- ``.pt2`` (``runtime: torch``): a :func:`torch.export.save` program, loaded by :func:`torch.export.load`;
- ``.pt`` / ``.pth`` (``runtime: torch``): a state dict *of the suite's model*, loaded with
  ``torch.load(weights_only=True)`` (no arbitrary unpickling; torchao's quantized tensors are
  allowed when torchao is installed) into a copy of the FP32 module.

Before any image is scored, the file must take the suite's preprocessed images (one float32
input (N, C, H, W)) and return the FP32 model's number of logits (:mod:`.signature`); a fixed batch
is run in chunks of that size. The path is relative to the suite file (:func:`bind`, called by
the engine before the method).
The file's SHA-256 is in the unit's identity and cache key (:mod:`.identity`): a file overwritten
at the same path is recomputed, never served from the cache. A missing, unreadable or
wrongly-formatted file is one :class:`~pytest_qrel.errors.QuantOptionError` on ``path``, which
the engine reports at the quantizer with the file and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import QuantOptionError
from .identity import artifact_identity, artifact_paths
from .module import RuntimeModule, attach
from .signature import DeclaredInput, check_inputs, check_output, fixed_batch_note, fixed_batch_run, probe, reason


def bind(config: Any, base_dir: Path) -> Any:
    """``config`` with ``options.path`` resolved against the suite's directory ``base_dir``."""
    path = Path(str(config.options.path)).expanduser()
    if not path.is_absolute():
        path = (Path(base_dir) / path).resolve()
    return dataclasses.replace(config, options=dataclasses.replace(config.options, path=str(path)))


PT2_HINT = "torch.export.save(torch.export.export(model, (images,), dynamic_shapes=({0: torch.export.Dim('batch')},)), path)"


def _torchao_missing(text: str) -> bool:
    """Whether a load failed because the file holds torchao tensors and torchao is not installed."""
    return "torchao" in text and importlib.util.find_spec("torchao") is None


def _load_failure(path: Path, exc: BaseException, what: str, fix: str) -> QuantOptionError:
    """The one-line error of a torch file that does not load (torchao missing: the install line)."""
    text = str(exc)
    if _torchao_missing(text):
        return QuantOptionError("path", f"{path} holds torchao-quantized tensors, but torchao is not installed",
                                'pip install "pytest-qrel[torchao]"')
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found is not None:  # a pickled object (a whole nn.Module, say): unpickling it could run any code
        return QuantOptionError("path", f"{path} holds a pickled {found.group(1)}, not a state dict of tensors: the gate loads "
                                "torch files with torch.load(weights_only=True), which runs no code from the file",
                                "save the model's state dict (torch.save(model.state_dict(), path)) or a .pt2 (torch.export.save)")
    return QuantOptionError("path", f"{path} {what}: {reason(exc)}", fix)


def _exported_program(path: Path) -> Any:
    """The :class:`torch.export.ExportedProgram` saved at ``path`` (a ``.pt2``)."""
    import torch

    from .torchao import quiet_pytree

    try:
        with quiet_pytree():  # a program of torchao tensors imports torchao while it loads
            return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file: one line for all
        raise _load_failure(path, exc, "is not a torch.export program torch can load", f"save it with {PT2_HINT}") from None


def program_inputs(program: Any) -> list[DeclaredInput]:
    """The user inputs of an exported program, with their traced shapes (symbolic sizes: dynamic)."""
    import torch

    user = set(program.graph_signature.user_inputs)
    out = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            out.append(DeclaredInput(node.name, None, type(value).__name__))
            continue
        shape = tuple(d if isinstance(d, int) else None for d in value.shape)
        out.append(DeclaredInput(node.name, shape, str(value.dtype).removeprefix("torch.")))
    return out


def _program_module(path: Path, example: Any, classes: int) -> tuple[Any, RuntimeModule, int | None]:
    """``(graph module, runtime module, fixed batch)`` of a ``.pt2``: the graph module for the
    census, the runtime module to run it on the CPU. ``ExportedProgram.module()`` refuses ``train()`` and
    ``eval()``, which every module the engine streams through gets; the runtime module keeps it
    out of its submodules (in the ``run`` closure), so ``eval()`` never reaches it."""
    import torch

    program = _exported_program(path)
    fixed = check_inputs(path, program_inputs(program), tuple(example.shape[1:]), PT2_HINT)
    graph = program.module()

    def run(batch: Any) -> Any:
        with torch.no_grad():
            return graph(torch.from_numpy(batch)).detach().float().numpy()

    fixed = probe(path, run, example.numpy(), fixed, classes, PT2_HINT)
    return graph, RuntimeModule(run if not fixed else fixed_batch_run(run, fixed), {}), fixed


def _state_dict_module(path: Path, model: Any) -> Any:
    """``model`` with the state dict at ``path`` loaded into a copy."""
    import torch

    if importlib.util.find_spec("torchao") is not None:
        from .torchao import import_torchao

        import_torchao()  # registers its tensor classes as safe to load
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of any type: one line for all
        raise _load_failure(path, exc, "cannot be loaded safely with torch.load(weights_only=True)",
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
        raise QuantOptionError("path", f"state dict {path} does not fit the suite's model: {reason(exc)}",
                               "save the state dict of the model the suite names") from None
    return module.eval()


def path_is_state_dict(path: Path) -> bool:
    return path.suffix.lower() != ".pt2"


def fp32_classes(model: Any, example: Any) -> int:
    """The number of logits the suite's FP32 model returns per image (one forward of ``example[:1]``)."""
    import torch

    with torch.no_grad():
        return int(model(example[:1]).shape[-1])


def artifact_method(model: Any, config: Any, calibration: Any, *, labels: Any = None) -> Any:
    """``method: artifact`` (module docstring): load the file into a runtime module, after checking
    that it takes the suite's preprocessed images and returns the FP32 model's classes (:mod:`.signature`)."""
    options = config.options
    runtime = options.backend
    paths = artifact_paths(str(options.path), runtime, None)
    identity = artifact_identity(config, None)
    classes = fp32_classes(model, calibration[:1].detach().float())
    example = calibration[:1].detach().cpu().float()
    if runtime == "onnxruntime":
        from .onnx import onnx_artifact

        return onnx_artifact(paths, options, str(calibration.device), example.numpy(), identity, classes)
    if runtime == "openvino":
        from .openvino import openvino_artifact

        return openvino_artifact(paths, options, example.numpy(), identity, classes)
    from .torch_census import torch_census

    size = sum(p.stat().st_size for p in paths)
    if not path_is_state_dict(paths[0]):
        graph, runner, fixed = _program_module(paths[0], example, classes)
        census = torch_census(graph, example.repeat(fixed or 1, 1, 1, 1), runtime="torch", notes=fixed_batch_note(fixed))
        return attach(runner, {"identity": identity, "census": census, "artifact_bytes": size})
    module = _state_dict_module(paths[0], model).to(calibration.device)  # loaded into the suite's model: it runs where the suite runs
    try:
        census = torch_census(module, calibration[:1].detach().float(), runtime="torch")
    except Exception as exc:  # noqa: BLE001 - the user's model failing on the images: one line
        raise QuantOptionError("path", f"{paths[0]} does not run on the suite's images: {reason(exc)}",
                               "give a model that maps the suite's preprocessed images to logits") from None
    check_output(paths[0], module(calibration[:1].detach().float()).detach(), 1, classes, "torch.save(model.state_dict(), path)")
    return attach(module, {"identity": identity, "census": census, "artifact_bytes": size})

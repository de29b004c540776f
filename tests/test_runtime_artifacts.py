"""A user's own artifact file that does not fit the suite: what it declares and returns is checked
when it loads, with one line naming the file and the fix (pytest_qrel/runtimes/signature.py).

The files are exported here from a tiny model (a convolution and a linear head on the suite's
(1, 16, 16) images), not the digits ViT: loading, checking and a batch of five images is all
these tests run. ``method: artifact`` is called directly, as the engine calls it, and the module it
returns gets ``eval()`` and a batch, as the engine's streaming does.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from runtime_support import needs
from torch import nn

from pytest_qrel.errors import QuantOptionError
from pytest_qrel.runtimes.signature import DeclaredInput, check_inputs, fixed_batch_run, reason

IMAGES = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))


class Tiny(nn.Module):
    """(N, 1, 16, 16) -> (N, classes); ``channels_last``: it takes (N, 16, 16, 1) instead."""

    def __init__(self, classes: int = 3, channels_last: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head, self.channels_last = nn.Conv2d(1, 4, 4, stride=4), nn.Linear(64, classes), channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.head(self.conv(x).flatten(1))


def _load(path: Path, model: nn.Module, **options: Any) -> nn.Module:
    """``method: artifact`` on ``path`` as the engine runs it (W32: the census is not under test here)."""
    from pytest_qrel.quantize import QUANTIZERS, quantize, validate_quantizer

    config = QUANTIZERS.meta("artifact")["bind"](validate_quantizer("artifact", 8, 8, {"path": str(path), "latency": False, **options}), path.parent)
    return quantize(model, config, IMAGES).eval()


def _onnx(path: Path, model: nn.Module, example: torch.Tensor, *, dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example[:1],), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}} if dynamic else None, opset_version=17)
    return path


def _message(exc: pytest.ExceptionInfo[QuantOptionError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "(fix: " in text and exc.value.option == "path"
    return text


# ------------------------------------------------------------------------------------------ no runtime


def test_reason_keeps_the_line_that_says_what_is_wrong() -> None:
    ov = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'is_valid_weights_range(a, b)' failed at "
                      "src/core/xml_util/src/xml_deserialize_util.cpp:900:\nIncorrect weights in bin file!\n\n")
    assert reason(ov) == "Incorrect weights in bin file!"
    state = RuntimeError("Error(s) in loading state_dict for VisionTransformer:\n\tsize mismatch for head.weight: [10, 64] vs [8, 64].")
    assert reason(state) == "size mismatch for head.weight: [10, 64] vs [8, 64]."
    ort = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: input for the following indices\n"
                       " index: 0 Got: 128 Expected: 1\n Please fix either the inputs/outputs or the model.")
    assert reason(ort).endswith("following indices index: 0 Got: 128 Expected: 1")
    assert reason(RuntimeError("\x1b[1mbold\x1b[0m")) == "bold"


@pytest.mark.parametrize(("inputs", "words"), [
    ([DeclaredInput("x", ("n", 16, 16, 1), "float32")], "input 'x' has shape (n, 16, 16, 1) (another layout: channels last?), "
                                                         "but the suite's model preprocesses images to (N, 1, 16, 16)"),
    ([DeclaredInput("x", (None, 1, 32, 32), "float32")], "has shape (?, 1, 32, 32) (another image size"),
    ([DeclaredInput("x", (None, 256), "float32")], "has shape (?, 256), but"),
    ([DeclaredInput("x", (None, 1, 16, 16), "float16")], "input 'x' is float16; the gate feeds it the suite's preprocessed images in float32"),
    ([DeclaredInput("x", None, "float32"), DeclaredInput("t", (1,), "float32")], "has 2 inputs ('x', 't'); the gate feeds it one"),
])
def test_declared_inputs_that_do_not_fit_are_one_line(inputs: list[DeclaredInput], words: str) -> None:
    with pytest.raises(QuantOptionError) as info:
        check_inputs(Path("m.onnx"), inputs, (1, 16, 16), "torch.onnx.export(...)")
    text = _message(info)
    assert text.startswith("path: m.onnx") and words in text and "one float32 input (N, 1, 16, 16)" in text


def test_declared_batch() -> None:
    assert check_inputs(Path("m"), [DeclaredInput("x", ("n", 1, 16, 16), "float32")], (1, 16, 16), "") is None
    assert check_inputs(Path("m"), [DeclaredInput("x", (4, 1, 16, 16), "float32")], (1, 16, 16), "") == 4
    assert check_inputs(Path("m"), [DeclaredInput("x", None, "float32")], (1, 16, 16), "") is None


def test_path_written_from_the_working_directory_gets_the_suite_relative_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_qrel.runtimes.identity import artifact_paths

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vit.int8.onnx").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)  # pytest runs here; the suite lives in suites/
    with pytest.raises(QuantOptionError) as info:
        artifact_paths("models/vit.int8.onnx", "torch", tmp_path / "suites")
    text = _message(info)
    assert f"artifact file {tmp_path / 'suites' / 'models' / 'vit.int8.onnx'} does not exist" in text
    assert text.endswith(f"(fix: write 'path: ../models/vit.int8.onnx': {tmp_path / 'models' / 'vit.int8.onnx'} is that file, relative to the suite file)")


def test_fixed_batch_run_cuts_and_pads() -> None:
    seen = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :2] * 2

    images = np.arange(7 * 4, dtype=np.float32).reshape(7, 1, 2, 2)
    out = fixed_batch_run(run, 3)(images)
    assert seen == [3, 3, 3] and out.shape == (7, 2)
    np.testing.assert_array_equal(out, images.reshape(7, -1)[:, :2] * 2)


def test_torchao_file_without_torchao_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_qrel.runtimes import artifact

    real = importlib.util.find_spec
    monkeypatch.setattr(artifact.importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    exc = RuntimeError("Weights only load failed. This file can still be loaded, \x1b[1mdo those steps only if you trust the source\x1b[0m.\n"
                       "WeightsUnpickler error: Unsupported global: GLOBAL torchao.quantization.Int8Tensor was not an allowed global")
    text = str(artifact._load_failure(Path("vit.pt"), exc, "cannot be loaded", "save a state dict"))
    assert text == 'path: vit.pt holds torchao-quantized tensors, but torchao is not installed (fix: pip install "pytest-qrel[torchao]")'
    monkeypatch.undo()
    other = RuntimeError(exc.args[0].replace("torchao.quantization.Int8Tensor", "mypkg.Thing"))
    text = str(artifact._load_failure(Path("vit.pt"), other, "cannot be loaded", "save a state dict"))
    assert text.startswith("path: vit.pt holds a pickled mypkg.Thing, not a state dict of tensors") and "\x1b" not in text
    assert text.endswith("(fix: save the model's state dict (torch.save(model.state_dict(), path)) or a .pt2 (torch.export.save))")


# ------------------------------------------------------------------------------------------ torch.export


def test_pt2_program_runs_through_eval_and_in_its_fixed_batch(tmp_path: Path) -> None:
    model = Tiny().eval()
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (IMAGES[:1],)), str(path))  # the default: a batch of 1, fixed
    module = _load(path, model)  # eval() included: ExportedProgram.module() raises on it
    with torch.no_grad():
        torch.testing.assert_close(module(IMAGES), model(IMAGES))
    assert "runs one image at a time" in module.qrel_runtime["census"]["notes"]

    with pytest.raises(QuantOptionError) as info:
        _load(path, Tiny(classes=5))
    assert "tiny.pt2 returns 3 logits per image, but the suite's FP32 model has 5 classes" in _message(info)


# ------------------------------------------------------------------------------------------ ONNX Runtime


@needs("onnx")
def test_onnx_file_is_checked_against_the_suite_when_it_loads(tmp_path: Path) -> None:
    model = Tiny().eval()
    fixed = _onnx(tmp_path / "fixed.onnx", model, IMAGES, dynamic=False)  # exported without a dynamic batch
    module = _load(fixed, model)
    with torch.no_grad():
        torch.testing.assert_close(module(IMAGES), model(IMAGES), rtol=1e-4, atol=1e-5)
    assert "runs one image at a time" in module.qrel_runtime["census"]["notes"]

    last = _onnx(tmp_path / "nhwc.onnx", Tiny(channels_last=True), IMAGES.permute(0, 2, 3, 1))
    with pytest.raises(QuantOptionError) as info:
        _load(last, model)
    assert f"{last}: input 'input' has shape (n, 16, 16, 1) (another layout: channels last?)" in _message(info)

    other = _onnx(tmp_path / "five.onnx", Tiny(classes=5), IMAGES)
    with pytest.raises(QuantOptionError) as info:
        _load(other, model)
    assert f"{other} returns 5 logits per image, but the suite's FP32 model has 3 classes" in _message(info)

    # weights in an external data file (torch.onnx.export(dynamo=True) writes model.onnx.data): read and fingerprinted
    import onnx

    from pytest_qrel.quantize import validate_quantizer
    from pytest_qrel.runtimes.identity import artifact_identity

    outside = tmp_path / "ext" / "tiny.onnx"
    outside.parent.mkdir()
    onnx.save(onnx.load(str(fixed)), str(outside), save_as_external_data=True, location="tiny.onnx.data", size_threshold=0)
    with torch.no_grad():
        torch.testing.assert_close(_load(outside, model)(IMAGES), model(IMAGES), rtol=1e-4, atol=1e-5)
    config = validate_quantizer("artifact", 8, 8, {"path": str(outside)})
    before = artifact_identity(config)["files"]
    assert set(before) == {"tiny.onnx", "tiny.onnx.data"}
    data = outside.with_name("tiny.onnx.data")
    data.write_bytes(data.read_bytes()[::-1])
    assert artifact_identity(config)["files"]["tiny.onnx.data"] != before["tiny.onnx.data"]
    data.unlink()
    with pytest.raises(QuantOptionError) as info:
        _load(outside, model)
    assert f"ONNX model {outside} keeps its weights in the external data file {data}, which does not exist" in _message(info)
    with pytest.raises(QuantOptionError) as info:
        _load(outside.parent, model, runtime="onnxruntime")
    assert f"artifact file {outside.parent} is a folder, not a file" in _message(info)

    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(fixed.read_bytes()[:200])
    with pytest.raises(QuantOptionError) as info:
        _load(truncated, model)
    assert f"ONNX Runtime cannot load {truncated}: " in _message(info)


# ------------------------------------------------------------------------------------------ OpenVINO


@needs("openvino")
@pytest.mark.slow  # importing OpenVINO and converting: ~5 s
def test_openvino_ir_is_checked_against_the_suite_when_it_loads(tmp_path: Path) -> None:
    import openvino as ov

    model = Tiny().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert_model traces with torch.jit, which warns that it is deprecated
        ov.save_model(ov.convert_model(model, example_input=IMAGES[:1], input=[1, 1, 16, 16]), str(tmp_path / "fixed.xml"))
        ov.save_model(ov.convert_model(Tiny(classes=5).eval(), example_input=IMAGES[:1]), str(tmp_path / "five.xml"))
    module = _load(tmp_path / "fixed.xml", model, inference_precision="f32")
    with torch.no_grad():  # the CPU plugin's f32 kernels sum in another order: 1e-4 apart; a wrong row would be 1e-1
        torch.testing.assert_close(module(IMAGES), model(IMAGES), rtol=1e-2, atol=1e-3)
    assert "runs one image at a time" in module.qrel_runtime["census"]["notes"]

    with pytest.raises(QuantOptionError) as info:
        _load(tmp_path / "five.xml", model, inference_precision="f32")
    assert "five.xml returns 5 logits per image, but the suite's FP32 model has 3 classes" in _message(info)

    (tmp_path / "five.bin").write_bytes((tmp_path / "five.bin").read_bytes()[:64])
    with pytest.raises(QuantOptionError) as info:
        _load(tmp_path / "five.xml", model, inference_precision="f32")
    assert "five.xml: Incorrect weights in bin file!" in _message(info)

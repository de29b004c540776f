"""Quantizers are validated when the suite loads: a bad method or option is a SpecError at file:line
naming ``quantizers.<name>.options.<key>`` (collection time, no torch); errors only the model reveals
are located by the engine the same way."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pytest_qrel import Engine, load_suite
from pytest_qrel.errors import QuantOptionError, SpecError
from pytest_qrel.spec.quantizers import quantizer_field

HEAD = """\
name: t
models:
  vit: {source: "embedded:digits_vit"}
  clip: {source: "open_clip:digits_clip"}
datasets:
  id: {name: digits, source: "embedded:digits"}
quantizers:
"""


def write(tmp_path, quantizers: str):
    path = tmp_path / "suite.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(quantizers), "  ") + "checks: [\"all top1 >= 0\"]\n")
    return path


def load_error(tmp_path, quantizers: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_suite(write(tmp_path, quantizers))
    return info.value


def test_bad_option_value_is_located_at_its_key(tmp_path):
    err = load_error(tmp_path, """\
        W4A4:
          method: minmax
          options:
            head: fp32
            batch_size: 0
        """)
    assert err.field == "quantizers.W4A4.options.batch_size"
    assert err.file == str(tmp_path / "suite.yaml") and err.line == 12  # the line of 'batch_size:'
    assert "positive integer" in str(err) and "suite.yaml:12" in str(err)


def test_unknown_option_has_did_you_mean(tmp_path):
    err = load_error(tmp_path, """\
        W8A8:
          method: smoothquant
          options: {alfa: 0.5}
        """)
    assert err.field == "quantizers.W8A8.options.alfa" and err.line == 10
    assert "did you mean 'alpha'" in str(err)


def test_unknown_method_is_located_at_method(tmp_path):
    err = load_error(tmp_path, """\
        W8A8:
          weight_bits: 8
          method: minmaks
        """)
    assert err.field == "quantizers.W8A8.method" and err.line == 10
    assert "did you mean 'minmax'" in str(err)


def test_bits_the_method_cannot_use(tmp_path):
    assert load_suite(write(tmp_path, "W4A4: {method: raana}\n")).quantizers["W4A4"].act_bits == 4  # activations: allowed
    err = load_error(tmp_path, "W3A16: {method: raana, options: {bit_candidates: [4, 8]}}\n")
    assert err.field == "quantizers.W3A16.weight_bits"


def test_valid_quantizers_load(tmp_path):
    suite = load_suite(write(tmp_path, """\
        W8A8: {method: smoothquant, options: {act_quant: per_token, quantize_bmm_input: true, head: fp32}}
        W4A4: {method: qat_lsq, options: {weight_range: full, lr: 1e-4}}
        W4A16: {method: raana}
        """))
    assert suite.quantizers["W4A4"].options == {"weight_range": "full", "lr": 1e-4}


def test_loading_validates_without_importing_torch(tmp_path):
    path = write(tmp_path, "W4A4: {method: minmax, options: {heads: fp32}}\n")
    code = (
        "import sys\n"
        "from pytest_qrel.spec.loader import load_suite\n"
        "from pytest_qrel.errors import SpecError\n"
        f"try:\n    load_suite({str(path)!r})\nexcept SpecError as e:\n    print(e.field)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["quantizers.W4A4.options.heads", "False"]


def test_field_mapping():
    assert quantizer_field("Q", "alpha") == "quantizers.Q.options.alpha"
    assert quantizer_field("Q", "act_bits") == "quantizers.Q.act_bits"
    assert quantizer_field("Q", "calibration") == "quantizers.Q.calibration.samples"
    assert "quantizers" not in str(QuantOptionError("alpha", "bad", "fix it"))


def test_model_dependent_errors_are_located_by_the_engine(tmp_path):
    """repq_vit validates at load time but the CLIP model has no timm Attention: the engine turns the
    method's QuantOptionError into a SpecError at the quantizer's line."""
    suite = load_suite(write(tmp_path, "W8A8: {method: repq_vit, calibration: {samples: 8}}\n"))
    with pytest.raises(SpecError) as info:
        Engine(baseline_dir=tmp_path).quantized_module(suite, "clip", "W8A8")
    err = info.value
    assert err.field == "quantizers.W8A8.method" and err.line == 8 and "no timm Attention" in str(err)

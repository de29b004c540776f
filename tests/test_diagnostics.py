"""Opt-in diagnostics: attention rollout of FP32 and quantized timm ViTs, and the suite key."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_qrel.diagnostics import DIAGNOSTICS, run_diagnostic
from pytest_qrel.diagnostics.rollout import record_attention, rollout
from pytest_qrel.errors import SpecError, UnknownNameError
from pytest_qrel.quantize import calibrate
from pytest_qrel.quantize.attention import QuantAttention, replace_attention
from pytest_qrel.spec import load_suite
from tinyvit import make_vit, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)


def reference_rollout(attentions: list[np.ndarray], discard: float, prefix: int) -> np.ndarray:
    """Rollout written out per image and block (independent of the vectorised code)."""
    b, _, n, _ = attentions[0].shape
    maps = []
    for i in range(b):
        r = np.eye(n)
        for a in attentions:
            fused = a[i].max(axis=0).copy()
            flat = fused.reshape(-1)
            k = int(n * n * discard)
            lowest = np.argsort(flat, kind="stable")[:k]
            for j in lowest:
                if prefix > 0 and j == 0:
                    continue
                flat[j] = 0.0
            step = (flat.reshape(n, n) + np.eye(n)) / 2
            step = step / step.sum(axis=1, keepdims=True)
            r = step @ r
        m = r[0, prefix:] if prefix else r[prefix:, prefix:].mean(axis=0)
        maps.append(m / m.max())
    return np.array(maps)


def test_rollout_matches_a_per_image_reference() -> None:
    rng = np.random.default_rng(0)
    atts = []
    for _ in range(3):
        a = rng.random((2, 4, 17, 17))
        atts.append(a / a.sum(axis=-1, keepdims=True))
    for prefix in (1, 0):
        got = rollout(atts, num_prefix_tokens=prefix, discard_ratio=0.9)
        np.testing.assert_allclose(got, reference_rollout(atts, 0.9, prefix), atol=1e-12)
        assert got.shape == (2, 17 - prefix) and np.allclose(got.max(axis=1), 1.0)


def test_rollout_of_self_attention_only_is_empty() -> None:
    eye = np.broadcast_to(np.eye(5), (1, 2, 5, 5)).copy()
    assert np.all(rollout([eye, eye], discard_ratio=0.0) == 0.0)  # the class token never looks at a patch
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout([eye], discard_ratio=1.0)
    with pytest.raises(ValueError, match="no attention"):
        rollout([])


def test_recorded_attention_is_the_softmax_timm_computes() -> None:
    vit = make_vit()
    x = random_images(2, 0)
    with torch.no_grad(), record_attention(vit) as captured:
        out = vit(x)
    assert len(captured) == 2 and captured[0].shape == (2, 4, 17, 17)
    blk = vit.blocks[0]
    with torch.no_grad():  # block 0's attention by hand from its own weights
        h = blk.norm1(vit._pos_embed(vit.patch_embed(x)))
        qkv = blk.attn.qkv(h).reshape(2, 17, 3, 4, 16).permute(2, 0, 3, 1, 4)
        manual = ((qkv[0] @ qkv[1].transpose(-2, -1)) * blk.attn.scale).softmax(-1)
    torch.testing.assert_close(captured[0], manual, atol=1e-5, rtol=1e-4)
    assert all(b.attn.fused_attn == type(b.attn)(16, 4).fused_attn for b in vit.blocks)  # restored
    assert all(not b.attn.attn_drop._forward_hooks for b in vit.blocks)  # hooks removed
    torch.testing.assert_close(out, vit(x))


def test_attention_rollout_of_fp32_and_quantized_attention() -> None:
    vit = make_vit()
    x = random_images(3, 1)
    info = [{"dataset": "digits", "index": i, "kind": "id"} for i in range(3)]
    fp32 = run_diagnostic("attention_rollout", vit, x, image_info=info)
    assert fp32["grid"] == [4, 4] and len(fp32["maps"]) == 3 and np.array(fp32["maps"]).shape == (3, 4, 4)
    assert fp32["images"] == info and len(fp32["pred"]) == 3 and all(0 < c <= 1 for c in fp32["confidence"])
    assert np.array(fp32["thumbnails"]).shape == (3, 16, 16) and np.array(fp32["thumbnails"]).max() == 1.0
    assert max(max(row) for row in fp32["maps"][0]) == 1.0

    same = copy.deepcopy(vit)  # QuantAttention without quantizers reproduces timm's attention
    replace_attention(same, lambda _n, a: QuantAttention(a, act_bits=None))
    np.testing.assert_allclose(run_diagnostic("attention_rollout", same, x)["maps"], fp32["maps"], atol=1e-3)

    q4 = copy.deepcopy(vit)  # 4-bit operands, calibrated on the same images: the recorded attention is the quantized one
    replace_attention(q4, lambda _n, a: QuantAttention(a, act_bits=4))
    calibrate(q4, x)
    with torch.no_grad(), record_attention(q4) as captured:
        q4(x)
    assert len(torch.unique(captured[0])) <= 16  # what the matmul consumes: at most 2^4 values
    maps = run_diagnostic("attention_rollout", q4, x)["maps"]
    assert np.array(maps).shape == (3, 4, 4) and not np.allclose(maps, fp32["maps"], atol=1e-3)


def test_run_diagnostic_errors() -> None:
    with pytest.raises(UnknownNameError, match="attention_rollout"):
        run_diagnostic("attention_rolout", make_vit(), random_images(1, 0))
    with pytest.raises(ValueError, match="image_info has 1 entries for 2 images"):
        run_diagnostic("attention_rollout", make_vit(), random_images(2, 0), image_info=[{}])
    with pytest.raises(ValueError, match="needs a timm Vision Transformer"):
        run_diagnostic("attention_rollout", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 8)), random_images(1, 0))
    assert "attention_rollout" in DIAGNOSTICS


SUITE = """\
version: 1
name: diag
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
quantizers:
  W8A8: {{method: minmax}}
{diagnostics}
checks: ["W8A8 top1 delta <= 1pp"]
"""


def suite_with(tmp_path: Path, diagnostics: str) -> Path:
    path = tmp_path / "diag.yaml"
    path.write_text(textwrap.dedent(SUITE.format(diagnostics=diagnostics)))
    return path


def test_suite_key_diagnostics(tmp_path: Path) -> None:
    assert load_suite(suite_with(tmp_path, "diagnostics: [attention_rollout]")).diagnostics == ("attention_rollout",)
    assert load_suite(suite_with(tmp_path, "")).diagnostics == ()
    with pytest.raises(SpecError) as err:
        load_suite(suite_with(tmp_path, "diagnostics: [attention_rollout, atention_rollout]"))
    text = str(err.value)
    assert "diag.yaml:9" in text and "diagnostics[1]" in text and "did you mean 'attention_rollout'" in text
    with pytest.raises(SpecError, match="must be a list of diagnostic names"):
        load_suite(suite_with(tmp_path, "diagnostics: {attention_rollout: 1}"))

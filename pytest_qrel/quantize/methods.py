"""The built-in quantization methods: one :data:`~pytest_qrel.quantize.base.QUANTIZERS` entry each.

Each entry names its typed options class (:mod:`.options`, no torch) and its implementation, which is
imported on first use: :func:`~pytest_qrel.quantize.base.validate_quantizer` can check a suite's
quantizers at collection time without importing torch.
"""

from __future__ import annotations

from typing import Any

from .base import QUANTIZERS, lazy_method
from .options import (
    DistillOptions,
    LinearQuantOptions,
    LoRAOptions,
    LSQOptions,
    MethodOptions,
    MSEOptions,
    PercentileOptions,
    QATOptions,
    RaanAOptions,
    RepQOptions,
    SmoothQuantOptions,
)


def _add(name: str, target: str, options: type[MethodOptions], summary: str, *, accepts_targets: bool = False) -> None:
    def parse(raw: Any, *, method: str) -> Any:
        return options.parse(raw, method=method)

    QUANTIZERS.add(name, lazy_method(f"pytest_qrel.quantize.{target}"), options=tuple(options.accepted()),
                   parse=parse, options_type=options, summary=summary, accepts_targets=accepts_targets)


_add("minmax", "minmax:minmax", LinearQuantOptions,
     "static min/max PTQ of every nn.Linear: weights symmetric per channel, inputs asymmetric per tensor")
_add("percentile", "observers:percentile", PercentileOptions,
     "minmax with inputs clipped at the p-th / (100-p)-th percentile of the calibration activations")
_add("mse", "observers:mse", MSEOptions,
     "minmax with the input range shrunk to minimise the L2 quantization error on calibration data")
_add("smoothquant", "smoothquant:smoothquant", SmoothQuantOptions,
     "SmoothQuant: migrate activation outliers of LayerNorm -> Linear inputs into the weights, then minmax")
_add("repq_vit", "repq_vit:repq_vit", RepQOptions,
     "RepQ-ViT: linears, attention matmuls (log-sqrt2 softmax) and patch embedding, "
     "post-LayerNorm scale reparameterization, percentile-searched ranges")
_add("raana", "raana:raana", RaanAOptions,
     "RaanA: randomized-Hadamard RaBitQ weight codes, per-layer bits from gradient sensitivity; "
     "weight-only, or with static per-tensor inputs (act_bits)")
_add("qat", "qat:qat_method", QATOptions,
     "basic light QAT: minmax fake-quant (weights per channel, inputs static per tensor) + STE, model fine-tuned",
     accepts_targets=True)
_add("qat_lsq", "qat:qat_method", LSQOptions,
     "light QAT with LSQ: learnable per-tensor steps for weights and inputs, model fine-tuned", accepts_targets=True)
_add("qat_lsq_per_channel", "qat:qat_method", LSQOptions,
     "light QAT with LSQ, one learnable weight step per output channel", accepts_targets=True)
_add("qat_distill", "qat:qat_method", DistillOptions,
     "light QAT with LSQ trained on KL divergence to the FP32 model's softened outputs (+ CE)", accepts_targets=True)
_add("qat_lora", "qat:qat_method", LoRAOptions,
     "QAT-LoRA: fake-quantized base (per-channel steps) + LoRA adapters on the unquantized input, unmerged "
     "(lora_merge: true folds them into the weight); optional feature-MSE distillation", accepts_targets=True)

"""Activation observers: how a static activation range is chosen from calibration data.

An observer is a strategy object (:class:`ActObserver`) with ``reset()``, ``update(x)`` and
``qparams(bits) -> (scale, zero_point)``; :class:`ObservedActQuantizer` is the drop-in
:class:`~pytest_qrel.quantize.fakequant.ActQuantizer` that asks one for its parameters, so any
method can pair any layer with any range rule::

    lin = FakeQuantLinear(linear, weight_bits=4, act_bits=4)
    lin.input_quantizer = ObservedActQuantizer(4, PercentileObserver(99.99))

Strategies:

- :class:`MinMaxObserver`: the running min and max (what ``minmax`` does).
- :class:`PercentileObserver`: clip at the ``p``-th and ``(100 - p)``-th percentile of the observed values.
- :class:`MSEObserver`: among ``grid`` shrunk ranges ``alpha * [min, max]``
  (``alpha = 1, 1 - 1/grid, ..., 1/grid``) the one whose fake-quantized values have the smallest
  squared error against the observed values.
- :class:`PercentileSearchObserver`: RepQ-ViT's rule: among the percentile pairs
  ``(1 - p, p)`` for ``p`` in ``{0.999, 0.9999, 0.99999}``, the range with the smallest mean squared
  quantization error; its range is *not* widened to contain zero (the zero point may lie outside
  ``[0, 2^b - 1]``), optionally one range per channel (last dimension). Its ``arithmetic`` is
  ``"reference"`` (default: the reference code's library calls, see :func:`reference_quantiles` and
  :func:`fake_quantize_divide`) or ``"aten"`` (exact float64-position quantiles, ATen's multiply by
  ``1 / scale``).

The first three give the project's usual asymmetric parameters (:func:`asymmetric_qparams`: range
widened to contain 0, zero point in ``[0, 2^b - 1]``).

**How values are collected.** Percentile and MSE rules need the values, not just the extremes.
:class:`ValueSample` keeps a uniform random sample without replacement of everything observed,
bounded by ``max_values`` (each value gets a random key from a generator seeded with ``seed``; the
``max_values`` smallest keys are kept, so the sample is the same whatever the batching and
deterministic from run to run). Until ``max_values`` values have been seen, nothing is dropped and the
percentiles/errors are exact; beyond it they are estimated from the sample. The running min and max
are always exact. ``max_values=None`` keeps everything (RepQ-ViT calibrates on one batch and uses
exact quantiles). Quantiles are exact order statistics with linear interpolation (``torch.quantile``'s
``"linear"``, computed with ``topk`` so there is no 2^24-element limit).

Methods (the same modules and weight handling as ``minmax`` for the same options: every selected
``nn.Linear``, ``head`` / ``patch_embed`` / ``weight_granularity`` / ``weight_symmetric`` /
``batch_size`` as for ``minmax``; inputs asymmetric per tensor, static), differing only in the range
rule:

- ``percentile``: options ``percentile`` (number in (50, 100], default 99.99: the upper clip is that
  percentile of the observed inputs, the lower clip the ``100 - p``-th), ``max_values`` (default
  2^20 = 1,048,576 values kept per quantizer).
- ``mse``: options ``grid`` (positive int, default 100 candidate ranges), ``max_values`` (default
  2^18 = 262,144: the error of each candidate is measured on that sample).

Until this release both ignored ``head``, ``patch_embed`` and the weight options (they quantized
every ``nn.Linear`` per channel whatever was asked); with the defaults their models are unchanged.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from .base import QuantConfig
from .fakequant import (
    EPS,
    ActQuantizer,
    compiled_fake_quantize,
    fake_quantize_per_tensor,
    asymmetric_qparams,
    fake_quantize_reference,
    quant_params_like,
    unsigned_range,
)

REPQ_PERCENTILES = (0.999, 0.9999, 0.99999)
"""The candidate clipping percentiles (as fractions) of RepQ-ViT's reference code."""

Arithmetic = Literal["reference", "aten"]
"""How RepQ-ViT's quantizers compute (see :func:`reference_quantiles`, :func:`fake_quantize_divide`):

- ``"reference"``: the library calls of RepQ-ViT's reference code: quantiles by ``torch.quantile``
  (``np.percentile`` where the installed torch refuses the tensor), fake quantization dividing by
  the scale;
- ``"aten"``: exact quantiles with float64 positions (:func:`quantiles`), fake quantization
  multiplying by ``1 / scale`` (ATen's kernels and the integer runtimes' formula).

They differ in the last bits of a quantile (torch's rank arithmetic in the input's dtype) and at exact
rounding ties; the clipping candidate chosen can differ where two candidates' errors nearly tie."""
ARITHMETICS: tuple[str, ...] = ("reference", "aten")


# --------------------------------------------------------------------------------------------------
# Values and quantiles
# --------------------------------------------------------------------------------------------------


def quantiles(values: Tensor, qs: Sequence[float], dim: int = 0) -> Tensor:
    """Exact quantiles of ``values`` along ``dim`` with linear interpolation, one row per ``q``.

    Same definition as ``torch.quantile(values, q, dim, interpolation="linear")``: with ``n`` values
    sorted ascending ``v``, position ``pos = q (n - 1)``, result ``lerp(v[floor(pos)], v[floor(pos) + 1],
    pos - floor(pos))``. Positions are computed in float64 (``torch.quantile`` uses the input's dtype and
    refuses more than 2^24 values); only the tails needed are extracted with ``topk``. Returns a
    tensor of shape ``(len(qs),) + values.shape without dim``.
    """
    if not qs:
        raise ValueError("quantiles(): no q given")
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles(): q must be in [0, 1], got {list(qs)}")
    x = values.movedim(dim, 0)
    n = x.shape[0]
    if n == 0:
        raise ValueError("quantiles(): no values")
    plan = []
    for q in qs:
        pos = q * (n - 1)
        lo = min(int(math.floor(pos)), n - 1)
        hi = min(lo + 1, n - 1)
        plan.append((lo, hi, pos - lo))
    high_k = max((n - lo for (lo, _, _), q in zip(plan, qs) if q >= 0.5), default=0)
    low_k = max((hi + 1 for (_, hi, _), q in zip(plan, qs) if q < 0.5), default=0)
    top = x.topk(high_k, dim=0, largest=True, sorted=True).values if high_k else None
    bottom = x.topk(low_k, dim=0, largest=False, sorted=True).values if low_k else None

    def at(index: int, q: float) -> Tensor:  # the ascending order statistic `index`
        if q >= 0.5:
            assert top is not None
            return top[n - 1 - index]
        assert bottom is not None
        return bottom[index]

    out = [torch.lerp(at(lo, q), at(hi, q), torch.tensor(w, dtype=x.dtype, device=x.device))
           for (lo, hi, w), q in zip(plan, qs)]
    return torch.stack(out)


def reference_quantiles(values: Tensor, qs: Sequence[float], dim: int = 0) -> Tensor:
    """Quantiles of ``values`` along ``dim`` as RepQ-ViT's reference code computes them, one row per ``q``.

    The reference calls ``torch.quantile(x, q)`` (``q`` becomes a tensor of ``x``'s dtype; the rank
    arithmetic is that of the installed torch: older releases multiply in float32, newer ones in
    float64) and, where ``torch.quantile`` refuses the tensor (torch releases that limit it to 2^24
    elements), ``np.percentile(x, q * 100)`` converted to float32. This function makes the same
    calls, so it returns what the reference computes with the installed torch and numpy. Shape
    ``(len(qs),) + values.shape without dim``.
    """
    if not qs:
        raise ValueError("reference_quantiles(): no q given")
    x = values.movedim(dim, 0)
    if x.shape[0] == 0:
        raise ValueError("reference_quantiles(): no values")
    q = torch.tensor([float(v) for v in qs], dtype=x.dtype, device=x.device)
    try:
        return torch.quantile(x, q, dim=0)
    except RuntimeError:  # torch's size limit: the reference falls back to numpy
        pct = [float(v) * 100 for v in qs]
        out = np.percentile(x.detach().cpu().numpy(), pct, axis=0)
        return torch.tensor(out, dtype=torch.float32, device=x.device)


def quantiles_by(arithmetic: Arithmetic) -> Callable[..., Tensor]:
    """:func:`reference_quantiles` (``"reference"``) or :func:`quantiles` (``"aten"``)."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    return reference_quantiles if arithmetic == "reference" else quantiles


def fake_quantize_divide(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float, quant_min: int, quant_max: int, axis: int | None = None
) -> Tensor:
    """Uniform fake quantization as RepQ-ViT's reference code writes it (float32)::

        q = clamp(round(x / scale) + zero_point, quant_min, quant_max);   x_hat = (q - zero_point) * scale

    Unlike :func:`~pytest_qrel.quantize.fakequant.fake_quantize_reference` (ATen: ``x * (1 / scale)``)
    it divides; the two differ only where the quotient lies within an ulp of a rounding tie. The
    zero point may be fractional (the reference's mean zero point after scale reparameterization):
    the codes are then ``k + frac(zero_point)`` clamped to ``[quant_min, quant_max]``, up to
    ``quant_max - quant_min + 2`` values. ``axis``: per-channel parameters along that dimension
    (``None``: per tensor, or broadcast along the last dimension).
    """
    scale_t, zp_t = quant_params_like(x, scale, zero_point, axis)
    q = torch.clamp(torch.round(x.float() / scale_t) + zp_t, quant_min, quant_max)
    return ((q - zp_t) * scale_t).to(x.dtype)


_COMPILED_DIVIDE: list[Callable[..., Tensor]] = []


def compiled_fake_quantize_divide() -> Callable[..., Tensor]:
    """One shared ``torch.compile`` of :func:`fake_quantize_divide` (the ``--qrel-compile`` kernel of
    quantizers with the reference arithmetic; same elementwise ops in the same order, so the same
    outputs as eager)."""
    if not _COMPILED_DIVIDE:
        _COMPILED_DIVIDE.append(torch.compile(fake_quantize_divide, dynamic=True))
    return _COMPILED_DIVIDE[0]


def fake_quantizer_by(arithmetic: Arithmetic) -> Callable[..., Tensor]:
    """:func:`fake_quantize_divide` (``"reference"``) or ATen's formula :func:`fake_quantize_reference` (``"aten"``)."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    return fake_quantize_divide if arithmetic == "reference" else fake_quantize_reference


def _smallest(keys: Tensor, k: int) -> Tensor:
    """Indices (ascending) of the ``k`` smallest of ``keys`` (1-D), in O(n) with ``kthvalue``."""
    threshold = keys.kthvalue(k).values
    idx = (keys <= threshold).nonzero().squeeze(1)
    return idx[:k]  # ties at the threshold (probability ~0 for random keys): keep the first ones


class ValueSample:
    """A bounded, deterministic uniform sample of the rows of everything passed to :meth:`update`.

    ``update(x)`` views ``x`` as rows of ``channels`` values (``channels=1``: every element is a row;
    ``channels=C``: the last dimension, so a row is one token's channel vector). Every row gets a
    random key (``torch.Generator`` seeded with ``seed``); the ``max_values // channels`` rows with the
    smallest keys are kept: a uniform sample without replacement, independent of batching. Until the
    bound is reached every row is kept. ``max_values=None``: no bound.
    """

    def __init__(self, max_values: int | None = None, *, channels: int = 1, seed: int = 0) -> None:
        if max_values is not None and max_values < 1:
            raise ValueError(f"max_values must be a positive integer or None, got {max_values!r}")
        self.max_values = max_values
        self.channels = channels
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._rows: Tensor | None = None
        self._keys: Tensor | None = None
        self.seen = 0  # rows seen in total
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def empty(self) -> bool:
        return self._rows is None

    @property
    def capacity(self) -> int | None:
        return None if self.max_values is None else max(1, self.max_values // self.channels)

    def update(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, self.channels)
        if rows.shape[0] == 0:
            return
        self.seen += rows.shape[0]
        cap = self.capacity
        if cap is None:
            self._rows = rows.clone() if self._rows is None else torch.cat([self._rows, rows])
            return
        keys = torch.rand(rows.shape[0], generator=self._generator).to(rows.device)
        if rows.shape[0] > cap:  # pre-select within the batch: only its `cap` smallest keys can survive
            idx = _smallest(keys, cap)
            keys, rows = keys[idx], rows[idx]
        if self._rows is None:
            self._rows, self._keys = rows.clone(), keys
        else:
            assert self._keys is not None
            self._rows, self._keys = torch.cat([self._rows, rows]), torch.cat([self._keys, keys])
        if self._rows.shape[0] > cap:
            assert self._keys is not None
            idx = _smallest(self._keys, cap)
            self._keys, self._rows = self._keys[idx], self._rows[idx]

    def values(self) -> Tensor:
        """The kept rows, shape ``(n, channels)``, float32."""
        if self._rows is None:
            raise RuntimeError("ValueSample.values(): nothing was observed")
        return self._rows.to(torch.float32)


# --------------------------------------------------------------------------------------------------
# Observers
# --------------------------------------------------------------------------------------------------


class ActObserver(ABC):
    """A rule that turns observed activations into static quantization parameters.

    ``update(x)`` may be called any number of times (one per calibration batch); ``qparams(bits)``
    returns ``(scale float32, zero_point int32)``, 0-dim for a per-tensor observer or of shape ``(C,)``
    for a per-channel one (``per_channel = True``; channels on the last dimension). ``reset()``
    forgets everything (and frees what was stored). Observers are plain Python objects: stateless
    between ``reset`` calls apart from what they observed.
    """

    per_channel: bool = False

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, x: Tensor) -> None: ...

    @property
    @abstractmethod
    def empty(self) -> bool: ...

    @abstractmethod
    def qparams(self, bits: int) -> tuple[Tensor, Tensor]: ...

    def _require(self) -> None:
        if self.empty:
            raise RuntimeError(f"{type(self).__name__}.qparams(): nothing was observed")


class MinMaxObserver(ActObserver):
    """The running min and max: ``asymmetric_qparams(min, max, bits)`` (what ``minmax`` uses)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.min_val is None

    def update(self, x: Tensor) -> None:
        if x.numel() == 0:
            return
        lo, hi = torch.aminmax(x.detach().float())
        self.min_val = lo if self.min_val is None else torch.minimum(self.min_val, lo)
        self.max_val = hi if self.max_val is None else torch.maximum(self.max_val, hi)

    def qparams(self, bits: int) -> tuple[Tensor, Tensor]:
        self._require()
        assert self.min_val is not None and self.max_val is not None  # _require(): something was observed
        return asymmetric_qparams(self.min_val, self.max_val, bits)


class _SampledObserver(MinMaxObserver):
    """Exact running min/max plus a :class:`ValueSample` of the values."""

    def __init__(self, max_values: int | None, seed: int = 0) -> None:
        self.sample = ValueSample(max_values, seed=seed)
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.sample.reset()

    def update(self, x: Tensor) -> None:
        super().update(x)
        if x.numel():
            self.sample.update(x)


class PercentileObserver(_SampledObserver):
    """Clip at percentiles: ``[P_(100-p), P_p]`` of the observed values (``p`` in percent, (50, 100]).

    Parameters are ``asymmetric_qparams(lo, hi, bits)`` (the range is widened to contain zero).
    ``p = 100`` is min/max. Values beyond ``max_values`` are subsampled (see :class:`ValueSample`).
    """

    def __init__(self, percentile: float = 99.99, *, max_values: int | None = 2**20, seed: int = 0) -> None:
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)
        super().__init__(max_values, seed)

    def range(self) -> tuple[Tensor, Tensor]:
        """The clipping range ``(lo, hi)`` before zero is forced into it."""
        self._require()
        p = self.percentile / 100.0
        lo, hi = quantiles(self.sample.values().reshape(-1), [1.0 - p, p])
        return lo, hi

    def qparams(self, bits: int) -> tuple[Tensor, Tensor]:
        lo, hi = self.range()
        return asymmetric_qparams(lo, hi, bits)


class MSEObserver(_SampledObserver):
    """The shrunk range ``alpha * [min, max]`` with the least squared quantization error.

    Candidates ``alpha = 1 - i / grid`` for ``i = 0 .. grid - 1`` (so ``alpha = 1`` is min/max);
    for each, ``(scale, zp) = asymmetric_qparams(alpha min, alpha max, bits)`` and the error is
    ``sum((x - fq(x))^2)`` over the observed values (the sample of :class:`ValueSample` beyond
    ``max_values``). The smallest error wins; ties keep the wider range.
    """

    def __init__(self, grid: int = 100, *, max_values: int | None = 2**18, seed: int = 0) -> None:
        if not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a positive integer, got {grid!r}")
        self.grid = grid
        super().__init__(max_values, seed)

    def candidates(self, bits: int) -> list[tuple[float, Tensor, Tensor, Tensor]]:
        """``(alpha, scale, zero_point, error)`` for every candidate, widest first."""
        self._require()
        assert self.min_val is not None and self.max_val is not None  # _require(): something was observed
        qmin, qmax = unsigned_range(bits)
        x = self.sample.values().reshape(-1)
        out = []
        for i in range(self.grid):
            alpha = 1.0 - i / self.grid
            scale, zp = asymmetric_qparams(self.min_val * alpha, self.max_val * alpha, bits)
            s, z = scale.to(x.device), zp.to(device=x.device, dtype=torch.float32)
            # fake_quantize_reference's formula (== the fused op), in place: ~10x faster than the fused op on CPU
            err = torch.round(x * (1.0 / s)).add_(z).clamp_(qmin, qmax).sub_(z).mul_(s).sub_(x)
            out.append((alpha, scale, zp, err.square_().sum()))
        return out

    def qparams(self, bits: int) -> tuple[Tensor, Tensor]:
        best = None
        for cand in self.candidates(bits):
            if best is None or cand[3] < best[3]:
                best = cand
        assert best is not None
        return best[1], best[2]


class PercentileSearchObserver(ActObserver):
    """RepQ-ViT's rule: the percentile clip with the least mean squared error, optionally per channel.

    For each ``p`` in ``percentiles`` (fractions; default :data:`REPQ_PERCENTILES`) the candidate range is
    ``[lo, hi] = [Q(1 - p), Q(p)]`` of the observed values (per channel: of that channel's values), with
    ``scale = max((hi - lo) / (2^b - 1), EPS)`` and ``zero_point = round(-lo / scale)``; the error is
    ``mean((x - fq(x))^2)`` with ``fq(x) = (clamp(round(x / scale) + zp, 0, 2^b - 1) - zp) * scale``.
    The first smallest error wins. Unlike :func:`asymmetric_qparams`, the range is not widened to
    contain zero, so ``zero_point`` may lie outside ``[0, 2^b - 1]`` (a channel whose values are all
    positive): the fused PyTorch fake-quant ops refuse that, :class:`ObservedActQuantizer` then uses
    :func:`fake_quantize_reference`. ``max_values=None`` (default) keeps every value (exact).
    ``arithmetic`` (:data:`Arithmetic`): ``"reference"`` (default) computes the quantiles and the
    candidates' errors with the reference code's calls (:func:`reference_quantiles`,
    :func:`fake_quantize_divide`), ``"aten"`` with :func:`quantiles` and ATen's formula.
    """

    def __init__(
        self,
        percentiles: Sequence[float] = REPQ_PERCENTILES,
        *,
        per_channel: bool = False,
        max_values: int | None = None,
        seed: int = 0,
        arithmetic: Arithmetic = "reference",
    ) -> None:
        if not percentiles or any(not 0.5 < float(p) <= 1.0 for p in percentiles):
            raise ValueError(f"percentiles must be fractions in (0.5, 1], got {list(percentiles)!r}")
        quantiles_by(arithmetic)  # ValueError for an unknown one
        self.percentiles = tuple(float(p) for p in percentiles)
        self.per_channel = per_channel
        self.max_values = max_values
        self.seed = seed
        self.arithmetic = arithmetic
        self.sample: ValueSample | None = None

    def reset(self) -> None:
        self.sample = None

    @property
    def empty(self) -> bool:
        return self.sample is None or self.sample.empty

    def update(self, x: Tensor) -> None:
        if x.numel() == 0:
            return
        if self.sample is None:
            channels = x.shape[-1] if self.per_channel else 1
            self.sample = ValueSample(self.max_values, channels=channels, seed=self.seed)
        self.sample.update(x)

    def qparams(self, bits: int) -> tuple[Tensor, Tensor]:
        self._require()
        assert self.sample is not None
        values = self.sample.values()  # (n, C)
        scale, zp = search_percentile_qparams(values, bits, self.percentiles, arithmetic=self.arithmetic)
        return (scale, zp) if self.per_channel else (scale.reshape(()), zp.reshape(()))


def search_percentile_qparams(
    values: Tensor, bits: int, percentiles: Sequence[float] = REPQ_PERCENTILES, *, arithmetic: Arithmetic = "reference"
) -> tuple[Tensor, Tensor]:
    """RepQ-ViT's clipping search on every column of ``values`` (n, C): ``(scale (C,), zero_point (C,))``.

    See :class:`PercentileSearchObserver` for the rule. Used for activations (columns = channels)
    and, on the transposed weight rows, for weights (:func:`repq_weight_quantizer`). With
    ``arithmetic="reference"`` the quantiles are :func:`reference_quantiles` and a candidate's error
    is the mean over the column of ``(x - fake_quantize_divide(x))^2``, each column reduced on its
    own contiguous copy (as the reference reduces one channel at a time); with ``"aten"``,
    :func:`quantiles` and ATen's formula.
    """
    qmin, qmax = unsigned_range(bits)
    values = values.to(torch.float32)
    qs = [q for p in percentiles for q in (1.0 - p, p)]
    qv = quantiles_by(arithmetic)(values, qs, dim=0)  # (2P, C)
    reference = arithmetic == "reference"
    columns = values.t().contiguous() if reference else values  # (C, n) for the reference's per-channel reductions
    best_scale = best_zp = best_err = None
    for i in range(len(percentiles)):
        lo, hi = qv[2 * i], qv[2 * i + 1]
        scale = torch.clamp_min((hi - lo) / float(qmax - qmin), EPS)
        zp = torch.round(-lo / scale)
        if reference:
            err = (columns - fake_quantize_divide(columns, scale, zp, qmin, qmax, axis=0)).abs().pow(2).mean(dim=1)
        else:
            err = (fake_quantize_reference(values, scale, zp, qmin, qmax, axis=1) - values).square().mean(dim=0)
        if best_err is None:
            best_scale, best_zp, best_err = scale, zp, err
        else:
            assert best_scale is not None and best_zp is not None  # set with best_err
            better = err < best_err  # strict: the first smallest wins
            best_scale = torch.where(better, scale, best_scale)
            best_zp = torch.where(better, zp, best_zp)
            best_err = torch.where(better, err, best_err)
    assert best_scale is not None and best_zp is not None
    return best_scale.to(torch.float32), best_zp.to(torch.int32)


# --------------------------------------------------------------------------------------------------
# The quantizer module
# --------------------------------------------------------------------------------------------------


class ObservedActQuantizer(ActQuantizer):
    """An :class:`ActQuantizer` whose parameters come from an :class:`ActObserver`.

    Modes (``mode``): ``"observe"`` (pass through, feed the observer), ``"quantize"``, ``"off"`` as in
    :class:`ActQuantizer`, plus ``"calibrate"``: the next call feeds the observer, freezes and returns
    the quantized input (one-shot calibration in which later quantizers see already-quantized
    inputs; see :func:`calibrate_one_shot`). ``scale`` / ``zero_point`` are 0-dim (per tensor) or
    ``(C,)`` (per channel, last dimension) as the observer returns them. ``min_val`` / ``max_val``
    keep the raw observed extremes. The stored values are released at :meth:`freeze`.

    ``arithmetic`` says how it quantizes: ``"aten"`` (default): ATen's formula, through the fused
    ``torch.fake_quantize_per_tensor_affine`` when it can (per tensor, integer zero point in range)
    and :func:`fake_quantize_reference` (the same formula) otherwise; ``"reference"``: RepQ-ViT's
    reference code, :func:`fake_quantize_divide`. The zero point is an integer (int32) unless
    :meth:`set_qparams` is told to keep a fractional one (RepQ-ViT's mean zero point; float32 then).
    """

    # ActQuantizer's modes plus "calibrate" (a wider type than the base class declares).
    mode: Literal["observe", "quantize", "off", "calibrate"]  # type: ignore[assignment]

    def __init__(self, bits: int, observer: ActObserver, *, arithmetic: Arithmetic = "aten") -> None:
        super().__init__(bits)
        fake_quantizer_by(arithmetic)  # ValueError for an unknown one
        self.observer = observer
        self.arithmetic = arithmetic

    @property
    def per_channel(self) -> bool:
        return self.scale.dim() > 0

    @property
    def integer_zero_point(self) -> bool:
        return not self.zero_point.is_floating_point()

    def reset(self) -> None:
        super().reset()
        self.observer.reset()

    def calibrate_once(self) -> None:
        """Forget what was observed; the next forward calibrates on its input, freezes and quantizes."""
        self.reset()
        self.mode = "calibrate"

    def freeze(self) -> None:
        if self.mode == "quantize" and self.observer.empty:
            return  # already frozen (the observer's values were released)
        if not self.observed or self.observer.empty:
            raise RuntimeError(
                "ObservedActQuantizer.freeze(): no input was observed; run calibration batches through "
                "the model in observe mode first (is this module ever called by the model's forward?)"
            )
        scale, zero_point = self.observer.qparams(self.bits)
        self.set_qparams(scale, zero_point)
        self.observer.reset()

    def set_qparams(self, scale: Tensor, zero_point: Tensor, *, round_zero_point: bool = True) -> None:
        """Fix ``scale`` (float32) and ``zero_point``, 0-dim or per channel; mode -> quantize.

        ``round_zero_point=True``: the zero point is rounded to int32 (half to even); ``False``: it is
        kept as given (float32, possibly fractional, as RepQ-ViT's reference keeps its mean zero point).
        """
        device = self.scale.device
        self.scale = torch.as_tensor(scale, dtype=torch.float32).detach().clone().to(device)
        zp = torch.as_tensor(zero_point).detach().float()
        self.zero_point = (torch.round(zp).to(torch.int32) if round_zero_point else zp.clone()).to(device)
        self.mode = "quantize"

    def _observe(self, x: Tensor) -> None:
        if x.numel():
            lo, hi = torch.aminmax(x.detach())
            torch.minimum(self.min_val, lo.to(self.min_val.dtype), out=self.min_val)
            torch.maximum(self.max_val, hi.to(self.max_val.dtype), out=self.max_val)
        self.observer.update(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "calibrate":
            self._observe(x)
            self.freeze()
        if self.mode == "quantize":
            # per tensor, or per channel along the last dim by broadcasting: the same formula
            if self.arithmetic == "reference":
                fn = compiled_fake_quantize_divide() if self.compiled else fake_quantize_divide
                return fn(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
            if self.compiled:
                return compiled_fake_quantize()(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
            if (not self.per_channel and self.integer_zero_point
                    and self.quant_min <= int(self.zero_point) <= self.quant_max):
                return fake_quantize_per_tensor(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
            axis = x.dim() - 1 if self.per_channel else None
            return fake_quantize_reference(x, self.scale, self.zero_point, self.quant_min, self.quant_max, axis)
        if self.mode == "observe":
            self._observe(x)
        return x

    def extra_repr(self) -> str:
        text = f"bits={self.bits}, mode={self.mode}, observer={type(self.observer).__name__}"
        if self.arithmetic != "aten":
            text += f", arithmetic={self.arithmetic}"
        if self.mode == "quantize":
            if self.per_channel:
                text += f", per_channel={self.scale.numel()}"
            else:
                zp = int(self.zero_point) if self.integer_zero_point else f"{float(self.zero_point):.6g}"
                text += f", scale={self.scale.item():.6g}, zero_point={zp}"
        return text


def calibrate_one_shot(model: nn.Module, images: Tensor) -> None:
    """Calibrate every one-shot quantizer of ``model`` on ONE forward pass of all ``images``.

    Each module with a ``calibrate_once()`` method (:class:`ObservedActQuantizer`,
    :class:`~pytest_qrel.quantize.attention.LogSqrt2Quantizer`) is put in ``"calibrate"`` mode: on its
    first call it fixes its parameters from the whole batch and quantizes from then on, so every
    quantizer is calibrated on inputs computed by an already-quantized upstream (RepQ-ViT's
    protocol). Weights must already be frozen by the caller. ``images`` run as one batch under
    ``torch.no_grad`` on the device/dtype of the model's first parameter.

    Raises:
        RuntimeError: a quantizer was never called by the forward pass.
    """
    quantizers = [(n, m) for n, m in model.named_modules() if callable(getattr(m, "calibrate_once", None))]
    for _, m in quantizers:
        m.calibrate_once()
    if not quantizers:
        return
    if images.shape[0] == 0:
        raise ValueError("calibrate_one_shot(): no calibration images")
    ref = next(iter(model.parameters()), None)
    if ref is not None:
        images = images.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    with torch.no_grad():
        model(images)
    missed = [n for n, m in quantizers if getattr(m, "mode", None) == "calibrate"]
    if missed:
        raise RuntimeError(f"calibrate_one_shot(): quantizers never called by the forward pass: {missed}")


# --------------------------------------------------------------------------------------------------
# Methods: minmax with another range rule
# --------------------------------------------------------------------------------------------------


def observer_ptq(
    model: nn.Module,
    config: QuantConfig,
    calibration: Tensor,
    make_observer: Callable[[], ActObserver],
) -> nn.Module:
    """``minmax``'s recipe with another activation range rule: a quantized deep copy of ``model``.

    The modules are those of ``minmax`` for the same options (:func:`~.minmax.apply_minmax`: every
    selected ``nn.Linear``, the head as ``head`` says, the patch embedding as ``patch_embed`` says,
    weights as ``weight_granularity`` / ``weight_symmetric`` say); each quantized input gets an
    :class:`ObservedActQuantizer` with a fresh ``make_observer()``; calibration is the usual observe /
    forward in batches / freeze protocol on the FP32 model.
    """
    from .minmax import apply_minmax, check_calibration

    check_calibration(config, calibration)
    qmodel = copy.deepcopy(model).eval()
    apply_minmax(qmodel, config, calibration, config.options,
                 input_quantizer=lambda bits: ObservedActQuantizer(bits, make_observer()))
    return qmodel


def to_model_device(qmodel: nn.Module) -> None:
    """Move the quantizers built on the CPU to the device of ``qmodel``'s first parameter (in place)."""
    ref = next(iter(qmodel.parameters()), None)
    if ref is not None:
        qmodel.to(ref.device)


def percentile(model: nn.Module, config: QuantConfig, calibration: Tensor, *, labels: Tensor | None = None) -> nn.Module:
    """``percentile`` (:class:`~pytest_qrel.quantize.options.PercentileOptions`): a quantized deep copy
    of ``model`` (eval mode); ``model`` itself is not modified."""
    opts = config.options
    return observer_ptq(model, config, calibration,
                        lambda: PercentileObserver(opts.percentile, max_values=opts.max_values))


def mse(model: nn.Module, config: QuantConfig, calibration: Tensor, *, labels: Tensor | None = None) -> nn.Module:
    """``mse`` (:class:`~pytest_qrel.quantize.options.MSEOptions`): a quantized deep copy of ``model``
    (eval mode); ``model`` itself is not modified."""
    opts = config.options
    return observer_ptq(model, config, calibration, lambda: MSEObserver(opts.grid, max_values=opts.max_values))

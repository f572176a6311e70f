"""Post-training quantization of a state dict (the paper's eq. 3).

Each floating-point tensor becomes integer symbols μ = round((w − min) / scale), clamped to
[0, 2^b − 1], with scale = (max − min) / (2^b − 1); it dequantises as min + μ·scale. Each tensor
gets one (min, scale) pair. Why not one per output channel: with the symbols
entropy-coded, a narrow channel's symbols cluster and cost fewer bits anyway, while a pair per
channel cost ≈ 12 % of a CR-300 archive at 128² (900 pairs in base64) and measured no better
(docs/benchmarks.md, "Ranges per tensor"). Archives of format 1 hold a pair per channel: a
QuantizedTensor holds one pair per row, whatever the count, and dequantises either. Min and
scale are float32, and quantization divides by exactly the float32 values that are stored, so
the error per element is at most scale/2 (plus float32 rounding of the dequantised value).

Integer and boolean buffers (BatchNorm's `num_batches_tracked`) play no part in inference and are
dropped: `dequantize` returns only the floating-point tensors, to load with
`model.load_state_dict(..., strict=False)`; `QuantizedModel.dropped` names what was left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ModelError
from ..model.spec import DEFAULT_BITS, MAX_BITS, MIN_BITS
from ..units import bits_per_parameter



@dataclass(frozen=True)
class QuantizedTensor:
    """One tensor as symbols: `minimum`/`scale` hold one float32 entry per row of the symbols
    (one row today; one per output channel in archives of format 1)."""

    shape: tuple[int, ...]
    dtype: str
    minimum: np.ndarray
    scale: np.ndarray
    symbols: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.minimum.size)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class QuantizedModel:
    """A quantised state dict: `tensors` keeps the state dict's order."""

    bits: int
    tensors: dict[str, QuantizedTensor]
    dropped: tuple[str, ...] = field(default=())

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def bits_per_parameter(self, nbytes: int) -> float:
        """Bits per quantised parameter when the model takes `nbytes` (e.g. the archive's size)."""
        return bits_per_parameter(nbytes, self.parameter_count)


def _as_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """The elements of a tensor as `rows` rows of equal length."""
    return values.reshape(rows, values.size // rows if rows else 0)


def quantize(state_dict: Mapping[str, torch.Tensor], bits: int = DEFAULT_BITS) -> QuantizedModel:
    """Quantise every floating-point tensor of `state_dict` to `bits`-bit symbols."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ModelError(f"quantization bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    tensors, dropped = {}, []
    for name, tensor in state_dict.items():
        if tensor.is_complex():
            raise ModelError(f"cannot quantise complex tensor {name!r}")
        if tensor.is_floating_point():
            tensors[name] = _quantize_tensor(name, tensor, bits)
        else:
            dropped.append(name)
    return QuantizedModel(bits=bits, tensors=tensors, dropped=tuple(dropped))


def _quantize_tensor(name: str, tensor: torch.Tensor, bits: int) -> QuantizedTensor:
    shape = tuple(tensor.shape)
    rows = _as_rows(tensor.detach().cpu().to(torch.float64).numpy(), 1)
    if not (np.abs(rows) <= np.finfo(np.float32).max).all():  # also false for NaN
        raise ModelError(f"tensor {name!r} has non-finite values or values beyond float32; cannot quantise it")
    levels = (1 << bits) - 1
    if rows.shape[1] == 0:
        low = high = np.zeros(rows.shape[0])
    else:
        low, high = rows.min(axis=1), rows.max(axis=1)
    minimum = low.astype(np.float32)
    scale = ((high - low) / levels).astype(np.float32)
    divisor = np.where(scale > 0, scale, 1.0).astype(np.float64)[:, None]
    symbols = np.rint((rows - minimum.astype(np.float64)[:, None]) / divisor)
    symbols = np.clip(symbols, 0, levels).astype(np.uint16).reshape(-1)
    return QuantizedTensor(shape=shape, dtype=str(tensor.dtype).removeprefix("torch."),
                           minimum=minimum, scale=scale, symbols=symbols)


@torch.no_grad()
def as_archived(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """`tensor` as the archive returns it at `bits` bits: its min/scale as in `quantize`,
    computed in float32 on the tensor's device (for quantization-aware training)."""
    rows = tensor.detach().float().reshape(1, -1)
    if rows.shape[1] == 0:
        return tensor.detach().clone()
    low = rows.amin(dim=1, keepdim=True)
    scale = (rows.amax(dim=1, keepdim=True) - low) / ((1 << bits) - 1)
    symbols = torch.round((rows - low) / torch.where(scale > 0, scale, torch.ones_like(scale)))
    return (low + symbols.clamp_(0, (1 << bits) - 1) * scale).reshape(tensor.shape).to(tensor.dtype)


def dequantize_tensor(q: QuantizedTensor) -> torch.Tensor:
    """min + μ·scale in float32, shaped like the original tensor."""
    rows = _as_rows(q.symbols, q.rows).astype(np.float32)
    values = q.minimum[:, None] + rows * q.scale[:, None]
    return torch.from_numpy(np.ascontiguousarray(values).reshape(q.shape))


def dequantize(q: QuantizedModel) -> dict[str, torch.Tensor]:
    """The float32 state dict of `q` (dropped integer buffers are absent: load with strict=False)."""
    return {name: dequantize_tensor(t) for name, t in q.tensors.items()}


@contextlib.contextmanager
def archived_weights(module: torch.nn.Module, bits: int, enabled: bool = True):
    """Within the block, `module`'s parameters hold their values as the archive will at `bits`
    bits (`as_archived`), for quantization-aware training; on leaving, their float values come back (gradients stay)."""
    if not enabled:
        yield
        return
    params = [p for p in module.parameters() if p.is_floating_point()]
    floats = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.copy_(as_archived(p, bits))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, floats):
                p.copy_(value)

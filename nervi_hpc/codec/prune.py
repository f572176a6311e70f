"""Global unstructured magnitude pruning (the paper's §4.4 study): before quantization, the
fraction `amount` of all weight entries with the smallest magnitude, pooled over every weight
tensor of the model, is set to zero. Biases and normalisation parameters (1-D tensors) are kept.

Quantization then maps each zero to the symbol nearest 0 of its tensor (error ≤ scale/2, as for
any weight), so pruning pays off through the entropy coder: one symbol per tensor becomes very
frequent and Huffman gives it a short code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ModelError


def prunable(tensor: torch.Tensor) -> bool:
    """Weight tensors of convolutions and linear layers: floating point, 2 or more dims."""
    return tensor.is_floating_point() and tensor.dim() >= 2


def prune(state_dict: Mapping[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """A copy of `state_dict` whose prunable tensors have their `amount` smallest-|w| entries
    (global over all of them; ties at the threshold included) set to 0."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ModelError(f"prune: bad fraction {amount!r} (expected a number in [0, 1))")
    names = [name for name, tensor in state_dict.items() if prunable(tensor)]
    magnitudes = torch.cat([state_dict[name].detach().abs().flatten().float().cpu() for name in names]) \
        if names else torch.empty(0)
    count = round(amount * magnitudes.numel())
    pruned = dict(state_dict)
    if count == 0:
        return pruned
    threshold = torch.kthvalue(magnitudes, count).values
    for name in names:
        tensor = state_dict[name]
        pruned[name] = torch.where(tensor.abs() <= threshold.to(tensor.device, tensor.dtype),
                                   torch.zeros_like(tensor), tensor)
    return pruned

"""Linear weights prepacked for oneDNN while the engine generates on the CPU (fp32): MKL's plain
sgemm repacks a weight on every call. The original modules are restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger("selftune.engine")

# ---------------------------------------------------------------------------------------------
# Prepacked weights for the CPU
# ---------------------------------------------------------------------------------------------
# A decode step multiplies a few dozen to a few hundred rows by every weight matrix. MKL's plain
# sgemm repacks the weight matrix into its blocked layout on every call, which at so few rows is a
# large share of the work: on the development CPU the LM head's product (128 x 576 -> 49,152) ran
# at ~46 GFLOP/s and the MLP's up-projections at ~50, against ~70 for oneDNN's linear on a weight
# packed once (bench/generation.py; docs/performance.md). torch ships that kernel (the one its
# inductor compiler uses for frozen CPU models): `mkldnn._reorder_linear_weight` packs,
# `mkldnn._linear_pointwise` multiplies. Its rows are also independent of how many rows share the
# call, so answers stay independent of batching.


class _PackedLinear(torch.nn.Module):
    """Inference stand-in for an `nn.Linear` on the CPU, its weight packed once for oneDNN. Keeps
    the original `weight` (and `bias`) as attributes, so code that reads them still can."""

    def __init__(self, linear: torch.nn.Linear, rows_hint: int):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack(model) -> bool:
    """Packing applies to fp32 models on the CPU in a torch built with oneDNN."""
    first = next(model.parameters(), None)
    return (
        first is not None
        and first.device.type == "cpu"
        and first.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


Swap = tuple[torch.nn.Module, str, torch.nn.Linear, _PackedLinear]  # parent, name, original, stand-in


def pack_linears(model, rows_hint: int = 128, *, trained: bool = False) -> list[Swap]:
    """A prepacked stand-in for every fp32 `nn.Linear` of `model` (fp32, CPU), not yet swapped in
    (`swapped_in`); empty where packing does not apply or fails. Holds one extra copy of the
    Linear weights for as long as the list lives. `trained`: the model trains between generations
    (GRPO's rollouts), so Linears whose weights require grad (its LoRA adapter) stay as they are;
    a pack kept from an earlier call would hold their old values. (Checking the weights' version
    counters does not work: fused AdamW updates them without counting.)"""
    if not can_pack(model):
        return []
    found = [
        (parent, name, child)
        for parent in list(model.modules())
        for name, child in list(parent.named_children())
        if type(child) is torch.nn.Linear
        and child.weight.dtype == torch.float32
        and not (trained and child.weight.requires_grad)
    ]
    try:
        return [(parent, name, child, _PackedLinear(child, rows_hint)) for parent, name, child in found]
    except RuntimeError as exc:  # a oneDNN build without this kernel for the CPU at hand
        logger.warning("generating with plain Linear layers: packing their weights failed (%s)", exc)
        return []


@contextlib.contextmanager
def swapped_in(swaps: list[Swap]) -> Iterator[int]:
    """Within the block the stand-ins of `swaps` replace their Linears; afterwards, even after an
    error, the original modules are back in place (so training or scoring the same model instance
    sees plain Linears). Yields the number of layers swapped."""
    try:
        for parent, name, _, stand_in in swaps:
            setattr(parent, name, stand_in)
        yield len(swaps)
    finally:
        for parent, name, original, _ in swaps:
            setattr(parent, name, original)


@contextlib.contextmanager
def packed_linears(model, rows_hint: int = 128) -> Iterator[int]:
    """Pack and swap in for one block: `pack_linears` then `swapped_in`. Yields the number of
    layers packed (0 where packing does not apply)."""
    with swapped_in(pack_linears(model, rows_hint)) as count:
        yield count

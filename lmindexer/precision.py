"""The numeric precision of inference: float32, or bfloat16 where the hardware computes it natively.

bfloat16 keeps float32's exponent range and 8 bits of mantissa. Run under ``torch.autocast``, the matrix products of
a transformer (nearly all of its cost) take bf16 inputs and accumulate in float32, while reductions, normalisations
and softmax stay in float32. On a CPU with AVX512-BF16 or AMX, or a GPU with bf16 tensor cores, that roughly halves
an encoder's time at a cosine of about 0.9999 to the float32 embedding; on hardware without them it is emulated
and slower, so ``auto`` chooses it only where it is native.

The precision of an ID-writing model is a fact of its snapshot: ``auto`` is resolved when the indexer is built for
fitting, the resolved value is saved in the snapshot's config, and a loaded snapshot always assigns in the precision
it was fitted with, whatever machine loads it (snapshots written before the option existed assign in float32). The
ID table never recomputes a stored ID, so choosing a precision can only affect the codes of items assigned later.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

InferencePrecision = Literal["auto", "fp32", "bf16"]
ResolvedPrecision = Literal["fp32", "bf16"]
# The largest share of its length by which bf16 moves a vector the codes are chosen from, that codes are certified
# against (see lmindexer.indexers.embedding and lmindexer.indexers.lm.indexer). Measured, bf16 against float32: the
# unit-length MiniLM embedding moved by at most 0.0072 on 1,500 wiki-topics texts and 0.0075 on 1,500 MovieLens
# texts; the LMIndexer's writer states (fast preset) by at most 0.72% and 0.78% of their length on the same texts.
BF16_RELATIVE_ERROR = 0.01

PRECISION_DESCRIPTION = (
    "numeric precision of inference: 'bf16' runs the model's matrix products in bfloat16 (float32 accumulation), "
    "'fp32' in float32, 'auto' chooses bf16 where the hardware computes it natively (AVX512-BF16 or AMX CPUs, "
    "bf16-capable GPUs) and fp32 elsewhere"
)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (not by emulation)."""
    import torch  # here, not at the top: the option types above are read by configs that load without torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> ResolvedPrecision:
    """``fp32`` or ``bf16``: ``requested`` itself, or for ``auto`` what ``device`` computes natively."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {requested!r}; expected auto, fp32 or bf16")
    return requested  # type: ignore[return-value]


@contextlib.contextmanager
def inference_autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the enclosed forward passes in ``precision`` (a resolved one) on ``device``. Callers convert the outputs
    they compare or store back to float32 (``.float()``): autocast returns bf16 tensors from matrix products."""
    if precision == "bf16":
        import torch

        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        yield

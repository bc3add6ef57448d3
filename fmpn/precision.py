"""The numeric precision a forward pass runs in.

``float16``: weights and inputs in half precision (CUDA only). ``bfloat16``: float32 weights under
``torch.autocast`` (convolutions and matmuls in bf16). On a CPU with native bf16 instructions
(AVX512-BF16 or AMX) that runs the cpu profile 1.4-2.2x faster than float32 (``bench/bench_precision.py``),
and the released model labels 6 of FER2013's 3,589 validation faces differently (one more right); without
those instructions bf16 is emulated and slower, so ``auto`` picks it only where it is native.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "float32", "float16", "bfloat16")


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose instructions compute in bf16 (AVX512-BF16, AMX), where autocast pays."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> float16 on CUDA, bfloat16 on a CPU with native bf16, float32 otherwise; checks the rest."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "float16"
        return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"
    if precision == "float16" and device.type != "cuda":
        raise ValueError(f"precision float16 needs a CUDA device, got {device}; on a CPU use bfloat16 or float32")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward runs in: bf16 autocast for ``bfloat16``, nothing otherwise."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

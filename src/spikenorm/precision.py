"""The precision rule shared by neurons and norms: half-precision inputs are computed on in float32."""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype spikenorm computes statistics and neuron state in for inputs of ``dtype``: float32 for the half
    precisions (bfloat16, float16), ``dtype`` itself otherwise (float32 stays float32, float64 float64)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype

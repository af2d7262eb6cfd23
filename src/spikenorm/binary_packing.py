"""1-bit storage of binary-weight models: pack, save, load, and the size it saves.

A binary layer (:class:`spikenorm.binary.BinaryLayer`) computes with ``W_b[i, j] = alpha_i sign(W_ij)``, so
storing ``sign(W)`` as one bit per weight plus the per-output-channel ``alpha`` loses nothing the forward
uses. :func:`pack_binary` / :func:`save_packed` write that form; :func:`load_packed` restores a model whose
binary layers hold ``weight = ±1`` and a stored ``alpha`` buffer, so it reproduces the packed model's outputs
bit for bit. :func:`model_size` reports the compression.

File format (version :data:`PACKED_FORMAT_VERSION`): a ``torch.save``-d dict (loadable with
``weights_only=True``) holding ``model.state_dict()`` except that each binary layer ``<name>`` has, instead of
``<name>.weight`` and ``<name>.alpha``: ``<name>.weight_bits`` (uint8, ``numpy.packbits`` of the flattened
``W >= 0``), ``<name>.weight_shape`` (int64) and ``<name>.alpha`` (flat ``[O]``); plus
``PACKED_FORMAT_KEY: PACKED_FORMAT_VERSION``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spikenorm.binary import BinaryLayer, binary_layers

__all__ = [
    "PACKED_FORMAT_KEY",
    "PACKED_FORMAT_VERSION",
    "ModelSize",
    "load_packed",
    "model_size",
    "pack_binary",
    "save_packed",
]

PACKED_FORMAT_KEY = "__spikenorm_binary_format__"
PACKED_FORMAT_VERSION = 1
_PACKED_SUFFIXES = (".weight_bits", ".weight_shape", ".alpha")


@torch.no_grad()
def pack_binary(model: nn.Module) -> dict[str, Tensor]:
    """A state dict with each binary layer's weight stored as 1 bit per entry.

    For a binary layer ``<name>``: ``<name>.weight`` (and a stored ``<name>.alpha`` buffer) are replaced by
    ``<name>.weight_bits`` (uint8, ``numpy.packbits`` of the flattened ``W >= 0``), ``<name>.weight_shape``
    (int64) and ``<name>.alpha`` (flat ``[O]``, the values the forward uses, in the weight's dtype: float32
    for a float32 model). Every other entry is ``model.state_dict()``'s.
    """
    layers = binary_layers(model)
    state = model.state_dict()
    packed: dict[str, Tensor] = {}
    skip = {f"{name}.{key}" for name in layers for key in ("weight", "alpha")}
    for key, value in state.items():
        if key not in skip:
            packed[key] = value
    for name, layer in layers.items():
        w = layer.weight.detach()
        packed[f"{name}.weight_bits"] = torch.from_numpy(np.packbits((w >= 0).reshape(-1).cpu().numpy()))
        packed[f"{name}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
        packed[f"{name}.alpha"] = layer.current_alpha().clone()
    return packed


def save_packed(model: nn.Module, path: str | Path) -> Path:
    """``torch.save`` of :func:`pack_binary` plus the format version key; returns the path."""
    path = Path(path)
    packed: dict[str, Any] = dict(pack_binary(model))
    packed[PACKED_FORMAT_KEY] = PACKED_FORMAT_VERSION
    torch.save(packed, path)
    return path


@torch.no_grad()
def load_packed(model: nn.Module, path_or_dict: str | Path | io.BytesIO | Mapping[str, Any]) -> nn.Module:
    """Load a packed state (file or :func:`pack_binary` dict) into ``model``, in place; returns ``model``.

    ``model`` must have the packed model's architecture with binary layers in the same places (built and
    :func:`spikenorm.binary.binarize_model`-ed the same way). Binary layers get ``weight = ±1`` (bit 1 -> +1)
    and their ``alpha`` buffer set (the deployed state, see :class:`BinaryLayer`); everything else loads strictly.

    Raises:
        ValueError: a different format version, binary layers in different places, a missing or unexpected
            entry, or a shape mismatch (all named).
    """
    if isinstance(path_or_dict, Mapping):
        packed = dict(path_or_dict)
    else:
        packed = torch.load(path_or_dict, map_location="cpu", weights_only=True)
        if not isinstance(packed, dict):
            raise TypeError(f"a packed binary model file holds a dict, got {type(packed).__name__}")
    version = packed.pop(PACKED_FORMAT_KEY, PACKED_FORMAT_VERSION)
    if version != PACKED_FORMAT_VERSION:
        raise ValueError(
            f"packed binary format version {version!r} is not supported (expected {PACKED_FORMAT_VERSION})"
        )

    layers = binary_layers(model)
    packed_names = {k[: -len(".weight_bits")] for k in packed if k.endswith(".weight_bits")}
    if packed_names != set(layers):
        raise ValueError(
            "binary layers differ between the packed state and the model: "
            f"packed only {sorted(packed_names - set(layers))}, model only {sorted(set(layers) - packed_names)}; "
            "build and binarize_model the model the same way as the packed one"
        )
    full: dict[str, Tensor] = {}
    for name, layer in layers.items():
        missing = [name + s for s in _PACKED_SUFFIXES if name + s not in packed]
        if missing:
            raise ValueError(f"packed state lacks {missing} for binary layer '{name}'")
        shape = tuple(int(d) for d in packed.pop(f"{name}.weight_shape").tolist())
        bits = packed.pop(f"{name}.weight_bits")
        alpha = packed.pop(f"{name}.alpha")
        if shape != tuple(layer.weight.shape):
            raise ValueError(
                f"binary layer '{name}': packed weight shape {shape}, model weight shape {tuple(layer.weight.shape)}"
            )
        numel = math.prod(shape)
        if bits.dtype != torch.uint8 or bits.ndim != 1 or bits.numel() != (numel + 7) // 8:
            raise ValueError(
                f"binary layer '{name}': weight_bits must be a flat uint8 tensor of {(numel + 7) // 8} bytes, got "
                f"{bits.dtype} {tuple(bits.shape)}"
            )
        if tuple(alpha.shape) != (shape[0],):
            raise ValueError(f"binary layer '{name}': alpha must have shape ({shape[0]},), got {tuple(alpha.shape)}")
        ones = np.unpackbits(bits.cpu().numpy(), count=numel).reshape(shape)
        full[f"{name}.weight"] = torch.from_numpy(ones.astype(np.float64) * 2.0 - 1.0).to(layer.weight.dtype)
        full[f"{name}.alpha"] = alpha

    expected = {k: v for k, v in model.state_dict().items() if not _is_binary_key(k, layers)}
    missing_keys = sorted(set(expected) - set(packed))
    unexpected = sorted(set(packed) - set(expected))
    if missing_keys or unexpected:
        raise ValueError(f"packed state does not match the model: missing {missing_keys}, unexpected {unexpected}")
    bad = [
        f"{k}: packed {tuple(packed[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if isinstance(packed[k], Tensor) and tuple(packed[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"packed state shapes do not match the model: {bad}")
    full.update(packed)
    for layer in layers.values():  # deployed state; the loader below copies the stored values in
        layer.alpha = torch.empty(layer.weight.shape[0], dtype=layer.weight.dtype, device=layer.weight.device)
    model.load_state_dict(full, strict=True)
    return model


def _is_binary_key(key: str, layers: Mapping[str, BinaryLayer]) -> bool:
    prefix, _, leaf = key.rpartition(".")
    return prefix in layers and leaf in ("weight", "alpha")


@dataclass(frozen=True)
class ModelSize:
    """Storage of a model: all state as float32 vs packed (1 bit per binary weight).

    Attributes:
        full_precision_bytes: 4 bytes per entry of every parameter and persistent buffer (binary layers'
            stored ``alpha`` excluded: a full-precision model has none).
        packed_bytes: ``ceil(n/8)`` per binary weight tensor of ``n`` entries + ``alpha`` at its dtype size +
            every other tensor at its dtype size.
        ratio: ``packed_bytes / full_precision_bytes``.
        binary_weights: number of 1-bit weights.
    """

    full_precision_bytes: int
    packed_bytes: int
    ratio: float
    binary_weights: int


def model_size(model: nn.Module) -> ModelSize:
    """Full-precision vs packed storage of ``model`` (see :class:`ModelSize`)."""
    layers = binary_layers(model)
    full = packed = n_binary = 0
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in layers and leaf == "alpha":
            continue  # counted below, once per binary layer
        full += 4 * value.numel()
        if prefix in layers and leaf == "weight":
            n_binary += value.numel()
            packed += (value.numel() + 7) // 8
        else:
            packed += value.numel() * value.element_size()
    for layer in layers.values():
        packed += layer.weight.shape[0] * layer.weight.element_size()
    return ModelSize(full, packed, packed / full if full else float("nan"), n_binary)

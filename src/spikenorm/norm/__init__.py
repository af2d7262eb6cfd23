"""Pluggable norm layers for time-major SNN activations and their registry.

``build_norm("tdbn", 64)`` builds a layer by name; ``available_norms()`` lists the names. Every layer follows the
protocol of
:class:`~spikenorm.norm.base.TimeMajorNorm`.
"""

from typing import Any

from spikenorm.norm.base import NORMS, FoldTarget, NoNorm, StepIndexedNorm, TimeMajorNorm
from spikenorm.norm.batchnorm import BNTT, TDBN, VanillaBN
from spikenorm.norm.carebn import CaReBN, ca_bn_update, ca_bn_updates
from spikenorm.norm.mpbn import MPBN
from spikenorm.norm.osr import OSR
from spikenorm.norm.stats import batch_moments
from spikenorm.norm.tab import TAB, accumulate_over_steps, unbiased_accumulated
from spikenorm.norm.tebn import TEBN


def available_norms() -> list[str]:
    """Names accepted by :func:`build_norm`."""
    return NORMS.names()


def build_norm(name: str, num_features: int, **kwargs: Any) -> TimeMajorNorm:
    """Build the norm layer registered as ``name`` for ``num_features`` channels.

    Unknown names raise a ValueError listing :func:`available_norms`; unknown options a TypeError.
    """
    cls = NORMS.get(name)
    try:
        return cls(num_features, **kwargs)
    except TypeError as err:
        raise TypeError(f"norm {name!r} ({cls.__name__}): {err}") from err


__all__ = [
    "BNTT",
    "CaReBN",
    "FoldTarget",
    "MPBN",
    "NoNorm",
    "OSR",
    "StepIndexedNorm",
    "TAB",
    "TDBN",
    "TEBN",
    "TimeMajorNorm",
    "VanillaBN",
    "accumulate_over_steps",
    "available_norms",
    "batch_moments",
    "ca_bn_update",
    "ca_bn_updates",
    "build_norm",
    "unbiased_accumulated",
]

"""Optional features and the extras that install them.

The core (neurons, norms, models, folding, re-calibration, the classifier, the CLI) needs only the dependencies
``pip install spikenorm`` brings. Five features need more, installed as extras:

* ``rl``: online RL (:mod:`spikenorm.rl`, :class:`~spikenorm.tasks.SpikingTD3`): torchrl, tensordict, gymnasium;
* ``dvs``: neuromorphic datasets (tonic's DVS readers, the event-frame cache): tonic, aedat, h5py;
* ``export``: NIR export and import (:mod:`spikenorm.export`): nir;
* ``studies``: studies on a cluster (``spikenorm study`` with a submitit executor, :mod:`spikenorm.studies`):
  submitit. Local studies need no extra;
* ``atari``: Atari envs for online RL (``make_env("ALE/Pong-v5", obs_type="ram")``): ale-py (with its ROMs), on
  top of the ``rl`` extra's packages.

A feature module imports its third-party modules inside :func:`needs_extra`, so that a missing extra is reported
by name when the module is imported::

    with needs_extra("rl", __name__):
        from torchrl.envs import GymEnv

raises ``spikenorm.rl.envs needs the 'rl' extra: pip install 'spikenorm[rl]' (missing module: torchrl)``. A
package that gathers core and feature members (``spikenorm.tasks``, ``spikenorm.datamodules``) loads its feature
members on first access (:func:`lazy_members`), so that importing the package needs no extra.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["EXTRAS", "MissingExtraError", "lazy_members", "needs_extra"]

#: the modules each extra provides (the extra's own dependencies are in pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "rl": ("torchrl", "tensordict", "gymnasium"),
    "dvs": ("tonic", "aedat", "h5py"),
    "export": ("nir",),
    "studies": ("submitit",),
    "atari": ("ale_py",),
}


class MissingExtraError(ModuleNotFoundError):
    """A feature was imported without the extra that installs its dependencies."""


@contextlib.contextmanager
def needs_extra(extra: str, feature: str) -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` raised by the imports in the block into a :class:`MissingExtraError` that
    names ``extra`` (one of :data:`EXTRAS`), ``feature`` (the importing module's ``__name__``) and the missing
    module.

    Raises:
        ValueError: ``extra`` is not one of :data:`EXTRAS` (before the block runs).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; spikenorm's extras are {', '.join(EXTRAS)}")
    try:
        yield
    except ModuleNotFoundError as err:
        missing = err.name or str(err)
        raise MissingExtraError(
            f"{feature} needs the {extra!r} extra: pip install 'spikenorm[{extra}]' (missing module: {missing})",
            name=missing,
        ) from err


def lazy_members(package: str, members: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports each name of ``members`` from its module
    (``{"SpikingTD3": "spikenorm.tasks.td3"}``) on first access, so that a missing extra is reported only when a
    feature is used. Other names raise ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        module = members.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__

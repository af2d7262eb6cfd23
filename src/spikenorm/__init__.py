"""spikenorm: normalization for spiking neural networks, as PyTorch Lightning plugins.

Core modules (importing ``spikenorm`` itself imports nothing heavy):

* :mod:`spikenorm.neurons`: multi-step IF/LIF/CLIF neurons over ``[T, B, ...]``, single-step scope
* :mod:`spikenorm.surrogate`: surrogate spike functions (and an adapter for snnTorch's)
* :mod:`spikenorm.norm`: pluggable norm layers, ``build_norm`` / ``available_norms``
* :mod:`spikenorm.models`: spiking MLP, VGG, ResNet-19 (shortcut layouts), a tiny spiking transformer, RL actors
* :mod:`spikenorm.binary`: binary-weight layers and ``binarize_model`` (SEI-BWSNN);
  :mod:`spikenorm.binary_packing`: packed 1-bit export
* :mod:`spikenorm.tasks`: LightningModules (``SpikingClassifier`` with knowledge distillation, ``SpikingTD3``)
* :mod:`spikenorm.datamodules`, :mod:`spikenorm.callbacks`: Lightning plugins built on the core
* :mod:`spikenorm.cli`: the ``spikenorm`` console script (LightningCLI)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spikenorm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

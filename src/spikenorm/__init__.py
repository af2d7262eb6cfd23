"""spikenorm: normalization for spiking neural networks, as PyTorch Lightning plugins.

Core modules (importing ``spikenorm`` itself imports nothing heavy; the core never imports tasks, callbacks,
datamodules, the CLI or studies):

* :mod:`spikenorm.neurons`: multi-step IF/LIF/CLIF neurons over ``[T, B, ...]``, single-step scope; each neuron
  declares its charge (:mod:`spikenorm.recurrence`), which gives it the fused kernels (:mod:`spikenorm.fused`)
  and its NIR mapping
* :mod:`spikenorm.threshold_stabilizers`: threshold schemes a neuron holds (OTS), each declaring its fold rule,
  fused-kernel support and export
* :mod:`spikenorm.surrogate`: surrogate spike functions (and an adapter for snnTorch's)
* :mod:`spikenorm.norm`: pluggable norm layers, ``build_norm`` / ``available_norms``
* :mod:`spikenorm.time_steps`: one home for ``T``: the task gives it to every layer that takes it
* :mod:`spikenorm.synapse`: time-distributed layers and OTTT's trace synapses
* :mod:`spikenorm.models`: one ``LayerSpec`` for every model; spiking MLP, VGG, ResNet-19 (shortcut layouts), a
  tiny spiking transformer, RL actors
* :mod:`spikenorm.fold`, :mod:`spikenorm.export`: norms folded into weights and thresholds; NIR export and import
  (the ``export`` extra); :mod:`spikenorm.folded_files`: the safe file format of folded models, which names the
  functions declared :func:`~spikenorm.traceable.traceable`
* :mod:`spikenorm.recalibrate`: exact BN statistics pooled over batch and time (:mod:`spikenorm.statistics_layers`,
  :mod:`spikenorm.statistics_passes`, :mod:`spikenorm.recalibration_audits`);
  :mod:`spikenorm.diagnostics`: read-only norm health
* :mod:`spikenorm.monitoring`, :mod:`spikenorm.energy`: firing rates, operation counts, energy estimates
* :mod:`spikenorm.binary`: binary-weight layers and ``binarize_model`` (SEI-BWSNN);
  :mod:`spikenorm.binary_packing`: packed 1-bit export
* :mod:`spikenorm.rl`: TorchRL glue (environments, collection in eval mode, BN-aware target updates; the ``rl``
  extra)
* :mod:`spikenorm.extras`: the optional features' extras (``rl``, ``dvs``, ``export``) and the error naming a
  missing one
* :mod:`spikenorm.config`, :mod:`spikenorm.loggers`, :mod:`spikenorm.wandb_runs`: run configs, loggers, reading
  offline W&B runs back
* :mod:`spikenorm.run_status`: ``run.json``, whether a run finished, crashed or is still running

Built on the core:

* :mod:`spikenorm.tasks`: LightningModules on one base (``SpikingClassifier`` with online training and knowledge
  distillation as parts, ``SpikingTD3``)
* :mod:`spikenorm.datamodules`, :mod:`spikenorm.callbacks`: Lightning plugins
* :mod:`spikenorm.cli`: the ``spikenorm`` console script (LightningCLI)
* :mod:`spikenorm.studies`: ``spikenorm study`` (a grid of fits, locally or as a SLURM job array) and
  ``spikenorm compare`` (tables of any finished runs)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spikenorm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
